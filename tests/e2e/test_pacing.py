"""Paced broadcasts end to end: a publication to a big channel reaches its subscribers spread over the
window, each at its own stable moment, in order with the channel's other publications, on every broker."""

import asyncio
import time
import uuid

from tests.rawclients import ws_connected

N = 40
WINDOW_MS = 1500


async def subscribers(relay, channel, n=N):
    clients = [await ws_connected(relay.ws_port, relay.token(f"shopper{i}")) for i in range(n)]
    for ws in clients:
        assert "subscribe" in await ws.call("subscribe", {"channel": channel})
    return clients


async def arrivals(clients, count):
    """Per client: [(monotonic arrival, data)] of its next ``count`` publications."""
    async def one(ws):
        out = []
        for _ in range(count):
            p = await ws.pub(timeout=10)
            out.append((time.monotonic(), p["pub"]["data"]))
        return out
    return await asyncio.gather(*(one(ws) for ws in clients))


async def test_a_paced_namespace_spreads_each_subscriber_over_the_window(relay_factory):
    r = relay_factory({"pace_min_subscribers": 10, "namespaces": {"sale": {"pace_ms": WINDOW_MS}}})
    clients = await subscribers(r, "sale:all")
    offsets = []
    for round_ in range(2):
        t0 = time.monotonic()
        task = asyncio.create_task(arrivals(clients, 2))
        r.api("publish", {"channel": "sale:all", "data": {"sale": round_}})
        r.api("publish", {"channel": "sale:all", "data": {"after": round_}})  # paced too: never overtaking it
        got = await task
        for per_client in got:
            assert [d for _, d in per_client] == [{"sale": round_}, {"after": round_}]
        offsets.append([per_client[0][0] - t0 for per_client in got])
    for o in offsets:
        assert max(o) - min(o) > 0.5 * WINDOW_MS / 1000, sorted(o)  # spread, not all at once
        assert max(o) < WINDOW_MS / 1000 + 1.0
    # each shopper has its own stable moment: the same in both broadcasts
    same = sum(1 for a, b in zip(offsets[0], offsets[1], strict=True) if abs(a - b) < 0.25)
    assert same >= 0.9 * N, list(zip(offsets[0], offsets[1], strict=True))
    assert r.metrics().total("relay_paced_publications_total") == 4
    for ws in clients:
        ws.close()


async def test_the_server_api_paces_one_publication_and_small_channels_are_not_paced(relay_factory):
    r = relay_factory({"pace_min_subscribers": 10})
    clients = await subscribers(r, "news")
    t0 = time.monotonic()
    task = asyncio.create_task(arrivals(clients, 1))
    r.api("publish", {"channel": "news", "data": "paced", "pace_ms": WINDOW_MS})
    o = [per[0][0] - t0 for per in await task]
    assert max(o) - min(o) > 0.5 * WINDOW_MS / 1000
    t0 = time.monotonic()
    task = asyncio.create_task(arrivals(clients, 1))
    r.api("publish", {"channel": "news", "data": "now"})  # [channel] has no pace_ms: at once
    o = [per[0][0] - t0 for per in await task]
    assert max(o) < 0.5
    bad = r.api("publish", {"channel": "news", "data": 1, "pace_ms": -1})
    assert bad["error"] == {"code": 107, "message": "bad request: pace_ms must be an integer between 0 and 600000"}
    few = clients[:5]
    for ws in clients[5:]:
        ws.close()
    await asyncio.sleep(0.2)
    t0 = time.monotonic()
    task = asyncio.create_task(arrivals(few, 1))
    r.api("publish", {"channel": "news", "data": "few", "pace_ms": 5000})  # under pace_min_subscribers
    o = [per[0][0] - t0 for per in await task]
    assert max(o) < 0.5
    for ws in few:
        ws.close()


async def test_paced_over_redis_from_another_node(redis_factory, relay_factory):
    redis = redis_factory()
    cfg = {"broker": "redis", "redis_urls": [redis.url], "pace_min_subscribers": 10}
    a, b = relay_factory(cfg), relay_factory(cfg)
    ch = f"flash{uuid.uuid4().hex[:8]}"
    clients = await subscribers(b, ch)
    t0 = time.monotonic()
    task = asyncio.create_task(arrivals(clients, 2))
    a.api("publish", {"channel": ch, "data": "SALE", "pace_ms": WINDOW_MS, "lane": "bulk"})
    a.api("publish", {"channel": ch, "data": "next"})
    got = await task
    assert all([d for _, d in per] == ["SALE", "next"] for per in got)
    o = [per[0][0] - t0 for per in got]
    assert max(o) - min(o) > 0.5 * WINDOW_MS / 1000
    for ws in clients:
        ws.close()
