"""Raw TCP (length-prefixed msgpack) clients: the same commands, replies and pushes as WebSocket."""

import uuid

from tests.rawclients import RawTCP, ws_connected


async def tcp_connected(relay, user):
    c = await RawTCP.open(relay.tcp_port)
    reply = await c.call("connect", {"token": relay.token(user)})
    assert reply["connect"]["client"] and reply["connect"]["pong"] is True
    return c


async def test_tcp_full_flow_with_ws_peer(relay):
    ch = f"chat:{uuid.uuid4().hex[:8]}"
    t = await tcp_connected(relay, "tcp-user")
    w = await ws_connected(relay.ws_port, relay.token("ws-user"))
    sub = (await t.call("subscribe", {"channel": ch}))["subscribe"]
    assert sub["recoverable"] is True and sub["offset"] == 0
    await w.call("subscribe", {"channel": ch})
    # publish from TCP, both receive; publish from WS, both receive
    assert (await t.call("publish", {"channel": ch, "data": {"from": "tcp", "n": [1, 2]}})) == {"id": 3, "publish": {}}
    await w.call("publish", {"channel": ch, "data": {"from": "ws"}})
    got_t = []
    while len(got_t) < 2:
        p = await t.push()
        if "pub" in p:
            got_t.append(p["pub"])
    assert [p["data"]["from"] for p in got_t] == ["tcp", "ws"] and [p["offset"] for p in got_t] == [1, 2]
    assert got_t[0]["data"]["n"] == [1, 2] and got_t[1]["info"]["user"] == "ws-user"
    assert [(await w.pub())["pub"]["data"]["from"] for _ in range(2)] == ["tcp", "ws"]
    pres = (await t.call("presence", {"channel": ch}))["presence"]["presence"]
    assert sorted(v["user"] for v in pres.values()) == ["tcp-user", "ws-user"]
    hist = (await t.call("history", {"channel": ch, "limit": 10}))["history"]
    assert [p["offset"] for p in hist["publications"]] == [1, 2]
    # recovery over TCP
    epoch = sub["epoch"]
    t.close()
    await w.call("publish", {"channel": ch, "data": {"from": "ws", "missed": True}})
    t2 = await tcp_connected(relay, "tcp-user")
    rec = (await t2.call("subscribe", {"channel": ch, "recover": True, "offset": 2, "epoch": epoch}))["subscribe"]
    assert rec["recovered"] is True and [p["data"]["missed"] for p in rec["publications"]] == [True]
    t2.close()
    w.close()


async def test_tcp_binary_data_refused(relay):
    t = await tcp_connected(relay, "u")
    ch = f"chat:{uuid.uuid4().hex[:8]}"
    await t.call("subscribe", {"channel": ch})
    r = await t.call("publish", {"channel": ch, "data": b"\x00\x01"})
    assert r["error"]["code"] == 107  # JSON subscribers could not receive it
    t.close()


async def test_tcp_nan_and_infinity_are_refused_so_every_wire_gets_one_message(relay):
    """JSON has no NaN or Infinity: a WebSocket subscriber would get null where a TCP one gets nan. A publish
    carrying either is refused (107) and reaches nobody; finite floats reach both wires as the same number."""
    t = await tcp_connected(relay, "u")
    w = await ws_connected(relay.ws_port, relay.token("w"))
    ch = f"chat:{uuid.uuid4().hex[:8]}"
    await t.call("subscribe", {"channel": ch})
    await w.call("subscribe", {"channel": ch})
    nan, inf = float("nan"), float("inf")
    for data in (nan, inf, -inf, [1, {"x": nan}], {"a": {"b": [inf]}}):
        r = await t.call("publish", {"channel": ch, "data": data})
        assert r.get("error", {}).get("code") == 107 and "must be JSON" in r["error"]["message"], (data, r)
    assert "error" in await t.call("rpc", {"method": "m", "data": {"v": nan}})
    await t.call("publish", {"channel": ch, "data": {"price": 19.99, "big": 1e300}})
    assert (await w.pub())["pub"]["data"] == {"price": 19.99, "big": 1e300}  # the first and only one
    pushes = [await t.push()]
    while "pub" not in pushes[-1]:
        pushes.append(await t.push())
    assert [p["pub"]["data"] for p in pushes if "pub" in p] == [{"price": 19.99, "big": 1e300}]
    t.close()
    w.close()


async def test_tcp_ping_is_empty_map(relay_factory):
    r = relay_factory({"ping_interval": 1.0, "pong_timeout": 1.0})
    t = await tcp_connected(r, "u")
    assert await t.message(timeout=5) == {}
    await t.send({})
    assert await t.message(timeout=5) == {}
    # no pong this time
    push = await t.message(timeout=5)
    assert push["push"]["disconnect"] == {"code": 3012, "reason": "no pong", "reconnect": True}
