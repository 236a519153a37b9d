"""The shop backend end to end: a real relay process, the backend (aiohttp, in this loop) on a
free port, PostgreSQL, and centrifuge-python clients that carry nothing but a cookie.

One relay and one backend serve the whole module (one event loop); every test makes its own
customers, agents and orders.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp
import asyncpg
import orjson
import pytest
import pytest_asyncio
from aiohttp import web
from centrifuge import (Client, ClientEventHandler, ClientState, ConnectedContext, DisconnectedContext, ReplyError,
                        ServerPublicationContext, ServerSubscribedContext, UnsubscribedContext)

from examples.shop_backend.app import COOKIE, make_app, order_chat, orders_channel
from examples.shop_backend.tests.conftest import add_agent, add_customer, outbox_unavailable
from relay.testing import free_port
from tests.e2e.test_python_sdk import Recorder
from tests.relayproc import RelayProcess

pytestmark = pytest.mark.asyncio(loop_scope="module")

NAMESPACES = {
    "support": {"proxy_subscribe": True, "proxy_publish": True, "publish_access": "subscribers",
                "history_size": 100, "history_ttl": 3600, "force_recovery": True, "presence": True},
    "orders": {"history_size": 20, "history_ttl": 3600, "force_recovery": True},
    "agents": {"proxy_subscribe": True, "history_size": 50, "history_ttl": 3600},
}
JACKET = ("Trail jacket", "M", "shipped")


@dataclass
class Stack:
    relay: RelayProcess
    backend: str        # the backend's base URL
    db: asyncpg.Pool    # the tests' own pool on the shop's database
    outbox: bool        # relay consumes the outbox table


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack(shop_dsn):
    outbox = outbox_unavailable() is None
    if outbox:
        from relay.integrations.outbox import init_table

        await init_table(shop_dsn)
    port = free_port()
    hooks = f"http://127.0.0.1:{port}/relay"
    cfg = {"proxy": {"connect_endpoint": f"{hooks}/connect", "subscribe_endpoint": f"{hooks}/subscribe",
                     "publish_endpoint": f"{hooks}/publish", "rpc_endpoint": f"{hooks}/rpc",
                     "cookies": [COOKIE], "timeout": 3.0},
           "namespaces": NAMESPACES}
    if outbox:
        cfg |= {"outbox_dsn": shop_dsn, "outbox_poll_interval": 0.5}
    relay = RelayProcess(cfg)
    await asyncio.to_thread(relay.start)
    runner = web.AppRunner(make_app(shop_dsn, f"http://127.0.0.1:{relay.api_port}", relay.api_key, bot_delay=0.05),
                           access_log=None)
    db = None
    try:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        db = await asyncpg.create_pool(shop_dsn, min_size=1, max_size=2)
        yield Stack(relay, f"http://127.0.0.1:{port}", db, outbox)
    finally:
        if db is not None:
            await db.close()
        await runner.cleanup()
        await asyncio.to_thread(relay.cleanup)


class Events(ClientEventHandler):
    """A client's connection events and its server-side subscriptions (the orders: channel)."""

    def __init__(self) -> None:
        self.connected: list[ConnectedContext] = []
        self.disconnected: list[DisconnectedContext] = []
        self.server_subs: list[str] = []
        self.server_pubs: list[tuple[str, dict]] = []
        self.changed = asyncio.Event()

    async def on_connected(self, ctx: ConnectedContext) -> None:
        self.connected.append(ctx)
        self.changed.set()

    async def on_disconnected(self, ctx: DisconnectedContext) -> None:
        self.disconnected.append(ctx)
        self.changed.set()

    async def on_subscribed(self, ctx: ServerSubscribedContext) -> None:
        self.server_subs.append(ctx.channel)
        self.changed.set()

    async def on_publication(self, ctx: ServerPublicationContext) -> None:
        self.server_pubs.append((ctx.channel, ctx.pub.data))
        self.changed.set()

    async def until(self, cond, timeout: float = 10.0) -> None:
        async def wait():
            while not cond():
                self.changed.clear()
                await self.changed.wait()
        await asyncio.wait_for(wait(), timeout)


class Chat(Recorder):
    """A subscription's publications, plus how it ended (a refused subscribe ends it)."""

    def __init__(self) -> None:
        super().__init__()
        self.unsubscribed: list[UnsubscribedContext] = []

    async def on_unsubscribed(self, ctx: UnsubscribedContext) -> None:
        self.unsubscribed.append(ctx)
        self.changed.set()

    def texts(self) -> list[tuple[str, str]]:
        return [(p.data["from"], p.data["text"]) for p in self.pubs if p.data.get("type") == "msg"]


