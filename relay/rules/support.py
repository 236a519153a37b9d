"""First-response time of support chats (docs/support.md).

In a namespace with ``support_chat = true`` every accepted publication is one event
for a small state machine per channel:

* **idle → waiting**: the chat's customer writes. The customer of a channel is the
  first user who wrote in it (kept while the channel is active, ``support_wait_expire``);
  the wait starts at that message.
* **waiting → waiting**: the customer writes again; the clock is not restarted.
* **waiting → idle**: anyone else writes (an agent), or the server API does (the
  shop's backend or its bot) unless ``support_server_replies = false``. The time
  waited is one observation of ``relay_first_response_seconds{namespace}``.
* everything else (an agent's follow-up, a server publication while idle) changes
  nothing: an agent waiting for the customer is not a customer waiting for support.
  Publications whose data is ``{"type": <one of support_skip_types>, ...}`` (read
  receipts, typing events) are not messages and are not events at all.

A periodic scan (every ``metrics_interval``) counts chats waiting longer than
``support_wait_threshold`` (``relay_support_chats_waiting``), forgets chats that
waited or stayed quiet longer than ``support_wait_expire``, and claims chats that
have waited ``support_escalate_after``: their owner POSTs them to
``support_escalation_url``.

The state lives behind :class:`WaitTracker`: :class:`MemoryWaitTracker` for the
memory broker (one process), :class:`RedisWaitTracker` for Redis, where every
transition and every claim is one Lua script, so several nodes give one answer, the
node that accepted a publication counts it once, and one node escalates a wait once.
:class:`SupportDesk` is what the node talks to: it never lets a failure of this
bookkeeping fail a publish (it is logged and counted in ``relay_support_errors``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from relay.brokers.base import StreamPosition
from relay.ops.histogram import FIRST_RESPONSE_BUCKETS, LocalHistogram

if TYPE_CHECKING:  # pragma: no cover
    from relay.brokers.base import Broker
    from relay.config import Config

__all__ = ["FIRST_RESPONSE_BUCKETS", "SupportRules", "Escalation", "WaitTracker", "MemoryWaitTracker",
           "RedisWaitTracker", "SupportDesk", "SERVER", "author_of"]

log = logging.getLogger("relay.support")

#: the author of a publication made without a user: the server API or the outbox (the shop's backend)
SERVER = ""
#: escalation requests per waiting episode: the first and two retries
ESCALATION_ATTEMPTS = 3
#: waits claimed for escalation per namespace and scan (the rest are claimed by the next scans)
CLAIMS_PER_SCAN = 100
#: seconds the bookkeeping of one publication may take before it is given up (and counted as an error)
RECORD_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class SupportRules:
    """The support chat options of one namespace, in the units the trackers use."""

    namespace: str
    wait_threshold: float  # seconds: waiting longer counts in the gauge
    escalate_after: float  # seconds: 0 = never
    wait_expire: float  # seconds: a wait or a customer this old (quiet) is forgotten
    server_replies: bool  # a publication without a user ends a wait
    skip_types: frozenset[str] = frozenset()  # data {"type": ...} that is no message (receipts, typing)


@dataclass(frozen=True, slots=True)
class Escalation:
    """A wait claimed for the escalation webhook (exactly one claimer per waiting episode)."""

    channel: str
    customer: str
    waiting_since: float  # Unix time, seconds
    waited_seconds: float  # at the claim
    namespace: str

    def body(self) -> dict[str, Any]:
        return {"channel": self.channel, "customer": self.customer, "waiting_since": self.waiting_since,
                "waited_seconds": round(self.waited_seconds, 3), "namespace": self.namespace}


def author_of(info: dict | None) -> str:
    """Who made a publication: the user; an anonymous connection's client id (``client:<id>``); or
    :data:`SERVER` for the server API and the outbox (no client info)."""
    if not info:
        return SERVER
    return info.get("user") or f"client:{info.get('client', '')}"


class WaitTracker(ABC):
    """The waiting state of every support chat: one implementation per broker kind."""

    #: parts of scans that failed without failing the whole scan (a Redis instance down among several)
    failures: int = 0

    @abstractmethod
    async def record(self, rules: SupportRules, channel: str, author: str) -> float | None:
        """Apply one accepted publication by ``author`` (:data:`SERVER` for none); the seconds the chat
        waited when this publication answered it (a first response), else None."""

    @abstractmethod
    async def scan(self, rules: SupportRules) -> tuple[int, list[Escalation]]:
        """Chats of the namespace waiting longer than its threshold now, and the waits this caller
        claimed for escalation (none when ``escalate_after`` is 0). Forgets expired waits."""


@dataclass(slots=True)
class _Wait:
    since: float
    customer: str
    escalate: bool  # not claimed for escalation yet


class MemoryWaitTracker(WaitTracker):
    """The state in this process: right for the memory broker, where one process is the whole relay."""

    def __init__(self, clock=time.time) -> None:
        self.clock = clock
        self._waits: dict[str, dict[str, _Wait]] = {}  # namespace -> channel -> wait
        self._customers: dict[str, dict[str, tuple[str, float]]] = {}  # namespace -> channel -> (user, expires)

    async def record(self, rules: SupportRules, channel: str, author: str) -> float | None:
        now = self.clock()
        waits = self._waits.setdefault(rules.namespace, {})
        customers = self._customers.setdefault(rules.namespace, {})
        known = customers.get(channel)
        owner = known[0] if known is not None and known[1] > now else None
        if owner is not None:
            customers[channel] = (owner, now + rules.wait_expire)  # the chat is active
        wait = waits.get(channel)
        if wait is not None and now - wait.since > rules.wait_expire:
            del waits[channel]
            wait = None
        if wait is not None:
            if author == wait.customer or (author == SERVER and not rules.server_replies):
                return None
            del waits[channel]
            return now - wait.since
        if author == SERVER or (owner is not None and owner != author):
            return None
        if owner is None:
            customers[channel] = (author, now + rules.wait_expire)
        waits[channel] = _Wait(now, author, rules.escalate_after > 0)
        return None

    async def scan(self, rules: SupportRules) -> tuple[int, list[Escalation]]:
        now = self.clock()
        waits = self._waits.get(rules.namespace, {})
        customers = self._customers.get(rules.namespace, {})
        for ch in [ch for ch, (_, expires) in customers.items() if expires <= now]:
            del customers[ch]
        for ch in [ch for ch, w in waits.items() if now - w.since > rules.wait_expire]:
            del waits[ch]
        long = sum(1 for w in waits.values() if now - w.since > rules.wait_threshold)
        claimed: list[Escalation] = []
        if rules.escalate_after > 0:
            for ch, w in waits.items():
                if w.escalate and now - w.since >= rules.escalate_after and len(claimed) < CLAIMS_PER_SCAN:
                    w.escalate = False
                    claimed.append(Escalation(ch, w.customer, w.since, now - w.since, rules.namespace))
        return long, claimed


# KEYS: waiting zset (channel -> since ms), unescalated zset (the same, until claimed), customers-of-waits
# hash (channel -> customer), the channel's customer (string with a TTL). ARGV: channel, author ("" = server),
# server_replies "1"/"0", escalate "1"/"0", expire ms. Redis's clock (TIME): one clock for every node.
# Returns {0, 0} nothing, {1, 0} a wait started, {2, waited ms} a first response.
RECORD_LUA = """
local waiting, unesc, customers, owner_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local ch, author, expire_ms = ARGV[1], ARGV[2], tonumber(ARGV[5])
local t = redis.call("time")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local owner = redis.call("get", owner_key)
if owner then redis.call("pexpire", owner_key, expire_ms) end
local since = redis.call("zscore", waiting, ch)
if since then
  since = tonumber(since)
  if now - since > expire_ms then
    redis.call("zrem", waiting, ch)
    redis.call("zrem", unesc, ch)
    redis.call("hdel", customers, ch)
    since = false
  end
