"""relay.rules.support: the waiting state machine on every tracker (memory, real Redis, a real Redis Cluster, two
Redis shards), the desk's figures and escalation webhook against a real aiohttp server, and the config keys."""

from __future__ import annotations

import asyncio
import time
import uuid

import orjson
import pytest

from relay.brokers.base import StreamPosition
from relay.brokers.redis import RedisBroker
from relay.config import ConfigError, from_mapping
from relay.rules.support import (SERVER, MemoryWaitTracker, RedisWaitTracker, SupportDesk, SupportRules, author_of)
from relay.testing import free_port
from tests.webhook import Webhook

SECRET = {"token_hmac_secret": "s"}


def rules(ns: str = "support", threshold: float = 60.0, escalate: float = 0.0, expire: float = 3600.0,
          server_replies: bool = True) -> SupportRules:
    return SupportRules(ns, threshold, escalate, expire, server_replies)


def chat() -> str:
    return f"support:order-{uuid.uuid4().hex[:8]}"


@pytest.fixture(params=["memory", "redis", "redis-cluster"])
async def trackers(request):
    """A factory of trackers that share one state, as the nodes of one relay do: the memory tracker is
    one process (the same object each time); Redis trackers are separate clients on one Redis."""
    if request.param == "memory":
        mem = MemoryWaitTracker()
        yield lambda: mem
        return
    cluster = request.param == "redis-cluster"
    urls = request.getfixturevalue("redis_cluster").urls if cluster else [request.getfixturevalue("redis_server").url]
    prefix = f"t{uuid.uuid4().hex[:8]}"
    brokers: list[RedisBroker] = []

    def make() -> RedisWaitTracker:
        brokers.append(RedisBroker(urls, prefix=prefix, cluster=cluster))
        return RedisWaitTracker(brokers[-1])

    yield make
    for b in brokers:
        await b.close()


async def test_customer_then_agent_is_one_first_response_measured_from_the_first_message(trackers):
    t, r, ch = trackers(), rules(), chat()
    assert await t.record(r, ch, "ada") is None
    await asyncio.sleep(0.25)
    assert await t.record(r, ch, "ada") is None  # a second message does not restart the clock
    waited = await t.record(r, ch, "agent7")
    assert waited is not None and 0.25 <= waited < 5
    assert await t.record(r, ch, "agent7") is None  # the agent's follow-up: nobody was waiting
    assert await t.record(r, ch, "ada") is None  # the customer writes again: a new wait
    waited = await t.record(r, ch, "agent9")
    assert waited is not None and waited < 0.25


async def test_an_agent_writing_first_after_a_reply_does_not_make_the_customer_a_responder(trackers):
    t, r, ch = trackers(), rules(threshold=0.1), chat()
    await t.record(r, ch, "ada")
    assert await t.record(r, ch, "agent7") is not None
    assert await t.record(r, ch, "agent7") is None  # "anything else?" starts no wait for the agent...
    await asyncio.sleep(0.2)
    assert (await t.scan(r))[0] == 0
    assert await t.record(r, ch, "ada") is None  # ...so the customer's answer is a new wait, not a response
    assert (await t.scan(r))[0] == 0
    await asyncio.sleep(0.2)
    assert (await t.scan(r))[0] == 1


async def test_server_publications_answer_unless_configured_otherwise(trackers):
    t, ch = trackers(), chat()
    assert await t.record(rules(), ch, SERVER) is None  # the backend writing first starts nothing
    assert (await t.record(rules(), ch, "ada")) is None
    assert await t.record(rules(), ch, SERVER) is not None  # the bot answered
    humans = rules(server_replies=False)
    ch2 = chat()
    await t.record(humans, ch2, "ada")
    assert await t.record(humans, ch2, SERVER) is None  # the bot's hand-off: still waiting for a person
    assert await t.record(humans, ch2, "agent7") is not None


