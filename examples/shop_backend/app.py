"""The Northwind shop's backend: relay's event-proxy hooks, the FAQ bot, order statuses.

relay asks this app, in Centrifugo's HTTP proxy format (docs/proxy.md), who a visitor is
(``/relay/connect``: the ``shop_session`` cookie), which channels they may join
(``/relay/subscribe``), what they may publish (``/relay/publish``: every chat message is
stored in PostgreSQL) and what an ``rpc`` call answers (``/relay/rpc``). The app talks
back to relay two ways:

* the FAQ bot (bot.py) answers customers in their order's chat, and hands a chat to the
  agents (``agents:queue``), through relay's HTTP server API (``POST /api/publish``);
* an order's status change is written to relay's outbox table in the same transaction
  as the change (:func:`set_order_status`): the push to the customer happens if and only
  if the change commits.

Channels (README.md has the relay config they need):

=========================  ==========================================================
``orders:c-<id>#c-<id>``   the customer's order statuses; a server-side subscription
                           from the connect hook; only the outbox publishes
``support:order-<order>``  the chat about one order: its customer, the bot, agents.
                           No ``#`` list (agents join it too): the subscribe and
                           publish hooks guard it
``typing:order-<order>``   typing events beside an order's chat (same people; not stored)
``agents:queue``           hand-offs to a person; agents only; only the backend publishes
``agents:online``          agents only (its presence tells customers someone is there)
=========================  ==========================================================

``--demo`` also serves relay's shop chat demo pages on this app, logged in by cookie
(demo.py).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from aiohttp import ClientError, ClientSession, ClientTimeout, web

from examples.shop_backend import bot

__all__ = ["make_app", "main", "set_order_status", "init_db", "seed_demo", "create_session", "Who", "parse_user",
           "order_chat", "order_of_chat", "orders_channel", "typing_channel", "order_of_typing", "COOKIE",
           "AGENTS_QUEUE", "AGENTS_ONLINE", "STATUSES", "MAX_TEXT", "CODES"]

log = logging.getLogger("shop")

SCHEMA = Path(__file__).with_name("schema.sql")
COOKIE = "shop_session"
AGENTS_QUEUE = "agents:queue"
AGENTS_ONLINE = "agents:online"
STATUSES = ("paid", "packed", "shipped", "out for delivery", "delivered", "cancelled")
MAX_TEXT = 2000               #: characters of one chat message
HANDOFF_MESSAGES = 20         #: the last messages of a chat an agent gets with a hand-off
OUTBOX_PARTITIONS = 16        #: relay's outbox_partitions (rows of one order stay in order)
OUTBOX_TABLE = "relay_outbox"

_SUPPORT = re.compile(r"^support:order-([1-9][0-9]{0,8})$")   # ids fit PostgreSQL's integer
_TYPING = re.compile(r"^typing:order-([1-9][0-9]{0,8})$")
_USER = re.compile(r"^([ca])-([1-9][0-9]{0,8})$")


class CODES:
    """Error codes the hooks answer (Centrifugo: 100-1999 reach the client as they are)."""

    EMPTY = 1000          # publish: no text
    TOO_LONG = 1001       # publish: text over MAX_TEXT
    NOT_A_MESSAGE = 1002  # publish: data is not {"text": ...} (or a read receipt)
    BAD_PARAMS = 1003     # rpc: parameters of the wrong shape
    FORBIDDEN = 1403      # subscribe/publish: not this user's chat or channel
    NOT_FOUND = 1404      # rpc: unknown method, or not one of the caller's orders
    UNKNOWN_SESSION = 4501  # connect: disconnect, do not reconnect (4500-4999)


@dataclass(frozen=True, slots=True)
class Who:
    """A logged-in customer or agent."""

    role: str     # "customer" | "agent"
    id: int
    name: str = ""

    @property
    def user(self) -> str:
        return f"{'c' if self.role == 'customer' else 'a'}-{self.id}"


def parse_user(user: Any) -> Who | None:
    """``c-<id>`` / ``a-<id>`` (the user relay got from the connect hook) as a :class:`Who`."""
    m = _USER.match(user) if isinstance(user, str) else None
    if m is None:
        return None
    return Who("customer" if m.group(1) == "c" else "agent", int(m.group(2)))


def order_chat(order_id: int) -> str:
    """The support chat channel of an order."""
    return f"support:order-{order_id}"


def order_of_chat(channel: Any) -> int | None:
    """The order a support chat channel is about, or None when it is not one."""
    m = _SUPPORT.match(channel) if isinstance(channel, str) else None
    return int(m.group(1)) if m else None


def typing_channel(order_id: int) -> str:
    """The typing-events channel beside an order's chat."""
    return f"typing:order-{order_id}"


