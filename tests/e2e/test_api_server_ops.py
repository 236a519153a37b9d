"""The server API's operations on users' connections (subscribe, unsubscribe, disconnect, refresh), driven by
`cent` against real relays: on one node, and across two nodes on a real Redis, where the user's connection is on
the other node than the API call. Also ``batch`` and the user's personal channel."""

from __future__ import annotations

import time
import uuid

import pytest
from cent import (AsyncClient, BatchRequest, DisconnectRequest, PublishRequest, RefreshRequest, SubscribeRequest,
                  UnsubscribeRequest)
from cent.dto import Disconnect, StreamPosition

from tests.rawclients import RawWS, ws_connected


def uid(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


async def next_push(ws: RawWS, key: str) -> dict:
    while True:
        push = await ws.push()
        if key in push:
            return push


@pytest.fixture
def two_nodes(redis_server, relay_factory):
    cfg = {"broker": "redis", "redis_urls": [redis_server.url], "redis_prefix": uid("o")}
    return relay_factory(cfg), relay_factory(cfg)


@pytest.fixture(params=["one node", "two nodes"])
def nodes(request, relay):
    """(the node the API call goes to, the node the user is connected to)"""
    if request.param == "one node":
        return relay, relay
    a, b = request.getfixturevalue("two_nodes")
    return a, b


async def test_subscribe_reaches_the_users_connections(nodes):
    api_node, ws_node = nodes
    user, ch = uid("u"), uid("chat:")
    ws = await ws_connected(ws_node.ws_port, ws_node.token(user))
    other = await ws_connected(ws_node.ws_port, ws_node.token(uid("x")))
    async with AsyncClient(api_node.api_url, api_node.api_key) as api:
        await api.subscribe(SubscribeRequest(user=user, channel=ch, data={"welcome": 1}))
        push = await next_push(ws, "subscribe")
        assert push["channel"] == ch
        sub = push["subscribe"]
        assert sub["recoverable"] is True and sub["positioned"] is True and sub["offset"] == 0 and sub["epoch"]
        assert sub["data"] == {"welcome": 1} and "publications" not in sub
        await api.publish(PublishRequest(channel=ch, data={"n": 1}))
        assert (await ws.pub())["pub"]["data"] == {"n": 1}
        # a server-side subscription: the client's own unsubscribe does not end it, the API's does
        await api.unsubscribe(UnsubscribeRequest(user=user, channel=ch))
        gone = await next_push(ws, "unsubscribe")
        assert gone == {"channel": ch, "unsubscribe": {"code": 2000, "reason": "server unsubscribe"}}
        assert "unsubscribe" in await other.call("unsubscribe", {"channel": "lobby"})  # another user: untouched
        assert not other.pushes
    ws.close()
    other.close()


async def test_subscribe_recovers_since_a_position(nodes):
    api_node, ws_node = nodes
    user, ch = uid("u"), uid("chat:")
    async with AsyncClient(api_node.api_url, api_node.api_key) as api:
        first = await api.publish(PublishRequest(channel=ch, data={"n": 1}))
        for n in (2, 3):
            await api.publish(PublishRequest(channel=ch, data={"n": n}))
        ws = await ws_connected(ws_node.ws_port, ws_node.token(user))
        since = StreamPosition(offset=first.offset, epoch=first.epoch)
        await api.subscribe(SubscribeRequest(user=user, channel=ch, recover_since=since))
        sub = (await next_push(ws, "subscribe"))["subscribe"]
        assert sub["offset"] == 3 and sub["epoch"] == first.epoch
        assert [(await ws.pub())["pub"]["data"]["n"] for _ in range(2)] == [2, 3]  # what it missed, in order
        await api.publish(PublishRequest(channel=ch, data={"n": 4}))
        assert (await ws.pub())["pub"]["offset"] == 4
    ws.close()


async def test_refresh_and_disconnect_reach_the_users_connections(nodes):
    api_node, ws_node = nodes
    user = uid("u")
    ws = await ws_connected(ws_node.ws_port, ws_node.token(user, ttl=30))
    async with AsyncClient(api_node.api_url, api_node.api_key) as api:
        await api.refresh(RefreshRequest(user=user, expire_at=int(time.time()) + 600))
        push = await next_push(ws, "refresh")
        assert push["refresh"]["expires"] is True and 590 <= push["refresh"]["ttl"] <= 600
        await api.refresh(RefreshRequest(user=user, expired=True))
        assert await ws.expect_close() == (3005, "connection expired")
        a = await ws_connected(ws_node.ws_port, ws_node.token(user))
        b = await ws_connected(ws_node.ws_port, ws_node.token(user))
        await api.disconnect(DisconnectRequest(user=user, disconnect=Disconnect(code=4501, reason="moved"),
                                               whitelist=[b.client_id]))
        assert await a.expect_close() == (4501, "moved")
        assert "unsubscribe" in await b.call("unsubscribe", {"channel": "lobby"})  # whitelisted: still connected
    b.close()


async def test_batch_replies_in_order_sequential_and_parallel(relay):
    ch = uid("chat:")
    async with AsyncClient(relay.api_url, relay.api_key) as api:
        for parallel in (False, True):
            result = await api.batch(BatchRequest(requests=[
                PublishRequest(channel=ch, data={"n": i}) for i in range(20)], parallel=parallel))
            offsets = [r.offset for r in result.replies]
            assert len(offsets) == 20 and len(set(offsets)) == 20
            if not parallel:
                assert offsets == sorted(offsets)
    import aiohttp  # a mixed batch, as bytes: an error in one command does not fail the others

    body = {"commands": [{"publish": {"channel": ch, "data": 1}}, {"publish": {"channel": "nope:x", "data": 1}},
                         {"info": {}}, {"teleport": {}}, {"batch": {"commands": []}}, "junk"]}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{relay.api_url}/batch", json=body, headers={"X-API-Key": relay.api_key}) as r:
            replies = (await r.json())["replies"]
        assert "offset" in replies[0]["publish"]
        assert replies[1]["error"]["code"] == 102
        assert replies[2]["info"]["nodes"]
        assert replies[3]["error"]["code"] == 104 and replies[4]["error"]["code"] == 104
        assert replies[5]["error"]["code"] == 107
        too_many = {"commands": [{"info": {}}] * 1001}
        async with http.post(f"{relay.api_url}/batch", json=too_many, headers={"X-API-Key": relay.api_key}) as r:
            assert (await r.json())["error"]["code"] == 107


async def test_personal_channel_at_connect(relay_factory):
    r = relay_factory({"subscribe_to_user_personal_channel": True, "personal_channel_namespace": "personal",
                       "personal_single_connection": True,
                       "namespaces": {"personal": {"history_size": 10, "history_ttl": 60.0, "presence": True}}})
    ws = await RawWS.open(r.ws_port)
    reply = (await ws.call("connect", {"token": r.token("alice")}))["connect"]
    assert reply["subs"]["personal:#alice"]["recoverable"] is True
    async with AsyncClient(r.api_url, r.api_key) as api:
        pos = await api.publish(PublishRequest(channel="personal:#alice", data={"order": 42, "status": "shipped"}))
        pub = await ws.pub()
        assert pub["channel"] == "personal:#alice" and pub["pub"]["data"]["status"] == "shipped"
        # reconnecting with its position (connect.subs, as the SDK sends) recovers what it missed
        ws.close()
        await api.publish(PublishRequest(channel="personal:#alice", data={"order": 42, "status": "delivered"}))
        again = await RawWS.open(r.ws_port)
        sub = {"recover": True, "offset": pos.offset, "epoch": pos.epoch}
        res = (await again.call("connect", {"token": r.token("alice"), "subs": {"personal:#alice": sub}}))["connect"]
        recovered = res["subs"]["personal:#alice"]
        assert recovered["recovered"] is True
        assert [p["data"]["status"] for p in recovered["publications"]] == ["delivered"]
        # one connection per user: a third one closes this one, with 3504
        third = await ws_connected(r.ws_port, r.token("alice"))
        assert await again.expect_close() == (3504, "connection limit")
        third.close()


async def test_personal_channel_without_namespace_and_never_for_anonymous(relay_factory):
    r = relay_factory({"subscribe_to_user_personal_channel": True, "allow_anonymous_connect": True})
    ws = await RawWS.open(r.ws_port)
    reply = (await ws.call("connect", {"token": r.token("bob")}))["connect"]
    assert list(reply["subs"]) == ["#bob"]
    anon = await RawWS.open(r.ws_port)
    assert "subs" not in (await anon.call("connect", {}))["connect"]
    ws.close()
    anon.close()
