"""The fan-out core's contract, run against both implementations."""

import msgpack
import orjson
import pytest

from tests.core.conftest import RecordingTransport
from tests.pbframes import replies
from tests.wsframes import parse_server_frames


def make_hub(impl, loop, slow=None, shards=8):
    return impl.Hub(loop.call_soon, (slow.append if slow is not None else lambda c: None), shards)


def ws_lines(transport):
    """Every JSON line the transport received, across frames."""
    buf = bytearray(b"".join(transport.writes))
    out = []
    for op, payload in parse_server_frames(buf):
        assert op == 1
        out += [orjson.loads(line) for line in payload.split(b"\n")]
    assert not buf
    return out


def test_subscribe_unsubscribe_counts(impl, loop):
    hub = make_hub(impl, loop)
    a = hub.conn(RecordingTransport(), impl.WIRE_WS, 1 << 20)
    b = hub.conn(RecordingTransport(), impl.WIRE_WS, 1 << 20)
    assert hub.subscribe("x", a) is True
    assert hub.subscribe("x", b) is False
    assert hub.subscribe("x", b) is False  # idempotent
    assert (hub.num_channels, hub.num_subscriptions, hub.num_subscribers("x")) == (1, 2, 2)
    assert hub.unsubscribe("x", a) is False
    assert hub.unsubscribe("x", a) is False
    assert hub.unsubscribe("x", b) is True
    assert (hub.num_channels, hub.num_subscriptions) == (0, 0)
    assert hub.channels() == []


def test_broadcast_encodes_once_and_coalesces_per_iteration(impl, loop):
    hub = make_hub(impl, loop)
    ts = [RecordingTransport() for _ in range(3)]
    conns = [hub.conn(t, impl.WIRE_WS, 1 << 20) for t in ts]
    for c in conns:
        hub.subscribe("news", c)
    for i in range(5):
        assert hub.broadcast("news", {"channel": "news", "pub": {"data": {"i": i}}}) == 3
    assert all(t.writes == [] for t in ts)  # nothing written before the iteration ends
    loop.run()
    for t in ts:
        assert len(t.writes) == 1  # five pushes, one write
        assert [m["push"]["pub"]["data"]["i"] for m in ws_lines(t)] == [0, 1, 2, 3, 4]
    # identical batches share one frame object: encoded once for all subscribers
    assert ts[0].writes[0] == ts[1].writes[0] == ts[2].writes[0]
    assert hub.deliveries == 15 and hub.publications == 5 and hub.writes == 3


def test_tcp_and_ws_subscribers_get_their_own_wire_format(impl, loop):
    hub = make_hub(impl, loop)
    tw, tt = RecordingTransport(), RecordingTransport()
    hub.subscribe("c", hub.conn(tw, impl.WIRE_WS, 1 << 20))
    hub.subscribe("c", hub.conn(tt, impl.WIRE_TCP, 1 << 20))
    hub.broadcast("c", {"channel": "c", "pub": {"data": "a"}})
    hub.broadcast("c", {"channel": "c", "pub": {"data": "b"}})
    loop.run()
    assert [m["push"]["pub"]["data"] for m in ws_lines(tw)] == ["a", "b"]
    data = tt.writes[0]
    msgs = []
    while data:
        n = int.from_bytes(data[:4], "big")
        msgs.append(msgpack.unpackb(data[4:4 + n]))
        data = data[4 + n:]
    assert [m["push"]["pub"]["data"] for m in msgs] == ["a", "b"]


def pb_replies(transport):
    """Every protobuf Reply the transport received, across binary frames."""
    buf = bytearray(b"".join(transport.writes))
    out = []
    for op, payload in parse_server_frames(buf):
        assert op == 2
        out += replies(payload)
    return out


