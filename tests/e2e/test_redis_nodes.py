"""Two relay nodes (separate processes, separate ports) on one real Redis act as one."""

import asyncio
import json
import uuid

import pytest

from tests.rawclients import ws_connected


@pytest.fixture
def two_nodes(redis_server, relay_factory):
    cfg = {"broker": "redis", "redis_urls": [redis_server.url], "redis_prefix": f"n{uuid.uuid4().hex[:6]}",
           "redis_unsubscribe_delay": 0.2}
    return relay_factory(cfg), relay_factory(cfg)


async def test_chat_presence_and_recovery_across_nodes(two_nodes):
    a_node, b_node = two_nodes
    ch = "chat:order42#alice,agent7"
    alice = await ws_connected(a_node.ws_port, a_node.token("alice"))
    agent = await ws_connected(b_node.ws_port, b_node.token("agent7"))
    sub = (await alice.call("subscribe", {"channel": ch}))["subscribe"]
    await agent.call("subscribe", {"channel": ch})
    joined = await alice.push()
    while joined.get("join", {}).get("info", {}).get("user") != "agent7":
        joined = await alice.push()
    await alice.call("publish", {"channel": ch, "data": {"text": "is it in stock?"}})
    await agent.call("publish", {"channel": ch, "data": {"text": "yes, 3 left"}})
    for ws in (alice, agent):
        got = [(await ws.pub())["pub"] for _ in range(2)]
        assert [g["data"]["text"] for g in got] == ["is it in stock?", "yes, 3 left"]
        assert [g["offset"] for g in got] == [1, 2]
        assert [g["info"]["user"] for g in got] == ["alice", "agent7"]
    pres = (await agent.call("presence", {"channel": ch}))["presence"]["presence"]
    assert sorted(v["user"] for v in pres.values()) == ["agent7", "alice"]
    # alice drops off node A; the agent keeps writing; alice comes back on node B and recovers
    alice.close()
    for i in range(3):
        await agent.call("publish", {"channel": ch, "data": {"text": f"missed {i}"}})
    back = await ws_connected(b_node.ws_port, b_node.token("alice"))
    r = (await back.call("subscribe", {"channel": ch, "recover": True, "offset": 2, "epoch": sub["epoch"]}))
    r = r["subscribe"]
    assert r["recovered"] is True and r["epoch"] == sub["epoch"]
    assert [p["data"]["text"] for p in r["publications"]] == ["missed 0", "missed 1", "missed 2"]
    assert r["offset"] == 5
    agent.close()
    back.close()


async def test_api_publish_on_one_node_reaches_the_other(two_nodes):
    import json
    import urllib.request

    a_node, b_node = two_nodes
    ch = f"news:{uuid.uuid4().hex[:8]}"
    ws = await ws_connected(b_node.ws_port, b_node.token("shopper"))
    await ws.call("subscribe", {"channel": ch})
    req = urllib.request.Request(f"{a_node.api_url}/publish", method="POST",
                                 data=json.dumps({"channel": ch, "data": {"status": "shipped"}}).encode(),
                                 headers={"X-API-Key": a_node.api_key})
    body = json.loads(await asyncio.to_thread(lambda: urllib.request.urlopen(req).read()))
    assert body["result"]["offset"] == 1
    assert (await ws.pub())["pub"]["data"] == {"status": "shipped"}
    ws.close()


async def test_readyz_and_metrics_reflect_redis(redis_factory, relay_factory):
    """/readyz: 200 'ready', 503 'broker unreachable' once the node's liveness checks see Redis down (within
    3 s), ready again after; /healthz names the shard's state; the broker metrics follow (errors, up,
    reconnects). Each answer comes from local state: fast while Redis is down."""
    import time
    import urllib.error
    import urllib.request

    redis = redis_factory()
    node = relay_factory({"broker": "redis", "redis_urls": [redis.url], "metrics_interval": 0.2})
    url = f"http://127.0.0.1:{node.api_port}/readyz"
    shard = f"127.0.0.1:{redis.port}"

    def get(path):
        t0 = time.monotonic()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{node.api_port}{path}", timeout=5) as r:
                out = r.status, r.read()
        except urllib.error.HTTPError as e:
            out = e.code, e.read()
        return out, time.monotonic() - t0

    assert urllib.request.urlopen(url).read() == b'{"status":"ready"}'
    assert json.loads(get("/healthz")[0][1]) == {"status": "ok", "broker": {shard: "up"}}
    m = await asyncio.to_thread(node.metrics)
    assert m["relay_broker_up"] == 1 and m["relay_broker_errors_total"] == 0
    assert m["relay_broker_shard_up", {"shard": shard}] == 1
    redis.stop()
    stopped = time.monotonic()
    while (await asyncio.to_thread(get, "/readyz"))[0][0] == 200:
        assert time.monotonic() - stopped < 3.0, "the outage was not seen within 3 s"
        await asyncio.sleep(0.05)
    (status, body), took = await asyncio.to_thread(get, "/readyz")
    assert (status, body) == (503, b'{"status":"broker unreachable"}') and took < 0.5
    assert json.loads((await asyncio.to_thread(get, "/healthz"))[0][1])["broker"] == {shard: "down"}
    m = await asyncio.to_thread(node.metrics)
    assert m["relay_broker_up"] == 0 and m["relay_ready"] == 0 and m["relay_broker_errors_total"] >= 1
    assert m["relay_broker_shard_up", {"shard": shard}] == 0
    redis.start()
    for _ in range(50):
        m = await asyncio.to_thread(node.metrics)
        if m["relay_broker_reconnects_total"] >= 1 and m["relay_ready"] == 1:
            break
        await asyncio.sleep(0.2)
    assert m["relay_broker_reconnects_total"] >= 1 and m["relay_broker_up"] == 1
    assert urllib.request.urlopen(url).status == 200
    assert "broker_down" in node.log() and "broker_up" in node.log()


