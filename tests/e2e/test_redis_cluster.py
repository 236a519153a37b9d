"""Two relay nodes on a real three-master Redis Cluster: sharded pub/sub, history on the channel's slot."""

import uuid

import redis as redis_sync

from tests.rawclients import ws_connected


async def test_nodes_on_a_cluster_chat_and_recover(redis_cluster, relay_factory):
    cfg = {"broker": "redis", "redis_cluster": True, "redis_urls": redis_cluster.urls,
           "redis_prefix": f"c{uuid.uuid4().hex[:6]}"}
    a_node, b_node = relay_factory(cfg), relay_factory(cfg)
    chans = [f"chat:room{i}-{uuid.uuid4().hex[:4]}" for i in range(12)]
    a = await ws_connected(a_node.ws_port, a_node.token("alice"))
    b = await ws_connected(b_node.ws_port, b_node.token("bob"))
    epochs = {}
    for ch in chans:
        epochs[ch] = (await a.call("subscribe", {"channel": ch}))["subscribe"]["epoch"]
        await b.call("subscribe", {"channel": ch})
    for ch in chans:
        await b.call("publish", {"channel": ch, "data": {"ch": ch}})
    for ws in (a, b):
        got = set()
        while len(got) < len(chans):
            got.add((await ws.pub())["channel"])
        assert got == set(chans)
    # the channels' history lives on several masters, each next to its sharded pub/sub channel
    holders = set()
    for url in redis_cluster.urls:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        if redis_sync.Redis(port=port).keys(f"{cfg['redis_prefix']}:hist:*"):
            holders.add(port)
    assert len(holders) >= 2
    a.close()
    for ch in chans[:3]:
        await b.call("publish", {"channel": ch, "data": "missed"})
    back = await ws_connected(b_node.ws_port, b_node.token("alice"))
    for ch in chans[:3]:
        r = (await back.call("subscribe", {"channel": ch, "recover": True, "offset": 1, "epoch": epochs[ch]}))
        assert r["subscribe"]["recovered"] is True
        assert [p["data"] for p in r["subscribe"]["publications"]] == ["missed"]
    back.close()
    b.close()


def _cli(port: int, *args: str) -> str:
    import subprocess

    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True, check=True,
                          timeout=10).stdout.strip()


def move_slot_of(channel_key: str, ports: list[int]) -> tuple[int, int]:
    """Move the slot holding ``channel_key`` (and its keys) to another master, as a resharding does."""
    slot = int(_cli(ports[0], "cluster", "keyslot", channel_key))
    ids = {p: _cli(p, "cluster", "myid") for p in ports}
    owner = next(p for p in ports if any(_in_range(slot, r) for r in _my_ranges(_cli(p, "cluster", "nodes"))))
    dest = next(p for p in ports if p != owner)
    _cli(dest, "cluster", "setslot", str(slot), "importing", ids[owner])
    _cli(owner, "cluster", "setslot", str(slot), "migrating", ids[dest])
    keys = _cli(owner, "cluster", "getkeysinslot", str(slot), "1000").split()
    if keys:
        _cli(owner, "migrate", "127.0.0.1", str(dest), "", "0", "5000", "keys", *keys)
    for p in ports:
        _cli(p, "cluster", "setslot", str(slot), "node", ids[dest])
    return owner, dest


def _my_ranges(nodes: str) -> list[str]:
    """The slot ranges of the node answering CLUSTER NODES."""
    line = next(x for x in nodes.splitlines() if "myself" in x)
    return line.split()[8:]


def _in_range(slot: int, r: str) -> bool:
    if r.startswith("["):
        return False
    lo, _, hi = r.partition("-")
    return int(lo) <= slot <= int(hi or lo)


async def test_slot_migration_loses_nothing(redis_cluster, relay_factory):
    from tests.e2e.test_redis_faults import RecoveringClient, publish_stream

    prefix = f"m{uuid.uuid4().hex[:6]}"
    node = relay_factory({"broker": "redis", "redis_cluster": True, "redis_urls": redis_cluster.urls,
                          "redis_prefix": prefix, "position_check_interval": 0.5,
                          "namespaces": {"news": {"history_size": 1000}}})
    ch = f"news:{uuid.uuid4().hex[:8]}"
    client = RecoveringClient(await ws_connected(node.ws_port, node.token("dana")), ch)
    await client.subscribe()
    ports = [n.port for n in redis_cluster.nodes]
    acked: list[tuple[int, int]] = []
    moved = []
    await publish_stream(node, ch, 3.0, acked, fault_at=1.0,
                         fault=lambda: moved.append(move_slot_of(f"{prefix}:hist:{{{ch}}}", ports)))
    assert moved and moved[0][0] != moved[0][1]
    offsets = [o for o, _ in acked]
    assert offsets == list(range(1, len(acked) + 1)) and len(acked) > 50
    await client.run_until(set(offsets))
    assert client.got == acked  # redis-py followed MOVED and the sharded subscription moved along
