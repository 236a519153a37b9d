"""Server pings are spread over ping_interval: clients that connected together (a reconnect storm) are
not pinged, and do not all answer, in the same moment."""

import asyncio
import time

from tests.rawclients import ws_connected


async def test_clients_connected_together_are_pinged_spread_over_the_interval(relay_factory):
    r = relay_factory({"ping_interval": 2.0, "pong_timeout": 2.0})
    clients = await asyncio.gather(*(ws_connected(r.ws_port, r.token(f"u{i}")) for i in range(60)))
    t0 = time.monotonic()

    async def first_ping(ws):
        while True:
            msg = await ws.message(timeout=5)
            if msg == {}:
                await ws.send_cmds({})  # pong
                return time.monotonic() - t0

    at = sorted(await asyncio.gather(*(first_ping(ws) for ws in clients)))
    assert at[-1] < 2.5  # everyone within one interval
    assert at[-1] - at[0] > 1.0, at  # spread over it, not one burst
    busiest = max(sum(1 for a in at if b <= a < b + 0.2) for b in at)
    assert busiest < 30, at  # no 0.2 s holds half of them
    for ws in clients:
        ws.close()


async def test_a_missing_pong_closes_once_pong_timeout_passes_not_at_the_next_ping(relay_factory):
    r = relay_factory({"ping_interval": 4.0, "pong_timeout": 0.5})
    rude = await ws_connected(r.ws_port, r.token("bob"))
    assert await rude.message(timeout=6) == {}  # the ping, left unanswered
    t0 = time.monotonic()
    assert await rude.expect_close(timeout=6) == (3012, "no pong")
    assert time.monotonic() - t0 < 2.0  # checked at pong_timeout (0.5 s), not when the wheel is back (4 s)