async def test_the_same_wait_is_seen_and_answered_by_every_node(trackers):
    a, b, r, ch = trackers(), trackers(), rules(), chat()
    await a.record(r, ch, "ada")
    assert await b.record(r, ch, "ada") is None  # the customer on another node: still the same wait
    assert await b.record(r, ch, "agent7") is not None
    assert await a.record(r, ch, "agent8") is None  # answered once, cluster-wide


async def test_scan_counts_waits_past_the_threshold_per_namespace(trackers):
    t = trackers()
    r, other = rules(threshold=0.2), rules(ns=f"ns{uuid.uuid4().hex[:6]}", threshold=0.2)
    old, answered, fresh = chat(), chat(), chat()
    for ch in (old, answered):
        await t.record(r, ch, "ada")
    await t.record(other, chat(), "bob")
    await t.record(r, answered, "agent7")
    await asyncio.sleep(0.3)
    await t.record(r, fresh, "cy")
    assert (await t.scan(r))[0] == 1
    assert (await t.scan(other))[0] == 1
    await t.record(r, old, "agent7")
    assert (await t.scan(r))[0] == 0


async def test_escalation_is_claimed_by_one_node_once_per_wait(trackers):
    a, b, r, ch = trackers(), trackers(), rules(threshold=0.1, escalate=0.2), chat()
    await a.record(r, ch, "ada")
    assert (await a.scan(r))[1] == []  # not due yet
    await asyncio.sleep(0.3)
    (_, got_a), (_, got_b) = await asyncio.gather(a.scan(r), b.scan(r))
    claimed = got_a + got_b
    assert len(claimed) == 1
    esc = claimed[0]
    assert (esc.channel, esc.customer, esc.namespace) == (ch, "ada", "support")
    assert esc.waited_seconds >= 0.2
    assert abs(time.time() - esc.waited_seconds - esc.waiting_since) < 1  # Unix time, seconds
    assert (await a.scan(r))[1] == [] and (await b.scan(r))[1] == []  # once per wait
    await b.record(r, ch, "agent7")
    await a.record(r, ch, "ada")  # a new wait: escalated again when due
    await asyncio.sleep(0.3)
    assert [e.channel for e in (await b.scan(r))[1]] == [ch]


async def test_no_escalation_without_escalate_after(trackers):
    t, r, ch = trackers(), rules(threshold=0.1), chat()
    await t.record(r, ch, "ada")
    await asyncio.sleep(0.2)
    count, claimed = await t.scan(r)
    assert count == 1 and claimed == []


async def test_waits_older_than_the_expiry_are_forgotten(trackers):
    t, r, ch = trackers(), rules(threshold=0.05, expire=0.3), chat()
    await t.record(r, ch, "ada")
    await asyncio.sleep(0.1)
    assert (await t.scan(r))[0] == 1
    await asyncio.sleep(0.3)
    assert (await t.scan(r))[0] == 0  # the customer left: no longer counted
    assert await t.record(r, ch, "agent7") is None  # and a late answer is no first response
    assert await t.record(r, ch, "agent7") is None  # the customer was forgotten too: the agent starts a wait
    await asyncio.sleep(0.1)
    assert (await t.scan(r))[0] == 1


async def test_redis_shards_each_keep_their_channels_and_the_scan_adds_them_up(redis_factory):
    servers = [redis_factory(), redis_factory()]
    urls = [s.url for s in servers]
    prefix = f"t{uuid.uuid4().hex[:8]}"
    a, b = RedisBroker(urls, prefix=prefix), RedisBroker(urls, prefix=prefix)
    try:
        ta, tb, r = RedisWaitTracker(a), RedisWaitTracker(b), rules(threshold=0.1)
        channels = [chat() for _ in range(8)]
        assert len({a.shards.index(ch) for ch in channels}) == 2
        for ch in channels:
            await ta.record(r, ch, "ada")
        await asyncio.sleep(0.2)
        assert (await tb.scan(r))[0] == 8
        for ch in channels[:3]:
            assert await tb.record(r, ch, "agent7") is not None
        assert (await ta.scan(r))[0] == 5
        servers[1].stop()  # one instance down: the other's waits are still counted, the gap is an error
        on_first = sum(1 for ch in channels[3:] if a.shards.index(ch) == 0)
        assert (await ta.scan(r))[0] == on_first and ta.failures == 1
    finally:
        await a.close()
        await b.close()