def order_of_typing(channel: Any) -> int | None:
    """The order a typing channel is about, or None when it is not one."""
    m = _TYPING.match(channel) if isinstance(channel, str) else None
    return int(m.group(1)) if m else None


def orders_channel(user: str) -> str:
    """The customer's personal order-status channel (only they may subscribe: the ``#`` list)."""
    return f"orders:{user}#{user}"


def _ms(ts: datetime | None = None) -> int:
    return int((ts.timestamp() if ts else time.time()) * 1000)


# ---------------------------------------------------------------- orders and the outbox

async def set_order_status(conn: asyncpg.Connection, order_id: int, status: str, *,
                           partitions: int = OUTBOX_PARTITIONS, table: str = OUTBOX_TABLE) -> dict | None:
    """Change an order's status and queue its push to the customer in relay's outbox, atomically.

    Both writes happen in one transaction (a savepoint when ``conn`` is already in one: then
    the caller's commit decides). relay publishes the row after the commit, with the
    idempotency key ``order-<id>-<status>-<version>``, so a row executed twice reaches the
    customer once. The partition keeps one order's changes in commit order. Returns
    ``{"order", "status", "version", "ts"}``, or None when there is no such order.
    """
    if status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}")
    async with conn.transaction():
        row = await conn.fetchrow("UPDATE orders SET status = $2, version = version + 1, updated_at = now() "
                                  "WHERE id = $1 RETURNING customer_id, version, updated_at", order_id, status)
        if row is None:
            return None
        ts = _ms(row["updated_at"])
        change = {"order": order_id, "status": status, "ts": ts}
        payload = {"channel": orders_channel(f"c-{row['customer_id']}"), "data": change}
        await conn.execute(f"INSERT INTO {table} (method, payload, partition, idempotency_key) "
                           f"VALUES ('publish', $1::jsonb, $2, $3)", orjson.dumps(payload).decode(),
                           order_id % partitions, f"order-{order_id}-{status}-{row['version']}")
    return {**change, "version": row["version"]}


def _order_json(row: asyncpg.Record) -> dict:
    return {"id": row["id"], "product": row["product"], "size": row["size"], "status": row["status"],
            "updated_at": row["updated_at"].isoformat(), "chat": order_chat(row["id"])}


def _order_facts(row: asyncpg.Record | None) -> bot.Order | None:
    if row is None:
        return None
    return bot.Order(row["id"], row["status"], row["updated_at"], row["product"], row["size"])


async def _stock_facts(conn: asyncpg.Connection, product: str | None, text: str) -> dict[str, dict[str, int]]:
    """Stock of the order's product and of every product the line names."""
    rows = await conn.fetch("SELECT product, size, quantity FROM stock WHERE product = $1 "
                            "OR strpos(lower($2), lower(product)) > 0", product or "", text)
    stock: dict[str, dict[str, int]] = {}
    for r in rows:
        stock.setdefault(r["product"], {})[r["size"]] = r["quantity"]
    return stock


_ORDER_COLUMNS = "id, customer_id, product, size, status, updated_at"


# ---------------------------------------------------------------- database set-up

