"""The client protocol over a real WebSocket, checked frame by frame against Centrifugo's shapes."""

import asyncio
import uuid

import pytest

from tests.rawclients import RawTCP, RawWS, ws_connected


def chan(ns="chat"):
    return f"{ns}:{uuid.uuid4().hex[:10]}"


async def test_connect_reply_shape(relay):
    ws = await RawWS.open(relay.ws_port)
    reply = await ws.call("connect", {"token": relay.token("alice", ttl=600), "name": "test"})
    c = reply["connect"]
    assert len(c["client"]) == 32 and c["version"]
    assert c["ping"] == 25 and c["pong"] is True
    assert c["expires"] is True and 590 <= c["ttl"] <= 600
    ws.close()


async def test_batched_commands_get_batched_replies(relay):
    ws = await RawWS.open(relay.ws_port)
    ch = chan("pub")
    await ws.send_cmds({"id": 1, "connect": {"token": relay.token("alice")}},
                       {"id": 2, "subscribe": {"channel": ch}},
                       {"id": 3, "publish": {"channel": ch, "data": {"n": 1}}})
    op, payload = await ws.frame()
    lines = payload.split(b"\n")
    # all replies (and the publication) arrive in one frame, in order
    assert op == 1 and len(lines) == 4, payload
    msgs = [__import__("orjson").loads(x) for x in lines]
    assert [m.get("id") for m in msgs] == [1, 2, None, 3]
    assert msgs[2]["push"]["pub"]["data"] == {"n": 1}
    ws.close()


async def test_subscribe_publish_fanout_with_offsets_and_info(relay):
    ch = chan()
    a = await ws_connected(relay.ws_port, relay.token("alice"))
    b = await ws_connected(relay.ws_port, relay.token("bob"))
    ra = await a.call("subscribe", {"channel": ch})
    rb = await b.call("subscribe", {"channel": ch})
    assert ra["subscribe"]["recoverable"] is True and ra["subscribe"]["positioned"] is True
    assert ra["subscribe"]["offset"] == 0 and ra["subscribe"]["epoch"]
    assert rb["subscribe"]["epoch"] == ra["subscribe"]["epoch"]
    for i in range(3):
        assert (await a.call("publish", {"channel": ch, "data": {"i": i}})) == {"id": a._id, "publish": {}}
    for ws in (a, b):
        pubs = []
        while len(pubs) < 3:
            p = await ws.push()
            if "pub" in p:
                pubs.append(p)
        assert [p["pub"]["data"]["i"] for p in pubs] == [0, 1, 2]
        assert [p["pub"]["offset"] for p in pubs] == [1, 2, 3]
        assert all(p["channel"] == ch and p["pub"]["info"]["user"] == "alice" for p in pubs)
    a.close()
    b.close()


async def test_join_leave_and_presence(relay):
    ch = chan()
    a = await ws_connected(relay.ws_port, relay.token("alice"))
    b = await ws_connected(relay.ws_port, relay.token("bob"))
    await a.call("subscribe", {"channel": ch, "join_leave": True})
    await b.call("subscribe", {"channel": ch})
    join = await a.push()
    assert join["channel"] == ch and join["join"]["info"]["user"] in ("alice", "bob")
    if join["join"]["info"]["user"] == "alice":
        join = await a.push()
    assert join["join"]["info"]["user"] == "bob"
    pres = (await a.call("presence", {"channel": ch}))["presence"]["presence"]
    assert sorted(v["user"] for v in pres.values()) == ["alice", "bob"]
    assert all(k == v["client"] for k, v in pres.items())
    stats = (await a.call("presence_stats", {"channel": ch}))["presence_stats"]
    assert stats == {"num_clients": 2, "num_users": 2}
    await b.call("unsubscribe", {"channel": ch})
    leave = await a.push()
    assert leave["leave"]["info"]["user"] == "bob"
    stats = (await a.call("presence_stats", {"channel": ch}))["presence_stats"]
    assert stats == {"num_clients": 1, "num_users": 1}
    b.close()
    leave_after_close = None
    c = await ws_connected(relay.ws_port, relay.token("carol"))
    await c.call("subscribe", {"channel": ch})
    assert (await a.push())["join"]["info"]["user"] == "carol"
    c.close()  # abrupt close: presence is cleaned up and leave is sent
    leave_after_close = await a.push()
    assert leave_after_close["leave"]["info"]["user"] == "carol"
    a.close()


