"""Demo mode (``--demo``): relay's shop chat demo pages, run on this backend.

relay ships a shop chat demo (relay/demo): ``/demo/shop``, a product page with a chat
widget, and ``/demo/agent``, the support agent's console, with a tiny built-in backend
that mints connect tokens (``make run``). With ``--demo`` this backend serves the same
pages and answers the same ``/demo/api/*`` calls, from the shop's database and through
the same hooks as any client of the shop:

* ``POST /demo/api/token`` ``{role, name, user?}`` is the demo's login, **with no
  password** (development only): a customer gets a customer row with one order, an
  agent an agent row; both get a session and the ``shop_session`` cookie (path ``/``,
  HttpOnly, SameSite=Lax). The answer says ``"token": null``: the page connects without
  a token, and the browser sends the cookie with the WebSocket handshake to relay (cookies
  belong to a host, not a port), whose connect hook (app.py) reads it. A login again with
  the cookie (a reload) is the same person; ``user`` names who the page expects to be.
* ``POST /demo/api/subscription-token`` answers ``{"token": ""}``: agents need none, the
  subscribe hook admits them (the pages then subscribe without one).
* ``GET /demo/api/chats``: the open chats (``support_chats``), ``POST /demo/api/order-status``:
  :func:`~examples.shop_backend.app.set_order_status`, so the push goes through relay's
  outbox; ``POST /demo/api/sale``: a publish through relay's HTTP API. Agents only, by
  their cookie (the ``Authorization`` header the pages send in token mode is ignored).

Cookies are per host: a customer page and an agent console in one browser share one
``shop_session`` cookie, so open them under two host names (``127.0.0.1`` and
``localhost``) or in two browser profiles.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from typing import Any

import asyncpg
import orjson
from aiohttp import web

from examples.shop_backend.app import (AGENTS_ONLINE, AGENTS_QUEUE, COOKIE, STATUSES, Shop, Who, create_session,
                                       order_chat, orders_channel, parse_user, set_order_status, typing_channel)
from relay.demo import STATIC_DIR, json_body

__all__ = ["add_demo_routes", "prepare_db", "customer_channels", "agent_channels", "SALE", "DEMO_ORDER",
           "DEMO_STOCK"]

log = logging.getLogger("shop.demo")

SALE = "sale:flash"
SESSION_SECONDS = 30 * 86400     #: the sessions table's default expiry
MAX_NAME = 40
MAX_SALE_TEXT = 500
MAX_CHATS = 200                  #: chats GET /demo/api/chats lists (the newest)
#: the order every new demo customer has: the jacket on the demo's product page (product, size, status)
DEMO_ORDER = ("Storm Shell Jacket", "M", "packed")
#: its stock, as the product page shows it (XL sold out, 7 left in M)
DEMO_STOCK = (("XS", 4), ("S", 9), ("M", 7), ("L", 5), ("XL", 0))
_HOST = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)$")


def customer_channels(customer: str, order_id: int) -> dict[str, str]:
    return {"chat": order_chat(order_id), "typing": typing_channel(order_id), "orders": orders_channel(customer),
            "sale": SALE, "agents": AGENTS_ONLINE}


def agent_channels() -> dict[str, str]:
    return {"inbox": AGENTS_QUEUE, "agents": AGENTS_ONLINE, "sale": SALE}


async def prepare_db(conn: asyncpg.Connection) -> None:
    """The demo product's stock (kept when it is there already)."""
    await conn.executemany("INSERT INTO stock (product, size, quantity) VALUES ($1, $2, $3) "
                           "ON CONFLICT (product, size) DO NOTHING",
                           [(DEMO_ORDER[0], size, n) for size, n in DEMO_STOCK])


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type="application/json")


def _fail(status: int, message: str) -> web.Response:
    return _json({"error": message}, status=status)


def _clean_name(value: Any, default: str) -> str:
    return " ".join(str(value or "").split())[:MAX_NAME] or default


def _ms(ts) -> int:
    return int(ts.timestamp() * 1000)


def _order_id(value: Any) -> int | None:
    """An order id from the console: 42, "42" or "#42"."""
    if isinstance(value, str) and value.strip().lstrip("#").isdigit():
        value = int(value.strip().lstrip("#"))
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**31:
        return value
    return None


