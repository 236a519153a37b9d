"""Delta compression against whole publications: a product page's stock widget (a 2 KB JSON state) updated by one
sale at a time, published through the server API to four subscribers of one relay in the same run: JSON and
protobuf, each with and without ``delta: "fossil"``. Printed and saved: the WebSocket payload bytes each one
received per publication, delta ÷ whole per protocol, and what making a delta costs relay per publication.

    python bench/delta.py [--publications N] [--quick]
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import aiohttp  # noqa: E402
import orjson  # noqa: E402
from common import RelayServer, bench_parser, machine_description, save_result  # noqa: E402
from wsclient import client_frame, server_frames, take_upgrade, upgrade_request  # noqa: E402

from relay.protocol import protobuf as pb  # noqa: E402
from relay.protocol.fossil import create_delta  # noqa: E402

STOCK = {"history_size": 50, "history_ttl": 300.0, "force_recovery": True, "subscribe_access": "anonymous",
         "allowed_delta_types": ["fossil"], "delta_publish": True}
CHANNEL = "stock:sku-4411"


def stock_widget(rng: random.Random) -> dict[str, Any]:
    """A product page's stock widget: sizes x colours with their stock, the product, its delivery promises."""
    return {"product": "sku-4411", "title": "Linen shirt, relaxed fit", "currency": "EUR", "price": 59.9,
            "variants": [{"size": s, "color": c, "stock": rng.randint(0, 40), "sku": f"sku-4411-{s}-{c}"}
                         for s in ("XS", "S", "M", "L", "XL", "XXL") for c in ("white", "navy", "sand")],
            "badges": ["new", "sustainable"], "updated": 1765152000,
            "images": [f"https://cdn.shop.example/p/sku-4411/{k}.webp" for k in range(12)],
            "delivery": {"standard": "2-4 working days", "express": "next working day before 12:00",
                         "returns": "free returns within 30 days"}}


class Subscriber(asyncio.Protocol):
    """A raw WebSocket subscriber of CHANNEL that counts the payload bytes of the frames after its subscribe
    reply, and the publications in them."""

    def __init__(self, name: str, protobuf: bool, delta: bool, token: str) -> None:
        self.name, self.protobuf, self.delta, self.token = name, protobuf, delta, token
        self.buf = b""
        self.upgraded = False
        self.subscribed = asyncio.get_running_loop().create_future()
        self.bytes = self.pubs = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        path = "/connection/websocket" + ("?format=protobuf" if self.protobuf else "")
        host, port = transport.get_extra_info("peername")[:2]
        transport.write(upgrade_request(host, port, path))

    def _send(self, cmd: dict) -> None:
        assert self.transport is not None
        if self.protobuf:
            self.transport.write(client_frame(pb.encode_command(cmd), opcode=2))
        else:
            self.transport.write(client_frame(orjson.dumps(cmd)))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.upgraded:
            rest = take_upgrade(self, self.buf)
            if rest is None:
                return
            self.buf = rest
            sub: dict[str, Any] = {"channel": CHANNEL}
            if self.delta:
                sub["delta"] = "fossil"
            self._send({"id": 1, "connect": {"token": self.token}})
            self._send({"id": 2, "subscribe": sub})
        frames, self.buf = server_frames(self.buf)
        for _, payload in frames:
            if not self.subscribed.done():
                if self.protobuf and any(r.id == 2 for _, r in pb.iter_replies(payload)) or b'"id":2' in payload:
                    self.subscribed.set_result(None)
                continue
            self.bytes += len(payload)
            self.pubs += payload.count(b'"pub"') if not self.protobuf else sum(
                1 for _, r in pb.iter_replies(payload) if r.HasField("push") and r.push.HasField("pub"))

    def failed(self, kind: str, detail: str = "") -> None:  # wsclient.take_upgrade's report of a refused upgrade
        if not self.subscribed.done():
            self.subscribed.set_exception(RuntimeError(f"{kind}: {detail}"))


async def run(publications: int) -> dict[str, Any]:
    server = RelayServer(extra_config={"namespaces": {"stock": STOCK}})
    await asyncio.to_thread(server.start)
    loop = asyncio.get_running_loop()
    subs: list[Subscriber] = []
    try:
        for proto in (False, True):
            for delta in (False, True):
                name = f"{'protobuf' if proto else 'json'}{' + delta' if delta else ''}"
                s = Subscriber(name, proto, delta, server.token())
                await loop.create_connection(lambda s=s: s, "127.0.0.1", server.config["ws_port"])
                subs.append(s)
        await asyncio.wait_for(asyncio.gather(*(s.subscribed for s in subs)), 10)
        rng = random.Random(3)
        state = stock_widget(rng)
        payloads, deltas_ms, prev = [], [], None
        cpu0 = server.cpu_times()
        async with aiohttp.ClientSession(headers={"X-API-Key": "bench"}) as http:
            for _ in range(publications):
                v = state["variants"][rng.randrange(len(state["variants"]))]
                v["stock"] = max(0, v["stock"] - 1)
                state["updated"] += 1
                body = orjson.dumps(state)
                payloads.append(len(body))
                if prev is not None:
                    t0 = time.perf_counter()
                    create_delta(prev, body)
                    deltas_ms.append((time.perf_counter() - t0) * 1000)
                prev = body
                async with http.post(f"{server.api_url}/publish", json={"channel": CHANNEL, "data": state}) as r:
                    assert "error" not in await r.json()
        deadline = loop.time() + 10
        while any(s.pubs < publications for s in subs) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        cpu1 = server.cpu_times()
    finally:
        for s in subs:
            if s.transport is not None:
                s.transport.abort()
        server.cleanup()
    rows = [{"subscriber": s.name, "publications": s.pubs, "bytes": s.bytes,
             "bytes_per_publication": round(s.bytes / max(1, s.pubs), 1)} for s in subs]
    by = {r["subscriber"]: r for r in rows}
    return {"publications": publications, "state_bytes": round(sum(payloads) / len(payloads)),
            "rows": rows,
            "delta_over_full": {p: round(by[f"{p} + delta"]["bytes"] / max(1, by[p]["bytes"]), 4)
                                for p in ("json", "protobuf")},
            "delta_create_ms_mean": round(sum(deltas_ms) / max(1, len(deltas_ms)), 3),
            "server_cpu_s": round(sum(cpu1) - sum(cpu0), 3)}


def main(argv: list[str] | None = None) -> int:
    ap = bench_parser("delta compression against whole publications (stock widget)", __doc__)
    ap.add_argument("--publications", type=int, default=None, help="updates of the widget (default 500)")
    ap.add_argument("--quick", action="store_true", help="50 updates (smoke test)")
    args = ap.parse_args(argv)
    n = args.publications or (50 if args.quick else 500)
    out = asyncio.run(run(n))
    print(f"stock widget, {out['state_bytes']} B of JSON, {n} updates of one item's stock:")
    for r in out["rows"]:
        print(f"  {r['subscriber']:<18} {r['bytes_per_publication']:>8.1f} B per publication"
              f" ({r['publications']} received)")
    for proto, ratio in out["delta_over_full"].items():
        print(f"  {proto}: delta / whole = {ratio:.3f}x")
    print(f"  making a delta: {out['delta_create_ms_mean']:.3f} ms per publication (once per channel, Python)")
    save_result("delta", {"machine": machine_description(), "quick": bool(args.quick), **out})
    return 0


if __name__ == "__main__":
    sys.exit(main())