async def test_history_limit_since_reverse(relay):
    ch = chan()
    a = await ws_connected(relay.ws_port, relay.token("alice"))
    await a.call("subscribe", {"channel": ch})
    for i in range(5):
        await a.call("publish", {"channel": ch, "data": i})
    h = (await a.call("history", {"channel": ch, "limit": -1}))["history"]
    assert [p["data"] for p in h["publications"]] == [0, 1, 2, 3, 4] and h["offset"] == 5
    epoch = h["epoch"]
    h = (await a.call("history", {"channel": ch, "limit": 2, "reverse": True}))["history"]
    assert [p["data"] for p in h["publications"]] == [4, 3]
    h = (await a.call("history", {"channel": ch, "limit": 10, "since": {"offset": 3, "epoch": epoch}}))["history"]
    assert [p["offset"] for p in h["publications"]] == [4, 5]
    h = (await a.call("history", {"channel": ch}))["history"]
    assert "publications" not in h or h["publications"] == []  # limit 0: position only
    bad = await a.call("history", {"channel": ch, "limit": 10, "since": {"offset": 1, "epoch": "other"}})
    assert bad["error"]["code"] == 112
    a.close()


async def test_recovery_after_reconnect(relay):
    ch = chan()
    a = await ws_connected(relay.ws_port, relay.token("alice"))
    sub = (await a.call("subscribe", {"channel": ch}))["subscribe"]
    await a.call("publish", {"channel": ch, "data": "seen"})
    seen = await a.pub()
    pos = (seen["pub"]["offset"], sub["epoch"])
    a.close()
    b = await ws_connected(relay.ws_port, relay.token("bob"))
    await b.call("subscribe", {"channel": ch})
    for i in range(3):
        await b.call("publish", {"channel": ch, "data": f"missed-{i}"})
    a2 = await ws_connected(relay.ws_port, relay.token("alice"))
    r = (await a2.call("subscribe", {"channel": ch, "recover": True, "offset": pos[0], "epoch": pos[1]}))["subscribe"]
    assert r["recovered"] is True and r["was_recovering"] is True
    assert [p["data"] for p in r["publications"]] == ["missed-0", "missed-1", "missed-2"]
    assert r["offset"] == 4 and r["epoch"] == pos[1]
    # nothing missed since: recovered with no publications
    await a2.call("unsubscribe", {"channel": ch})
    r = (await a2.call("subscribe", {"channel": ch, "recover": True, "offset": 4, "epoch": pos[1]}))["subscribe"]
    assert r["recovered"] is True and "publications" not in r
    # wrong epoch: not recovered, never a silent gap
    await a2.call("unsubscribe", {"channel": ch})
    r = (await a2.call("subscribe", {"channel": ch, "recover": True, "offset": 1, "epoch": "gone"}))["subscribe"]
    assert r["recovered"] is False and r["was_recovering"] is True and r["epoch"] == pos[1]
    # the reject-unrecovered flag turns that into error 112
    await a2.call("unsubscribe", {"channel": ch})
    r = await a2.call("subscribe", {"channel": ch, "recover": True, "offset": 1, "epoch": "gone", "flag": 2})
    assert r["error"]["code"] == 112
    a2.close()
    b.close()


async def test_recovery_beyond_history_size_is_not_recovered(relay_factory):
    r = relay_factory({"namespaces": {"chat": {"history_size": 3}}})
    ch = chan()
    a = await ws_connected(r.ws_port, r.token("alice"))
    sub = (await a.call("subscribe", {"channel": ch}))["subscribe"]
    for i in range(6):
        await a.call("publish", {"channel": ch, "data": i})
    res = (await a.call("subscribe", {"channel": ch + "x", "recover": True, "offset": 0, "epoch": sub["epoch"]}))
    assert res["subscribe"]["recovered"] is False
    await a.call("unsubscribe", {"channel": ch})
    res = (await a.call("subscribe", {"channel": ch, "recover": True, "offset": 1, "epoch": sub["epoch"]}))
    assert res["subscribe"]["recovered"] is False  # offsets 2..3 fell out of the 3-entry history
    await a.call("unsubscribe", {"channel": ch})
    res = (await a.call("subscribe", {"channel": ch, "recover": True, "offset": 3, "epoch": sub["epoch"]}))
    assert res["subscribe"]["recovered"] is True
    assert [p["data"] for p in res["subscribe"]["publications"]] == [3, 4, 5]
    a.close()


async def test_refresh(relay):
    a = await ws_connected(relay.ws_port, relay.token("alice", ttl=60))
    r = (await a.call("refresh", {"token": relay.token("alice", ttl=3600)}))["refresh"]
    assert r["expires"] is True and r["ttl"] > 3000 and r["client"]
    a.close()
    b = await ws_connected(relay.ws_port, relay.token("alice", ttl=60))
    await b.send_cmds({"id": 9, "refresh": {"token": relay.token("mallory")}})
    assert await b.expect_close() == (3500, "invalid token")