class Demo:
    """The pages and ``/demo/api/*`` on top of :class:`~examples.shop_backend.app.Shop`."""

    def __init__(self, shop: Shop, ws_url: str) -> None:
        self.shop = shop
        self.ws_url = ws_url

    def ws_url_for(self, request: web.Request) -> str:
        """relay's WebSocket URL on the host this page came from (so the page's cookie goes along)."""
        host = request.host if request.host.endswith("]") else request.host.rsplit(":", 1)[0]
        return self.ws_url.replace("{host}", host if _HOST.match(host) else "127.0.0.1")

    async def agent_of(self, request: web.Request) -> Who:
        """The agent whose ``shop_session`` cookie came with the request, or 401/403."""
        who = await self.shop.session(request.cookies.get(COOKIE))
        if who is None:
            raise web.HTTPUnauthorized(text='{"error": "log in first: an agent\'s shop_session cookie is required"}',
                                       content_type="application/json")
        if who.role != "agent":
            raise web.HTTPForbidden(text='{"error": "agents only"}', content_type="application/json")
        return who

    # -- the pages

    def page(self, name: str):
        async def handler(request: web.Request) -> web.StreamResponse:
            if not (STATIC_DIR / f"{name}.js").exists():
                return web.Response(status=503, content_type="text/plain",
                                    text=f"the demo's {name}.js is not built: run `make build` (it bundles the "
                                         "Centrifugo JS SDK with npm into relay/demo/static)")
            return web.FileResponse(STATIC_DIR / f"{name}.html", headers={"Cache-Control": "no-cache"})
        return handler

    async def index(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/demo/shop")

    # -- the login

    async def token(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        role = body.get("role", "customer")
        if role not in ("customer", "agent"):
            return _fail(400, "role must be 'customer' or 'agent'")
        name = _clean_name(body.get("name"), "Guest" if role == "customer" else "Agent")
        wanted = body.get("user") if isinstance(body.get("user"), str) else None
        cookie = request.cookies.get(COOKIE)
        current = await self.shop.session(cookie)
        # the cookie's person again (a reload), unless the page expects someone else
        same = current is not None and current.role == role and (
            wanted == current.user if wanted is not None else role == "customer" or current.name == name)
        if not same:
            current, cookie = None, None
        async with self.shop._db().acquire() as conn, conn.transaction():
            if role == "customer":
                who, order, chat, news = await self._customer(conn, current, name)
            else:
                who, order, chat, news = await self._agent(conn, current, name), None, None, False
            if cookie is None:
                cookie = await create_session(conn, **{f"{role}_id": who.id})
        out: dict[str, Any] = {"user": who.user, "name": name, "role": role, "token": None,
                               "ws_url": self.ws_url_for(request)}
        if order is not None:
            out["channels"] = customer_channels(who.user, order["id"])
            out["order"] = {"order": order["id"], "status": order["status"], "ts": _ms(order["updated_at"]),
                            "product": order["product"], "size": order["size"]}
            if news:   # a new chat, or a new name: the agents' consoles hear of it
                self.shop._later(self._announce({"type": "chat_opened", **chat}))
        else:
            out["channels"] = agent_channels()
        resp = _json(out)
        resp.set_cookie(COOKIE, cookie, path="/", max_age=SESSION_SECONDS, httponly=True, samesite="Lax")
        return resp

    async def _customer(self, conn: asyncpg.Connection, current: Who | None, name: str):
        """(who, their latest order, its chat, whether agents should hear of it), creating what is missing."""
        renamed = False
        if current is None:
            cid = await conn.fetchval("INSERT INTO customers (name, email) VALUES ($1, $2) RETURNING id", name,
                                      f"guest-{secrets.token_hex(6)}@demo.invalid")
        else:
            cid = current.id
            renamed = current.name != name
            if renamed:
                await conn.execute("UPDATE customers SET name = $2 WHERE id = $1", cid, name)
        order = await conn.fetchrow("SELECT id, status, updated_at, product, size FROM orders WHERE customer_id = $1 "
                                    "ORDER BY id DESC LIMIT 1", cid)
        if order is None:
            order = await conn.fetchrow("INSERT INTO orders (customer_id, product, size, status) "
                                        "VALUES ($1, $2, $3, $4) RETURNING id, status, updated_at, product, size",
                                        cid, *DEMO_ORDER)
        channel = order_chat(order["id"])
        opened = await conn.fetchval("INSERT INTO support_chats (channel, order_id) VALUES ($1, $2) "
                                     "ON CONFLICT (channel) DO NOTHING RETURNING opened_at", channel, order["id"])
        news = renamed or opened is not None   # opened is None: the chat was there already
        if opened is None:
            opened = await conn.fetchval("SELECT opened_at FROM support_chats WHERE channel = $1", channel)
        who = Who("customer", cid, name)
        chat = {"customer": who.user, "name": name, "chat": channel, "typing": typing_channel(order["id"]),
                "order": order["id"], "opened_at": opened.timestamp()}
        return who, order, chat, news

    @staticmethod
    async def _agent(conn: asyncpg.Connection, current: Who | None, name: str) -> Who:
        if current is not None:
            if current.name != name:
                await conn.execute("UPDATE agents SET name = $2 WHERE id = $1", current.id, name)
            return Who("agent", current.id, name)
        aid = (await conn.fetchval("SELECT id FROM agents WHERE name = $1 ORDER BY id LIMIT 1", name)
               or await conn.fetchval("INSERT INTO agents (name) VALUES ($1) RETURNING id", name))
        return Who("agent", aid, name)

    async def _announce(self, data: dict) -> None:
        res = await self.shop.relay.publish(AGENTS_QUEUE, data)
        if "error" in res:
            log.warning("chat_opened of %s not published: %s", data.get("chat"), res["error"])

    # -- the agent console's calls

    async def subscription_token(self, request: web.Request) -> web.Response:
        await self.agent_of(request)
        return _json({"token": ""})   # none needed: the subscribe hook admits agents

    async def chats(self, request: web.Request) -> web.Response:
        await self.agent_of(request)
        rows = await self.shop._db().fetch(
            "SELECT s.channel, s.order_id, s.opened_at, s.handed_off_at IS NOT NULL AS handed_off, o.customer_id, "
            "c.name FROM support_chats s JOIN orders o ON o.id = s.order_id JOIN customers c ON c.id = o.customer_id "
            "ORDER BY s.opened_at DESC, s.order_id DESC LIMIT $1", MAX_CHATS)
        return _json({"chats": [{"customer": f"c-{r['customer_id']}", "name": r["name"], "chat": r["channel"],
                                 "typing": typing_channel(r["order_id"]), "opened_at": r["opened_at"].timestamp(),
                                 "order": r["order_id"], "handed_off": r["handed_off"]} for r in reversed(rows)]})

    async def order_status(self, request: web.Request) -> web.Response:
        await self.agent_of(request)
        body = await json_body(request)
        order_id, status, customer = _order_id(body.get("order")), body.get("status"), body.get("customer")
        if order_id is None:
            return _fail(400, "order: the id of the chat's order (a number)")
        if status not in STATUSES:
            return _fail(400, f"status: one of {', '.join(STATUSES)}")
        async with self.shop._db().acquire() as conn:
            if customer is not None:
                owner = parse_user(customer)
                if owner is None or owner.role != "customer":
                    return _fail(400, "customer: a customer user id (c-<id>)")
                if await conn.fetchval("SELECT customer_id FROM orders WHERE id = $1", order_id) != owner.id:
                    return _fail(404, f"{customer} has no order {order_id}")
            try:
                change = await set_order_status(conn, order_id, status, partitions=self.shop.partitions)
            except asyncpg.UndefinedTableError:
                return _fail(503, "relay's outbox table is missing: run `relay outbox init` on this database")
        if change is None:
            return _fail(404, f"no order {order_id}")
        return _json({"ok": True, **change})

    async def sale(self, request: web.Request) -> web.Response:
        await self.agent_of(request)
        text = (await json_body(request)).get("text")
        if not isinstance(text, str) or not 0 < len(text.strip()) <= MAX_SALE_TEXT:
            return _fail(400, f"text: 1-{MAX_SALE_TEXT} characters")
        res = await self.shop.relay.publish(SALE, {"text": text.strip(), "ts": int(time.time() * 1000)})
        if "error" in res:
            return _fail(502, f"the publish through relay failed: {res['error'].get('message', res['error'])}")
        return _json({"ok": True})


def add_demo_routes(app: web.Application, shop: Shop, ws_url: str) -> Demo:
    """Mount the demo pages (relay's, from relay/demo/static) and ``/demo/api/*`` on the backend's app."""
    demo = Demo(shop, ws_url)
    app.router.add_get("/demo", demo.index)
    app.router.add_get("/demo/shop", demo.page("shop"))
    app.router.add_get("/demo/agent", demo.page("agent"))
    app.router.add_static("/demo/static", STATIC_DIR, append_version=False)
    app.router.add_post("/demo/api/token", demo.token)
    app.router.add_post("/demo/api/subscription-token", demo.subscription_token)
    app.router.add_get("/demo/api/chats", demo.chats)
    app.router.add_post("/demo/api/order-status", demo.order_status)
    app.router.add_post("/demo/api/sale", demo.sale)
    return demo
