"""First-response time of support chats, end to end: real relay processes, real clients on WebSocket, the
server API, a real escalation webhook, and two nodes on one real Redis giving one answer."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from tests.rawclients import RawWS, ws_connected
from tests.webhook import Webhook

SUPPORT = {"publish_access": "subscribers", "history_size": 10, "history_ttl": 300.0, "support_chat": True,
           "support_wait_threshold": 0.3, "support_escalate_after": 0.6}
COUNT = "relay_first_response_seconds_count"
SUM = "relay_first_response_seconds_sum"
WAITING = "relay_support_chats_waiting"


def config(hook: Webhook, **extra) -> dict:
    return {"metrics_interval": 0.1, "support_escalation_url": hook.url, "support_escalation_timeout": 2.0,
            "namespaces": {"support": SUPPORT}, **extra}


async def metric(r, name: str, labels: dict | None = None) -> float:
    m = await asyncio.to_thread(r.metrics)
    return m[name, labels or {}]


async def until(cond, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not await cond():
            await asyncio.sleep(0.05)


async def joined(ws: RawWS, *channels: str) -> RawWS:
    for ch in channels:
        assert "subscribe" in await ws.call("subscribe", {"channel": ch})
    return ws


async def say(ws: RawWS, ch: str, text: str) -> None:
    assert "publish" in await ws.call("publish", {"channel": ch, "data": {"text": text}})


async def test_first_response_gauge_and_one_escalation_per_wait(relay_factory):
    ns = {"namespace": "support"}
    async with Webhook() as hook:
        r = relay_factory(config(hook))
        ch, other, room = "support:order-1", "support:order-2", "chat:lobby"
        ada = await joined(await ws_connected(r.ws_port, r.token("ada")), ch, other, room)
        agent = await joined(await ws_connected(r.ws_port, r.token("agent7")), ch, other, room)
        assert await metric(r, COUNT, ns) == 0  # the series exists before the first chat

        await say(ada, ch, "is my parcel on its way?")
        await asyncio.sleep(0.2)
        await say(ada, ch, "hello?")  # does not restart the clock
        await say(ada, ch, "anyone?")
        receipt = {"type": "receipt", "mids": ["m1"], "status": "read", "by": "agent7"}
        assert "publish" in await agent.call("publish", {"channel": ch, "data": receipt})  # no answer
        assert await metric(r, COUNT, ns) == 0
        await say(agent, ch, "yes, it left this morning")
        await say(agent, ch, "anything else?")  # the agent's follow-up starts no wait
        await say(ada, room, "hi all")  # a namespace that is not a support chat: untouched
        await say(agent, room, "hi")
        assert await metric(r, COUNT, ns) == 1
        assert await metric(r, SUM, ns) >= 0.2
        m = await asyncio.to_thread(r.metrics)
        assert m.total(COUNT) == 1  # no chat:lobby series

        await say(ada, other, "where is my refund?")  # nobody answers: past the threshold, then escalated
        await until(lambda: _equals(r, WAITING, ns, 1))
        async with asyncio.timeout(10):
            while not [b for b in hook.bodies if b["channel"] == other]:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # five more scans: still one call for this wait
        (body,) = [b for b in hook.bodies if b["channel"] == other]
        assert (body["customer"], body["namespace"]) == ("ada", "support") and body["waited_seconds"] >= 0.6
        assert await metric(r, "relay_support_escalations_total", {"result": "ok"}) >= 1
        # the shop's backend answers through the server API (support_server_replies = true, the default)
        assert "result" in await asyncio.to_thread(r.api, "publish", {"channel": other,
                                                                      "data": {"text": "refund sent"}})
        assert await metric(r, COUNT, ns) == 2
        await until(lambda: _equals(r, WAITING, ns, 0))
        assert await metric(r, "relay_support_errors_total") == 0
        for ws in (ada, agent):
            ws.close()


async def _equals(r, name: str, labels: dict, value: float) -> bool:
    return await metric(r, name, labels) == value


@pytest.fixture
async def webhook():
    async with Webhook() as hook:
        yield hook


async def test_two_nodes_on_one_redis_count_once_and_escalate_once(redis_server, relay_factory, webhook):
    ns = {"namespace": "support"}
    cfg = config(webhook, broker="redis", redis_urls=[redis_server.url], redis_prefix=f"s{uuid.uuid4().hex[:6]}",
                 redis_unsubscribe_delay=0.2)
    a, b = relay_factory(cfg), relay_factory(cfg)
    ch, waiting = "support:order-41", "support:order-42"
    customer = await joined(await ws_connected(a.ws_port, a.token("ada")), ch, waiting)
    agent = await joined(await ws_connected(b.ws_port, b.token("agent7")), ch, waiting)

    await say(customer, ch, "is it in stock?")  # accepted by node A
    await asyncio.sleep(0.1)
    await say(agent, ch, "yes, 3 left")  # the reply, accepted by node B, ends A's wait
    counts = [await metric(n, COUNT, ns) for n in (a, b)]
    assert counts == [0, 1]
    assert await metric(b, SUM, ns) >= 0.1

    await say(customer, waiting, "can I change the address?")
    # both nodes export the cluster's figure (dashboards take max, not sum)
    await until(lambda: _equals(a, WAITING, ns, 1))
    await until(lambda: _equals(b, WAITING, ns, 1))
    async with asyncio.timeout(10):
        while not webhook.bodies:
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.6)  # both nodes scan six more times
    assert [x["channel"] for x in webhook.bodies].count(waiting) == 1  # one call, by one of the nodes
    oks = [await metric(n, "relay_support_escalations_total", {"result": "ok"}) for n in (a, b)]
    assert sum(oks) == len(webhook.bodies)
    await say(agent, waiting, "yes, done")
    assert sum([await metric(n, COUNT, ns) for n in (a, b)]) == 2
    await until(lambda: _equals(a, WAITING, ns, 0))
    for ws in (customer, agent):
        ws.close()