def test_protobuf_subscribers_get_binary_frames_encoded_once(impl, loop):
    hub = make_hub(impl, loop)
    tw, tt = RecordingTransport(), RecordingTransport()
    tps = [RecordingTransport() for _ in range(2)]
    hub.subscribe("c", hub.conn(tw, impl.WIRE_WS, 1 << 20))
    hub.subscribe("c", hub.conn(tt, impl.WIRE_TCP, 1 << 20))
    for t in tps:
        hub.subscribe("c", hub.conn(t, impl.WIRE_WS_PB, 1 << 20))
    for i in range(3):
        assert hub.broadcast("c", {"channel": "c", "pub": {"data": {"i": i}, "offset": i + 1}}) == 4
    loop.run()
    assert [m["push"]["pub"]["data"]["i"] for m in ws_lines(tw)] == [0, 1, 2]
    for t in tps:
        assert len(t.writes) == 1  # three pushes, one binary frame
        replies = pb_replies(t)
        assert [r.push.channel for r in replies] == ["c"] * 3
        assert [orjson.loads(r.push.pub.data)["i"] for r in replies] == [0, 1, 2]
        assert [r.push.pub.offset for r in replies] == [1, 2, 3] and all(r.id == 0 for r in replies)
    assert tps[0].writes[0] == tps[1].writes[0]  # the same bytes for every protobuf subscriber
    assert hub.deliveries == 12 and hub.deliveries_tcp == 3  # protobuf is WebSocket, not TCP
    # the protobuf subscribers leave: the channel stops encoding protobuf
    hub.unsubscribe("c", hub.subscribers("c")[-1])
    hub.unsubscribe("c", hub.subscribers("c")[-1])
    hub.broadcast("c", {"channel": "c", "pub": {"data": {"i": 9}}})
    loop.run()
    assert len(tps[0].writes) == 1 and [m["push"]["pub"]["data"]["i"] for m in ws_lines(tw)][-1] == 9


def test_channel_compaction_names_the_channel_by_its_id_for_those_that_asked(impl, loop):
    hub = make_hub(impl, loop)
    full, compact, compact2, pb = (RecordingTransport() for _ in range(4))
    hub.subscribe("chat:x", hub.conn(full, impl.WIRE_WS, 1 << 20))
    hub.subscribe("chat:x", hub.conn(compact, impl.WIRE_WS, 1 << 20), 1, 7)
    hub.subscribe("chat:x", hub.conn(compact2, impl.WIRE_WS, 1 << 20), 1, 7)
    hub.subscribe("chat:x", hub.conn(pb, impl.WIRE_WS_PB, 1 << 20), 1, 7)
    assert hub.broadcast("chat:x", {"channel": "chat:x", "pub": {"data": {"n": 1}, "offset": 1}}) == 4
    loop.run()
    assert ws_lines(full) == [{"push": {"channel": "chat:x", "pub": {"data": {"n": 1}, "offset": 1}}}]
    assert ws_lines(compact) == [{"push": {"id": 7, "pub": {"data": {"n": 1}, "offset": 1}}}]
    assert compact.writes[0] == compact2.writes[0]  # one encoding for every compacting subscriber
    (reply,) = pb_replies(pb)
    assert reply.push.id == 7 and reply.push.channel == "" and reply.push.pub.offset == 1
    # the compacting subscribers leave: the channel stops encoding the compacted form
    for conn in hub.subscribers("chat:x")[1:]:
        hub.unsubscribe("chat:x", conn)
    hub.broadcast("chat:x", {"channel": "chat:x", "pub": {"data": {"n": 2}}})
    loop.run()
    assert len(compact.writes) == 1 and ws_lines(full)[-1]["push"]["channel"] == "chat:x"


def test_a_preencoded_broadcast_skips_wires_it_has_no_item_for(impl, loop):
    hub = make_hub(impl, loop)
    tw, tp = RecordingTransport(), RecordingTransport()
    hub.subscribe("c", hub.conn(tw, impl.WIRE_WS, 1 << 20))
    hub.subscribe("c", hub.conn(tp, impl.WIRE_WS_PB, 1 << 20))
    assert hub.broadcast_encoded("c", b'{"push":{}}', None) == 1
    loop.run()
    assert tw.writes and not tp.writes


def test_replies_and_pushes_keep_their_order(impl, loop):
    hub = make_hub(impl, loop)
    t = RecordingTransport()
    c = hub.conn(t, impl.WIRE_WS, 1 << 20)
    c.send(b'{"id":1,"subscribe":{}}')
    hub.subscribe("c", c)
    hub.broadcast("c", {"channel": "c", "pub": {"data": 1}})
    c.send(b'{"id":2,"publish":{}}')
    loop.run()
    lines = ws_lines(t)
    assert [m.get("id") for m in lines] == [1, None, 2]


def test_queue_cap_reports_slow_and_spares_others(impl, loop):
    slow = []
    hub = make_hub(impl, loop, slow)
    fast_t, slow_t = RecordingTransport(), RecordingTransport()
    fast = hub.conn(fast_t, impl.WIRE_WS, 1 << 20)
    lagging = hub.conn(slow_t, impl.WIRE_WS, 300)
    hub.subscribe("c", fast)
    hub.subscribe("c", lagging)
    lagging.pause_writing()  # the kernel buffer is full: nothing leaves the queue
    for i in range(20):
        hub.broadcast("c", {"channel": "c", "pub": {"data": "x" * 20, "i": i}})
        loop.run()
    assert slow and all(s is lagging for s in slow)
    assert lagging.queued <= 300
    assert slow_t.writes == []
    assert len(ws_lines(fast_t)) == 20  # the fast subscriber got everything


