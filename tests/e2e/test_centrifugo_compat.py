"""Where relay used to differ from Centrifugo on JSON over WebSocket (issue 21), each checked with the exact
frame an SDK sends: a connect or subscription token without ``sub`` (anonymous), ``rpc`` with no handler
(108), recovery with no epoch (what centrifuge-js sends after ``getState`` returned offset 0), and the
``flag`` bit that asks for 112 instead of an unrecovered subscription."""

from __future__ import annotations

import time
import uuid

import jwt

from tests.rawclients import RawWS, ws_connected
from tests.relayproc import API_KEY, SECRET


def chan(ns: str) -> str:
    return f"{ns}:{uuid.uuid4().hex[:10]}"


def token(**claims) -> str:
    return jwt.encode({"exp": int(time.time()) + 600, **claims}, SECRET, algorithm="HS256")


async def api(relay, method: str, params: dict) -> dict:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        async with http.post(f"http://127.0.0.1:{relay.api_port}/api/{method}", json=params,
                             headers={"X-API-Key": API_KEY}) as r:
            assert r.status == 200, await r.text()
            return await r.json()


async def test_connect_token_without_sub_is_an_anonymous_connection(relay):
    ch = chan("news")  # anonymous subscribers allowed
    ws = await RawWS.open(relay.ws_port)
    reply = await ws.call("connect", {"token": token(info={"name": "guest"}), "name": "js"})
    assert "error" not in reply and len(reply["connect"]["client"]) == 32
    assert reply["connect"]["expires"] is True  # the token's other claims apply
    sub = await ws.call("subscribe", {"channel": ch})
    assert "error" not in sub, sub
    # an empty sub is the same
    ws2 = await RawWS.open(relay.ws_port)
    assert "connect" in await ws2.call("connect", {"token": token(sub="")})
    # a user-only namespace still refuses the anonymous connection
    denied = await ws2.call("subscribe", {"channel": chan("chat")})
    assert denied["error"]["code"] == 103
    ws.close()
    ws2.close()


async def test_subscription_token_without_sub_on_an_anonymous_connection(relay):
    ch = chan("closed")  # token-only namespace
    ws = await RawWS.open(relay.ws_port)
    await ws.call("connect", {"token": token()})
    reply = await ws.call("subscribe", {"channel": ch, "token": token(channel=ch)})
    assert "subscribe" in reply, reply
    # a token for a named user does not fit the anonymous connection
    other = chan("closed")
    refused = await ws.call("subscribe", {"channel": other, "token": token(sub="alice", channel=other)})
    assert refused["error"]["code"] == 103
    ws.close()


async def test_anonymous_connection_tokens_can_be_refused(relay_factory):
    r = relay_factory({"disallow_anonymous_connection_tokens": True})
    ws = await RawWS.open(r.ws_port)
    await ws.send_cmds({"id": 1, "connect": {"token": token()}})
    assert await ws.expect_close() == (3507, "permission denied")
    named = await ws_connected(r.ws_port, r.token("alice"))  # a token with a user still connects
    named.close()


async def test_rpc_without_a_handler_is_not_available(relay):
    ws = await ws_connected(relay.ws_port, relay.token("alice"))
    reply = await ws.call("rpc", {"method": "getCurrentYear", "data": {}})
    assert reply["error"] == {"code": 108, "message": "not available"}
    ws.close()


async def test_rpc_with_handlers_but_none_for_the_method_is_not_found(relay_factory):
    r = relay_factory({"proxy": {"rpc_routes": {"orders.*": "http://127.0.0.1:9/rpc"}}})
    ws = await ws_connected(r.ws_port, r.token("alice"))
    reply = await ws.call("rpc", {"method": "cart.add", "data": {}})
    assert reply["error"]["code"] == 104
    ws.close()


async def publish(relay, channel: str, n: int) -> None:
    for i in range(n):
        assert "error" not in await api(relay, "publish", {"channel": channel, "data": {"i": i + 1}})


async def test_recover_without_epoch_on_a_fresh_channel(relay):
    ch = chan("chat")
    ws = await ws_connected(relay.ws_port, relay.token("alice"))
    # centrifuge-js after getState() returned {offset: 0, epoch: ''}: flag 3, recover, no offset, no epoch
    reply = await ws.call("subscribe", {"channel": ch, "flag": 3, "recover": True})
    res = reply["subscribe"]
    assert res["recovered"] is True and res["was_recovering"] is True, res
    assert res["epoch"] and res["offset"] == 0 and not res.get("publications")
    ws.close()


