"""Demo mode's endpoints (demo.py) and the hooks it needs (typing:, agents:online), straight to the
backend (in this loop, PostgreSQL as in conftest.py, no relay: its API URL answers nothing). The
pages themselves run in test_demo_browser.py."""

from __future__ import annotations

import aiohttp
import orjson
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from examples.shop_backend.app import COOKIE, make_app, orders_channel
from examples.shop_backend.tests.conftest import add_customer, outbox_unavailable
from relay.testing import free_port

JACKET = ("Trail jacket", "M", "shipped")


@pytest_asyncio.fixture
async def http(shop_dsn):
    """A client of the backend with ``--demo`` that keeps no cookies (each call says whose it sends)."""
    app = make_app(shop_dsn, f"http://127.0.0.1:{free_port()}", "no-relay-here", bot_delay=0.01, demo=True,
                   relay_ws_url="ws://{host}:8123/connection/websocket")
    client = TestClient(TestServer(app, host="127.0.0.1"), cookie_jar=aiohttp.DummyCookieJar())
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


async def call(http, method: str, path: str, body: dict | None = None, cookie: str | None = None,
               headers: dict | None = None):
    """(status, decoded JSON, the shop_session cookie it set or None)."""
    headers = dict(headers or {})
    if cookie:
        headers["Cookie"] = f"{COOKIE}={cookie}"
    async with http.request(method, path, json=body, headers=headers) as r:
        data = orjson.loads(await r.read()) if r.content_type == "application/json" else await r.text()
        morsel = r.cookies.get(COOKIE)
        return r.status, data, morsel


async def login(http, role: str, name: str, cookie: str | None = None, user: str | None = None):
    status, data, morsel = await call(http, "POST", "/demo/api/token",
                                      {"role": role, "name": name, **({"user": user} if user else {})}, cookie)
    assert status == 200, data
    return data, morsel.value


async def test_customer_login_sets_the_cookie_and_a_reload_is_the_same_person(http):
    data, cookie = await login(http, "customer", "Guest 1234")
    user, order = data["user"], data["order"]["order"]
    assert data == {"user": user, "name": "Guest 1234", "role": "customer", "token": None,
                    "ws_url": "ws://127.0.0.1:8123/connection/websocket",
                    "order": {"order": order, "status": "packed", "ts": data["order"]["ts"],
                              "product": "Storm Shell Jacket", "size": "M"},
                    "channels": {"chat": f"support:order-{order}", "typing": f"typing:order-{order}",
                                 "orders": orders_channel(user), "sale": "sale:flash", "agents": "agents:online"}}
    _, _, morsel = await call(http, "POST", "/demo/api/token", {"role": "customer"})
    assert morsel["path"] == "/" and morsel["httponly"] and morsel["samesite"] == "Lax" and morsel["max-age"]

    again, same = await login(http, "customer", "Ada L.", cookie, user)   # a reload (and a new name)
    assert (again["user"], again["order"]["order"], again["name"], same) == (user, order, "Ada L.", cookie)
    other, new_cookie = await login(http, "customer", "Guest", cookie, "c-999999")  # expects someone else
    assert other["user"] != user and new_cookie != cookie
    stranger, _ = await login(http, "customer", "Guest", None, user)   # naming a user is no login
    assert stranger["user"] != user
    # the page's host decides relay's host: the cookie goes along with the handshake
    status, data, _ = await call(http, "POST", "/demo/api/token", {"role": "customer"},
                                 headers={"Host": "localhost:9000"})
    assert status == 200 and data["ws_url"] == "ws://localhost:8123/connection/websocket"
    assert (await call(http, "POST", "/demo/api/token", {"role": "admin"}))[0] == 400


