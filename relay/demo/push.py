"""``make demo-push``: what a shop's backend does, through relay's real HTTP server API.

    python -m relay.demo.push -c deploy/relay.dev.toml --customer c-ada-1a2b3c --status shipped
    python -m relay.demo.push -c deploy/relay.dev.toml --text "Flash sale: 30% off jackets for 10 minutes"

With ``--customer`` it publishes an order status to that customer's ``orders:`` channel (the
customer id is shown on the shop page); without it, a sale announcement to ``sale:flash``,
which every open shop page shows.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request

from relay.config import ConfigError, load

STATUSES = ("paid", "packed", "shipped", "out for delivery", "delivered")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--config", default="deploy/relay.dev.toml", help="the running relay's config file")
    ap.add_argument("--customer", help="customer user id (c-...): push an order status to them")
    ap.add_argument("--order", default="NW-1042", help="order number (default NW-1042)")
    ap.add_argument("--status", default="shipped", choices=STATUSES, help="order status (default shipped)")
    ap.add_argument("--text", default="Flash sale: 30% off every jacket for the next 10 minutes!",
                    help="sale announcement text (without --customer)")
    args = ap.parse_args(argv)
    try:
        cfg = load(args.config)
    except ConfigError as e:
        print(f"{args.config}: {e}", file=sys.stderr)
        return 2
    if args.customer:
        channel = f"orders:{args.customer}#{args.customer}"
        data = {"order": args.order, "status": args.status, "ts": int(time.time() * 1000)}
    else:
        channel, data = "sale:flash", {"text": args.text, "ts": int(time.time() * 1000)}
    host = "127.0.0.1" if cfg.host in ("0.0.0.0", "::", "") else cfg.host
    req = urllib.request.Request(f"http://{host}:{cfg.api_port}/api/publish",
                                 data=json.dumps({"channel": channel, "data": data}).encode(),
                                 headers={"X-API-Key": cfg.api_key, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            answer = json.loads(r.read())
    except (urllib.error.URLError, OSError) as e:
        print(f"relay is not answering on port {cfg.api_port} ({e}): start it with `make run`", file=sys.stderr)
        return 1
    if "error" in answer:
        print(f"{channel}: error {answer['error']}", file=sys.stderr)
        return 1
    print(f"published to {channel}: {json.dumps(data)} -> {answer.get('result')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
