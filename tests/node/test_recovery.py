"""The recovery coalescer (relay/node/recovery.py) against real brokers: the memory broker, and the Redis broker on a
real redis-server. Slow reads are made by pausing that redis-server (CLIENT PAUSE WRITE: the history script may
write, so it waits), and what is in flight is read back from Redis itself (INFO clients: blocked_clients)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis

from relay.brokers.base import BrokerUnavailable, PublishOptions, StreamPosition
from relay.brokers.memory import MemoryBroker
from relay.brokers.redis import RedisBroker
from relay.node.recovery import RecoveryCoalescer, serve

OPTS = PublishOptions(history_size=50, history_ttl=300.0, history_meta_ttl=600.0)


class Handler:
    def handle_publication(self, channel, pub, epoch="", lane=None, pace_ms=None):
        pass

    def handle_join(self, channel, info):
        pass

    def handle_leave(self, channel, info):
        pass


@pytest.fixture(params=["memory", "redis"])
async def broker(request):
    if request.param == "memory":
        b = MemoryBroker()
    else:
        b = RedisBroker([request.getfixturevalue("redis_server").url], prefix=f"t{uuid.uuid4().hex[:8]}")
    await b.start(Handler())
    yield b
    await b.close()


@pytest.fixture
async def redis_broker(redis_server):
    b = RedisBroker([redis_server.url], prefix=f"t{uuid.uuid4().hex[:8]}")
    await b.start(Handler())
    admin = aioredis.from_url(redis_server.url)
    b.admin = admin
    yield b
    await admin.execute_command("CLIENT", "UNPAUSE")
    await admin.aclose()
    await b.close()


async def publish(b, channel: str, n: int) -> StreamPosition:
    pos = StreamPosition()
    for i in range(n):
        pos = await b.publish(channel, {"n": i}, OPTS)
    return pos


def offsets(pubs: list[dict]) -> list[int]:
    return [p["offset"] for p in pubs]


async def blocked(admin) -> int:
    """Commands Redis holds back because of CLIENT PAUSE: the broker reads (and publishes) in flight."""
    return int((await admin.info("clients"))["blocked_clients"])


async def until_blocked(admin, n: int, timeout: float = 5.0) -> None:
    async def wait():
        while await blocked(admin) < n:
            await asyncio.sleep(0.005)
    await asyncio.wait_for(wait(), timeout)


async def test_concurrent_recoveries_share_one_read(broker):
    """Twenty waiters with different offsets asking at once: one broker read; each gets exactly what it missed."""
    ch = f"chat:{uuid.uuid4().hex[:6]}"
    top = await publish(broker, ch, 12)
    rc = RecoveryCoalescer(broker)
    sinces = [StreamPosition(i % 12, top.epoch) for i in range(20)]
    results = await asyncio.gather(*(rc.read(ch, s) for s in sinces))
    assert rc.reads == {"recover": 1}
    assert rc.coalesced == 19
    for s, (pos, pubs, recovered) in zip(sinces, results, strict=True):
        assert pos == top
        assert recovered
        assert offsets(pubs) == list(range(s.offset + 1, 13))


async def test_positions_and_recoveries_mixed(broker):
    """Position-only requests (subscribe without recover) ride on the recovering read of the same channel."""
    ch = f"chat:{uuid.uuid4().hex[:6]}"
    top = await publish(broker, ch, 5)
    rc = RecoveryCoalescer(broker)
    res = await asyncio.gather(rc.read(ch, None), rc.read(ch, StreamPosition(3, top.epoch)), rc.read(ch, None))
    assert rc.reads == {"recover": 1}
    assert res[0] == (top, [], False) and res[2] == (top, [], False)
    assert offsets(res[1][1]) == [4, 5] and res[1][2]
    rc2 = RecoveryCoalescer(broker)
    assert await asyncio.gather(rc2.read(ch, None), rc2.read(ch, None)) == [(top, [], False)] * 2
    assert rc2.reads == {"position": 1}


async def test_epoch_and_unrecoverable_positions(broker):
    """Another epoch, an offset the history no longer holds, an offset past the top: not recovered, as before."""
    ch = f"chat:{uuid.uuid4().hex[:6]}"
    small = PublishOptions(history_size=3, history_ttl=300.0, history_meta_ttl=600.0)
    for i in range(10):
        top = await broker.publish(ch, {"n": i}, small)
    rc = RecoveryCoalescer(broker)
    good, gone, ahead, same = (StreamPosition(7, top.epoch), StreamPosition(2, top.epoch),
                               StreamPosition(11, top.epoch), StreamPosition(10, top.epoch))
    stale = StreamPosition(8, "not-the-epoch")
    res = await asyncio.gather(*(rc.read(ch, s) for s in (good, gone, stale, ahead, same)))
    assert rc.reads == {"recover": 1}  # mixed epochs: one read of the whole history
    assert res[0] == (top, res[0][1], True) and offsets(res[0][1]) == [8, 9, 10]
    assert res[1] == (top, [], False)  # offset 3 is gone
    assert res[2] == (top, [], False)  # another epoch
    assert res[3] == (top, [], False)  # past the top
    assert res[4] == (top, [], True)   # nothing missed
    # every waiter in another epoch: the broker refuses the read, the position is read again (2 reads, as before)
    rc2 = RecoveryCoalescer(broker)
    res2 = await asyncio.gather(rc2.read(ch, stale), rc2.read(ch, StreamPosition(1, "not-the-epoch")),
                                rc2.read(ch, None))
    assert res2 == [(top, [], False)] * 3
    assert rc2.reads == {"recover": 2}


async def test_coalescing_off_reads_once_per_request(broker):
    ch = f"chat:{uuid.uuid4().hex[:6]}"
    top = await publish(broker, ch, 4)
    rc = RecoveryCoalescer(broker, coalesce=False)
    res = await asyncio.gather(*(rc.read(ch, StreamPosition(i, top.epoch)) for i in range(4)),
                               rc.read(ch, None), rc.read(ch, StreamPosition(0, "other")))
    assert rc.reads == {"recover": 4 + 2, "position": 1}  # the other epoch reads the current stream again
    assert rc.coalesced == 0
    assert [offsets(r[1]) for r in res[:4]] == [[1, 2, 3, 4], [2, 3, 4], [3, 4], [4]]
    assert res[4] == (top, [], False)
    assert res[5][0] == top and offsets(res[5][1]) == [1, 2, 3, 4] and res[5][2] is False  # the new stream, whole


def test_serve_after_an_epoch_change_gives_the_new_stream_from_its_start():
    """The client's epoch is gone (Redis restarted empty): not recovered, since the old tail is lost, but
    when the new stream still holds offset 1 the client gets all of it, so nothing published after the
    broker came back is lost; a new stream already trimmed gives nothing (the SDK starts at the top)."""
    new = StreamPosition(5, "new")
    complete = [{"offset": i, "data": i} for i in range(1, 6)]
    assert serve(StreamPosition(40, "old"), (new, complete)) == (new, complete, False)
    assert serve(StreamPosition(40, "old"), (new, complete[2:])) == (new, [], False)
    assert serve(StreamPosition(40, "old"), (new, [])) == (new, [], False)


def test_serve_shares_the_read():
    """Each waiter's publications are a slice of the shared list: the same publication objects, not copies."""
    pubs = [{"offset": i, "data": i} for i in range(3, 8)]
    pos, mine, ok = serve(StreamPosition(5, "e"), (StreamPosition(7, "e"), pubs))
    assert ok and mine == pubs[3:] and mine[0] is pubs[3]
    assert serve(StreamPosition(1, "e"), (StreamPosition(7, "e"), pubs))[1:] == ([], False)  # 2 is not there
    assert serve(None, (StreamPosition(7, "e"), pubs)) == (StreamPosition(7, "e"), [], False)