end
if since then
  local customer = redis.call("hget", customers, ch)
  if author == customer or (author == "" and ARGV[3] ~= "1") then return {0, 0} end
  redis.call("zrem", waiting, ch)
  redis.call("zrem", unesc, ch)
  redis.call("hdel", customers, ch)
  return {2, now - since}
end
if author == "" or (owner and owner ~= author) then return {0, 0} end
if not owner then redis.call("set", owner_key, author, "px", expire_ms) end
redis.call("zadd", waiting, now, ch)
redis.call("hset", customers, ch, author)
if ARGV[4] == "1" then redis.call("zadd", unesc, now, ch) end
return {1, 0}
"""

# KEYS: waiting, unescalated, customers (as above). ARGV: threshold ms, escalate_after ms (0: none), expire ms,
# most claims. Returns {waiting longer than the threshold, now ms, channel, customer, since ms, ...claimed}.
SCAN_LUA = """
local waiting, unesc, customers = KEYS[1], KEYS[2], KEYS[3]
local t = redis.call("time")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cutoff = "(" .. (now - tonumber(ARGV[3]))
local old = redis.call("zrangebyscore", waiting, "-inf", cutoff)
for _, ch in ipairs(old) do
  redis.call("zrem", unesc, ch)
  redis.call("hdel", customers, ch)
