"""Per-namespace access modes for subscribe, publish, history and presence (docs/protocol.md, "Permissions").

One relay has a namespace per mode; five kinds of client try every operation in each. The expected
answers are written out by hand, not derived from the code under test."""

import time

import jwt
import pytest

from tests.rawclients import ws_connected
from tests.relayproc import SECRET

MODES = ("none", "token", "subscribers", "authenticated", "anonymous")


def ns_config(mode: str) -> dict:
    # subscribing stays open (anonymous) except in the token namespace, so that every kind of
    # client can be a subscriber where the mode is about subscribers
    return {"subscribe_access": "token" if mode == "token" else "anonymous",
            "publish_access": mode, "history_access": mode, "presence_access": mode,
            "presence": True, "history_size": 10, "history_ttl": 60.0}


# who: anonymous / user, not subscribed / subscribed / subscribed with a subscription token
WHO = ("anon", "anon+sub", "user", "user+sub", "user+token")

# mode -> the clients that may publish, read history and presence (the rest get 103)
ALLOWED = {
    "none": set(),
    "token": {"user+token"},
    "subscribers": {"anon+sub", "user+sub", "user+token"},
    "authenticated": {"user", "user+sub", "user+token"},
    "anonymous": {"anon", "anon+sub", "user", "user+sub", "user+token"},
}


def sub_token(user: str, channel: str) -> str:
    return jwt.encode({"sub": user, "channel": channel, "exp": int(time.time() + 60)}, SECRET, algorithm="HS256")


@pytest.fixture(scope="module")
def perm_relay():
    from tests.relayproc import RelayProcess

    with RelayProcess({"allow_anonymous_connect": True,
                       "namespaces": {f"m-{m}": ns_config(m) for m in MODES}}) as r:
        yield r


async def client(r, who: str, channel: str):
    user = "" if who.startswith("anon") else "alice"
    ws = await ws_connected(r.ws_port, r.token(user) if user else "")
    if who.endswith("+sub"):
        assert "subscribe" in await ws.call("subscribe", {"channel": channel}), who
    elif who.endswith("+token"):
        assert "subscribe" in await ws.call("subscribe", {"channel": channel, "token": sub_token(user, channel)})
    return ws


@pytest.mark.parametrize("mode", [m for m in MODES if m != "token"] + ["token"])
async def test_access_modes(perm_relay, mode):
    channel = f"m-{mode}:room1"
    for who in WHO:
        if mode == "token" and who.endswith("+sub"):
            continue  # cannot subscribe there without a token: checked in test_subscribe_modes
        ws = await client(perm_relay, who, channel)
        expect_ok = who in ALLOWED[mode]
        for method, params, key in (("publish", {"channel": channel, "data": {"t": who}}, "publish"),
                                    ("history", {"channel": channel, "limit": 5}, "history"),
                                    ("presence", {"channel": channel}, "presence"),
                                    ("presence_stats", {"channel": channel}, "presence_stats")):
            reply = await ws.call(method, params)
            if expect_ok:
                assert key in reply, (mode, who, method, reply)
            else:
                assert reply.get("error", {}).get("code") == 103, (mode, who, method, reply)
        # refused or not, the connection goes on
        assert "presence_stats" in await ws.call("presence_stats", {"channel": "m-anonymous:x"})
        ws.close()


async def test_subscribe_modes(relay_factory):
    r = relay_factory({"allow_anonymous_connect": True, "namespaces": {
        "t": {"subscribe_access": "token"}, "a": {"subscribe_access": "authenticated"},
        "n": {"subscribe_access": "anonymous"}}})
    anon = await ws_connected(r.ws_port, "")
    alice = await ws_connected(r.ws_port, r.token("alice"))
    table = [  # (client, channel, with token, expected error code or None)
        (anon, "t:1", False, 103), (alice, "t:1", False, 103), (alice, "t:2", True, None), (anon, "t:3", True, None),
        (anon, "a:1", False, 103), (alice, "a:1", False, None), (anon, "a:2", True, None),
        (anon, "n:1", False, None), (alice, "n:1", False, None),
        # user-limited channels name their users whatever the mode; anonymous is never on a list
        (anon, "n:chat#", False, 103), (anon, "n:chat#,", False, 103), (anon, "n:chat#alice", False, 103),
        (alice, "n:chat#bob", False, 103), (alice, "n:chat#bob,alice", False, None),
    ]
    for ws, channel, with_token, code in table:
        params = {"channel": channel}
        if with_token:
            params["token"] = sub_token("alice" if ws is alice else "", channel)
        reply = await ws.call("subscribe", params)
        if code is None:
            assert "subscribe" in reply, (channel, reply)
        else:
            assert reply.get("error", {}).get("code") == code, (channel, reply)
    anon.close()
    alice.close()
