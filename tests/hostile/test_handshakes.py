"""Half-open handshakes from one address (issue 18, item 7): they have their own cap per IP, apart from
established connections, so a slowloris behind a shared address cannot lock out the shoppers behind it."""

from __future__ import annotations

import asyncio

from tests.rawclients import ws_connected


async def test_half_open_handshakes_do_not_lock_out_their_address(relay_factory, no_tracebacks):
    """Shoppers behind one NAT share an IP with whoever runs a slowloris from it. Half-open handshakes have
    their own small cap per IP (max_handshakes_per_ip; past it the oldest is closed), apart from the cap of
    established connections: 1,000 of them from 127.0.0.1 leave that address's real clients able to
    connect, under the default per-IP cap of 1,000 connections."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    r = relay_factory({"max_handshakes_per_ip": 32})
    no_tracebacks(r)
    lingering = []
    for _ in range(1000):
        reader, writer = await asyncio.open_connection("127.0.0.1", r.ws_port)
        writer.write(b"GET /connection/websocket HTTP/1.1\r\nHost: x\r\n")
        lingering.append((reader, writer))
    await asyncio.sleep(0.2)
    real = [await ws_connected(r.ws_port, r.token(f"shopper{i}")) for i in range(5)]
    for ws in real:
        await ws.call("subscribe", {"channel": "pub:lobby"})
    still_open = 0
    for rd, _ in lingering[-32:]:  # the newest are the ones still pending
        try:
            await asyncio.wait_for(rd.read(1), 0.01)
        except TimeoutError:
            still_open += 1
    assert still_open >= 20
    assert r.metrics()["relay_handshake_failures_total", {"reason": "evicted"}] >= 900
    for ws in real:
        ws.close()
    for _, w in lingering:
        w.close()


async def test_half_open_handshakes_under_the_default_caps(relay_factory, no_tracebacks):
    """With the defaults (2,048 handshakes, 1,000 connections per IP): 1,000 half-open sockets do not
    count as connections of their address, so its real clients still connect at once."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    r = relay_factory()
    no_tracebacks(r)
    lingering = []
    for _ in range(1000):
        reader, writer = await asyncio.open_connection("127.0.0.1", r.ws_port)
        writer.write(b"GET /connection/websocket HTTP/1.1\r\nHost: x\r\n")
        lingering.append((reader, writer))
    await asyncio.sleep(0.2)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    real = [await ws_connected(r.ws_port, r.token(f"shopper{i}")) for i in range(20)]
    assert loop.time() - t0 < 2.0
    for ws in real:
        ws.close()
    for _, w in lingering:
        w.close()
