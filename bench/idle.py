"""Idle memory benchmark: server RSS per idle WebSocket connection, relay vs the picows peer.

For each server: start it pinned to CPU 0, let it settle, read its RSS; open N idle
connections (default 10,000) from the load generator on CPU 1 and wait until every one
is ready; let the server settle again and read its RSS. Per connection =
(RSS after - RSS before) / N.

What "ready" means:
  relay   connected (JWT) and subscribed. By default each connection subscribes to its
          own channel ``bench:idle-<n>`` (personal channels: the hub then holds one
          channel per connection, the heavier case); ``--shared-channel`` subscribes
          them all to ``bench:idle``.
  picows  WebSocket open (the naive peer has no channels; a connection is a subscriber).

Prints one line per server and writes bench/results/idle-<timestamp>.json.
Run: ``.venv/bin/python bench/idle.py`` (``--quick`` for 1,000 connections).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (FANOUT_CHANNEL, GENERATOR_CPU, RelayServer, ServerProcess,  # noqa: E402
                    machine_description, pin_to, raise_nofile, write_result)
from fanout import DEFAULT_SERVERS, make_server, server_unavailable  # noqa: E402
from loadgen import LoadGenerator, Target  # noqa: E402

__all__ = ["measure", "main"]

TARGET_KIB = 8.0  #: the lead's target for relay, KiB per idle connection


def _settled_rss(server: ServerProcess, settle: float) -> int:
    """RSS after ``settle`` seconds, taken as the last of a few readings 0.25 s apart."""
    time.sleep(settle)
    rss = server.rss_bytes()
    for _ in range(3):
        time.sleep(0.25)
        rss = server.rss_bytes()
    return rss


def measure(server: ServerProcess, connections: int, workers: int, shared_channel: bool,
            settle: float) -> dict[str, Any]:
    """Start ``server``, connect ``connections`` idle clients, return the RSS figures."""
    server.start()
    lg: LoadGenerator | None = None
    try:
        if isinstance(server, RelayServer):
            channel = "bench:idle" if shared_channel else "bench:idle-{n}"
            target = Target("relay", "relay", server.ws_url, server.ws_url, server.token(), channel)
        else:  # a peer (fanout.make_server): picows, websockets, node-ws, nats
            target = Target(server.name, getattr(server, "protocol", "raw"), server.ws_url, server.pub_url,
                            channel=getattr(server, "channel", FANOUT_CHANNEL))
        before = _settled_rss(server, settle)
        lg = LoadGenerator(target, connections, workers)
        t0 = time.monotonic()
        n = lg.connect()
        connect_s = time.monotonic() - t0
        after = _settled_rss(server, settle)
        alive = server.alive()
        _, _, lost = lg.counts()
        return {
            "server": server.name, "connections": n, "requested": connections,
            "channel": target.channel if target.kind == "relay" else None, "peer": server.name,
            "rss_before_bytes": before, "rss_after_bytes": after,
            "rss_per_connection_bytes": (after - before) / n if n else None,
            "connect_s": round(connect_s, 2), "lost_connections": lost, "server_alive": alive,
            "errors": lg.errors[:3],
            "core": server.core() if isinstance(server, RelayServer) else None,
        }
    finally:
        if lg is not None:
            lg.close()
        server.cleanup()


def format_line(r: dict[str, Any]) -> str:
    per = r["rss_per_connection_bytes"]
    per_s = "-" if per is None else f"{per / 1024:.2f} KiB"
    extra = " channel=" + r["channel"].replace("{n}", "<n>") if r["channel"] else ""
    marks = ""
    if r["connections"] < r["requested"]:
        marks += f"  ONLY {r['connections']}/{r['requested']} CONNECTED {r['errors'][:1]}"
    if r["lost_connections"]:
        marks += f"  LOST={r['lost_connections']}"
    return (f"  {r['server']:<7} {r['connections']} idle connections: {per_s:>10} per connection"
            f"  (RSS {r['rss_before_bytes'] / 2**20:.1f} -> {r['rss_after_bytes'] / 2**20:.1f} MiB,"
            f" connected in {r['connect_s']:.1f}s){extra}{marks}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="RSS per idle WebSocket connection: relay vs picows peer",
                                 epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=None, help="idle connections (default 10,000)")
    ap.add_argument("--workers", type=int, default=4, help="load generator processes (CPU 1)")
    ap.add_argument("--servers", default=",".join(DEFAULT_SERVERS),
                    help=f"comma-separated, from: {', '.join(DEFAULT_SERVERS)}")
    ap.add_argument("--shared-channel", action="store_true",
                    help="relay: all connections on one channel instead of one channel each")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds to wait before each RSS reading")
    ap.add_argument("--quick", action="store_true", help="1,000 connections (smoke test)")
    args = ap.parse_args(argv)
    if args.connections is None:
        args.connections = 1000 if args.quick else 10000
    pin_to(GENERATOR_CPU)
    raise_nofile()
    machine = machine_description()
    lines: list[str] = []

    def print_fn(s: str) -> None:
        print(s, flush=True)
        lines.append(s)

    print_fn(f"machine: {machine['cpu_model']}, {machine['cpus']} CPUs, kernel {machine['kernel']}, "
             f"Python {machine['python']}, picows {machine['picows']}, uvloop {machine['uvloop']}, "
             f"relay {machine['relay']} core={machine['relay_core']}")
    print_fn(f"idle RSS per WebSocket connection at {args.connections} connections (server on CPU 0):")
    results = []
    skipped: dict[str, str] = {}
    for name in [s.strip() for s in args.servers.split(",") if s.strip()]:
        why = server_unavailable(name)
        if why:
            skipped[name] = why
            results.append({"server": name, "skipped": why})
            print_fn(f"  {name}: SKIPPED ({why})")
            continue
        server: ServerProcess = make_server(name)
        r = measure(server, args.connections, args.workers, args.shared_channel, args.settle)
        results.append(r)
        print_fn(format_line(r))
    by = {r["server"]: r for r in results if "skipped" not in r}
    mine = (by.get("relay") or {}).get("rss_per_connection_bytes")
    for peer, r in by.items():
        if peer != "relay" and mine and r["rss_per_connection_bytes"]:
            print_fn(f"  relay/{peer} RSS per connection = {mine / r['rss_per_connection_bytes']:.2f}x")
    if mine:
        print_fn(f"  relay: {mine / 1024:.2f} KiB per idle connection (target <= {TARGET_KIB:g} KiB)")
    path = write_result("idle", {"machine": machine, "args": vars(args), "results": results, "printed": lines,
                                 "skipped_servers": skipped})
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
