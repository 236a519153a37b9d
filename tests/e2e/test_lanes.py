"""Priority lanes end to end: a client that stops reading loses its bulk (then update) publications, each
with a 2500 unsubscribe for the channel, never its chats; it resubscribes and recovers once caught up."""

import asyncio

from tests.rawclients import RawWS, ws_connected

LIMITS = {"client_queue_max_size": 262144, "client_queue_update_limit": 65536, "client_queue_bulk_limit": 32768,
          "client_write_high_water": 16384, "shutdown_timeout": 60.0,
          "client_publish_rate": 1e6, "client_publish_burst": 100000,
          "client_command_rate": 1e6, "client_command_burst": 100000}
NAMESPACES = {
    "prices": {"lane": "bulk", "publish_access": "authenticated"},
    "orders": {"lane": "update", "publish_access": "authenticated", "history_size": 5000, "history_ttl": 300,
               "force_recovery": True},
    "chat": {"publish_access": "authenticated", "history_size": 1000, "history_ttl": 300, "force_recovery": True},
}


async def flood(r, plan, subscribers):
    """Publish ``plan`` (a list of (channel, data)) from a client, pacing it by a fast subscriber that
    reads everything (so the slow client's queue, not the publisher, is what fills)."""
    fast = await ws_connected(r.ws_port, r.token("fast"))
    for ch in subscribers:
        assert "subscribe" in await fast.call("subscribe", {"channel": ch})
    publisher = await ws_connected(r.ws_port, r.token("publisher"))
    received = 0

    async def reader():
        nonlocal received
        while received < len(plan):
            await fast.pub(timeout=20)
            received += 1

    async def drain():
        while True:
            await publisher.message(timeout=60)

    task = asyncio.create_task(reader())
    drainer = asyncio.create_task(drain())
    for start in range(0, len(plan), 20):
        while received < start - 100:
            await asyncio.sleep(0.001)
        await publisher.send_cmds(*[{"id": 1000 + i, "publish": {"channel": ch, "data": data}}
                                    for i, (ch, data) in enumerate(plan[start:start + 20], start)])
    await asyncio.wait_for(task, 60)
    drainer.cancel()
    fast.close()
    publisher.close()


async def read_all(ws: RawWS, quiet: float = 2.0) -> list[dict]:
    out = []
    try:
        while True:
            out.append(await ws.message(timeout=quiet))
    except TimeoutError:
        return out


