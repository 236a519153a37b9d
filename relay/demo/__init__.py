"""Demo mode (``demo = true``, off by default): a shop's customer page and agent console.

``make run`` serves them on the API port: ``/demo/shop`` (a product page with a chat
widget) and ``/demo/agent`` (the support agent's console), both on the published
Centrifugo JavaScript SDK, bundled from ``relay/demo/web`` into ``relay/demo/static``
at build time. This module is the small backend a real shop would have:

* ``POST /demo/api/token`` mints connect tokens for anyone who asks, customer or
  agent, with no password. That is why demo mode must never be on in production
  (``check-config`` and the log say so, and it is off by default).
* ``POST /demo/api/subscription-token`` gives *agents* subscription tokens for the
  customers' private channels (``support:<c>#<c>`` lets only the customer in
  without one): the pattern a shop's backend uses to let staff into a 1:1 chat.
* ``GET /demo/api/chats``, ``POST /demo/api/order-status`` and ``POST /demo/api/sale``
  are the agent console's buttons; they publish through the node like the server
  API does (``make demo-push`` uses the real ``/api/publish``).

Channels (namespaces in ``deploy/relay.dev.toml``): ``support:`` the 1:1 chat
(presence, join/leave, history, recovery), ``typing:`` typing events (no history),
``orders:`` order-status pushes, ``sale:flash`` announcements to every shopper,
``agents:online`` (agents subscribe; its presence tells customers someone is there)
and ``agents:inbox`` (new chats).

The same pages also run on a real backend: ``python -m examples.shop_backend --demo``
serves them with this ``/demo/api/*`` contract from its database, logs people in with a
cookie (``"token": null``: the pages then connect without one) and puts its FAQ bot in the
chat (examples/shop_backend/README.md).
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from relay.auth import TokenExpired, TokenInvalid, make_connect_token

__all__ = ["add_demo_routes", "json_body", "DemoChats", "STATIC_DIR", "STATUSES"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATUSES = ("paid", "packed", "shipped", "out for delivery", "delivered")
TOKEN_TTL = 3600.0
SUB_TOKEN_TTL = 3600.0
INBOX = "agents:inbox"
AGENTS = "agents:online"
SALE = "sale:flash"
MAX_CHATS = 10_000           # the in-memory chat list of the demo backend
MAX_NAME = 40
MAX_TEXT = 500
_USER_ID = re.compile(r"^[ca]-[a-z0-9-]{1,60}$")


def customer_channels(user: str) -> dict[str, str]:
    return {"chat": f"support:{user}#{user}", "typing": f"typing:{user}#{user}",
            "orders": f"orders:{user}#{user}", "sale": SALE, "agents": AGENTS}


def agent_channels() -> dict[str, str]:
    return {"inbox": INBOX, "agents": AGENTS, "sale": SALE}


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:20] or "guest"


def _clean_name(value: Any, default: str) -> str:
    name = " ".join(str(value or "").split())[:MAX_NAME]
    return name or default


@dataclass
class Chat:
    customer: str
    name: str
    chat: str
    typing: str
    opened_at: float


class DemoChats:
    """The demo backend's list of customer chats (in memory, oldest first, capped)."""

    def __init__(self, cap: int = MAX_CHATS) -> None:
        self.cap = cap
        self.chats: dict[str, Chat] = {}

    def open(self, customer: str, name: str) -> tuple[Chat, bool]:
        """The customer's chat, and whether it is new or renamed (agents should hear of it)."""
        chat = self.chats.get(customer)
        if chat is not None:
            changed = chat.name != name
            chat.name = name
            return chat, changed
        if len(self.chats) >= self.cap:
            del self.chats[next(iter(self.chats))]
        ch = customer_channels(customer)
        chat = self.chats[customer] = Chat(customer, name, ch["chat"], ch["typing"], time.time())
        return chat, True

    def list(self) -> list[dict[str, Any]]:
        return [asdict(c) for c in self.chats.values()]


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status=status)


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object (an empty body is ``{}``), or 400 with a JSON error."""
    try:
        body = orjson.loads(await request.read() or b"{}")
    except orjson.JSONDecodeError:
        raise web.HTTPBadRequest(text='{"error": "invalid JSON"}', content_type="application/json") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text='{"error": "the body must be a JSON object"}', content_type="application/json")
    return body


def add_demo_routes(app: web.Application, node) -> DemoChats:
    """Mount the demo pages and their backend on ``app`` (the API port's aiohttp app)."""
    cfg = node.cfg
    chats = DemoChats()
    app["demo_chats"] = chats

    def ws_url(request: web.Request) -> str:
        host = request.host.rsplit(":", 1)[0] if not request.host.endswith("]") else request.host
        scheme = "wss" if cfg.tls_cert_file else "ws"
        return f"{scheme}://{host}:{cfg.ws_port}{cfg.ws_path}"

    def agent_of(request: web.Request) -> str:
        """The agent's user id from ``Authorization: Bearer <connect token>``, or 401/403."""
        auth = request.headers.get("Authorization", "")
        if not auth.lower().startswith("bearer "):
            raise web.HTTPUnauthorized(text='{"error": "Authorization: Bearer <connect token> required"}',
                                       content_type="application/json")
        try:
            creds = node.tokens.verify(auth[7:].strip())
        except (TokenInvalid, TokenExpired) as e:
            raise web.HTTPUnauthorized(text=orjson.dumps({"error": f"invalid token: {e}"}).decode(),
                                       content_type="application/json") from None
        if not creds.user.startswith("a-"):
            raise web.HTTPForbidden(text='{"error": "agents only"}', content_type="application/json")
        return creds.user

    def page(name: str):
        async def handler(request: web.Request) -> web.StreamResponse:
            bundle = STATIC_DIR / f"{name}.js"
            if not bundle.exists():
                return web.Response(status=503, content_type="text/plain",
                                    text=f"the demo's {name}.js is not built: run `make build` (it bundles the "
                                         "Centrifugo JS SDK with npm into relay/demo/static)")
            return web.FileResponse(STATIC_DIR / f"{name}.html", headers={"Cache-Control": "no-cache"})
        return handler

    async def index(request: web.Request) -> web.Response:
        raise web.HTTPFound("/demo/shop")

    async def token(request: web.Request) -> web.Response:
        body = await json_body(request)
        role = body.get("role", "customer")
        if role not in ("customer", "agent"):
            return _error(400, "role must be 'customer' or 'agent'")
        prefix = "c-" if role == "customer" else "a-"
        name = _clean_name(body.get("name"), "Guest" if role == "customer" else "Agent")
        user = body.get("user")
        if not (isinstance(user, str) and user.startswith(prefix) and _USER_ID.match(user)):
            user = (f"c-{_slug(name)}-{secrets.token_hex(3)}" if role == "customer" else f"a-{_slug(name)}")
        info = {"name": name, "role": role}
        tok = make_connect_token(user, cfg.token_hmac_secret, ttl=TOKEN_TTL, info=info)
        if role == "customer":
            chat, news = chats.open(user, name)
            channels = customer_channels(user)
            if news:
                await node.publish(INBOX, {"type": "chat_opened", **asdict(chat)})
        else:
            channels = agent_channels()
        return _json({"user": user, "name": name, "role": role, "token": tok, "ws_url": ws_url(request),
                      "channels": channels})

    async def subscription_token(request: web.Request) -> web.Response:
        user = agent_of(request)
        channel = (await json_body(request)).get("channel")
        if not isinstance(channel, str) or not channel.startswith(("support:", "typing:", "agents:")):
            return _error(403, "agents get subscription tokens for support:, typing: and agents: channels only")
        tok = make_connect_token(user, cfg.token_hmac_secret, ttl=SUB_TOKEN_TTL, channel=channel)
        return _json({"token": tok})

    async def list_chats(request: web.Request) -> web.Response:
        agent_of(request)
        return _json({"chats": chats.list()})

    async def order_status(request: web.Request) -> web.Response:
        agent_of(request)
        body = await json_body(request)
        customer, order, status = body.get("customer"), body.get("order"), body.get("status")
        if not (isinstance(customer, str) and customer.startswith("c-") and _USER_ID.match(customer)):
            return _error(400, "customer: a customer user id (c-...)")
        if not isinstance(order, str) or not 0 < len(order) <= MAX_NAME:
            return _error(400, f"order: a string of 1-{MAX_NAME} characters")
        if status not in STATUSES:
            return _error(400, f"status: one of {', '.join(STATUSES)}")
        await node.publish(customer_channels(customer)["orders"],
                           {"order": order, "status": status, "ts": int(time.time() * 1000)})
        return _json({"ok": True})

    async def sale(request: web.Request) -> web.Response:
        agent_of(request)
        text = (await json_body(request)).get("text")
        if not isinstance(text, str) or not 0 < len(text.strip()) <= MAX_TEXT:
            return _error(400, f"text: 1-{MAX_TEXT} characters")
        await node.publish(SALE, {"text": text.strip(), "ts": int(time.time() * 1000)})
        return _json({"ok": True})

    app.router.add_get("/demo", index)
    app.router.add_get("/demo/shop", page("shop"))
    app.router.add_get("/demo/agent", page("agent"))
    app.router.add_static("/demo/static", STATIC_DIR, append_version=False)
    app.router.add_post("/demo/api/token", token)
    app.router.add_post("/demo/api/subscription-token", subscription_token)
    app.router.add_get("/demo/api/chats", list_chats)
    app.router.add_post("/demo/api/order-status", order_status)
    app.router.add_post("/demo/api/sale", sale)
    return chats