@pytest_asyncio.fixture(loop_scope="module")
async def connect(stack):
    """``await connect(cookie)``: a connected centrifuge-python client whose only credential is the cookie."""
    clients: list[Client] = []

    async def make(cookie: str, events: Events | None = None, wait: bool = True) -> Client:
        client = Client(stack.relay.ws_url, events=events, headers={"Cookie": f"{COOKIE}={cookie}; theme=dark"},
                        max_reconnect_delay=0.5)
        clients.append(client)
        await client.connect()
        if wait:
            await client.ready()
        return client

    yield make
    for c in clients:
        await c.disconnect()


async def subscribe(client: Client, channel: str) -> Chat:
    chat = Chat()
    sub = client.new_subscription(channel, chat)
    await sub.subscribe()
    await chat.until(lambda: chat.subscribed or chat.unsubscribed)
    return chat


async def stored(stack: Stack, channel: str) -> list[tuple[str, str]]:
    rows = await stack.db.fetch("SELECT user_id, data::text FROM chat_messages WHERE channel = $1 ORDER BY id", channel)
    return [(r["user_id"], orjson.loads(r["data"])["text"]) for r in rows]


# ---------------------------------------------------------------- connect and rpc

async def test_a_cookie_is_all_a_client_needs_and_rpc_round_trip(stack, connect):
    async with stack.db.acquire() as conn:
        cid, cookie, (oid,) = await add_customer(conn, "Ada", JACKET)
        _, _, (other,) = await add_customer(conn, "Bob", JACKET)
    me = f"c-{cid}"
    events = Events()
    client = await connect(cookie, events)
    # the user, name and role came from the backend's sessions table, not from the client
    assert events.connected[0].data == {"user": me, "name": "Ada", "role": "customer"}
    await events.until(lambda: orders_channel(me) in events.server_subs)
    reply = await client.rpc("orders.status", {"order": oid})
    assert reply.data["order"] == {**reply.data["order"], "id": oid, "status": "shipped", "chat": order_chat(oid)}
    assert [o["id"] for o in (await client.rpc("orders.status", {})).data["orders"]] == [oid]
    with pytest.raises(ReplyError) as e:   # another customer's order does not exist for Ada
        await client.rpc("orders.status", {"order": other})
    assert (e.value.code, e.value.message) == (1404, f"no order {other} of yours")
    with pytest.raises(ReplyError) as e:
        await client.rpc("orders.cancel", {"order": oid})
    assert e.value.code == 1404
    answer = (await client.rpc("bot.ask", {"text": "where is my order?"})).data
    assert answer["intent"] == "order_status" and f"#{oid}" in answer["text"] and "shipped" in answer["text"]


@pytest.mark.parametrize("cookie", ["no-such-session", ""])
async def test_unknown_session_is_disconnected_for_good(stack, connect, cookie):
    events = Events()
    client = await connect(cookie, events, wait=False)
    await events.until(lambda: events.disconnected)
    assert (events.disconnected[0].code, events.disconnected[0].reason) == (4501, "unknown session")
    await asyncio.sleep(0.3)
    assert client.state == ClientState.DISCONNECTED and not events.connected  # 4501: the SDK does not retry


# ---------------------------------------------------------------- who may join which channel

async def test_subscribe_rules(stack, connect):
    async with stack.db.acquire() as conn:
        cid, cookie, (mine,) = await add_customer(conn, "Cleo", JACKET)
        bid, _, (theirs,) = await add_customer(conn, "Dan", JACKET)
        _, agent_cookie = await add_agent(conn, "Grace")
    customer = await connect(cookie)
    ok = await subscribe(customer, order_chat(mine))
    assert ok.subscribed and ok.subscribed[0].data["order"]["id"] == mine
    for channel, code in ((order_chat(theirs), 1403), ("support:order-999999", 1403), ("agents:queue", 1403),
                          (orders_channel(f"c-{bid}"), 103)):   # relay's own '#' check: the backend is not asked
        refused = await subscribe(customer, channel)
        assert [u.code for u in refused.unsubscribed] == [code], channel
    agent = await connect(agent_cookie)
    for channel in (order_chat(mine), order_chat(theirs), "agents:queue"):
        assert (await subscribe(agent, channel)).subscribed, channel


# ---------------------------------------------------------------- publishing, the bot, the hand-off