async def test_request_during_read_waits_for_the_next_one(redis_broker):
    """A request made while a read is in flight never joins it: it is served by the next read, so it sees a
    publication made after the first read was issued (which that read cannot hold)."""
    b, admin = redis_broker, redis_broker.admin
    ch = f"chat:{uuid.uuid4().hex[:6]}"
    top = await publish(b, ch, 3)
    rc = RecoveryCoalescer(b)
    await admin.execute_command("CLIENT", "PAUSE", 10000, "WRITE")
    first = asyncio.ensure_future(rc.read(ch, StreamPosition(1, top.epoch)))
    await until_blocked(admin, 1)  # the first read is at Redis, held there
    late = [asyncio.ensure_future(rc.read(ch, StreamPosition(o, top.epoch))) for o in (2, 3)]
    await asyncio.sleep(0.05)
    assert rc.reads == {"recover": 1}  # the late ones wait: no second read while the first is in flight
    pub = asyncio.ensure_future(b.publish(ch, {"n": "late"}, OPTS))  # queued at Redis behind the first read
    await until_blocked(admin, 2)
    await admin.execute_command("CLIENT", "UNPAUSE")
    pos1, pubs1, ok1 = await first
    (pos2, pubs2, ok2), (pos3, pubs3, ok3) = await asyncio.gather(*late)
    assert (await pub).offset == 4
    assert pos1.offset == 3 and offsets(pubs1) == [2, 3] and ok1
    assert pos2.offset == pos3.offset == 4 and ok2 and ok3
    assert offsets(pubs2) == [3, 4] and offsets(pubs3) == [4]
    assert pubs2[-1]["data"] == {"n": "late"}
    assert rc.reads == {"recover": 2} and rc.coalesced == 1