def test_author_of_a_publication():
    assert author_of(None) == SERVER
    assert author_of({"client": "c1", "user": "ada"}) == "ada"
    assert author_of({"client": "c1", "user": ""}) == "client:c1"  # anonymous: the connection


# --- the desk ------------------------------------------------------------------------------------------------

def desk_config(url: str = "", **ns) -> dict:
    support = {"publish_access": "subscribers", "support_chat": True, **ns}
    top = {"support_escalation_url": url, "support_escalation_timeout": 1.0} if url else {}
    return from_mapping({**SECRET, **top, "metrics_interval": 0.05,
                         "namespaces": {"support": support, "chat": {"publish_access": "subscribers"}}})


async def until(cond, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.02)


async def test_desk_observes_first_responses_per_namespace_and_ignores_other_channels():
    cfg = desk_config()
    desk = SupportDesk.for_node(cfg, None)
    assert isinstance(desk.tracker, MemoryWaitTracker)
    ada, agent = {"client": "c1", "user": "ada"}, {"client": "c2", "user": "agent7"}
    text = {"type": "msg", "text": "hi"}
    await desk.published("chat:room", text, ada)
    await desk.published("chat:room", text, agent)
    await desk.published("support", text, ada)  # no namespace: not a support chat
    await desk.published("support:order-1", text, ada)
    await desk.published("support:order-1", {"type": "receipt", "status": "read"}, agent)  # not an answer
    await desk.published("support:order-1", {"type": "typing"}, agent)
    await desk.published_many([("support:order-1", {}), ("support:order-2", {})],
                              [ValueError("refused"), StreamPosition(1, "e")], agent)  # the first: refused
    assert desk.first_response["support"].n == 0
    await desk.published("support:order-1", {"type": ["odd"], "text": "on it"}, agent)  # a message after all
    h = desk.first_response["support"]
    assert h.n == 1 and h.counts[0] == 1  # under 5 s: the first bucket
    assert SupportDesk.for_node(from_mapping(SECRET), None) is None  # no support namespace: no desk


async def test_desk_escalates_once_with_the_documented_body():
    async with Webhook() as hook:
        desk = SupportDesk.for_node(desk_config(hook.url, support_wait_threshold=0.05,
                                                support_escalate_after=0.1), None)
        desk.start()
        try:
            await desk.published("support:order-7", {"text": "hi"}, {"client": "c1", "user": "ada"})
            await until(lambda: desk.escalations["ok"] == 1)
            await asyncio.sleep(0.3)  # several more scans
            assert desk.waiting["support"] == 1
        finally:
            await desk.stop()
    assert len(hook.bodies) == 1
    body = hook.bodies[0]
    assert {k: body[k] for k in ("channel", "customer", "namespace")} == {
        "channel": "support:order-7", "customer": "ada", "namespace": "support"}
    assert body["waited_seconds"] >= 0.1 and body["waiting_since"] > 1.7e9
    assert desk.escalations["failed"] == 0


@pytest.mark.parametrize("statuses,requests,result", [([503, 500], 3, "ok"), ([400], 1, "failed"),
                                                      ([503, 503, 503], 3, "failed")])
async def test_escalation_retries_server_errors_but_not_refusals(statuses, requests, result):
    async with Webhook(statuses) as hook:
        desk = SupportDesk.for_node(desk_config(hook.url, support_wait_threshold=0.05,
                                                support_escalate_after=0.05), None)
        desk.start()
        try:
            await desk.published("support:order-8", "hi", {"client": "c1", "user": "ada"})
            await until(lambda: sum(desk.escalations.values()) == 1)
        finally:
            await desk.stop()
    assert len(hook.bodies) == requests and desk.escalations[result] == 1
    assert len({orjson.dumps(b) for b in hook.bodies}) == 1  # the same claim each time