async def init_db(dsn: str) -> None:
    """Create the shop's tables (schema.sql; harmless to run again)."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute(SCHEMA.read_text())
    finally:
        await conn.close()


async def create_session(conn: asyncpg.Connection, *, customer_id: int | None = None,
                         agent_id: int | None = None) -> str:
    """A new ``shop_session`` cookie value for a customer or an agent (what a login would do)."""
    token = secrets.token_urlsafe(24)
    await conn.execute("INSERT INTO sessions (token, customer_id, agent_id) VALUES ($1, $2, $3)", token,
                       customer_id, agent_id)
    return token


async def seed_demo(conn: asyncpg.Connection) -> dict[str, str]:
    """Demo data (a customer with two orders, an agent, stock) and a session cookie for each person.

    Running it again adds no more people or orders, only new sessions."""
    async with conn.transaction():
        cid = await conn.fetchval("INSERT INTO customers (name, email) VALUES ('Ada', 'ada@example.com') "
                                  "ON CONFLICT (email) DO UPDATE SET name = excluded.name RETURNING id")
        aid = (await conn.fetchval("SELECT id FROM agents WHERE name = 'Grace' ORDER BY id LIMIT 1")
               or await conn.fetchval("INSERT INTO agents (name) VALUES ('Grace') RETURNING id"))
        if not await conn.fetchval("SELECT count(*) FROM orders WHERE customer_id = $1", cid):  # run again: no more
            for product, size, status in (("Trail jacket", "M", "shipped"), ("Merino beanie", None, "paid")):
                await conn.execute("INSERT INTO orders (customer_id, product, size, status) VALUES ($1, $2, $3, $4)",
                                   cid, product, size, status)
        await conn.executemany("INSERT INTO stock (product, size, quantity) VALUES ($1, $2, $3) "
                               "ON CONFLICT (product, size) DO UPDATE SET quantity = excluded.quantity",
                               [("Trail jacket", s, n) for s, n in (("S", 3), ("M", 7), ("L", 0), ("XL", 2))]
                               + [("Merino beanie", "M", 12)])
        return {"customer": await create_session(conn, customer_id=cid),
                "agent": await create_session(conn, agent_id=aid)}


# ---------------------------------------------------------------- relay's HTTP API

class RelayAPI:
    """``POST {base}/api/<method>`` with the API key (the bot's answers and hand-offs)."""

    def __init__(self, base_url: str, api_key: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.http: ClientSession | None = None

    async def start(self) -> None:
        self.http = ClientSession(timeout=ClientTimeout(total=5), json_serialize=lambda o: orjson.dumps(o).decode())

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()
            self.http = None

    async def call(self, method: str, params: dict) -> dict:
        """One API call: ``{"result": ...}`` or ``{"error": ...}`` (transport failures as error 100)."""
        assert self.http is not None, "RelayAPI.start() first"
        try:
            async with self.http.post(f"{self.base_url}/api/{method}", json=params,
                                      headers={"X-API-Key": self.api_key}) as r:
                return await r.json(loads=orjson.loads, content_type=None)
        except (ClientError, TimeoutError, ValueError) as e:
            return {"error": {"code": 100, "message": f"{type(e).__name__}: {e}", "temporary": True}}

    async def publish(self, channel: str, data: dict, idempotency_key: str | None = None) -> dict:
        """Publish; retried once on a temporary failure (same idempotency key: delivered at most once)."""
        params: dict[str, Any] = {"channel": channel, "data": data}
        if idempotency_key:
            params["idempotency_key"] = idempotency_key
        reply = await self.call("publish", params)
        if "error" in reply and reply["error"].get("temporary"):
            await asyncio.sleep(0.2)
            reply = await self.call("publish", params)
        return reply

    async def wait_published(self, channel: str, mid: str, timeout: float = 3.0) -> bool:
        """Wait until the message ``mid`` is in the channel's history: relay publishes a client's message
        only after the publish hook has answered, and the bot's answer must come after it. False when
        it did not show up in time, or the channel keeps no history (then only the delay orders them)."""
        deadline = time.monotonic() + timeout
        while True:
            reply = await self.call("history", {"channel": channel, "limit": 20, "reverse": True})
            if "error" in reply:
                return False
            pubs = reply.get("result", {}).get("publications") or []
            if any(isinstance(p.get("data"), dict) and p["data"].get("mid") == mid for p in pubs):
                return True
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)


# ---------------------------------------------------------------- the hooks

def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type="application/json")


def _error(code: int, message: str) -> web.Response:
    return _json({"error": {"code": code, "message": message}})


def _result(**fields: Any) -> web.Response:
    return _json({"result": fields})


class _Reject(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def message_text(data: Any) -> str:
    """The text of a chat message a client published (``{"text": ...}``), stripped, or :class:`_Reject`."""
    if not isinstance(data, dict) or not isinstance(data.get("text", ""), str) or data.get("type", "msg") != "msg":
        raise _Reject(CODES.NOT_A_MESSAGE, 'a chat message is {"type": "msg", "text": "..."}')
    text = data.get("text", "").strip()
    if not text:
        raise _Reject(CODES.EMPTY, "the message is empty")
    if len(text) > MAX_TEXT:
        raise _Reject(CODES.TOO_LONG, f"the message is longer than {MAX_TEXT} characters")
    return text


async def _hook_body(request: web.Request) -> dict:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise web.HTTPBadRequest(text="invalid JSON") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="the body must be a JSON object")
    return body


