"""The node's parts on their own, without a node, sockets or a loop where they need none: admission
(relay/node/admission.py), the ping wheel (relay/node/pings.py) and stream positions (relay/node/streams.py).
The node's behaviour through real clients is in tests/e2e (test_bad_input, test_pings, test_redis_faults)."""

from __future__ import annotations

import asyncio

import pytest

from relay.brokers.base import PublishOptions, StreamPosition
from relay.brokers.memory import MemoryBroker
from relay.config import Config, from_mapping
from relay.core import Hub
from relay.node.admission import Admission
from relay.node.pings import PingWheel
from relay.node.streams import Streams
from relay.ops.stats import Stats


def config(**kw) -> Config:
    return from_mapping({"allow_anonymous_connect": True, **kw})


class Handshake:
    """A pending WebSocket handshake as admission sees it: something it can evict."""

    def __init__(self) -> None:
        self.evicted = False

    def evict(self) -> None:
        self.evicted = True


def test_admission_caps_per_process_and_per_ip():
    stats = Stats()
    a = Admission(config(max_connections=3, max_connections_per_ip=2), stats)
    assert a.admit("1.1.1.1") is None and a.admit("1.1.1.1") is None
    assert a.admit("1.1.1.1") == "ip"
    assert a.admit("2.2.2.2") is None
    assert a.admit("3.3.3.3") == "full"
    assert stats.handshake_failures == {"ip_limit": 1, "server_full": 1}
    a.release("1.1.1.1")
    assert a.per_ip["1.1.1.1"] == 1 and a.num_connections == 2
    a.release("2.2.2.2")
    assert "2.2.2.2" not in a.per_ip
    assert a.admit("3.3.3.3") is None


def test_handshakes_have_their_own_pool_and_the_oldest_makes_room():
    stats = Stats()
    a = Admission(config(max_handshakes_per_ip=2, max_connections_per_ip=1), stats)
    first, second, third = Handshake(), Handshake(), Handshake()
    for h in (first, second, third):
        assert a.admit_handshake("1.1.1.1", h) is None
    assert first.evicted and not second.evicted and not third.evicted
    assert a.num_connections == 2 and stats.handshake_failures["evicted"] == 1
    assert a.handshake_done("1.1.1.1", first, True) == "gone"  # released when it was evicted
    assert a.handshake_done("1.1.1.1", second, True) is None  # now an established connection of its IP
    assert a.handshake_done("1.1.1.1", third, True) == "ip"  # the per-IP cap applies once established
    assert a.num_connections == 1 and a.per_ip["1.1.1.1"] == 1 and not a.handshaking


def test_abandoned_handshake_releases_its_socket():
    a = Admission(config(), Stats())
    h = Handshake()
    a.admit_handshake("1.1.1.1", h)
    assert a.handshake_done("1.1.1.1", h, False) is None
    assert a.num_connections == 0 and not a.per_ip and not a.handshaking


class Pinged:
    """A session as the ping wheel sees it: it records its pings and pong checks."""

    def __init__(self, wheel: PingWheel) -> None:
        self.wheel = wheel
        self.pings: list[float] = []
        self.checks: list[float] = []

    def ping(self, now: float) -> None:
        self.pings.append(now)
        self.wheel.await_pong(self)

    def pong_due(self, now: float) -> None:
        self.checks.append(now)


async def test_ping_wheel_pings_each_session_once_per_interval_and_checks_after_pong_timeout():
    wheel = PingWheel(ping_interval=0.4, pong_timeout=0.15)
    sessions = [Pinged(wheel) for _ in range(50)]
    for s in sessions:
        wheel.add(s)
    gone = sessions.pop()
    wheel.discard(gone)
    task = asyncio.get_running_loop().create_task(wheel.run())
    await asyncio.sleep(1.0)
    task.cancel()
    assert not gone.pings
    for s in sessions:
        assert len(s.pings) in (2, 3)  # once per 0.4 s in 1 s, whatever its slot
        gaps = [b - a for a, b in zip(s.pings, s.pings[1:], strict=False)]
        assert all(gap == pytest.approx(0.4, abs=0.15) for gap in gaps)
        assert len(s.checks) >= len(s.pings) - 1  # the last ping's check may not be due yet
        for ping, check in zip(s.pings, s.checks, strict=False):
            assert 0.15 <= check - ping + 1e-3 < 0.4  # after pong_timeout, before the next ping
    assert len({s.pings[0] for s in sessions}) > 1  # spread over the interval, not all at once