async def test_batched_publishes_keep_sharing_frames_on_redis(two_nodes):
    a_node, _ = two_nodes
    ch = f"pub:{uuid.uuid4().hex[:8]}"
    sub = await ws_connected(a_node.ws_port, a_node.token("reader"))
    await sub.call("subscribe", {"channel": ch})
    pubr = await ws_connected(a_node.ws_port, a_node.token("writer"))
    await pubr.call("subscribe", {"channel": ch})
    await pubr.send_cmds(*[{"id": 10 + i, "publish": {"channel": ch, "data": i}} for i in range(20)])
    frames, got = 0, []
    while len(got) < 20:
        op, payload = await sub.frame()
        frames += 1
        got += [line for line in payload.split(b"\n") if b'"pub"' in line]
    assert frames <= 3  # one pipeline to Redis: the 20 publications come back together
    import orjson

    assert [orjson.loads(x)["push"]["pub"]["data"] for x in got] == list(range(20))


async def test_concurrent_subscribes_to_one_channel(redis_server, relay_factory):
    """Many clients subscribing to one channel at the same moment, while it is being published to, all get
    in and each gets every publication after its subscribe position (each subscribe keeps its own
    collector while its history read is in flight)."""
    import urllib.request

    # history for all 150 publications: a client resynced (2500) reads its pushes only after the publisher
    # is done, and must still be able to recover from where it was
    a_node = relay_factory({"broker": "redis", "redis_urls": [redis_server.url],
                            "redis_prefix": f"n{uuid.uuid4().hex[:6]}",
                            "namespaces": {"news": {"history_size": 200}}})
    ch = f"news:{uuid.uuid4().hex[:8]}"  # recoverable: offsets, and a history read per subscribe
    clients = [await ws_connected(a_node.ws_port, a_node.token(f"c{i}")) for i in range(40)]
    total = 150

    def publish_all():
        for i in range(total):
            req = urllib.request.Request(f"{a_node.api_url}/publish", method="POST",
                                         data=json.dumps({"channel": ch, "data": i}).encode(),
                                         headers={"X-API-Key": a_node.api_key})
            urllib.request.urlopen(req).read()

    publisher = asyncio.create_task(asyncio.to_thread(publish_all))
    for round_ in range(4):  # subscribe in waves while the publisher runs
        for c in clients[round_ * 10:(round_ + 1) * 10]:
            await c.send_cmds({"id": 99, "subscribe": {"channel": ch}})
        await asyncio.sleep(0.02)
    await publisher
    for c in clients:
        reply = await c.reply(99)
        assert "subscribe" in reply, reply
        offset, epoch = reply["subscribe"].get("offset", 0), reply["subscribe"].get("epoch", "")
        pending = list(c.pushes)
        c.pushes.clear()
        got: list[int] = []
        resubscribes = 0
        while (got[-1] if got else offset) < total:
            try:
                push = pending.pop(0) if pending else await c.push(timeout=5)
            except TimeoutError:
                raise AssertionError(f"publications missing after {offset}: got {got}") from None
            if "pub" in push:
                got.append(push["pub"]["offset"])
            elif "unsubscribe" in push:
                # "insufficient state" (the node saw a gap in Redis pub/sub, which is at-most-once):
                # resubscribe and recover, as the SDKs do
                assert push["unsubscribe"]["code"] == 2500, push
                resubscribes += 1
                last = got[-1] if got else offset
                r = await c.call("subscribe", {"channel": ch, "recover": True, "offset": last, "epoch": epoch})
                assert r["subscribe"]["recovered"] is True, r
                got += [x["offset"] for x in r["subscribe"].get("publications", [])]
                pending += c.pushes
                c.pushes.clear()
        assert got == list(range(offset + 1, total + 1)), (offset, got, resubscribes)
        c.close()
    assert "Traceback" not in a_node.log()