class Shop:
    """The handlers; ``pool`` (asyncpg) and ``relay`` (:class:`RelayAPI`) are set when the app starts."""

    def __init__(self, relay: RelayAPI, bot_delay: float, partitions: int) -> None:
        self.relay = relay
        self.bot_delay = bot_delay
        self.partitions = partitions
        self.pool: asyncpg.Pool | None = None
        self.tasks: set[asyncio.Task] = set()

    def _db(self) -> asyncpg.Pool:
        assert self.pool is not None, "the app has not started"
        return self.pool

    async def session(self, token: str | None) -> Who | None:
        """Who a ``shop_session`` cookie belongs to (None: unknown or expired)."""
        if not token:
            return None
        row = await self._db().fetchrow(
            "SELECT s.customer_id, s.agent_id, coalesce(c.name, a.name) AS name FROM sessions s "
            "LEFT JOIN customers c ON c.id = s.customer_id LEFT JOIN agents a ON a.id = s.agent_id "
            "WHERE s.token = $1 AND s.expires_at > now()", token)
        if row is None:
            return None
        if row["customer_id"] is not None:
            return Who("customer", row["customer_id"], row["name"])
        return Who("agent", row["agent_id"], row["name"])

    # -- connect: the cookie names the user
    async def connect(self, request: web.Request) -> web.Response:
        await _hook_body(request)
        who = await self.session(request.cookies.get(COOKIE))
        if who is None:
            return _json({"disconnect": {"code": CODES.UNKNOWN_SESSION, "reason": "unknown session"}})
        me = {"user": who.user, "name": who.name, "role": who.role}
        channels = [orders_channel(who.user)] if who.role == "customer" else []
        # info: shown with every publication and in presence; meta: kept by relay, sent to later hooks
        return _result(user=who.user, info={"name": who.name, "role": who.role}, data=me,
                       meta={"name": who.name, "role": who.role}, channels=channels)

    # -- subscribe: own order chats (and their typing channels) for customers; every chat, the queue
    #    and agents:online for agents
    async def subscribe(self, request: web.Request) -> web.Response:
        body = await _hook_body(request)
        who, channel = parse_user(body.get("user")), body.get("channel")
        if who is None:
            return _error(CODES.FORBIDDEN, "log in first")
        if channel in (AGENTS_QUEUE, AGENTS_ONLINE):
            return _result() if who.role == "agent" else _error(CODES.FORBIDDEN, "agents only")
        typing = order_of_typing(channel)
        order_id = order_of_chat(channel) if typing is None else typing
        if order_id is None:
            return _error(CODES.FORBIDDEN, "no such chat")
        row = await self._db().fetchrow(f"SELECT {_ORDER_COLUMNS} FROM orders WHERE id = $1", order_id)
        if row is None or (who.role == "customer" and row["customer_id"] != who.id):
            return _error(CODES.FORBIDDEN, "not your order's chat")
        return _result() if typing is not None else _result(data={"order": _order_json(row)})

    # -- publish: check, store, let the bot decide
    async def publish(self, request: web.Request) -> web.Response:
        body = await _hook_body(request)
        who, channel, data = parse_user(body.get("user")), body.get("channel"), body.get("data")
        if who is not None and order_of_typing(channel) is not None:
            return await self._typing(who, order_of_typing(channel), data, body.get("meta"))
        order_id = order_of_chat(channel)
        if who is None or order_id is None:
            return _error(CODES.FORBIDDEN, "you may not write to this chat")
        receipt = isinstance(data, dict) and data.get("type") == "receipt"   # delivered/read: not a message
        try:
            text = "" if receipt else message_text(data)
        except _Reject as e:
            return _error(e.code, e.message)
        meta = body.get("meta") if isinstance(body.get("meta"), dict) else {}
        mid = data.get("mid") if isinstance(data.get("mid"), str) and 0 < len(data["mid"]) <= 64 else None
        # the sender fields come from the session, never from the client: no one can speak as the bot
        msg = {"type": "msg", "mid": mid or str(uuid.uuid4()), "text": text, "from": who.user,
               "name": str(meta.get("name") or who.user), "role": who.role, "ts": _ms()}
        async with self._db().acquire() as conn, conn.transaction():
            order = await conn.fetchrow(f"SELECT {_ORDER_COLUMNS} FROM orders WHERE id = $1", order_id)
            if order is None or (who.role == "customer" and order["customer_id"] != who.id):
                return _error(CODES.FORBIDDEN, "you may not write to this chat")
            if receipt:
                return _result()   # relayed as published, not stored
            await conn.execute("INSERT INTO support_chats (channel, order_id) VALUES ($1, $2) "
                               "ON CONFLICT (channel) DO NOTHING", channel, order_id)
            chat = await conn.fetchrow("SELECT unanswered, handed_off_at FROM support_chats WHERE channel = $1 "
                                       "FOR UPDATE", channel)  # one message of a chat at a time from here
            await self._store(conn, channel, who.user, msg)
            state = bot.ChatState(chat["unanswered"], chat["handed_off_at"] is not None)
            if state.handed_off:
                return _result(data=msg)
            facts = bot.Facts()
            if who.role == "customer":
                facts = bot.Facts(_order_facts(order), await _stock_facts(conn, order["product"], text))
            decision = bot.step(state, text, facts, from_agent=who.role == "agent")
            await conn.execute("UPDATE support_chats SET unanswered = $2, handed_off_at = "
                               "CASE WHEN $3 THEN coalesce(handed_off_at, now()) END WHERE channel = $1",
                               channel, decision.state.unanswered, decision.state.handed_off)
            reply = handoff = None
            if decision.reply is not None:
                reply = {"type": "msg", "mid": str(uuid.uuid4()), "text": decision.reply, "from": "bot",
                         "name": bot.BOT_NAME, "role": "bot", "ts": msg["ts"] + 1}
                await self._store(conn, channel, "bot", reply)
            if decision.handoff:
                rows = await conn.fetch("SELECT data::text FROM chat_messages WHERE channel = $1 "
                                        "ORDER BY id DESC LIMIT $2", channel, HANDOFF_MESSAGES)
                handoff = {"type": "handoff", "channel": channel, "customer": who.user, "name": msg["name"],
                           "order": order_id, "conversation": [orjson.loads(r["data"]) for r in reversed(rows)],
                           "ts": msg["ts"]}
        if reply is not None or handoff is not None:
            self._later(self._bot_says(channel, msg["mid"], reply, handoff))
        return _result(data=msg)

    async def _typing(self, who: Who, order_id: int, data: Any, meta: Any) -> web.Response:
        """A typing event beside an order's chat: the chat's people only, its sender fields from the
        session; relayed, not stored."""
        if not isinstance(data, dict) or data.get("type") != "typing":
            return _error(CODES.NOT_A_MESSAGE, 'a typing event is {"type": "typing"}')
        owner = await self._db().fetchval("SELECT customer_id FROM orders WHERE id = $1", order_id)
        if owner is None or (who.role == "customer" and owner != who.id):
            return _error(CODES.FORBIDDEN, "you may not write to this chat")
        name = meta.get("name") if isinstance(meta, dict) else None
        return _result(data={"type": "typing", "by": who.user, "name": str(name or who.user), "role": who.role})

    @staticmethod
    async def _store(conn: asyncpg.Connection, channel: str, user: str, data: dict) -> None:
        await conn.execute("INSERT INTO chat_messages (channel, user_id, data) VALUES ($1, $2, $3::jsonb)",
                           channel, user, orjson.dumps(data).decode())

    def _later(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _bot_says(self, channel: str, after: str, reply: dict | None, handoff: dict | None) -> None:
        """Publish the bot's answer after the customer's message ``after`` (relay publishes that one
        once this hook has answered), then the hand-off to the agents."""
        await asyncio.sleep(self.bot_delay)   # the bot "types"
        if not await self.relay.wait_published(channel, after):
            log.warning("message %s of %s not seen in relay's history: the bot answers anyway", after, channel)
        if reply is not None:
            res = await self.relay.publish(channel, reply, idempotency_key=f"bot-{reply['mid']}")
            if "error" in res:
                log.warning("bot answer to %s not published: %s", channel, res["error"])
        if handoff is not None:
            res = await self.relay.publish(AGENTS_QUEUE, handoff, idempotency_key=f"handoff-{channel}-{handoff['ts']}")
            if "error" in res:
                log.warning("hand-off of %s not published: %s", channel, res["error"])

    # -- rpc
    async def rpc(self, request: web.Request) -> web.Response:
        body = await _hook_body(request)
        who, method, data = parse_user(body.get("user")), body.get("method"), body.get("data")
        if who is None:
            return _error(CODES.FORBIDDEN, "log in first")
        if method == "orders.status":
            return await self._orders_status(who, data)
        if method == "bot.ask":
            return await self._bot_ask(who, data)
        return _error(CODES.NOT_FOUND, f"unknown method {method!r}: orders.status, bot.ask")

    async def _orders_status(self, who: Who, data: Any) -> web.Response:
        """``{"order": <id>}``: that order; ``{}``: all the customer's orders. Customers see only theirs."""
        order = data.get("order") if isinstance(data, dict) else None
        if order is None:
            if who.role != "customer":
                return _error(CODES.BAD_PARAMS, 'agents name the order: {"order": <id>}')
            rows = await self._db().fetch(f"SELECT {_ORDER_COLUMNS} FROM orders WHERE customer_id = $1 ORDER BY id",
                                          who.id)
            return _result(data={"orders": [_order_json(r) for r in rows]})
        if isinstance(order, str) and order.isdigit():
            order = int(order)
        if not isinstance(order, int) or isinstance(order, bool) or not 0 < order < 2**31:
            return _error(CODES.BAD_PARAMS, 'orders.status takes {"order": <order id>}')
        row = await self._db().fetchrow(f"SELECT {_ORDER_COLUMNS} FROM orders WHERE id = $1", order)
        if row is None or (who.role == "customer" and row["customer_id"] != who.id):
            return _error(CODES.NOT_FOUND, f"no order {order} of yours")
        return _result(data={"order": _order_json(row)})

    async def _bot_ask(self, who: Who, data: Any) -> web.Response:
        """The bot's answer to one question, without a chat (no state, no hand-off)."""
        text = data.get("text") if isinstance(data, dict) else data
        if not isinstance(text, str) or not 0 < len(text.strip()) <= MAX_TEXT:
            return _error(CODES.BAD_PARAMS, f'bot.ask takes {{"text": "..."}} (1-{MAX_TEXT} characters)')
        async with self._db().acquire() as conn:
            row = None
            if who.role == "customer":
                row = await conn.fetchrow(f"SELECT {_ORDER_COLUMNS} FROM orders WHERE customer_id = $1 "
                                          "ORDER BY updated_at DESC, id DESC LIMIT 1", who.id)
            facts = bot.Facts(_order_facts(row), await _stock_facts(conn, row["product"] if row else None, text))
        intent = bot.classify(text)
        reply = bot.answer(intent, text, facts)
        return _result(data={"intent": str(intent), "answered": reply is not None, "text": reply})

    # -- the agent console's (and tests') order-status button
    async def order_status(self, request: web.Request) -> web.Response:
        who = await self.session(request.cookies.get(COOKIE))
        if who is None or who.role != "agent":
            return _json({"error": "an agent's shop_session cookie is required"}, status=403)
        try:
            order_id = int(request.match_info["id"])
            status = (await _hook_body(request)).get("status")
        except (ValueError, web.HTTPBadRequest):
            order_id = 0
        if not 0 < order_id < 2**31:
            return _json({"error": 'POST /shop/orders/<id>/status {"status": "..."}'}, status=400)
        if status not in STATUSES:
            return _json({"error": f"status: one of {', '.join(STATUSES)}"}, status=400)
        async with self._db().acquire() as conn:
            change = await set_order_status(conn, order_id, status, partitions=self.partitions)
        if change is None:
            return _json({"error": f"no order {order_id}"}, status=404)
        return _json(change)

    async def healthz(self, request: web.Request) -> web.Response:
        await self._db().fetchval("SELECT 1")
        return _json({"ok": True})


SHOP = web.AppKey("shop", Shop)


def make_app(dsn: str, relay_api_url: str, relay_api_key: str, *, bot_delay: float = 0.3,
             outbox_partitions: int = OUTBOX_PARTITIONS, pool_size: int = 5, demo: bool = False,
             relay_ws_url: str = "ws://{host}:8000/connection/websocket") -> web.Application:
    """The backend as an aiohttp app: hooks under ``/relay/``, the order-status endpoint under ``/shop/``.

    ``relay_api_url`` is the base of relay's API port (``http://relay:8000``); ``bot_delay`` is how
    long the bot waits before answering (relay publishes the customer's message first). ``demo``
    adds relay's shop chat demo pages and their ``/demo/api/*`` (demo.py; development only), whose
    pages connect to ``relay_ws_url`` (``{host}``: the host the page was loaded from).
    """
    relay = RelayAPI(relay_api_url, relay_api_key)
    shop = Shop(relay, bot_delay, outbox_partitions)
    app = web.Application(client_max_size=256 * 1024)
    app[SHOP] = shop

    async def resources(app: web.Application):
        shop.pool = await asyncpg.create_pool(dsn, min_size=1, max_size=pool_size, timeout=10)
        await relay.start()
        yield
        if shop.tasks:  # the bot's answers still on their way
            await asyncio.wait(list(shop.tasks), timeout=2 + bot_delay)
            for t in list(shop.tasks):
                t.cancel()
        await relay.close()
        await shop.pool.close()

    app.cleanup_ctx.append(resources)
    app.router.add_post("/relay/connect", shop.connect)
    app.router.add_post("/relay/subscribe", shop.subscribe)
    app.router.add_post("/relay/publish", shop.publish)
    app.router.add_post("/relay/rpc", shop.rpc)
    app.router.add_post("/shop/orders/{id}/status", shop.order_status)
    app.router.add_get("/healthz", shop.healthz)
    if demo:
        from examples.shop_backend.demo import add_demo_routes

        add_demo_routes(app, shop, relay_ws_url)
    return app


def main(argv: list[str] | None = None) -> int:
    """``python -m examples.shop_backend --dsn postgresql://... --port 9000`` (README.md)."""
    p = argparse.ArgumentParser(prog="python -m examples.shop_backend", description=__doc__.split("\n")[0])
    p.add_argument("--dsn", default=os.environ.get("SHOP_DSN", ""), help="PostgreSQL DSN (env SHOP_DSN)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9000)
    p.add_argument("--relay-api-url", "--relay-api",
                   default=os.environ.get("RELAY_API_URL", "http://127.0.0.1:8000"),
                   help="relay's API port base URL (env RELAY_API_URL)")
    p.add_argument("--relay-api-key", default=os.environ.get("RELAY_API_KEY", ""),
                   help="relay's api_key (env RELAY_API_KEY)")
    p.add_argument("--bot-delay", type=float, default=0.3, help="seconds the bot waits before answering")
    p.add_argument("--init-db", action="store_true", help="create the tables (schema.sql) first")
    p.add_argument("--seed", action="store_true", help="add demo data and print session cookies, then exit "
                                                       "(with --demo: then serve)")
    p.add_argument("--demo", action="store_true", help="also serve relay's shop chat demo (/demo/shop, /demo/agent) "
                                                       "with a password-less login: development only (demo.py)")
    p.add_argument("--relay-ws-url", default=os.environ.get("RELAY_WS_URL", "ws://{host}:8000/connection/websocket"),
                   help="relay's WebSocket URL for the demo pages; {host} is the host the page came from, so the "
                        "browser sends the page's cookie along (env RELAY_WS_URL)")
    args = p.parse_args(argv)
    if not args.dsn:
        p.error("--dsn (or SHOP_DSN) is required")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    async def prepare() -> dict[str, str] | None:
        if args.init_db or args.seed or args.demo:
            await init_db(args.dsn)
        if not (args.seed or args.demo):
            return None
        conn = await asyncpg.connect(args.dsn, timeout=10)
        try:
            if args.demo:
                from examples.shop_backend.demo import prepare_db

                await prepare_db(conn)
            return await seed_demo(conn) if args.seed else None
        finally:
            await conn.close()

    cookies = asyncio.run(prepare())
    if cookies is not None:
        for who, token in cookies.items():
            print(f"{who}: Cookie: {COOKIE}={token}", flush=True)
        if not args.demo:
            return 0
    if args.demo:
        log.warning("demo mode: /demo/api/token logs anyone in without a password; development only")
        print(f"shop demo: http://{args.host}:{args.port}/demo/shop and http://{args.host}:{args.port}/demo/agent",
              flush=True)
    web.run_app(make_app(args.dsn, args.relay_api_url, args.relay_api_key, bot_delay=args.bot_delay, demo=args.demo,
                         relay_ws_url=args.relay_ws_url),
                host=args.host, port=args.port, access_log=None)
    return 0
