"""Priority lanes in the core: bulk is refused first, then update; chat and replies only at the cap."""

from tests.core.conftest import RecordingTransport
from tests.core.test_hub import ws_lines


def lanes_hub(impl, loop, slow, dropped):
    return impl.Hub(loop.call_soon, slow.append, 8, lambda conn, ch: dropped.append((conn, ch)))


def push(ch, i, size=40):
    return {"channel": ch, "pub": {"data": "x" * size, "i": i}}


def test_offer_refuses_by_lane_then_cap(impl, loop):
    hub = impl.Hub(loop.call_soon, lambda c: None, 8)
    c = hub.conn(RecordingTransport(), impl.WIRE_WS, 100)
    c.bulk_limit, c.update_limit = 30, 60
    c.pause_writing()
    item = b"x" * 20
    assert c.offer(item, impl.LANE_BULK) == impl.QUEUED  # 20
    assert c.offer(item, impl.LANE_BULK) == impl.DROPPED  # 40 > 30
    assert c.offer(item, impl.LANE_UPDATE) == impl.QUEUED  # 40
    assert c.offer(item, impl.LANE_UPDATE) == impl.QUEUED  # 60
    assert c.offer(item, impl.LANE_UPDATE) == impl.DROPPED  # 80 > 60
    assert c.offer(item, impl.LANE_CHAT) == impl.QUEUED  # 80
    assert c.offer(item, impl.LANE_CHAT) == impl.QUEUED  # 100
    assert c.offer(b"x", impl.LANE_CHAT) == impl.OVER_CAP
    assert c.send(b"x") is False  # replies: the cap, like chat
    assert c.offer(b"x", impl.LANE_BULK) == impl.DROPPED  # past every lane limit, a bulk item is dropped
    assert c.queued == 100
    c.close(flush=False)
    assert c.offer(item, impl.LANE_BULK) == impl.QUEUED  # closed: accepted and ignored, like send


def test_a_slow_subscriber_loses_bulk_first_then_update_never_chat(impl, loop):
    slow, dropped = [], []
    hub = lanes_hub(impl, loop, slow, dropped)
    fast_t, lag_t = RecordingTransport(), RecordingTransport()
    fast = hub.conn(fast_t, impl.WIRE_WS, 1 << 20)
    lagging = hub.conn(lag_t, impl.WIRE_WS, 2000)
    lagging.bulk_limit, lagging.update_limit = 500, 1000
    for ch in ("prices", "orders", "chat"):
        hub.subscribe(ch, fast)
        hub.subscribe(ch, lagging)
    lagging.pause_writing()
    sent = {"prices": 0, "orders": 0, "chat": 0}
    for i in range(15):  # ~100 bytes per item
        for ch, lane in (("prices", impl.LANE_BULK), ("orders", impl.LANE_UPDATE), ("chat", impl.LANE_CHAT)):
            hub.broadcast(ch, push(ch, i), lane)
            sent[ch] += 1
        loop.run()
    assert not slow  # 15 chats of ~100 bytes fit the 2000-byte cap next to what the lanes kept
    by_channel: dict[str, int] = {}
    for conn, ch in dropped:
        assert conn is lagging
        by_channel[ch] = by_channel.get(ch, 0) + 1
    assert by_channel["prices"] > by_channel["orders"] > 0
    assert hub.drops_bulk == by_channel["prices"] and hub.drops_update == by_channel["orders"]
    assert "chat" not in by_channel
    assert len(ws_lines(fast_t)) == 45  # the fast subscriber got everything
    lagging.resume_writing()
    loop.run()
    got = [m["push"]["channel"] for m in ws_lines(lag_t)]
    assert got.count("chat") == 15
    assert got.count("prices") < got.count("orders") < 15


def test_the_drop_callback_may_unsubscribe_during_a_fanout(impl, loop):
    """The node's on_drop unsubscribes the channel (2500): the hub calls it after its loop."""
    slow, dropped = [], []
    hub = impl.Hub(loop.call_soon, slow.append, 8,
                   lambda conn, ch: (dropped.append(ch), hub.unsubscribe(ch, conn)))
    conns = [hub.conn(RecordingTransport(), impl.WIRE_TCP if i % 2 else impl.WIRE_WS, 1000) for i in range(6)]
    for c in conns:
        c.bulk_limit = 1
        c.pause_writing()
        hub.subscribe("ticks", c)
    assert hub.broadcast("ticks", push("ticks", 0), impl.LANE_BULK) == 0
    assert dropped == ["ticks"] * 6
    assert hub.num_subscribers("ticks") == 0 and hub.num_channels == 0
    assert (hub.deliveries, hub.drops_bulk, hub.drops_update) == (0, 6, 0)


def test_lane_limits_default_to_the_cap(impl, loop):
    hub = impl.Hub(loop.call_soon, lambda c: None, 8)
    c = hub.conn(RecordingTransport(), impl.WIRE_WS, 64)
    assert (c.bulk_limit, c.update_limit) == (64, 64)
    c.pause_writing()
    assert c.offer(b"y" * 64, impl.LANE_BULK) == impl.QUEUED
    assert c.offer(b"y", impl.LANE_BULK) == impl.DROPPED
    assert c.offer(b"y", impl.LANE_CHAT) == impl.OVER_CAP