async def test_recover_without_epoch_delivers_what_the_stream_holds(relay):
    ch = chan("chat")
    await publish(relay, ch, 3)
    ws = await ws_connected(relay.ws_port, relay.token("alice"))
    reply = await ws.call("subscribe", {"channel": ch, "flag": 3, "recover": True, "offset": 0, "epoch": ""})
    res = reply["subscribe"]
    assert res["recovered"] is True, res
    assert [p["offset"] for p in res["publications"]] == [1, 2, 3]
    assert [p["data"]["i"] for p in res["publications"]] == [1, 2, 3]
    # from an offset in the middle, still without an epoch
    ws2 = await ws_connected(relay.ws_port, relay.token("bob"))
    res2 = (await ws2.call("subscribe", {"channel": ch, "flag": 3, "recover": True, "offset": 2}))["subscribe"]
    assert res2["recovered"] is True and [p["offset"] for p in res2["publications"]] == [3]
    # and the subscription is live after the recovery
    await publish(relay, ch, 1)
    assert (await ws.pub())["pub"]["offset"] == 4
    ws.close()
    ws2.close()


async def test_flag_reject_unrecovered_gives_112_only_when_asked(relay):
    ch = chan("news")  # history_size 10: 15 publications trim offsets 1-5
    await publish(relay, ch, 15)
    ws = await ws_connected(relay.ws_port, relay.token("alice"))
    asked = await ws.call("subscribe", {"channel": ch, "flag": 3, "recover": True, "offset": 2})
    assert asked["error"] == {"code": 112, "message": "unrecoverable position"}
    # without bit 2 (flag 1, what the SDK sends without getState): subscribed, recovered false
    res = (await ws.call("subscribe", {"channel": ch, "flag": 1, "recover": True, "offset": 2}))["subscribe"]
    assert res["was_recovering"] is True and not res.get("recovered") and res["offset"] == 15
    assert not res.get("publications")
    ws.close()
    # a wrong epoch is unrecoverable too; an empty one is any epoch
    ws2 = await ws_connected(relay.ws_port, relay.token("bob"))
    wrong = await ws2.call("subscribe", {"channel": ch, "flag": 3, "recover": True, "offset": 15, "epoch": "nope"})
    assert wrong["error"]["code"] == 112
    right = await ws2.call("subscribe", {"channel": ch, "flag": 3, "recover": True, "offset": 15})
    assert right["subscribe"]["recovered"] is True
    ws2.close()


async def test_flag_channel_compaction_names_the_channel_by_id_in_pushes(relay):
    ch = chan("chat")  # join/leave on, presence on
    alice = await ws_connected(relay.ws_port, relay.token("alice"))
    bob = await ws_connected(relay.ws_port, relay.token("bob"))
    # the current centrifuge-js sends flag 1 on every subscribe
    res = (await alice.call("subscribe", {"channel": ch, "flag": 1}))["subscribe"]
    cid = res["id"]
    assert type(cid) is int and cid > 0
    plain = (await bob.call("subscribe", {"channel": ch}))["subscribe"]
    assert "id" not in plain
    join = await alice.push()  # her own join first, then bob's: both by id
    assert join == {"id": cid, "join": {"info": {"client": alice.client_id, "user": "alice"}}}
    join = await alice.push()
    assert join == {"id": cid, "join": {"info": {"client": bob.client_id, "user": "bob"}}}
    await bob.call("publish", {"channel": ch, "data": {"text": "hi"}})
    pub = await alice.pub()
    assert "channel" not in pub and pub["id"] == cid and pub["pub"]["data"] == {"text": "hi"}
    assert (await bob.pub())["channel"] == ch  # without the flag: the channel's name, as before
    # another channel gets another id; a second compacting subscriber of the same channel the same one
    other = chan("chat")
    assert (await alice.call("subscribe", {"channel": other, "flag": 3}))["subscribe"]["id"] != cid
    carol = await ws_connected(relay.ws_port, relay.token("carol"))
    assert (await carol.call("subscribe", {"channel": ch, "flag": 1}))["subscribe"]["id"] == cid
    # an unsubscribe push still names the channel (Centrifugo routes it by name)
    await alice.call("unsubscribe", {"channel": other})
    for ws in (alice, bob, carol):
        ws.close()
