"""Publishing and history reads through the broker, for client commands and the server API alike.

A publication goes to the broker (which stores it in the channel's stream and fans it out to every node,
this one included: relay.node.registry.Node.handle_publication), never straight to the hub. Backpressure
refuses it first when the node, or the broker domain it goes to, cannot deliver what it already has."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from relay.brokers.base import Broker, BrokerUnavailable, PublishOptions, StreamPosition, UnrecoverablePosition
from relay.codes import ERRORS
from relay.config import Config
from relay.ops.stats import Stats
from relay.rules.backpressure import Backpressure

if TYPE_CHECKING:  # pragma: no cover
    from relay.rules.support import SupportDesk

__all__ = ["Publisher"]


class Publisher:
    def __init__(self, cfg: Config, broker: Broker, backpressure: Backpressure, stats: Stats,
                 support: SupportDesk | None) -> None:
        """``support``: support chat timing (relay/rules/support.py), told of every publication; None: off."""
        self.cfg = cfg
        self.broker = broker
        self.backpressure = backpressure
        self.stats = stats
        self.support = support

    def options(self, channel: str, *, info: dict | None = None, tags: dict[str, str] | None = None,
                skip_history: bool = False, idempotency_key: str | None = None,
                lane: int | None = None, pace_ms: int | None = None) -> PublishOptions:
        opts = self.cfg.channel_options(channel)
        if opts is None:
            raise ERRORS.UNKNOWN_CHANNEL
        return PublishOptions(
            history_size=0 if skip_history else opts.history_size,
            history_ttl=opts.history_ttl,
            history_meta_ttl=self.cfg.history_meta_ttl,
            info=info, tags=tags or None, idempotency_key=idempotency_key or None,
            idempotency_window=self.cfg.idempotency_window, lane=lane, pace_ms=pace_ms,
        )

    async def publish_many(self, items: list[tuple[str, Any]], *, source: str = "api", **kw: Any) -> list:
        """Publish several (channel, data) in order with one broker round trip per shard; per item
        the StreamPosition or the ClientError to answer. ``kw`` as for ``publish``."""
        bp = self.backpressure
        broker = self.broker
        out: list = [None] * len(items)
        groups: dict[str, list[int]] = {}  # per broker failure domain: its own latency and refusals
        for i, (ch, _) in enumerate(items):
            groups.setdefault(broker.domain(ch), []).append(i)
        batches = []
        for domain, idx in groups.items():
            if bp.refuse(source, domain):  # it cannot deliver what it has: refuse, never buffer
                for i in idx:
                    out[i] = ERRORS.OVERLOADED
            else:
                batches.append((domain, idx, [(items[i][0], items[i][1], self.options(items[i][0], **kw))
                                               for i in idx]))

        async def run(domain: str, idx: list[int], batch: list) -> None:
            t0 = time.perf_counter()
            bp.publish_started(len(batch), domain)
            try:
                results = await broker.publish_many(batch)
            finally:
                dt = time.perf_counter() - t0
                bp.publish_done(dt, len(batch), domain)
                self.stats.broker_publish.observe(dt)
            for i, r in zip(idx, results, strict=True):
                out[i] = ERRORS.INTERNAL if isinstance(r, Exception) else r

        await asyncio.gather(*(run(*b) for b in batches))
        self.stats.publications[source] += sum(1 for r in out if isinstance(r, StreamPosition))
        if self.support is not None:  # support chat namespaces: first-response time
            await self.support.published_many(items, out, kw.get("info"))
        return out

    async def publish(self, channel: str, data: Any, *, source: str = "api", **kw: Any) -> StreamPosition:
        """Publish through the broker (kw: info, tags, skip_history, idempotency_key, lane, pace_ms);
        ``source`` is 'client' or 'api' (a metric label)."""
        bp = self.backpressure
        domain = self.broker.domain(channel)  # a failing shard refuses its own channels only
        if bp.refuse(source, domain):  # it cannot deliver what it has: refuse, never buffer (rules/backpressure.py)
            raise ERRORS.OVERLOADED
        popts = self.options(channel, **kw)
        t0 = time.perf_counter()
        bp.publish_started(1, domain)
        try:
            pos = await self.broker.publish(channel, data, popts)
        except BrokerUnavailable:
            raise ERRORS.INTERNAL from None  # never a false OK: the client retries
        finally:
            dt = time.perf_counter() - t0
            bp.publish_done(dt, 1, domain)
            self.stats.broker_publish.observe(dt)
        self.stats.publications[source] += 1
        if self.support is not None:  # support chat namespaces: first-response time
            await self.support.published(channel, data, kw.get("info"))
        return pos

    async def history(self, channel: str, p: dict) -> dict:
        """A history command's or API call's params (limit, reverse, since) -> its result."""
        limit = p.get("limit", 0)
        reverse = p.get("reverse", False)
        since = p.get("since")
        if type(limit) is not int or not isinstance(reverse, bool):
            raise ERRORS.BAD_REQUEST
        pos = None
        if since is not None:
            if not isinstance(since, dict):
                raise ERRORS.BAD_REQUEST
            try:
                pos = StreamPosition(int(since.get("offset") or 0), str(since.get("epoch") or ""))
            except (TypeError, ValueError):
                raise ERRORS.BAD_REQUEST from None
        self.stats.history_reads["history"] += 1
        try:
            hr = await self.broker.history(channel, since=pos, limit=limit, reverse=reverse,
                                           meta_ttl=self.cfg.history_meta_ttl)
        except UnrecoverablePosition:
            raise ERRORS.UNRECOVERABLE_POSITION from None
        except BrokerUnavailable:
            raise ERRORS.INTERNAL from None
        return {"publications": hr.publications, "epoch": hr.position.epoch, "offset": hr.position.offset}
