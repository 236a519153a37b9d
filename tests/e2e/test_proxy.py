"""The event proxy against a real HTTP backend (tests/proxybackend.py) and real clients: the
Centrifugo proxy format both ways, forwarded headers and cookies, every hook, and every way a
backend can fail (down, slow, 5xx, malformed, overloaded) turning into a clear answer."""

from __future__ import annotations

import asyncio
import time

import pytest
from centrifuge import Client, ClientEventHandler, ConnectedContext, DisconnectedContext

from relay.auth import make_connect_token
from tests.e2e.test_python_sdk import Recorder
from tests.proxybackend import Misbehave, ProxyBackend
from tests.rawclients import RawWS
from tests.relayproc import SECRET

COOKIE = "Cookie: session=s-alice; theme=dark; tracking=xyz\r\nX-Secret: do-not-forward\r\n"


@pytest.fixture
async def backend():
    b = await ProxyBackend().start()
    yield b
    await b.stop()


def sessions(body, headers):
    """The backend's connect hook: who is this cookie?"""
    cookie = headers.get("Cookie", "")
    if "session=s-alice" in cookie:
        return {"result": {"user": "alice", "info": {"name": "Alice"}, "data": {"greeting": "hi Alice"},
                           "channels": ["news:alice-feed"], "meta": {"tier": "gold"}}}
    return {"disconnect": {"code": 4501, "reason": "unknown session"}}


@pytest.fixture
def proxied(relay_factory, backend):
    """relay with every hook on the backend; chat: proxies subscribe and publish."""
    def make(proxy=None, namespaces=None):
        cfg = {"proxy": {**backend.endpoints(), "timeout": 0.5, "cookies": ["session"], **(proxy or {})},
               "namespaces": {"chat": {"proxy_subscribe": True, "proxy_publish": True},
                              **(namespaces or {})}}
        return relay_factory(cfg)
    return make


async def connect_raw(relay, extra: str = COOKIE, params: dict | None = None) -> tuple[RawWS, dict]:
    ws = await RawWS.open(relay.ws_port, extra=extra)
    return ws, await ws.call("connect", params or {})


async def test_connect_from_a_cookie_with_the_python_sdk(proxied, backend):
    backend.answer["connect"] = sessions
    relay = proxied()
    connected: list[ConnectedContext] = []

    class Events(ClientEventHandler):
        async def on_connected(self, ctx: ConnectedContext) -> None:
            connected.append(ctx)

    client = Client(relay.ws_url, events=Events(), headers={"Cookie": "session=s-alice; tracking=xyz",
                                                            "X-Secret": "no"})
    await client.connect()
    await client.ready()
    assert connected[0].data == {"greeting": "hi Alice"}
    body, headers = backend.seen["connect"][0]
    assert body["transport"] == "websocket" and body["protocol"] == "json" and body["encoding"] == "json"
    assert body["client"] == connected[0].client and body["user"] == ""
    assert headers["Cookie"] == "session=s-alice"  # only the allow-listed cookie
    assert "X-Secret" not in headers
    # the user came from the backend: presence shows it, later hooks carry it and the meta
    await client.rpc("orders.status", {"order": "NW-1"})
    rpc_body, _ = backend.seen["rpc"][0]
    assert rpc_body["user"] == "alice" and rpc_body["meta"] == {"tier": "gold"}
    await client.disconnect()


async def test_connect_refused_and_anonymous_cookie(proxied, backend):
    backend.answer["connect"] = sessions
    relay = proxied()
    ws = await RawWS.open(relay.ws_port, extra="Cookie: session=nobody\r\n")
    await ws.send_cmds({"id": 1, "connect": {}})
    assert await ws.expect_close() == (4501, "unknown session")
    backend.answer["connect"] = {"error": {"code": 1401, "message": "log in first"}}
    ws, reply = await connect_raw(relay)
    assert reply["error"] == {"code": 1401, "message": "log in first"}
    ws.close()
    # a token still connects without asking the backend
    n = len(backend.seen["connect"])
    ws, reply = await connect_raw(relay, extra="", params={"token": make_connect_token("bob", SECRET, ttl=60)})
    assert "connect" in reply and len(backend.seen["connect"]) == n
    ws.close()


async def test_server_side_channels_from_the_backend_are_checked_against_config(proxied, backend):
    backend.answer["connect"] = {"result": {"user": "alice", "channels": [
        "news:alice-feed", "chat:order1#alice,agent", "chat:order2#bob,agent", "nope:x", "news:bad\u0007name"],
        "subs": {"news:deals": {"data": {"first": "deal"}}}}}
    relay = proxied()
    ws, reply = await connect_raw(relay)
    subs = reply["connect"]["subs"]
    assert sorted(subs) == ["chat:order1#alice,agent", "news:alice-feed", "news:deals"]
    assert subs["news:deals"]["data"] == {"first": "deal"}
    relay.api("publish", {"channel": "news:alice-feed", "data": {"n": 1}})
    assert (await ws.pub())["pub"]["data"] == {"n": 1}
    ws.close()
    assert relay.metrics()["relay_auth_failures_total", {"reason": "proxy_channel"}] == 3


