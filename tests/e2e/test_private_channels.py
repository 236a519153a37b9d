"""Private channels: user-limited names and subscription tokens; no trick reaches another user's chat."""

import time

import jwt

from tests.rawclients import RawWS, ws_connected
from tests.relayproc import SECRET


def sub_token(user, channel, ttl=60):
    return jwt.encode({"sub": user, "channel": channel, "exp": int(time.time() + ttl)}, SECRET, algorithm="HS256")


async def test_user_limited_channel_tricks(relay):
    alice = await ws_connected(relay.ws_port, relay.token("alice"))
    bob_chat = "chat:order7#bob,agent1"
    for trick in (bob_chat, "chat:order7#Bob,agent1", "chat:order7#Alice,agent1", "chat:order7#\u0430lice,agent1",
                  "chat:order7#alice ,agent1", "chat:order7#bob,agent1 "):
        r = await alice.call("subscribe", {"channel": trick})
        assert r["error"]["code"] == 103, trick
    assert (await alice.call("subscribe", {"channel": "chat:order7#" + "x" * 300}))["error"]["code"] == 107
    assert (await alice.call("history", {"channel": bob_chat, "limit": 10}))["error"]["code"] == 103
    assert (await alice.call("presence", {"channel": bob_chat}))["error"]["code"] == 103
    assert (await alice.call("publish", {"channel": bob_chat, "data": 1}))["error"]["code"] == 103
    alice.close()


async def test_subscription_tokens(relay_factory):
    r = relay_factory({"token_expire_grace": 0.5})
    ch = "closed:vip-room"  # a namespace where subscribing needs a token
    alice = await ws_connected(r.ws_port, r.token("alice"))
    assert (await alice.call("subscribe", {"channel": ch}))["error"]["code"] == 103
    for bad in (sub_token("bob", ch), sub_token("alice", "closed:other"), "garbage"):
        assert (await alice.call("subscribe", {"channel": ch, "token": bad}))["error"]["code"] == 103
    assert (await alice.call("subscribe", {"channel": ch, "token": sub_token("alice", ch, ttl=-5)}))["error"]["code"] \
        == 109
    ok = (await alice.call("subscribe", {"channel": ch, "token": sub_token("alice", ch, ttl=2)}))["subscribe"]
    assert ok["expires"] is True and 1 <= ok["ttl"] <= 2
    refreshed = (await alice.call("sub_refresh", {"channel": ch, "token": sub_token("alice", ch, ttl=60)}))
    assert refreshed["sub_refresh"]["ttl"] > 50
    # a subscription token never opens a connection
    ws = await RawWS.open(r.ws_port)
    await ws.send_cmds({"id": 1, "connect": {"token": sub_token("alice", ch)}})
    assert await ws.expect_close() == (3500, "invalid token")
    # not refreshed: the connection ends with 3006 after exp + grace
    bob = await ws_connected(r.ws_port, r.token("bob"))
    assert "subscribe" in await bob.call("subscribe", {"channel": ch, "token": sub_token("bob", ch, ttl=1)})
    assert await bob.expect_close(timeout=5) == (3006, "subscription expired")
    await alice.call("presence_stats", {"channel": "lobby"})  # alice, refreshed, is still connected
    alice.close()