end
if #old > 0 then redis.call("zremrangebyscore", waiting, "-inf", cutoff) end
local out = {redis.call("zcount", waiting, "-inf", "(" .. (now - tonumber(ARGV[1]))), now}
local esc = tonumber(ARGV[2])
if esc > 0 then
  local due = redis.call("zrangebyscore", unesc, "-inf", now - esc, "withscores", "limit", 0, tonumber(ARGV[4]))
  for i = 1, #due, 2 do
    redis.call("zrem", unesc, due[i])
    out[#out + 1] = due[i]
    out[#out + 1] = redis.call("hget", customers, due[i]) or ""
    out[#out + 1] = due[i + 1]
  end
end
return out
"""


class RedisWaitTracker(WaitTracker):
    """The state in Redis, on the broker's own connections, so every node sees one state.

    A namespace's keys share the hash tag ``{<prefix>:support:<ns>}``: the scripts' keys are on one
    Redis Cluster slot, and the gauge is one ZCOUNT per namespace. With several ``redis_urls`` a
    channel's wait lives on the instance the broker picks for the channel (its keys exist on every
    instance, each holding its channels) and the scan adds the instances up. Support chats publish
    at the pace people type, so one slot per namespace is far from a hot spot.
    """

    def __init__(self, broker: Any) -> None:
        self.shards = broker.shards  # relay.brokers.redis.RedisShards
        self.prefix = broker.prefix
        self._record: dict[int, Any] = {}
        self._scan: dict[int, Any] = {}

    def _base(self, namespace: str) -> str:
        return f"{self.prefix}:support:{{{self.prefix}:support:{namespace}}}"

    def _keys(self, namespace: str) -> list[str]:
        base = self._base(namespace)
        return [f"{base}:waiting", f"{base}:unescalated", f"{base}:customers"]

    def _script(self, cache: dict[int, Any], idx: int, source: str) -> Any:
        script = cache.get(idx)
        if script is None:
            script = cache[idx] = self.shards.clients[idx].register_script(source)
        return script

    async def record(self, rules: SupportRules, channel: str, author: str) -> float | None:
        idx = self.shards.index(channel)
        keys = [*self._keys(rules.namespace), f"{self._base(rules.namespace)}:customer:{channel}"]
        kind, waited_ms = await self._script(self._record, idx, RECORD_LUA)(keys=keys, args=[
            channel, author, "1" if rules.server_replies else "0", "1" if rules.escalate_after > 0 else "0",
            max(1, int(rules.wait_expire * 1000))])
        return waited_ms / 1000 if kind == 2 else None

    async def scan(self, rules: SupportRules) -> tuple[int, list[Escalation]]:
        keys = self._keys(rules.namespace)
        args = [int(rules.wait_threshold * 1000), int(rules.escalate_after * 1000), int(rules.wait_expire * 1000),
                CLAIMS_PER_SCAN]
        results = await asyncio.gather(*(self._script(self._scan, idx, SCAN_LUA)(keys=keys, args=args)
                                         for idx in range(len(self.shards.clients))), return_exceptions=True)
        if all(isinstance(res, BaseException) for res in results):
            raise results[0]
        long = 0
        claimed: list[Escalation] = []  # what the instances that answered gave this node: it must send them
        for idx, res in enumerate(results):
            if isinstance(res, BaseException):
                self.failures += 1
                log.warning("support chat scan of %s on redis shard %d failed: %r", rules.namespace, idx, res,
                            extra={"event": "support_error"})
                continue
            long += int(res[0])
            now_ms = int(res[1])
            for i in range(2, len(res), 3):
                since_ms = int(res[i + 2])
                claimed.append(Escalation(res[i].decode(), res[i + 1].decode(), since_ms / 1000,
                                          (now_ms - since_ms) / 1000, rules.namespace))
        return long, claimed


def _rules(cfg: Config) -> dict[str, SupportRules]:
    return {ns: SupportRules(ns, o.support_wait_threshold, o.support_escalate_after, o.support_wait_expire,
                             o.support_server_replies, frozenset(o.support_skip_types))
            for ns, o in cfg.namespaces.items() if o.support_chat}


class SupportDesk:
    """The node's side of first-response tracking: feeds accepted publications to the tracker, keeps
    the figures relay.ops.metrics exports, and runs the scan and the escalation webhook."""

    def __init__(self, cfg: Config, tracker: WaitTracker) -> None:
        self.cfg = cfg
        self.tracker = tracker
        self.rules = _rules(cfg)
        self.first_response = {ns: LocalHistogram(FIRST_RESPONSE_BUCKETS) for ns in self.rules}
        self.waiting: dict[str, int] = dict.fromkeys(self.rules, 0)  # the cluster's figure at the last scan
        self.escalations: Counter[str] = Counter()  # by result: ok, failed
        self._errors = 0  # bookkeeping or scans that failed (the publications themselves went through)
        self._task: asyncio.Task | None = None
        self._sending: set[asyncio.Task] = set()
        self._http: aiohttp.ClientSession | None = None

    @property
    def errors(self) -> int:
        """Bookkeeping and scans that failed, in all (relay_support_errors_total)."""
        return self._errors + self.tracker.failures

    @classmethod
    def for_node(cls, cfg: Config, broker: Broker) -> SupportDesk | None:
        """The desk for this config and broker, or None when no namespace is a support chat."""
        if not _rules(cfg):
            return None
        if cfg.broker == "redis":
            return cls(cfg, RedisWaitTracker(broker))
        return cls(cfg, MemoryWaitTracker())

    # --- publications ------------------------------------------------------------------------------

    async def published(self, channel: str, data: Any, info: dict | None) -> None:
        """One publication was accepted: count it (never raises; a channel outside the support chat
        namespaces costs one dict lookup)."""
        ns, sep, _ = channel.partition(":")
        rules = self.rules.get(ns) if sep else None
        if rules is None:
            return
        if rules.skip_types and isinstance(data, dict):
            kind = data.get("type")
            if isinstance(kind, str) and kind in rules.skip_types:
                return  # a read receipt or a typing event: nobody said anything
        await self._record(rules, channel, author_of(info))

    async def published_many(self, items: list[tuple[str, Any]], results: list, info: dict | None) -> None:
        """``publish_many``'s items and results, in order: the accepted ones are counted."""
        for (channel, data), res in zip(items, results, strict=True):
            if isinstance(res, StreamPosition):
                await self.published(channel, data, info)

    async def _record(self, rules: SupportRules, channel: str, author: str) -> None:
        try:
            async with asyncio.timeout(RECORD_TIMEOUT):
                waited = await self.tracker.record(rules, channel, author)
        except Exception as e:  # Redis down or slow: the publication went through, the figure is lost
            self._errors += 1
            log.warning("support chat bookkeeping failed for %s: %r", channel, e,
                        extra={"event": "support_error", "channel": channel})
            return
        if waited is not None:
            self.first_response[rules.namespace].observe(waited)

    # --- scan and escalation -----------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._scan_loop(self.cfg.metrics_interval))

    async def stop(self) -> None:
        """Stop scanning; escalations on their way get a moment to finish (they were claimed)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._sending:
            await asyncio.wait(self._sending, timeout=1.0)
            for task in list(self._sending):
                task.cancel()
            await asyncio.gather(*self._sending, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _scan_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self.scan()

    async def scan(self) -> None:
        """Update the waiting figures and send what this node claimed for escalation."""
        for ns, rules in self.rules.items():
            try:
                async with asyncio.timeout(max(RECORD_TIMEOUT, self.cfg.metrics_interval)):
                    long, claimed = await self.tracker.scan(rules)
            except Exception as e:
                self._errors += 1
                log.warning("support chat scan of %s failed: %r", ns, e, extra={"event": "support_error"})
                continue
            self.waiting[ns] = long
            for esc in claimed:
                task = asyncio.get_running_loop().create_task(self._escalate(esc))
                self._sending.add(task)
                task.add_done_callback(self._sending.discard)

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.cfg.support_escalation_timeout),
                headers={"Content-Type": "application/json", "User-Agent": "relay-support-escalation"})
        return self._http

    async def _escalate(self, esc: Escalation) -> None:
        """POST the claimed wait; retried on a network error, a timeout, 429 or 5xx (3 tries in all)."""
        body = orjson.dumps(esc.body())
        problem = ""
        for attempt in range(ESCALATION_ATTEMPTS):
            if attempt:
                await asyncio.sleep(0.5 * 2 ** (attempt - 1))
            try:
                async with self._session().post(self.cfg.support_escalation_url, data=body) as resp:
                    await resp.read()
                    if 200 <= resp.status < 300:
                        self.escalations["ok"] += 1
                        log.info("support chat %s escalated after %.0f s", esc.channel, esc.waited_seconds,
                                 extra={"event": "support_escalated", "channel": esc.channel})
                        return
                    problem = f"HTTP {resp.status}"
                    if resp.status != 429 and resp.status < 500:
                        break  # the backend refused it: trying again would get the same answer
            except (aiohttp.ClientError, OSError, TimeoutError) as e:
                problem = repr(e)
        self.escalations["failed"] += 1
        log.warning("support chat %s: escalation webhook failed (%s)", esc.channel, problem,
                    extra={"event": "support_escalation_failed", "channel": esc.channel})