async def test_reads_bounded_across_channels(redis_broker):
    """recovery_max_concurrent_reads: at most that many reads at Redis at once, over all channels; the others
    start as those finish, and every request is answered."""
    b, admin = redis_broker, redis_broker.admin
    channels = [f"chat:{uuid.uuid4().hex[:6]}" for _ in range(8)]
    tops = [await publish(b, ch, 2) for ch in channels]
    rc = RecoveryCoalescer(b, max_concurrent_reads=3)
    await admin.execute_command("CLIENT", "PAUSE", 10000, "WRITE")
    tasks = [asyncio.ensure_future(rc.read(ch, StreamPosition(0, t.epoch)))
             for ch, t in zip(channels, tops, strict=True) for _ in range(5)]
    await until_blocked(admin, 3)
    await asyncio.sleep(0.2)
    assert await blocked(admin) == 3
    assert rc.reads == {"recover": 3}
    await admin.execute_command("CLIENT", "UNPAUSE")
    results = await asyncio.gather(*tasks)
    assert all(ok and offsets(pubs) == [1, 2] for _, pubs, ok in results)
    assert rc.reads == {"recover": 8}  # one per channel for five waiters each
    assert rc.coalesced == 8 * 4


async def test_coalescing_off_is_bounded_too(redis_broker):
    b, admin = redis_broker, redis_broker.admin
    ch = f"chat:{uuid.uuid4().hex[:6]}"
    top = await publish(b, ch, 2)
    rc = RecoveryCoalescer(b, coalesce=False, max_concurrent_reads=4)
    await admin.execute_command("CLIENT", "PAUSE", 10000, "WRITE")
    tasks = [asyncio.ensure_future(rc.read(ch, StreamPosition(1, top.epoch))) for _ in range(10)]
    await until_blocked(admin, 4)
    await asyncio.sleep(0.2)
    assert await blocked(admin) == 4
    await admin.execute_command("CLIENT", "UNPAUSE")
    assert all(offsets(r[1]) == [2] for r in await asyncio.gather(*tasks))
    assert rc.reads == {"recover": 10}


async def test_a_waiter_leaving_does_not_cancel_the_read(redis_broker):
    b, admin = redis_broker, redis_broker.admin
    ch = f"chat:{uuid.uuid4().hex[:6]}"
    top = await publish(b, ch, 2)
    rc = RecoveryCoalescer(b)
    await admin.execute_command("CLIENT", "PAUSE", 10000, "WRITE")
    gone = asyncio.ensure_future(rc.read(ch, StreamPosition(0, top.epoch)))
    stays = asyncio.ensure_future(rc.read(ch, StreamPosition(1, top.epoch)))
    await until_blocked(admin, 1)
    gone.cancel()
    await asyncio.sleep(0.01)
    await admin.execute_command("CLIENT", "UNPAUSE")
    pos, pubs, ok = await stays
    assert ok and offsets(pubs) == [2] and gone.cancelled()
    assert rc.reads == {"recover": 1}


