"""Broker outages as the node's clients see them. The broker's liveness checks (relay/brokers/health.py)
report each failure domain (a Redis shard, a Cluster master) going down or coming back (``changed``).

Down for longer than broker_down_grace: every local subscriber of its channels gets 2500, so its SDK shows
the subscription as 'subscribing' (an app can say "reconnecting...") and retries; a retry fails at once
with 100 while the shard stays down, and no connection is dropped, so an outage of the whole broker causes
no reconnect churn. Back: the clients told that have not resubscribed by themselves (an SDK's retry backoff
grows to 20 s) get 3011, spread over broker_heal_reconnect_window, and resubscribe (recovering) as they
reconnect."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterable
from typing import Any

from relay.brokers.base import Broker
from relay.codes import DISCONNECTS
from relay.config import Config
from relay.core import Hub
from relay.ops.stats import Stats

__all__ = ["Outages"]

log = logging.getLogger("relay.node")

#: a relay.node.session.ClientSession (``resync``, ``disconnect``, ``subs``, ``closed``)
Session = Any


class Outages:
    def __init__(self, cfg: Config, broker: Broker, stats: Stats, channels: Iterable[str]) -> None:
        """``channels``: the channels this node has broker interest in (a live view, read when a grace ends)."""
        self.cfg = cfg
        self.broker = broker
        self.stats = stats
        self.channels = channels
        self.hub: Hub = None  # type: ignore[assignment]  # the node's, from bind()
        # domains that are down: the timer that tells the subscribers of their channels once broker_down_grace
        # is over (it stays here, fired, until the domain is back)
        self.timers: dict[str, asyncio.TimerHandle] = {}
        # per domain that went down for longer than the grace: the sessions told (2500) and the channels each lost
        self.told: dict[str, dict[Session, set[str]]] = {}

    def bind(self, hub: Hub) -> None:
        self.hub = hub

    def close(self) -> None:
        for timer in self.timers.values():
            timer.cancel()

    def changed(self, domain: str, up: bool) -> None:
        loop = asyncio.get_running_loop()
        if not up:
            if domain not in self.timers:
                self.timers[domain] = loop.call_later(self.cfg.broker_down_grace, self._lost, domain)
            return
        timer = self.timers.pop(domain, None)
        if timer is not None:
            timer.cancel()
        told = self.told.pop(domain, None)
        if told:
            window = self.cfg.broker_heal_reconnect_window
            log.info("broker %s is back: %d clients told of it get 3011 within %.1f s unless they resubscribe "
                     "first", domain, len(told), window,
                     extra={"event": "broker_heal_reconnect", "shard": domain, "clients": len(told)})
            for s, channels in told.items():
                loop.call_later(random.uniform(0, window), self._heal_reconnect, s, channels, domain)

    def _lost(self, domain: str) -> None:
        told = self.told.setdefault(domain, {})
        channels = [ch for ch in list(self.channels) if self.broker.domain(ch) == domain]
        n = 0
        for ch in channels:
            for conn in self.hub.subscribers(ch):
                s = conn.session
                if s is not None:
                    told.setdefault(s, set()).add(ch)
                    s.resync(ch)
                    n += 1
        self.stats.outage_resyncs += n
        log.warning("broker %s down for %.1f s: %d subscriptions of %d channels get 2500", domain,
                    self.cfg.broker_down_grace, n, len(channels),
                    extra={"event": "broker_down_resync", "shard": domain, "subscriptions": n,
                           "channels": len(channels)})

    def _heal_reconnect(self, s: Session, channels: set[str], domain: str) -> None:
        if s.closed or domain in self.timers:
            return  # gone, or the shard is down again (the next heal nudges it)
        if all(ch in s.subs for ch in channels):
            return  # its SDK resubscribed by itself
        s.disconnect(DISCONNECTS.FORCE_RECONNECT)
