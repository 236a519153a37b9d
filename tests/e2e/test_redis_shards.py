"""Channels spread over three independent redis-servers; a shard down takes only its channels down."""

import asyncio
import json
import urllib.request

from relay.brokers.redis import RedisShards
from tests.rawclients import ws_connected


def api(node, method, body):
    req = urllib.request.Request(f"{node.api_url}/{method}", method="POST", data=json.dumps(body).encode(),
                                 headers={"X-API-Key": node.api_key})
    return json.loads(urllib.request.urlopen(req, timeout=10).read())


def channels_by_shard(n_shards: int, per_shard: int = 2) -> list[list[str]]:
    shards = RedisShards([f"redis://127.0.0.1:{i + 1}/0" for i in range(n_shards)], 1)
    out: list[list[str]] = [[] for _ in range(n_shards)]
    i = 0
    while any(len(x) < per_shard for x in out):
        ch = f"chat:room{i}"
        idx = shards.index(ch)
        if len(out[idx]) < per_shard:
            out[idx].append(ch)
        i += 1
    return out


def test_consistent_hash_moves_few_channels():
    names = [f"chat:{i}" for i in range(3000)]
    three = RedisShards([f"redis://h{i}:1/0" for i in range(3)], 1)
    four = RedisShards([f"redis://h{i}:1/0" for i in range(4)], 1)
    moved = sum(three.index(c) != four.index(c) for c in names)
    assert 0.15 < moved / len(names) < 0.35  # about 1/4 move to the new shard, none elsewhere
    assert all(four.index(c) == 3 for c in names if three.index(c) != four.index(c))
    counts = [sum(three.index(c) == i for c in names) for i in range(3)]
    assert min(counts) > 800  # spread evenly


async def test_three_shards_and_one_down(redis_factory, relay_factory):
    redises = [redis_factory() for _ in range(3)]
    node = relay_factory({"broker": "redis", "redis_urls": [r.url for r in redises]})
    by_shard = channels_by_shard(3)
    ws = await ws_connected(node.ws_port, node.token("alice"))
    for chans in by_shard:
        for ch in chans:
            await ws.call("subscribe", {"channel": ch})
    for chans in by_shard:
        for ch in chans:
            assert api(node, "publish", {"channel": ch, "data": ch})["result"]["offset"] == 1
    got = {(await ws.pub())["channel"] for _ in range(6)}
    assert got == {c for chans in by_shard for c in chans}
    # one broadcast over channels of all three shards: one pipeline per shard, every channel answered
    every = [c for chans in by_shard for c in chans]
    res = api(node, "broadcast", {"channels": every + ["nope:x"], "data": "sale"})["result"]["responses"]
    assert [r.get("result", {}).get("offset") for r in res[:-1]] == [2] * 6 and res[-1]["error"]["code"] == 102
    got = {(await ws.pub())["channel"] for _ in range(6)}
    assert got == set(every)
    # each shard really holds its own channels' history
    for r, chans in zip(redises, by_shard, strict=True):
        import redis as redis_sync

        keys = {k.decode() for k in redis_sync.Redis(port=r.port).keys("relay:meta:*")}
        assert keys == {f"relay:meta:{{{c}}}" for c in chans}
    redises[1].stop()
    await asyncio.sleep(0.2)
    for i, chans in enumerate(by_shard):
        for ch in chans:
            res = await asyncio.to_thread(api, node, "publish", {"channel": ch, "data": "after"})
            if i == 1:
                assert res["error"]["code"] == 100  # never a false OK
            else:
                assert res["result"]["offset"] == 3
    received = {(await ws.pub())["channel"] for _ in range(4)}
    assert received == set(by_shard[0] + by_shard[2])
    ws.close()