async def test_rejected_publish_errs_for_the_publisher_and_reaches_no_one(stack, connect):
    async with stack.db.acquire() as conn:
        _, cookie, (oid,) = await add_customer(conn, "Eve", JACKET)
        await conn.execute("INSERT INTO stock (product, size, quantity) VALUES ('Trail jacket', 'M', 7) "
                           "ON CONFLICT (product, size) DO UPDATE SET quantity = 7")
        _, agent_cookie = await add_agent(conn, "Grace")
    channel = order_chat(oid)
    customer = await connect(cookie)
    agent = await connect(agent_cookie)
    watching = await subscribe(agent, channel)
    await subscribe(customer, channel)
    for data, code, message in (
            ({"text": "   "}, 1000, "the message is empty"),
            ({"text": "x" * 2001}, 1001, "the message is longer than 2000 characters"),
            ({"type": "sale", "text": "hi"}, 1002, 'a chat message is {"type": "msg", "text": "..."}')):
        with pytest.raises(ReplyError) as e:
            await customer.publish(channel, data)
        assert (e.value.code, e.value.message) == (code, message)
    # accepted: the sender fields are the session's, whatever the client claims
    await customer.publish(channel, {"type": "msg", "mid": "m-1", "text": " Is size M in stock? ", "from": "bot",
                                     "role": "agent"})
    await watching.until(lambda: len(watching.pubs) >= 2)
    first = watching.pubs[0]
    assert first.data == {**first.data, "mid": "m-1", "text": "Is size M in stock?", "from": first.info.user,
                          "role": "customer", "name": "Eve"}
    assert watching.texts()[1] == ("bot", "Yes: 7 × Trail jacket in size M in stock.")
    await asyncio.sleep(0.3)
    assert len(watching.pubs) == 2   # none of the rejected ones, ever
    assert await stored(stack, channel) == [(first.info.user, "Is size M in stock?"),
                                            ("bot", "Yes: 7 × Trail jacket in size M in stock.")]


async def test_the_bot_answers_where_is_my_order(stack, connect):
    async with stack.db.acquire() as conn:
        cid, cookie, (oid,) = await add_customer(conn, "Finn", JACKET)
        updated = await conn.fetchval("SELECT updated_at FROM orders WHERE id = $1", oid)
    me, channel = f"c-{cid}", order_chat(oid)
    customer = await connect(cookie)
    chat = await subscribe(customer, channel)
    t0 = time.monotonic()
    await customer.publish(channel, {"text": "Where is my order?"})
    await chat.until(lambda: len(chat.pubs) >= 2)
    expected = (f"Your order #{oid} (Trail jacket, size M) is shipped: it is on its way. "
                f"Last update: {updated.strftime('%d %b, %H:%M UTC')}.")
    assert chat.texts() == [(me, "Where is my order?"), ("bot", expected)]
    assert chat.pubs[0].info.user == me            # the customer's, with the connect hook's info
    assert chat.pubs[1].data["role"] == "bot" and chat.pubs[1].data["name"] == "Northwind bot"
    assert chat.pubs[0].offset < chat.pubs[1].offset
    assert time.monotonic() - t0 < 2.0
    assert await stored(stack, channel) == [(me, "Where is my order?"), ("bot", expected)]


async def test_hand_off_reaches_an_agent_who_answers(stack, connect):
    async with stack.db.acquire() as conn:
        cid, cookie, (oid,) = await add_customer(conn, "Gus", JACKET)
        _, agent_cookie = await add_agent(conn, "Grace")
    me, channel = f"c-{cid}", order_chat(oid)
    agent = await connect(agent_cookie)
    queue = await subscribe(agent, "agents:queue")
    customer = await connect(cookie)
    chat = await subscribe(customer, channel)

    async def say(text: str, pubs: int) -> None:
        await customer.publish(channel, {"text": text})
        await chat.until(lambda: len(chat.pubs) >= pubs)

    await say("Do you gift wrap?", 2)            # can't answer: 1
    await say("where is my order", 4)            # answered
    await say("Can you engrave my name?", 6)     # can't answer: 2 -> hand-off
    bot_lines = [text for who, text in chat.texts() if who == "bot"]
    assert bot_lines[0].startswith("Sorry, I can't answer that") and "agent will join" in bot_lines[2]
    await queue.until(lambda: any(p.data["channel"] == channel for p in queue.pubs))
    handoff = next(p.data for p in queue.pubs if p.data["channel"] == channel)
    assert handoff["type"] == "handoff" and handoff["customer"] == me and handoff["order"] == oid
    assert [(m["from"], m["text"]) for m in handoff["conversation"]] == chat.texts()   # the conversation so far
    # the agent takes the chat
    desk = await subscribe(agent, channel)
    await agent.publish(channel, {"text": "Hi Gus, Grace here: engraving is possible, I'll set it up."})
    await chat.until(lambda: len(chat.pubs) >= 7)
    reply = chat.pubs[6]
    assert (reply.data["role"], reply.data["name"], reply.info.user) == ("agent", "Grace", reply.data["from"])
    # from now on the bot is quiet: the customer's message reaches the agent, nothing answers it
    await customer.publish(channel, {"text": "where is my order?"})
    await desk.until(lambda: any(p.data["text"] == "where is my order?" for p in desk.pubs))
    await asyncio.sleep(0.5)
    assert chat.texts()[7:] == [(me, "where is my order?")]
    row = await stack.db.fetchrow("SELECT unanswered, handed_off_at FROM support_chats WHERE channel = $1", channel)
    assert row["unanswered"] == 2 and row["handed_off_at"] is not None
    assert [who for who, _ in await stored(stack, channel)] == [me, "bot"] * 3 + [reply.data["from"], me]