async def test_an_unreachable_webhook_is_a_failed_escalation():
    desk = SupportDesk.for_node(desk_config(f"http://127.0.0.1:{free_port()}/x", support_wait_threshold=0.05,
                                            support_escalate_after=0.05), None)
    desk.start()
    try:
        await desk.published("support:order-9", "hi", {"client": "c1", "user": "ada"})
        await until(lambda: desk.escalations["failed"] == 1)
    finally:
        await desk.stop()
    assert desk.escalations["ok"] == 0


async def test_a_tracker_failure_never_fails_the_publish():
    cfg = from_mapping({**SECRET, "broker": "redis", "redis_urls": [f"redis://127.0.0.1:{free_port()}/0"],
                        "namespaces": {"support": {"support_chat": True}}})
    broker = RedisBroker(cfg.redis_urls, prefix="down")  # nothing listens there
    desk = SupportDesk.for_node(cfg, broker)
    try:
        assert isinstance(desk.tracker, RedisWaitTracker)
        await desk.published("support:order-1", "hi", {"client": "c1", "user": "ada"})  # does not raise
        assert desk.errors == 1
        await desk.scan()
        assert desk.errors == 2 and desk.waiting["support"] == 0
    finally:
        await broker.close()


# --- config ----------------------------------------------------------------------------------------------------

def errors(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as e:
        from_mapping({**SECRET, **data})
    return e.value.errors


def test_support_config_defaults_and_env():
    from relay.config import load

    cfg = load(environ={**{"RELAY_TOKEN_HMAC_SECRET": "s"}, "RELAY_NAMESPACES__HELP__SUPPORT_CHAT": "true",
                        "RELAY_NAMESPACES__HELP__SUPPORT_WAIT_THRESHOLD": "30"})
    opts = cfg.namespaces["help"]
    assert (opts.support_chat, opts.support_wait_threshold, opts.support_escalate_after, opts.support_server_replies,
            opts.support_wait_expire) == (True, 30.0, 0.0, True, 86400.0)
    assert opts.support_skip_types == ["receipt", "typing"]
    assert (cfg.support_escalation_url, cfg.support_escalation_timeout) == ("", 5.0)


def test_bad_support_config_values_are_named():
    errs = errors({"support_escalation_url": "ftp://x", "support_escalation_timeout": 0,
                   "namespaces": {"a": {"support_chat": True, "support_wait_threshold": 0,
                                        "support_escalate_after": -1},
                                  "b": {"support_chat": True, "support_escalate_after": 300,
                                        "support_wait_expire": 120},
                                  "c": {"support_wait_threshold": 10}}})
    assert "namespaces.a.support_wait_threshold: must be > 0 seconds" in errs
    assert "namespaces.a.support_escalate_after: must be >= 0 seconds (0: no escalation)" in errs
    assert "namespaces.b.support_wait_expire: must be longer than support_wait_threshold and " \
           "support_escalate_after (300 s)" in errs
    assert "namespaces.c.support_wait_threshold: only with support_chat = true" in errs
    assert "support_escalation_url: an http:// or https:// URL, got 'ftp://x'" in errs
    assert "support_escalation_timeout: must be in (0, 60] seconds" in errs
    assert errors({"namespaces": {"s": {"support_chat": True, "support_escalate_after": 60}}}) == [
        "namespaces.s.support_escalate_after: needs support_escalation_url (the webhook to call)"]
    assert errors({"namespaces": {"s": {"support_chat": True, "support_skip_types": ["receipt", ""]}}}) == [
        "namespaces.s.support_skip_types: empty type names"]
    assert errors({"channel": {"support_chat": True}})[0].startswith("channel.support_chat: only a namespace")
    assert errors({"namespaces": {"s": {"support_chat": "sometimes"}}}) == [
        "namespaces.s.support_chat: expected true or false, got 'sometimes'"]