async def test_backend_down_slow_5xx_or_malformed_is_a_temporary_error(proxied, backend):
    relay = proxied()
    cases = {
        "slow": Misbehave(delay=2.0),
        "5xx": Misbehave(status=502),
        "not json": Misbehave(raw=b"<html>oops</html>"),
        "unknown field": {"result": {"user": "alice", "admin": True}},
        "wrong type": {"result": {"user": 42}},
        "both": {"result": {"user": "a"}, "error": {"code": 1000, "message": "x"}},
        "bad b64": {"result": {"user": "a", "b64data": "%%%"}},
        "huge": {"result": {"user": "a", "data": "x" * 70000}},
        "bad code": {"error": {"code": 5, "message": "x"}},
    }
    for why, answer in cases.items():
        backend.answer["connect"] = answer
        t0 = time.monotonic()
        ws, reply = await connect_raw(relay)
        assert reply.get("error") == {"code": 100, "message": "internal server error", "temporary": True}, why
        assert time.monotonic() - t0 < 1.5, why  # the 0.5 s timeout, never a hang
        ws.close()
    await backend.stop()  # down
    ws, reply = await connect_raw(relay)
    assert reply["error"]["code"] == 100
    ws.close()
    m = relay.metrics()
    for kind, n in (("timeout", 1), ("status", 1), ("malformed", 7), ("unreachable", 1)):
        assert m["relay_proxy_errors_total", {"hook": "connect", "kind": kind}] == n, kind
    assert m["relay_proxy_request_duration_seconds_count", {"hook": "connect"}] == 10


async def test_connect_failure_code_is_configurable(proxied, backend):
    backend.answer["connect"] = Misbehave(status=503)
    relay = proxied({"connect_failure_code": 3004})
    ws = await RawWS.open(relay.ws_port, extra=COOKIE)
    await ws.send_cmds({"id": 1, "connect": {}})
    assert await ws.expect_close() == (3004, "backend unavailable")


async def test_reconnect_storm_is_shed_not_queued_forever(proxied, backend):
    backend.answer["connect"] = Misbehave(delay=0.4, reply={"result": {"user": "u"}})
    relay = proxied({"max_in_flight": 2, "queue_size": 3, "queue_deadline": 0.3, "timeout": 2.0})

    async def one():
        ws = await RawWS.open(relay.ws_port, extra=COOKIE)
        await ws.send_cmds({"id": 1, "connect": {}})
        try:
            msg = await ws.message()
            return ("ok", msg) if "connect" in msg else ("error", msg)
        except ConnectionError as e:
            return ("closed", str(e))
        finally:
            ws.close()

    results = await asyncio.gather(*(one() for _ in range(20)))
    kinds = [k for k, _ in results]
    assert kinds.count("ok") >= 2
    shed = [why for k, why in results if k == "closed"]
    assert len(shed) >= 10 and all("3013" in w and "retry in" in w for w in shed), results
    assert backend.max_in_flight <= 2  # the backend never saw more than max_in_flight at once
    assert relay.metrics()["relay_proxy_errors_total", {"hook": "connect", "kind": "overloaded"}] == len(shed)


async def test_subscribe_hook_refuses_or_adds_data_but_cannot_override_config(proxied, backend):
    def decide(body, headers):
        if body["channel"].endswith("secret"):
            return {"error": {"code": 1403, "message": "not your order"}}
        return {"result": {"data": {"welcome": body["channel"]}}}

    backend.answer["connect"] = {"result": {"user": "alice"}}
    backend.answer["subscribe"] = decide
    relay = proxied(namespaces={"locked": {"subscribe_access": "token", "proxy_subscribe": True}})
    ws, _ = await connect_raw(relay)
    ok = await ws.call("subscribe", {"channel": "chat:order7", "data": {"from": "page"}})
    assert ok["subscribe"]["data"] == {"welcome": "chat:order7"}
    body, _ = backend.seen["subscribe"][-1]
    assert body["user"] == "alice" and body["data"] == {"from": "page"}
    assert (await ws.call("subscribe", {"channel": "chat:order7-secret"}))["error"]["code"] == 1403
    n = len(backend.seen["subscribe"])
    # config refuses first; the backend is not even asked
    assert (await ws.call("subscribe", {"channel": "locked:x"}))["error"]["code"] == 103
    assert (await ws.call("subscribe", {"channel": "chat:x#bob"}))["error"]["code"] == 103
    assert len(backend.seen["subscribe"]) == n
    ws.close()


