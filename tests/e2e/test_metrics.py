"""/metrics: real traffic moves every counter and histogram by the right amount."""

import asyncio
import os
import uuid

import pytest

from tests.rawclients import RawTCP, RawWS, ws_connected


async def scrape(r):
    return await asyncio.to_thread(r.metrics)


async def api(r, method, params):
    return await asyncio.to_thread(r.api, method, params)


async def test_traffic_moves_the_metrics(relay_factory):
    r = relay_factory({"metrics_interval": 0.2})
    before = await scrape(r)
    expected_core = "python" if os.environ.get("RELAY_PUREPYTHON") else "cython"
    assert before["relay_core_info", {"implementation": expected_core}] == 1
    assert before.total("relay_build_info") == 1
    assert before["relay_ready"] == 1 and before["relay_broker_up"] == 1
    assert before["relay_connections_max"] > 0
    assert 10 * 2**20 < before["relay_resident_memory_bytes"] < 2**32
    ch = f"pub:{uuid.uuid4().hex[:8]}"  # clients may publish; no join/leave pushes

    ws = [await ws_connected(r.ws_port, r.token(f"w{i}")) for i in range(3)]
    tcp = await RawTCP.open(r.tcp_port)
    assert "connect" in await tcp.call("connect", {"token": r.token("t0")})
    for c in ws + [tcp]:
        assert "subscribe" in await c.call("subscribe", {"channel": ch})
    # 4 publications from a client (one at a time: each its own broker publish), 3 through the API
    for i in range(4):
        assert "publish" in await ws[0].call("publish", {"channel": ch, "data": {"i": i}})
    for i in range(3):
        assert "result" in await api(r, "publish", {"channel": ch, "data": {"api": i}})
    for c in ws:
        for _ in range(7):
            await c.pub()
    for _ in range(7):
        assert "pub" in await tcp.push(), "a publication"
    # refused: a bad origin, a bad token, an API call without a key; a client that breaks the protocol
    bad = await asyncio.open_connection("127.0.0.1", r.ws_port)
    bad[1].write(b"GET /connection/websocket HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 b"Sec-WebSocket-Version: 13\r\nOrigin: https://evil.example\r\n\r\n")
    assert (await bad[0].read(100)).startswith(b"HTTP/1.1 403")
    bad[1].close()
    anon = await RawWS.open(r.ws_port)
    await anon.send_cmds({"id": 1, "connect": {"token": "not-a-jwt"}})
    assert await anon.expect_close() == (3500, "invalid token")
    breaker = await ws_connected(r.ws_port, r.token("b"))
    await breaker.send_cmds({"id": 1, "subscribe": []})
    assert (await breaker.expect_close())[0] == 3501

    m = await scrape(r)
    d = lambda name, labels=None: m[name, labels or {}] - before[name, labels or {}]  # noqa: E731
    assert m["relay_connections", {"transport": "websocket"}] == 3
    assert m["relay_connections", {"transport": "tcp"}] == 1
    assert d("relay_connections_accepted_total", {"transport": "websocket"}) == 5
    assert d("relay_connections_accepted_total", {"transport": "tcp"}) == 1
    assert m["relay_subscriptions"] == 4 and m["relay_channels"] == 1
    assert d("relay_client_commands_total", {"method": "subscribe", "result": "ok"}) == 4
    assert d("relay_client_commands_total", {"method": "publish", "result": "ok"}) == 4
    assert d("relay_client_commands_total", {"method": "connect", "result": "ok"}) == 5
    assert d("relay_client_commands_total", {"method": "connect", "result": "disconnect"}) == 1
    assert d("relay_publications_total", {"source": "client"}) == 4
    assert d("relay_publications_total", {"source": "api"}) == 3
    assert d("relay_deliveries_total", {"transport": "websocket"}) == 7 * 3
    assert d("relay_deliveries_total", {"transport": "tcp"}) == 7
    assert d("relay_socket_writes_total") >= 7
    assert d("relay_fanout_latency_seconds_count") == 7
    assert 0 < d("relay_fanout_latency_seconds_sum") < 7
    assert m["relay_fanout_latency_seconds_bucket", {"le": "+Inf"}] == m["relay_fanout_latency_seconds_count"]
    assert d("relay_broker_publish_latency_seconds_count") == 7
    assert d("relay_api_requests_total", {"method": "publish", "result": "ok"}) == 3
    assert d("relay_handshake_failures_total", {"reason": "origin"}) == 1
    assert d("relay_auth_failures_total", {"reason": "invalid_token"}) == 1
    assert d("relay_disconnects_total", {"code": "3500"}) == 1
    assert d("relay_disconnects_total", {"code": "3501"}) == 1
    assert d("relay_slow_consumer_disconnects_total") == 0
    # never a channel or a user as a label
    assert ch not in m.text and "w0" not in m.text
    for c in ws + [tcp]:
        c.close()


async def test_slow_reader_shows_in_queue_bytes_then_disconnects(relay_factory):
    r = relay_factory({"client_queue_max_size": 400_000, "client_publish_rate": 1e6,
                       "client_publish_burst": 100_000, "max_ws_message_size": 1_000_000,
                       "api_max_body_size": 2_000_000})
    ch = f"news:{uuid.uuid4().hex[:8]}"
    slow = await RawTCP.open(r.tcp_port)
    assert "connect" in await slow.call("connect", {"token": r.token("slow")})
    assert "subscribe" in await slow.call("subscribe", {"channel": ch})
    # the slow client stops reading; 60 KB publications pile up in the kernel, the transport, then relay
    seen_backlog = 0.0
    for _ in range(200):
        await api(r, "publish", {"channel": ch, "data": "x" * 60_000})
        m = await scrape(r)
        seen_backlog = max(seen_backlog, m["relay_outbound_queue_bytes"])
        if m["relay_slow_consumer_disconnects_total"]:
            break
    assert seen_backlog > 0
    assert m["relay_slow_consumer_disconnects_total"] == 1
    assert m["relay_disconnects_total", {"code": "3008"}] == 1
    assert m["relay_outbound_queue_bytes"] == 0  # the slow client is gone, and its backlog with it
    slow.close()


@pytest.mark.timeout(90)
async def test_one_scrape_sums_every_worker(redis_server, relay_factory):
    from tests.e2e.test_workers import wait_for, worker_pids

    r = relay_factory({"workers": 2, "broker": "redis", "redis_urls": [redis_server.url],
                       "redis_prefix": f"m{uuid.uuid4().hex[:6]}", "metrics_interval": 0.2})
    await wait_for(lambda: len(worker_pids(r.pid)) == 2)
    ch = f"pub:{uuid.uuid4().hex[:8]}"
    clients = []
    # connect until both workers hold clients (the kernel spreads them; a worker still starting gets
    # none); each API call is answered by one worker, which reports its own clients
    held: dict[str, int] = {}
    while len(clients) < 96:
        for _ in range(8):
            c = await ws_connected(r.ws_port, r.token(f"u{len(clients)}"))
            assert "subscribe" in await c.call("subscribe", {"channel": ch})
            clients.append(c)
        held = {}
        for _ in range(30):
            node_info = (await api(r, "info", {}))["result"]["nodes"][0]
            held[node_info["name"]] = node_info["num_clients"]
        if len(held) == 2 and all(held.values()):
            break
    n = len(clients)
    assert len(held) == 2 and sum(held.values()) == n and all(held.values()), held
    assert "result" in await api(r, "publish", {"channel": ch, "data": 1})
    for c in clients:
        await c.pub()
    await asyncio.sleep(0.6)  # every worker has synced its figures
    for _ in range(4):
        m = await scrape(r)
        assert m["relay_connections", {"transport": "websocket"}] == n
        assert m["relay_subscriptions"] == n
        assert m["relay_deliveries_total", {"transport": "websocket"}] == n
        assert m["relay_client_commands_total", {"method": "subscribe", "result": "ok"}] == n
        assert m["relay_ready"] == 1
    # a worker dies: the supervisor restarts it, counts it, and its clients leave the gauges
    victim = worker_pids(r.pid)[0]
    os.kill(victim, 9)
    await wait_for(lambda: len(worker_pids(r.pid)) == 2 and victim not in worker_pids(r.pid))
    await asyncio.sleep(0.6)
    m = await scrape(r)
    assert m["relay_worker_restarts_total"] == 1
    assert m["relay_connections", {"transport": "websocket"}] in set(held.values())  # the survivor's
    assert m["relay_deliveries_total", {"transport": "websocket"}] == n  # counters outlive their worker
    for c in clients:
        c.close()
