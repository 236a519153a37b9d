"""One suite, every broker: the memory broker and the Redis broker (against a real redis-server)
must give the same answers. Run per broker via the ``broker`` fixture."""

import asyncio
import uuid

import pytest

from relay.brokers.base import BrokerUnavailable, PublishOptions, StreamPosition, UnrecoverablePosition
from relay.brokers.memory import MemoryBroker, MemoryPresenceManager
from relay.brokers.redis import RedisBroker
from relay.brokers.redis_presence import RedisPresenceManager


class Handler:
    def __init__(self):
        self.events = []
        self.lanes = []  # the lane each publication arrived with (None: the namespace's)
        self.paces = []  # the pacing window each arrived with (None: the namespace's)
        self.changed = asyncio.Event()

    def handle_publication(self, channel, pub, epoch="", lane=None, pace_ms=None):
        self.events.append(("pub", channel, pub))
        self.lanes.append(lane)
        self.paces.append(pace_ms)
        self.changed.set()

    def handle_join(self, channel, info):
        self.events.append(("join", channel, info))
        self.changed.set()

    def handle_leave(self, channel, info):
        self.events.append(("leave", channel, info))
        self.changed.set()

    def pubs(self, channel):
        return [e[2] for e in self.events if e[0] == "pub" and e[1] == channel]

    async def until(self, cond, timeout=5.0):
        async def wait():
            while not cond():
                self.changed.clear()
                await self.changed.wait()
        await asyncio.wait_for(wait(), timeout)


@pytest.fixture(params=["memory", "redis", "redis-cluster"])
async def broker(request):
    h = Handler()
    if request.param == "memory":
        b, pm = MemoryBroker(), MemoryPresenceManager()
    else:
        cluster = request.param == "redis-cluster"
        urls = (request.getfixturevalue("redis_cluster").urls if cluster
                else [request.getfixturevalue("redis_server").url])
        b = RedisBroker(urls, prefix=f"t{uuid.uuid4().hex[:8]}", unsubscribe_delay=0.2, cluster=cluster)
        pm = RedisPresenceManager(b, ttl=60)
    await b.start(h)
    b.h, b.pm, b.kind = h, pm, request.param.split("-")[0]
    yield b
    await b.close()


def opts(**kw):
    base = dict(history_size=3, history_ttl=60.0, history_meta_ttl=600.0)
    base.update(kw)
    return PublishOptions(**base)


def ch():
    return f"chat:{uuid.uuid4().hex[:8]}"


async def test_publish_delivers_with_offsets_to_subscribed_node(broker):
    c = ch()
    await broker.subscribe(c)
    positions = [await broker.publish(c, {"i": i}, opts(info={"user": "u"}, tags={"k": "v"})) for i in range(3)]
    assert [p.offset for p in positions] == [1, 2, 3] and len({p.epoch for p in positions}) == 1
    await broker.h.until(lambda: len(broker.h.pubs(c)) == 3)
    pubs = broker.h.pubs(c)
    assert [p["data"]["i"] for p in pubs] == [0, 1, 2]
    assert [p["offset"] for p in pubs] == [1, 2, 3]
    assert pubs[0]["info"] == {"user": "u"} and pubs[0]["tags"] == {"k": "v"}


async def test_a_publishers_lane_and_pace_travel_with_the_publication(broker):
    c = ch()
    await broker.subscribe(c)
    for lane in (None, 2, 1, 0, None):
        await broker.publish(c, {"lane": lane}, opts(lane=lane))
    await broker.publish_many([(c, "many", opts(lane=2, pace_ms=1500)), (c, "many", opts(pace_ms=0))])
    await broker.h.until(lambda: len(broker.h.pubs(c)) == 7)
    assert broker.h.lanes == [None, 2, 1, 0, None, 2, None]
    assert broker.h.paces == [None] * 5 + [1500, 0]
    assert [p["data"] for p in broker.h.pubs(c)][:5] == [{"lane": x} for x in (None, 2, 1, 0, None)]
    h = await broker.history(c, since=None, limit=-1, reverse=False, meta_ttl=600)
    assert "lane" not in str(h.publications[-1])  # the lane is delivery, not data: history has none


async def test_history_semantics(broker):
    c = ch()
    positions = [await broker.publish(c, i, opts()) for i in range(5)]
    epoch = positions[0].epoch
    h = await broker.history(c, since=None, limit=-1, reverse=False, meta_ttl=600)
    assert [p["data"] for p in h.publications] == [2, 3, 4] and h.position == StreamPosition(5, epoch)
    h = await broker.history(c, since=StreamPosition(3, epoch), limit=-1, reverse=False, meta_ttl=600)
    assert [p["offset"] for p in h.publications] == [4, 5]
    h = await broker.history(c, since=None, limit=2, reverse=True, meta_ttl=600)
    assert [p["data"] for p in h.publications] == [4, 3]
    h = await broker.history(c, since=None, limit=0, reverse=False, meta_ttl=600)
    assert h.publications == [] and h.position.offset == 5
    with pytest.raises(UnrecoverablePosition):
        await broker.history(c, since=StreamPosition(3, "other"), limit=-1, reverse=False, meta_ttl=600)