# ---------------------------------------------------------------- order statuses through the outbox

async def test_order_status_commit_is_pushed_to_the_customer(stack, connect):
    if not stack.outbox:
        pytest.skip(outbox_unavailable())
    from examples.shop_backend.app import set_order_status

    async with stack.db.acquire() as conn:
        cid, cookie, (oid,) = await add_customer(conn, "Hana", JACKET)
        _, agent_cookie = await add_agent(conn, "Grace")
    me = f"c-{cid}"
    events = Events()
    await connect(cookie, events)
    await events.until(lambda: orders_channel(me) in events.server_subs)

    # a change rolled back pushes nothing: the outbox row went with it
    class Abort(Exception):
        pass

    async with stack.db.acquire() as conn:
        with pytest.raises(Abort):
            async with conn.transaction():
                assert (await set_order_status(conn, oid, "cancelled"))["status"] == "cancelled"
                raise Abort
    # a committed one, through the agent console's endpoint, reaches the customer
    async with aiohttp.ClientSession(cookies={COOKIE: agent_cookie}) as http:
        async with http.post(f"{stack.backend}/shop/orders/{oid}/status", json={"status": "out for delivery"}) as r:
            assert r.status == 200
            change = await r.json()
        async with http.post(f"{stack.backend}/shop/orders/{oid}/status", json={"status": "lost"}) as r:
            assert r.status == 400
    async with aiohttp.ClientSession(cookies={COOKIE: cookie}) as http:   # customers cannot
        async with http.post(f"{stack.backend}/shop/orders/{oid}/status", json={"status": "delivered"}) as r:
            assert r.status == 403
    assert change == {"order": oid, "status": "out for delivery", "ts": change["ts"], "version": 2}
    await events.until(lambda: events.server_pubs)
    assert events.server_pubs == [(orders_channel(me), {"order": oid, "status": "out for delivery",
                                                        "ts": change["ts"]})]
    row = await stack.db.fetchrow("SELECT status, version FROM orders WHERE id = $1", oid)
    assert (row["status"], row["version"]) == ("out for delivery", 2)
    deadline = time.monotonic() + 5
    while await stack.db.fetchval("SELECT count(*) FROM relay_outbox WHERE idempotency_key LIKE $1", f"order-{oid}-%"):
        assert time.monotonic() < deadline, "relay did not consume the outbox row"
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    assert len(events.server_pubs) == 1


# ---------------------------------------------------------------- the hooks' own checks (behind relay's)

async def test_hooks_refuse_what_relay_config_would_let_through(stack):
    """relay's namespace rules come first (a customer must be subscribed to publish); the hooks do not
    rely on them: straight to the backend in Centrifugo's format."""
    async with stack.db.acquire() as conn:
        cid, _, (mine,) = await add_customer(conn, "Ivy", JACKET)
        _, _, (theirs,) = await add_customer(conn, "Jon", JACKET)
    me = f"c-{cid}"

    async with aiohttp.ClientSession() as http:
        async def hook(name: str, body: dict) -> dict:
            base = {"client": "c1", "transport": "websocket", "protocol": "json", "encoding": "json", "user": me}
            async with http.post(f"{stack.backend}/relay/{name}", json={**base, **body}) as r:
                assert r.status == 200
                return await r.json()

        msg = {"text": "hello"}
        assert (await hook("publish", {"channel": order_chat(theirs), "data": msg}))["error"]["code"] == 1403
        assert (await hook("publish", {"channel": "news:x", "data": msg}))["error"]["code"] == 1403
        assert (await hook("publish", {"channel": order_chat(mine), "data": "hello"}))["error"]["code"] == 1002
        receipt = {"type": "receipt", "status": "read", "mids": ["m-1"], "by": me}
        assert await hook("publish", {"channel": order_chat(mine), "data": receipt}) == {"result": {}}
        assert await stored(stack, order_chat(mine)) == []   # receipts travel, but are not chat messages
        assert (await hook("publish", {"channel": order_chat(theirs), "data": receipt}))["error"]["code"] == 1403
        for channel in ("support:order-99999999999", "support:order-0", "orders:x", "agents:queue"):
            assert (await hook("subscribe", {"channel": channel}))["error"]["code"] == 1403, channel
        assert (await hook("rpc", {"user": "", "method": "orders.status", "data": {}}))["error"]["code"] == 1403
        assert (await hook("connect", {"user": ""}))["disconnect"]["code"] == 4501
        async with http.post(f"{stack.backend}/relay/publish", data=b"{oops") as r:
            assert r.status == 400   # relay turns a non-200 into a temporary error 100
