"""The memory broker's history streams, idempotency and presence (no sockets needed)."""

import pytest

from relay.brokers.base import PublishOptions, StreamPosition, UnrecoverablePosition
from relay.brokers.memory import MemoryBroker, MemoryPresenceManager


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


class Handler:
    def __init__(self):
        self.pubs = []

    def handle_publication(self, channel, pub, epoch="", lane=None, pace_ms=None):
        self.pubs.append((channel, pub))

    def handle_join(self, channel, info):
        self.pubs.append((channel, "join"))

    def handle_leave(self, channel, info):
        self.pubs.append((channel, "leave"))


@pytest.fixture
async def broker():
    clock = Clock()
    b = MemoryBroker(clock)
    h = Handler()
    await b.start(h)
    b.clock, b.h = clock, h
    return b


def opts(**kw):
    base = dict(history_size=3, history_ttl=60.0, history_meta_ttl=600.0)
    base.update(kw)
    return PublishOptions(**base)


async def test_offsets_size_cap_and_since(broker):
    positions = [await broker.publish("c", i, opts()) for i in range(5)]
    assert [p.offset for p in positions] == [1, 2, 3, 4, 5]
    epoch = positions[0].epoch
    assert all(p.epoch == epoch for p in positions)
    h = await broker.history("c", since=None, limit=-1, reverse=False, meta_ttl=600)
    assert [p["data"] for p in h.publications] == [2, 3, 4] and h.position == StreamPosition(5, epoch)
    h = await broker.history("c", since=StreamPosition(3, epoch), limit=-1, reverse=False, meta_ttl=600)
    assert [p["offset"] for p in h.publications] == [4, 5]
    h = await broker.history("c", since=None, limit=2, reverse=True, meta_ttl=600)
    assert [p["data"] for p in h.publications] == [4, 3]
    with pytest.raises(UnrecoverablePosition):
        await broker.history("c", since=StreamPosition(3, "other"), limit=-1, reverse=False, meta_ttl=600)
    assert [ch for ch, _ in broker.h.pubs] == ["c"] * 5


async def test_ttl_expires_publications_and_epoch_changes_when_stream_is_lost(broker):
    p = await broker.publish("c", "old", opts(history_meta_ttl=100.0))
    broker.clock.t += 61
    h = await broker.history("c", since=None, limit=-1, reverse=False, meta_ttl=0)
    assert h.publications == [] and h.position == p  # position kept, publications expired
    broker.clock.t += 200  # the stream's metadata expired too: a new epoch
    p2 = await broker.publish("c", "new", opts())
    assert p2.offset == 1 and p2.epoch != p.epoch


async def test_no_history_means_no_offset(broker):
    pos = await broker.publish("c", 1, opts(history_size=0))
    assert pos == StreamPosition()
    assert "offset" not in broker.h.pubs[0][1]


async def test_idempotency_window(broker):
    a = await broker.publish("c", 1, opts(idempotency_key="k"))
    b = await broker.publish("c", 1, opts(idempotency_key="k"))
    assert a == b and len(broker.h.pubs) == 1
    broker.clock.t += 301
    c = await broker.publish("c", 1, opts(idempotency_key="k"))
    assert c.offset == 2 and len(broker.h.pubs) == 2


async def test_remove_history_keeps_position(broker):
    await broker.publish("c", 1, opts())
    await broker.remove_history("c")
    h = await broker.history("c", since=None, limit=-1, reverse=False, meta_ttl=600)
    assert h.publications == [] and h.position.offset == 1


async def test_presence():
    pm = MemoryPresenceManager()
    await pm.add_presence("c", "1", {"client": "1", "user": "a"})
    await pm.add_presence("c", "2", {"client": "2", "user": "a"})
    await pm.add_presence("c", "3", {"client": "3", "user": "b"})
    assert await pm.presence_stats("c") == (3, 2)
    await pm.remove_presence("c", "1")
    await pm.remove_presence("c", "2")
    await pm.remove_presence("c", "3")
    assert await pm.presence("c") == {} and await pm.presence_stats("c") == (0, 0)