async def test_broker_failure_reaches_every_waiter(redis_factory):
    """A read that fails fails for each waiter (BrokerUnavailable: the session answers error 100, as before),
    and the channel's next read starts afresh."""
    r = redis_factory()
    b = RedisBroker([r.url], prefix=f"t{uuid.uuid4().hex[:8]}", timeout=1.0)
    await b.start(Handler())
    try:
        ch = f"chat:{uuid.uuid4().hex[:6]}"
        top = await publish(b, ch, 2)
        rc = RecoveryCoalescer(b)
        r.stop()
        res = await asyncio.gather(*(rc.read(ch, StreamPosition(0, top.epoch)) for _ in range(3)),
                                   return_exceptions=True)
        assert all(isinstance(e, BrokerUnavailable) for e in res), res
        assert rc.reads == {"recover": 1}
        assert not rc._channels  # nothing left behind for the channel
    finally:
        await b.close()



async def test_quiet_channel_is_read_at_once(broker):
    """A subscribe that meets no contention never waits for the storm interval, even right after a read."""
    ch = f"chat:{uuid.uuid4().hex[:6]}"
    top = await publish(broker, ch, 3)
    rc = RecoveryCoalescer(broker, read_interval=5.0)
    loop = asyncio.get_running_loop()
    for _ in range(3):
        t0 = loop.time()
        pos, pubs, recovered = await rc.read(ch, StreamPosition(2, top.epoch))
        assert loop.time() - t0 < 1.0
        assert pos == top and recovered and offsets(pubs) == [3]
    assert rc.reads == {"recover": 3}


async def test_storm_reads_once_per_interval(broker):
    """Bursts of three requests every 30 ms for 0.9 s while publications keep coming: once requests meet on the
    channel, with a 0.3 s interval it is read a handful of times, not once per request, and no answer is older
    than its request (each holds the stream top at the moment it asked: the read serving it was issued after)."""
    ch = f"chat:{uuid.uuid4().hex[:6]}"
    top = await publish(broker, ch, 1)
    rc = RecoveryCoalescer(broker, read_interval=0.3)
    loop = asyncio.get_running_loop()

    async def one(k: int) -> tuple[int, float, tuple]:
        await asyncio.sleep(k // 3 * 0.03)
        if k % 9 == 0:
            await broker.publish(ch, {"k": k}, OPTS)
        asked_top = (await broker.history(ch, since=None, limit=0, reverse=False, meta_ttl=600.0)).position.offset
        t0 = loop.time()
        res = await rc.read(ch, StreamPosition(1, top.epoch))
        return asked_top, loop.time() - t0, res

    results = await asyncio.gather(*(one(k) for k in range(90)))
    assert 2 <= rc.reads["recover"] <= 10, rc.reads  # ~4 at 0.3 s; a loaded machine stretches it, 30 bursts
    for asked_top, _, (pos, pubs, recovered) in results:
        assert recovered and pos.offset >= asked_top
        assert offsets(pubs) == list(range(2, pos.offset + 1))
    assert max(waited for _, waited, _ in results) < 0.3 + 0.2


def test_config_keys_are_checked():
    from relay.config import Config

    assert not [e for e in Config().validate() if e.startswith("recovery_")]
    errs = Config(recovery_max_concurrent_reads=0, recovery_read_interval=-1.0).validate()
    assert any(e.startswith("recovery_max_concurrent_reads:") for e in errs)
    assert any(e.startswith("recovery_read_interval:") for e in errs)
    cfg = Config()
    assert cfg.recovery_coalesce is True and cfg.recovery_max_concurrent_reads == 32


async def test_close_cancels_waiting_reads(redis_broker):
    """Stopping the node cancels reads under way; their waiters get CancelledError, not a hang."""
    b, admin = redis_broker, redis_broker.admin
    ch = f"chat:{uuid.uuid4().hex[:6]}"
    top = await publish(b, ch, 1)
    rc = RecoveryCoalescer(b)
    await admin.execute_command("CLIENT", "PAUSE", 10000, "WRITE")
    waiter = asyncio.ensure_future(rc.read(ch, StreamPosition(0, top.epoch)))
    await until_blocked(admin, 1)
    rc.close()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(waiter, 5)