async def test_publish_hook_rejects_or_replaces_data(proxied, backend):
    def moderate(body, headers):
        text = body["data"].get("text", "")
        if "spam" in text:
            return {"error": {"code": 1000, "message": "rejected by moderation"}}
        return {"result": {"data": {"text": text.replace("4111 1111 1111 1111", "[card]"), "checked": True}}}

    backend.answer["connect"] = {"result": {"user": "alice"}}
    backend.answer["publish"] = moderate
    relay = proxied()
    sub = await RawWS.open(relay.ws_port)
    await sub.call("connect", {"token": make_connect_token("bob", SECRET, ttl=60)})
    await sub.call("subscribe", {"channel": "chat:room"})
    pub, _ = await connect_raw(relay)
    await pub.call("subscribe", {"channel": "chat:room"})
    bad = await pub.call("publish", {"channel": "chat:room", "data": {"text": "buy spam"}})
    assert bad["error"] == {"code": 1000, "message": "rejected by moderation"}
    # a burst of publishes (one batch): each checked, order kept, the rejected one reaches no one
    await pub.send_cmds(*({"id": 100 + i, "publish": {"channel": "chat:room", "data": {"text": t}}}
                          for i, t in enumerate(["a", "spam b", "my card 4111 1111 1111 1111", "c"])))
    got = [(await sub.pub())["pub"]["data"] for _ in range(3)]
    assert got == [{"text": "a", "checked": True}, {"text": "my card [card]", "checked": True},
                   {"text": "c", "checked": True}]
    with pytest.raises(asyncio.TimeoutError):
        await sub.pub(timeout=0.5)
    sub.close()
    pub.close()


async def test_rpc_routes_by_method(proxied, backend):
    backend.answer["connect"] = {"result": {"user": "alice"}}
    backend.answer["rpc"] = lambda body, h: {"result": {"data": {"path": body["_path"], "echo": body.get("data")}}}
    relay = proxied()
    ws, _ = await connect_raw(relay)
    r = await ws.call("rpc", {"method": "orders.status", "data": {"order": "NW-1"}})
    assert r["rpc"]["data"] == {"path": "/rpc/orders", "echo": {"order": "NW-1"}}
    r = await ws.call("rpc", {"method": "bot.ask", "data": "where is my order?"})
    assert r["rpc"]["data"]["path"] == "/rpc"
    backend.answer["rpc"] = {"error": {"code": 1404, "message": "no such order"}}
    assert (await ws.call("rpc", {"method": "orders.status"}))["error"]["code"] == 1404
    assert (await ws.call("rpc", {"method": 7}))["error"]["code"] == 107
    ws.close()


async def test_rpc_without_any_rpc_hook_is_not_available(relay_factory):
    relay = relay_factory()
    ws = await RawWS.open(relay.ws_port)
    await ws.call("connect", {"token": make_connect_token("a", SECRET, ttl=60)})
    assert (await ws.call("rpc", {"method": "x"}))["error"]["code"] == 108  # as Centrifugo without an rpc handler
    ws.close()


async def test_refresh_hook_prolongs_then_ends_a_proxied_connection(proxied, backend):
    backend.answer["connect"] = lambda b, h: {"result": {"user": "alice", "expire_at": int(time.time()) + 2}}
    refreshes = []

    def refresh(body, headers):
        refreshes.append(body)
        if len(refreshes) == 1:
            return {"result": {"expire_at": int(time.time()) + 2}}
        return {"result": {"expired": True}}

    backend.answer["refresh"] = refresh
    relay = proxied()
    ws, reply = await connect_raw(relay)
    assert reply["connect"]["expires"] is True
    assert await ws.expect_close(timeout=10) == (3005, "connection expired")
    assert len(refreshes) == 2 and refreshes[0]["user"] == "alice"


async def test_sub_refresh_hook_keeps_a_subscription_until_the_backend_says_expired(proxied, backend):
    backend.answer["connect"] = {"result": {"user": "alice"}}
    backend.answer["subscribe"] = lambda b, h: {"result": {"expire_at": int(time.time()) + 2}}
    calls = []

    def sub_refresh(body, headers):
        calls.append(body["channel"])
        return {"result": {"expire_at": int(time.time()) + 2}} if len(calls) == 1 else {"result": {"expired": True}}

    backend.answer["sub_refresh"] = sub_refresh
    relay = proxied(namespaces={"chat": {"proxy_subscribe": True, "proxy_sub_refresh": True}})
    ws, _ = await connect_raw(relay)
    reply = await ws.call("subscribe", {"channel": "chat:order9"})
    assert reply["subscribe"]["expires"] is True
    assert await ws.expect_close(timeout=10) == (3006, "subscription expired")
    assert calls == ["chat:order9", "chat:order9"]


async def test_sdk_reconnects_after_a_temporary_connect_failure(proxied, backend):
    backend.answer["connect"] = Misbehave(status=500)
    relay = proxied()
    disconnected: list[DisconnectedContext] = []

    class Events(ClientEventHandler):
        async def on_disconnected(self, ctx: DisconnectedContext) -> None:
            disconnected.append(ctx)

    client = Client(relay.ws_url, events=Events(), headers={"Cookie": "session=s-alice"}, min_reconnect_delay=0.1,
                    max_reconnect_delay=0.3)
    rec = Recorder()
    client.new_subscription("news:x", rec)
    await client.connect()
    await asyncio.sleep(0.8)
    assert len(backend.seen["connect"]) >= 2  # it kept trying
    backend.answer["connect"] = sessions  # the backend is back
    await asyncio.wait_for(client.ready(), 10)
    assert not disconnected  # temporary errors: the SDK never gave up
    await client.disconnect()