async def test_bulk_is_dropped_with_2500_chat_never(relay_factory):
    r = relay_factory({**LIMITS, "namespaces": NAMESPACES})
    slow = await ws_connected(r.ws_port, r.token("slow"))
    for ch in ("prices:all", "chat:42"):
        assert "subscribe" in await slow.call("subscribe", {"channel": ch})
    slow.writer.transport.pause_reading()
    plan = []
    for i in range(3000):  # 6 MB of price ticks and a chat message every 50 of them
        plan.append(("prices:all", {"i": i, "p": "x" * 2000}))
        if i % 50 == 0:
            plan.append(("chat:42", {"chat": i // 50}))
    await flood(r, plan, ["prices:all", "chat:42"])
    slow.writer.transport.resume_reading()
    msgs = await read_all(slow)
    pushes = [m["push"] for m in msgs if "push" in m]
    chats = [p["pub"]["data"]["chat"] for p in pushes if p.get("channel") == "chat:42" and "pub" in p]
    assert chats == list(range(60))  # every chat, in order, while the ticks overflowed
    unsubs = [p for p in pushes if "unsubscribe" in p]
    assert [(p["channel"], p["unsubscribe"]["code"]) for p in unsubs] == [("prices:all", 2500)]
    ticks = [p["pub"]["data"]["i"] for p in pushes if p.get("channel") == "prices:all" and "pub" in p]
    assert ticks == list(range(len(ticks))) and len(ticks) < 3000  # a prefix, then the 2500: no silent gap
    assert r.metrics()["relay_lane_drops_total", {"lane": "bulk"}] >= 1
    assert r.metrics().total("relay_lane_resyncs_total") == 1
    assert r.metrics().total("relay_slow_consumer_disconnects_total") == 0
    # caught up: the SDK's resubscribe is accepted, and ticks flow again
    assert "subscribe" in await slow.call("subscribe", {"channel": "prices:all"})
    r.api("publish", {"channel": "prices:all", "data": {"i": "after"}})
    assert (await slow.pub(timeout=5))["pub"]["data"] == {"i": "after"}
    slow.close()


async def test_update_recovers_what_was_dropped_once_caught_up(relay_factory):
    r = relay_factory({**LIMITS, "namespaces": NAMESPACES})
    slow = await ws_connected(r.ws_port, r.token("slow"))
    sub = (await slow.call("subscribe", {"channel": "orders:7"}))["subscribe"]
    assert sub["recoverable"] is True
    epoch = sub["epoch"]
    slow.writer.transport.pause_reading()
    await flood(r, [("orders:7", {"i": i, "p": "y" * 1500}) for i in range(3000)], ["orders:7"])
    slow.writer.transport.resume_reading()
    pushes = [m["push"] for m in await read_all(slow) if "push" in m]
    got = [p["pub"] for p in pushes if "pub" in p]
    assert [p["data"]["i"] for p in got] == list(range(len(got))) and len(got) < 3000
    assert [p["unsubscribe"]["code"] for p in pushes if "unsubscribe" in p] == [2500]
    # what the SDK does on 2500: resubscribe, recovering from the last offset it saw
    reply = await slow.call("subscribe", {"channel": "orders:7", "recover": True,
                                          "offset": got[-1]["offset"], "epoch": epoch})
    res = reply["subscribe"]
    assert res["recovered"] is True
    recovered = [p["data"]["i"] for p in res.get("publications", [])]
    assert [p["data"]["i"] for p in got] + recovered == list(range(3000))
    assert r.metrics()["relay_lane_drops_total", {"lane": "update"}] >= 1
    slow.close()


async def test_resubscribe_while_still_behind_is_a_temporary_error(relay_factory):
    # small kernel buffers on both sides, so relay's queue is most of what relay_outbound_queue_bytes counts
    r = relay_factory({**LIMITS, "client_send_buffer": 16384, "namespaces": NAMESPACES})
    slow = await ws_connected(r.ws_port, r.token("slow"), rcvbuf=4096)
    assert "subscribe" in await slow.call("subscribe", {"channel": "chat:1"})
    slow.writer.transport.pause_reading()
    publisher = await ws_connected(r.ws_port, r.token("publisher"))
    # chats (never dropped below the cap) fill relay's queue for it past half the bulk limit: the
    # socket buffers first (the kernel's send queue, at most 32 KiB here, counts in the metric), then
    # the transport's (high water 16 KiB), then relay's own queue
    sent = 0
    while r.metrics().total("relay_outbound_queue_bytes") < 32768 + 16384 + 30000 + 40000:  # kernel, transport, a frame
        await publisher.send_cmds(*[{"id": 1000 + i, "publish": {"channel": "chat:1",
                                                                 "data": {"i": i, "p": "z" * 1000}}}
                                    for i in range(sent, sent + 20)])
        sent += 20
        await asyncio.sleep(0.05)
        assert sent < 20000, "the slow client's queue never grew"
    await slow.send_cmds({"id": 99, "subscribe": {"channel": "prices:all"}})
    slow.writer.transport.resume_reading()
    msgs = await read_all(slow)
    reply = next(m for m in msgs if m.get("id") == 99)
    assert reply["error"] == {"code": 111, "message": "too many requests: catching up", "temporary": True}
    chats = [m["push"]["pub"]["data"]["i"] for m in msgs if "push" in m and "pub" in m["push"]]
    assert chats == list(range(sent))
    assert "subscribe" in await slow.call("subscribe", {"channel": "prices:all"})  # drained: accepted
    slow.close()
    publisher.close()


async def test_lanes_off_a_bulk_flood_disconnects_with_3008(relay_factory):
    r = relay_factory({**LIMITS, "lanes": False, "namespaces": NAMESPACES})
    slow = await ws_connected(r.ws_port, r.token("slow"))
    for ch in ("prices:all", "chat:42"):
        assert "subscribe" in await slow.call("subscribe", {"channel": ch})
    slow.writer.transport.pause_reading()
    await flood(r, [("prices:all", {"i": i, "p": "x" * 2000}) for i in range(3000)], ["prices:all"])
    slow.writer.transport.resume_reading()
    assert await slow.expect_close(timeout=10) == (3008, "slow")
    assert r.metrics().total("relay_lane_drops_total") == 0


async def test_server_api_publish_names_its_lane(relay_factory):
    r = relay_factory({**LIMITS, "namespaces": NAMESPACES})
    ok = r.api("publish", {"channel": "chat:5", "data": {"x": 1}, "lane": "bulk"})
    assert "error" not in ok
    bad = r.api("publish", {"channel": "chat:5", "data": {"x": 1}, "lane": "urgent"})
    assert bad["error"] == {"code": 107, "message": "bad request: lane must be one of chat, update, bulk"}
    # a chat-namespace channel published as bulk by the server is dropped for a slow client, not fatal
    slow = await ws_connected(r.ws_port, r.token("slow"))
    assert "subscribe" in await slow.call("subscribe", {"channel": "chat:5"})
    slow.writer.transport.pause_reading()
    for i in range(150):  # 9 MB, more than the socket buffers hold
        r.api("publish", {"channel": "chat:5", "data": {"i": i, "p": "q" * 60000}, "lane": "bulk"})
    slow.writer.transport.resume_reading()
    pushes = [m["push"] for m in await read_all(slow) if "push" in m]
    assert [p["unsubscribe"]["code"] for p in pushes if "unsubscribe" in p] == [2500]
    assert r.metrics().total("relay_slow_consumer_disconnects_total") == 0
    slow.close()
