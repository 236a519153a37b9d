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