async def test_agent_endpoints_take_the_agents_cookie(http, shop_dsn):
    customer, customer_cookie = await login(http, "customer", "Cleo")
    agent, cookie = await login(http, "agent", "Anna")
    assert agent["token"] is None and agent["user"].startswith("a-")
    assert agent["channels"] == {"inbox": "agents:queue", "agents": "agents:online", "sale": "sale:flash"}
    assert (await login(http, "agent", "Anna"))[0]["user"] == agent["user"]    # agents are known by name
    assert (await login(http, "agent", "Bert", cookie))[0]["user"] != agent["user"]

    for path, method in (("/demo/api/chats", "GET"), ("/demo/api/subscription-token", "POST"),
                         ("/demo/api/order-status", "POST"), ("/demo/api/sale", "POST")):
        assert (await call(http, method, path, {}))[0] == 401, path
        assert (await call(http, method, path, {}, customer_cookie))[0] == 403, path
    # a bearer token is not what counts (the pages send none in this mode, or a stale one)
    status, data, _ = await call(http, "POST", "/demo/api/subscription-token", {"channel": "agents:online"}, cookie,
                                 headers={"Authorization": "Bearer "})
    assert (status, data) == (200, {"token": ""})

    status, data, _ = await call(http, "GET", "/demo/api/chats", cookie=cookie)
    order = customer["order"]["order"]
    mine = [c for c in data["chats"] if c["customer"] == customer["user"]]
    assert status == 200 and mine == [{"customer": customer["user"], "name": "Cleo", "chat": f"support:order-{order}",
                                       "typing": f"typing:order-{order}", "opened_at": mine[0]["opened_at"],
                                       "order": order, "handed_off": False}]

    status, data, _ = await call(http, "POST", "/demo/api/sale", {"text": "  "}, cookie)
    assert status == 400
    status, data, _ = await call(http, "POST", "/demo/api/sale", {"text": "30% off"}, cookie)
    assert status == 502 and "the publish through relay failed" in data["error"]   # no relay here

    for body, code in (({"customer": customer["user"], "order": "NW-1042", "status": "shipped"}, 400),
                       ({"customer": customer["user"], "order": order, "status": "lost"}, 400),
                       ({"customer": "c-999999", "order": order, "status": "shipped"}, 404)):
        assert (await call(http, "POST", "/demo/api/order-status", body, cookie))[0] == code, body
    if outbox_unavailable():
        pytest.skip(outbox_unavailable())
    from relay.integrations.outbox import init_table

    await init_table(shop_dsn)
    status, data, _ = await call(http, "POST", "/demo/api/order-status",
                                 {"customer": customer["user"], "order": f"#{order}", "status": "shipped"}, cookie)
    assert status == 200 and data == {"ok": True, "order": order, "status": "shipped", "ts": data["ts"], "version": 2}
    status, data, _ = await call(http, "POST", "/demo/api/token", {"role": "customer", "user": customer["user"]},
                                 customer_cookie)
    assert data["order"]["status"] == "shipped"


async def test_hooks_guard_typing_channels_and_agents_online(http, shop_dsn):
    import asyncpg

    conn = await asyncpg.connect(shop_dsn)
    try:
        cid, _, (mine,) = await add_customer(conn, "Ivy", JACKET)
        _, _, (theirs,) = await add_customer(conn, "Jon", JACKET)
        aid = await conn.fetchval("INSERT INTO agents (name) VALUES ('Grace') RETURNING id")
    finally:
        await conn.close()

    async def hook(name: str, user: str, body: dict) -> dict:
        base = {"client": "c1", "transport": "websocket", "protocol": "json", "encoding": "json", "user": user,
                "meta": {"name": "Ivy", "role": "customer"}}
        status, data, _ = await call(http, "POST", f"/relay/{name}", {**base, **body})
        assert status == 200
        return data

    me, agent = f"c-{cid}", f"a-{aid}"
    assert await hook("subscribe", me, {"channel": f"typing:order-{mine}"}) == {"result": {}}
    assert await hook("subscribe", agent, {"channel": f"typing:order-{theirs}"}) == {"result": {}}
    assert (await hook("subscribe", me, {"channel": f"typing:order-{theirs}"}))["error"]["code"] == 1403
    assert (await hook("subscribe", me, {"channel": "typing:order-0"}))["error"]["code"] == 1403
    assert await hook("subscribe", agent, {"channel": "agents:online"}) == {"result": {}}
    assert (await hook("subscribe", me, {"channel": "agents:online"}))["error"]["code"] == 1403

    typing = {"type": "typing", "by": "bot", "name": "Northwind bot", "role": "bot"}   # claims are replaced
    assert await hook("publish", me, {"channel": f"typing:order-{mine}", "data": typing}) == {
        "result": {"data": {"type": "typing", "by": me, "name": "Ivy", "role": "customer"}}}
    assert (await hook("publish", me, {"channel": f"typing:order-{theirs}", "data": typing}))["error"]["code"] == 1403
    assert (await hook("publish", me, {"channel": f"typing:order-{mine}", "data": {"text": "hi"}}))["error"][
        "code"] == 1002
    conn = await asyncpg.connect(shop_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM chat_messages WHERE channel = $1",
                                   f"typing:order-{mine}") == 0
    finally:
        await conn.close()


async def test_pages_and_static_files(http):
    from relay.demo import STATIC_DIR

    async with http.get("/demo", allow_redirects=False) as r:
        assert r.status == 302 and r.headers["Location"] == "/demo/shop"
    async with http.get("/demo/static/demo.css") as r:
        assert r.status == 200 and "chat-item" in await r.text()
    for page in ("shop", "agent"):
        async with http.get(f"/demo/{page}") as r:
            if (STATIC_DIR / f"{page}.js").exists():
                assert r.status == 200 and "/demo/static/demo.css" in await r.text()
            else:
                assert r.status == 503 and "make build" in await r.text()