class Waiting:
    """A subscriber waiting outside the hub (Streams.pending) as the streams see it."""

    def __init__(self, channel: str) -> None:
        self.subs = {channel: False}
        self.closed = False
        self.resynced: list[str] = []
        self.sent: list[dict] = []

    def resync(self, channel: str) -> None:
        self.resynced.append(channel)

    def send(self, msg: dict) -> None:
        self.sent.append(msg)


def make_streams() -> Streams:
    stats = Stats()
    streams = Streams(config(), MemoryBroker(), stats)
    streams.bind(Hub(lambda cb: None, lambda conn: None))
    return streams


def test_stream_drops_what_it_delivered_and_resyncs_after_a_gap():
    streams = make_streams()
    assert streams.arrived("ch", 5, "e1")  # not tracked: delivered as it comes
    assert streams.track("ch", StreamPosition(5, "e1")) == "join"
    assert not streams.arrived("ch", 5, "e1")  # delivered already
    assert streams.arrived("ch", 6, "e1")
    assert streams.delivered_offset("ch", "e1") == 6 and streams.delivered_offset("ch", "e2") == 0
    waiting = Waiting("ch")
    streams.wait_to_join("ch", waiting, 9)
    assert not streams.arrived("ch", 8, "e1")  # 7 never came: the gap resyncs the channel
    assert streams.stats.resyncs == 1 and waiting.resynced == ["ch"] and "ch" not in streams.pending
    assert streams.delivered_offset("ch", "e1") == 8
    assert not streams.arrived("ch", 9, "e2")  # another epoch: the stream this node delivered is gone
    assert streams.stats.resyncs == 2
    streams.forget("ch")
    assert streams.delivered_offset("ch", "e2") == 0


def test_track_tells_a_subscriber_to_join_wait_or_resync():
    streams = make_streams()
    streams.track("ch", StreamPosition(10, "e1"))
    assert streams.track("ch", StreamPosition(12, "e1")) == "wait"  # the node's delivery is behind its reply
    assert streams.track("ch", StreamPosition(9, "e1")) == "behind"  # it would miss 10
    assert streams.track("ch", StreamPosition(10, "e1")) == "join"
    assert streams.track("ch", StreamPosition(3, "")) == "join"  # no stream: nothing to compare
    waiting = Waiting("ch")
    streams.wait_to_join("ch", waiting, 12)
    streams.drop_pending("ch", waiting)
    assert "ch" not in streams.pending
    streams.wait_to_join("ch", waiting, 12)
    assert streams.track("ch", StreamPosition(1, "e2")) == "join"  # a new epoch: earlier subscribers resync
    assert waiting.resynced == ["ch"] and streams.delivered_offset("ch", "e2") == 1


async def test_offset_reached_wakes_at_the_offset_or_after_the_timeout():
    streams = make_streams()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await streams.offset_reached("ch", 5, 0.05)
    assert loop.time() - t0 >= 0.04 and not streams.waiters
    waiter = loop.create_task(streams.offset_reached("ch", 5, 10))
    await asyncio.sleep(0)
    streams.offset_arrived("ch", 4)
    await asyncio.sleep(0)
    assert not waiter.done()
    streams.offset_arrived("ch", 5)
    await asyncio.wait_for(waiter, 1)
    assert not streams.waiters


async def test_check_loop_resyncs_a_channel_whose_publications_never_came():
    streams = make_streams()
    broker = streams.broker
    await broker.start(type("H", (), {"handle_publication": lambda *a, **k: None})())
    opts = PublishOptions(history_size=10, history_ttl=60.0, history_meta_ttl=60.0)
    pos = await broker.publish("ch", {"n": 1}, opts)
    streams.track("ch", pos)
    for n in (2, 3):  # published, never handed to the streams: this node missed them
        await broker.publish("ch", {"n": n}, opts)
    task = asyncio.get_running_loop().create_task(streams.check_loop(0.05))
    try:
        for _ in range(100):
            if streams.stats.resyncs:
                break
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
    assert streams.stats.resyncs == 1  # on the second look, not the first
    assert streams.delivered_offset("ch", pos.epoch) == 3
    await broker.close()