async def test_history_position_exists_before_first_publish(broker):
    c = ch()
    h1 = await broker.history(c, since=None, limit=0, reverse=False, meta_ttl=600)
    assert h1.position.offset == 0 and h1.position.epoch
    p = await broker.publish(c, "x", opts())
    assert p.epoch == h1.position.epoch and p.offset == 1


async def test_history_ttl(broker):
    c = ch()
    await broker.publish(c, "old", opts(history_ttl=0.5))
    await asyncio.sleep(0.7)
    await broker.publish(c, "new", opts(history_ttl=5))
    if broker.kind == "memory":
        pytest.skip("memory broker clock is monotonic time; covered in tests/brokers/test_memory.py")
    h = await broker.history(c, since=None, limit=-1, reverse=False, meta_ttl=600)
    assert [p["data"] for p in h.publications] == ["new"] and h.position.offset == 2


async def test_no_history_no_offset(broker):
    c = ch()
    await broker.subscribe(c)
    assert await broker.publish(c, 1, opts(history_size=0)) == StreamPosition()
    await broker.h.until(lambda: broker.h.pubs(c))
    assert "offset" not in broker.h.pubs(c)[0]


async def test_idempotent_publish(broker):
    c = ch()
    await broker.subscribe(c)
    a = await broker.publish(c, 1, opts(idempotency_key="order-1"))
    b = await broker.publish(c, 1, opts(idempotency_key="order-1"))
    other = await broker.publish(c, 2, opts(idempotency_key="order-2"))
    assert a == b and other.offset == 2
    await broker.h.until(lambda: len(broker.h.pubs(c)) == 2)
    await asyncio.sleep(0.1)
    assert [p["data"] for p in broker.h.pubs(c)] == [1, 2]
    h = await broker.history(c, since=None, limit=-1, reverse=False, meta_ttl=600)
    assert [p["data"] for p in h.publications] == [1, 2]


async def test_remove_history_keeps_position(broker):
    c = ch()
    await broker.publish(c, 1, opts())
    await broker.remove_history(c)
    h = await broker.history(c, since=None, limit=-1, reverse=False, meta_ttl=600)
    assert h.publications == [] and h.position.offset == 1


async def test_join_leave(broker):
    c = ch()
    await broker.subscribe(c)
    await broker.publish_join(c, {"client": "1", "user": "a"})
    await broker.publish_leave(c, {"client": "1", "user": "a"})
    await broker.h.until(lambda: len(broker.h.events) == 2)
    assert [(e[0], e[2]["user"]) for e in broker.h.events] == [("join", "a"), ("leave", "a")]


async def test_presence(broker):
    c, pm = ch(), broker.pm
    await pm.add_presence(c, "1", {"client": "1", "user": "a"})
    await pm.add_presence(c, "2", {"client": "2", "user": "a"})
    await pm.add_presence(c, "3", {"client": "3", "user": "b", "conn_info": {"name": "Bob"}})
    assert await pm.presence_stats(c) == (3, 2)
    assert (await pm.presence(c))["3"] == {"client": "3", "user": "b", "conn_info": {"name": "Bob"}}
    for cid in "123":
        await pm.remove_presence(c, cid)
    assert await pm.presence(c) == {} and await pm.presence_stats(c) == (0, 0)


async def test_redis_presence_expires_unless_refreshed(broker):
    if broker.kind != "redis":
        pytest.skip("memory presence lives and dies with the process's connections")
    pm = RedisPresenceManager(broker, ttl=0.4)
    c = ch()
    await pm.add_presence(c, "gone", {"client": "gone", "user": "x"})
    await pm.add_presence(c, "alive", {"client": "alive", "user": "y"})
    for _ in range(4):
        await asyncio.sleep(0.2)
        await pm.add_presence(c, "alive", {"client": "alive", "user": "y"})  # refreshed while connected
    assert set(await pm.presence(c)) == {"alive"}


async def test_redis_unsubscribe_stops_delivery_and_flapping_is_absorbed(broker):
    if broker.kind != "redis":
        pytest.skip("the memory broker delivers in-process; the hub filters")
    c = ch()
    await broker.subscribe(c)
    await broker.unsubscribe(c)
    await broker.subscribe(c)  # flapped back within the delay: still subscribed, nothing re-sent
    await broker.publish(c, "kept", opts())
    await broker.h.until(lambda: broker.h.pubs(c))
    await broker.unsubscribe(c)
    await asyncio.sleep(0.5)  # past unsubscribe_delay: really gone
    await broker.publish(c, "dropped", opts())
    await asyncio.sleep(0.3)
    assert [p["data"] for p in broker.h.pubs(c)] == ["kept"]