def test_resume_writing_flushes_what_was_queued(impl, loop):
    hub = make_hub(impl, loop)
    t = RecordingTransport()
    c = hub.conn(t, impl.WIRE_WS, 1 << 20)
    hub.subscribe("c", c)
    c.pause_writing()
    hub.broadcast("c", {"channel": "c", "pub": {"data": 1}})
    loop.run()
    assert t.writes == [] and c.queued > 0
    c.resume_writing()
    loop.run()
    assert [m["push"]["pub"]["data"] for m in ws_lines(t)] == [1]
    assert c.queued == 0


def test_a_resumed_backlog_is_written_in_bounded_pieces_one_per_loop_turn(impl, loop):
    """A slow client's backlog holds items shared with every subscriber: joining it all into one write
    would copy the whole queue per connection. It leaves WRITE_MAX bytes at a time, in order, and a
    connection that pauses again keeps the rest queued."""
    hub = make_hub(impl, loop)
    t = RecordingTransport()
    c = hub.conn(t, impl.WIRE_WS, 64 << 20)
    hub.subscribe("c", c)
    c.pause_writing()
    n = 200
    for i in range(n):
        hub.broadcast("c", {"channel": "c", "pub": {"data": "x" * 8000, "i": i}})
    loop.run()
    backlog = c.queued
    assert t.writes == [] and backlog > 4 * impl.WRITE_MAX
    c.resume_writing()
    loop.run()
    assert len(t.writes) == 1 and len(t.writes[0]) <= impl.WRITE_MAX + 16  # one piece (and a frame header)
    assert 0 < c.queued < backlog
    c.pause_writing()  # the kernel buffer filled again: nothing more until it drains
    loop.run()
    assert len(t.writes) == 1
    c.resume_writing()
    for _ in range(50):
        loop.run()
    assert c.queued == 0 and len(t.writes) > 4
    assert [m["push"]["pub"]["i"] for m in ws_lines(t)] == list(range(n))  # everything, once, in order


def test_close_flushes_then_writes_tail_and_ignores_later_sends(impl, loop):
    hub = make_hub(impl, loop)
    t = RecordingTransport()
    c = hub.conn(t, impl.WIRE_WS, 1 << 20)
    c.send(b'{"id":1}')
    c.close(b"TAIL")
    assert c.closed
    assert c.send(b'{"id":2}') is True  # accepted and dropped: the connection is going away
    loop.run()
    assert len(t.writes) == 1 and t.writes[0].endswith(b"TAIL")
    assert impl.ws_frame(b'{"id":1}') + b"TAIL" == t.writes[0]


def test_close_without_flush_drops_queue(impl, loop):
    hub = make_hub(impl, loop)
    t = RecordingTransport()
    c = hub.conn(t, impl.WIRE_WS, 1 << 20)
    c.send(b'{"id":1}')
    c.close(b"TAIL", False)
    loop.run()
    assert t.writes == [b"TAIL"]


def test_broadcast_to_unknown_channel_is_noop(impl, loop):
    hub = make_hub(impl, loop)
    assert hub.broadcast("nobody", {"channel": "nobody", "pub": {"data": 1}}) == 0
    assert hub.broadcast_encoded("nobody", b"x", None) == 0


def test_shards_spread_channels(impl, loop):
    hub = make_hub(impl, loop, shards=16)
    assert {hub.shard_of(f"chat:{i}") for i in range(500)} == set(range(16))
    assert impl.fnv1a32("") == 0x811C9DC5
    assert impl.fnv1a32("a") == 0xE40C292C  # FNV-1a test vector
    with pytest.raises(ValueError):
        impl.Hub(loop.call_soon, lambda c: None, 0)


def test_ws_frame_lengths(impl):
    for n in (0, 125, 126, 65535, 65536, 70000):
        f = impl.ws_frame(b"a" * n)
        buf = bytearray(f)
        [(op, payload)] = parse_server_frames(buf)
        assert op == 1 and len(payload) == n and not buf
    assert impl.tcp_frame(b"abc") == b"\x00\x00\x00\x03abc"


def test_large_coalesced_frame(impl, loop):
    hub = make_hub(impl, loop)
    t = RecordingTransport()
    c = hub.conn(t, impl.WIRE_WS, 1 << 24)
    hub.subscribe("c", c)
    for i in range(2000):
        hub.broadcast("c", {"channel": "c", "pub": {"data": "y" * 50, "i": i}})
    loop.run()
    assert len(t.writes) == 1
    assert [m["push"]["pub"]["i"] for m in ws_lines(t)] == list(range(2000))