async def test_server_ping_and_pong(relay_factory):
    r = relay_factory({"ping_interval": 1.0, "pong_timeout": 1.0})
    polite = await ws_connected(r.ws_port, r.token("alice"))
    rude = await ws_connected(r.ws_port, r.token("bob"))
    for _ in range(3):
        assert await polite.message(timeout=5) == {}  # a ping is an empty command
        await polite.send_text("{}")  # the pong
    assert await rude.message(timeout=5) == {}
    assert await rude.expect_close(timeout=5) == (3012, "no pong")
    assert await polite.call("presence_stats", {"channel": "lobby"})  # still alive
    polite.close()


async def test_stale_connection_closed(relay_factory):
    r = relay_factory({"client_stale_timeout": 0.5})
    ws = await RawWS.open(r.ws_port)
    assert await ws.expect_close(timeout=5) == (3502, "stale")


async def test_expired_token_refresh_push_then_3005(relay_factory):
    r = relay_factory({"token_expire_grace": 1.0})
    ws = await ws_connected(r.ws_port, r.token("alice", ttl=1))
    push = await ws.push(timeout=5)  # at exp: told to refresh
    assert push == {"refresh": {"expires": True, "ttl": 0}}
    assert await ws.expect_close(timeout=5) == (3005, "connection expired")  # no refresh within the grace
    # refreshing in time keeps the connection
    ws2 = await ws_connected(r.ws_port, r.token("bob", ttl=1))
    assert await ws2.push(timeout=5) == {"refresh": {"expires": True, "ttl": 0}}
    assert (await ws2.call("refresh", {"token": r.token("bob", ttl=60)}))["refresh"]["ttl"] > 50
    await asyncio.sleep(1.5)
    assert (await ws2.call("presence_stats", {"channel": "lobby"}))["id"]  # still connected: it answers
    ws2.close()


async def test_client_close_handshake(relay):
    ws = await ws_connected(relay.ws_port, relay.token("alice"))
    from tests.wsframes import client_frame

    await ws.send_raw(client_frame((1000).to_bytes(2, "big") + b"bye", opcode=8))
    assert (await ws.expect_close())[0] == 1000
    assert await ws.eof()


async def test_ws_ping_frame_gets_pong(relay):
    ws = await ws_connected(relay.ws_port, relay.token("alice"))
    from tests.wsframes import client_frame

    await ws.send_raw(client_frame(b"hi", opcode=9))
    assert await ws.frame() == (10, b"hi")
    ws.close()


@pytest.mark.parametrize("ns", ["chat", "news"])
async def test_unsubscribe_then_no_more_publications(relay, ns):
    ch = chan(ns)
    a = await ws_connected(relay.ws_port, relay.token("alice"))
    await a.call("subscribe", {"channel": ch})
    await a.call("unsubscribe", {"channel": ch})
    import urllib.request
    import json
    req = urllib.request.Request(f"{relay.api_url}/publish", method="POST",
                                 data=json.dumps({"channel": ch, "data": 1}).encode(),
                                 headers={"X-API-Key": relay.api_key})
    await asyncio.to_thread(lambda: urllib.request.urlopen(req).read())
    with pytest.raises(asyncio.TimeoutError):
        await a.pub(timeout=0.3)
    a.close()


async def test_write_delay_coalesces_across_iterations(relay_factory):
    r = relay_factory({"client_write_delay": 0.5})
    ch = chan("pub")
    a = await ws_connected(r.ws_port, r.token("alice"))
    await a.call("subscribe", {"channel": ch})
    b = await ws_connected(r.ws_port, r.token("bob"))
    await b.call("subscribe", {"channel": ch})
    for i in range(3):  # three separate messages, in separate loop iterations
        await b.send_cmds({"id": 10 + i, "publish": {"channel": ch, "data": i}})
        await asyncio.sleep(0.02)
    op, payload = await a.frame()
    while payload == b"{}":  # a server ping (each client's falls at a random moment of ping_interval)
        op, payload = await a.frame()
    assert op == 1 and payload.count(b'"pub"') == 3  # one frame, one write
    a.close()
    b.close()


async def test_sigterm_disconnects_with_shutdown_code(relay_factory):
    r = relay_factory()
    ws = await ws_connected(r.ws_port, r.token("alice"))
    t = await RawTCP.open(r.tcp_port)
    await t.call("connect", {"token": r.token("bob")})
    r.proc.terminate()
    assert await ws.expect_close() == (3001, "shutdown")
    push = await t.push()
    assert push["disconnect"] == {"code": 3001, "reason": "shutdown", "reconnect": True}
    assert await asyncio.to_thread(r.proc.wait, 10) == 0