async def server_subscribers(broker, channel: str) -> int:
    """How many connections Redis itself counts on ``channel``'s pub/sub channel (the server's truth)."""
    name = broker._ps(channel)
    client = broker.shards.client(channel)
    if broker.cluster:
        reply = await client.execute_command("PUBSUB SHARDNUMSUB", name, target_nodes=client.get_node_from_key(name))
    else:
        reply = await client.execute_command("PUBSUB NUMSUB", name)
    return dict(reply if isinstance(reply, list) and reply and isinstance(reply[0], tuple)
                else zip(reply[::2], reply[1::2], strict=True))[name.encode()]


async def test_redis_many_subscribes_and_unsubscribes_reach_the_server_while_links_read(broker):
    """A link already reading (here: every master's) must not hold up the SUBSCRIBEs and UNSUBSCRIBEs that
    follow: a reconnect storm subscribes thousands of channels at once, each within the broker's timeout.
    (redis-py 8.2's ClusterPubSub held each node's I/O lock for a whole read timeout, so a batch of 300
    channels took longer than 5 s, and an unsubscribe waited for the next idle read to end.)"""
    if broker.kind != "redis":
        pytest.skip("the memory broker has no server")
    first = [ch() for _ in range(12)]  # spread over every master: each link is reading when the batch comes
    for c in first:
        await broker.subscribe(c)
    await asyncio.sleep(0.3)
    batch = [ch() for _ in range(2000)]
    await asyncio.wait_for(asyncio.gather(*(broker.subscribe(c) for c in batch)), broker.timeout)
    for c in batch[:20] + first:
        assert await server_subscribers(broker, c) == 1
    for c in batch + first:
        await broker.unsubscribe(c)
    await asyncio.sleep(broker.unsubscribe_delay + 0.3)
    for c in batch[:20] + first:
        assert await server_subscribers(broker, c) == 0, c
    await broker.publish(first[0], "after", opts())
    await asyncio.sleep(0.2)
    assert broker.h.pubs(first[0]) == []


async def test_redis_pubsub_links_killed_by_the_server_come_back_subscribed(broker):
    """CLIENT KILL of every pub/sub connection (a Redis restart or a proxy cutting idle links looks the
    same): each link reconnects and subscribes again to what it carried; the broker counts the error and
    the reconnect; a subscribe made while a link is down is refused or held, not lost."""
    if broker.kind != "redis":
        pytest.skip("the memory broker has no connection to lose")
    chans = [ch() for _ in range(12)]
    for c in chans:
        await broker.subscribe(c)
    import redis.asyncio as aioredis

    if broker.cluster:
        addrs = [(n.host, n.port) for n in broker.shards.clients[0].get_primaries()]
    else:
        addrs = [(broker.shards.clients[0].connection_pool.connection_kwargs["host"],
                  broker.shards.clients[0].connection_pool.connection_kwargs["port"])]
    for host, port in addrs:  # an admin connection of its own: the broker's clients stay untouched
        admin = aioredis.Redis(host=host, port=port)
        await admin.execute_command("CLIENT KILL", "TYPE", "pubsub")
        await admin.aclose()
    late = ch()
    for _ in range(50):  # while the links reconnect: refused with BrokerUnavailable (error 100, the SDK retries)
        try:  # or held until the link is back, never lost
            await broker.subscribe(late)
            break
        except BrokerUnavailable:
            await asyncio.sleep(0.1)
    for c in chans + [late]:
        async def delivered(c=c):
            while not broker.h.pubs(c):
                await broker.publish(c, "back", opts())
                await asyncio.sleep(0.05)
        await asyncio.wait_for(delivered(), 10)
    assert broker.errors >= 1 and broker.reconnects >= 1
    for c in chans[:3]:
        assert await server_subscribers(broker, c) == 1  # subscribed once, not once per reconnect


async def test_publish_many_keeps_order_and_offsets(broker):
    chans = [ch() for _ in range(3)]
    for c in chans:
        await broker.subscribe(c)
    items = [(chans[i % 3], i, opts(history_size=100)) for i in range(30)]
    positions = await broker.publish_many(items)
    assert all(isinstance(p, StreamPosition) for p in positions)
    for k, c in enumerate(chans):
        assert [p.offset for p in positions[k::3]] == list(range(1, 11))
        await broker.h.until(lambda c=c: len(broker.h.pubs(c)) == 10)
        assert [p["data"] for p in broker.h.pubs(c)] == list(range(k, 30, 3))
