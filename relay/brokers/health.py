"""Broker health as local state: which failure domains (Redis shards, Cluster masters) are up.

A broker keeps one ``Health``; its own watch tasks feed it from PINGs with a deadline on
every connection, pub/sub ones included (``Liveness``). Everything that must answer at
once reads it without a round trip: readiness, ``/healthz``, ``/metrics``, and the broker
itself, which refuses an operation on a down domain at once (``BrokerUnavailable``)
instead of waiting for a socket timeout. A change of state is logged once and reported to
the node (``BrokerEventHandler.handle_domain``), which tells the clients of that domain's
channels after a grace period.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from relay.brokers.base import BrokerUnavailable

__all__ = ["Health", "Liveness", "PING_TOKEN"]

log = logging.getLogger("relay.redis")

PING_TOKEN = b"relay-liveness"  # the PING message of the liveness checks, told apart from anyone else's


class Liveness:
    """One connection's liveness PING: at most one outstanding; the connection is dead when it stays
    unanswered past the deadline."""

    __slots__ = ("sent",)

    def __init__(self) -> None:
        self.sent: float | None = None  # loop time of the unanswered PING

    def reset(self) -> None:
        self.sent = None

    def pong(self) -> None:
        self.sent = None

    def expired(self, now: float, timeout: float) -> bool:
        return self.sent is not None and now - self.sent > timeout


class Health:
    """Up or down per failure domain, as the broker's checks last saw it (a domain never checked is up)."""

    def __init__(self, on_change: Callable[[str, bool], None] | None = None) -> None:
        self.up: dict[str, bool] = {}
        self.on_change = on_change

    def set(self, domain: str, up: bool, why: str = "") -> None:
        prev = self.up.get(domain)
        self.up[domain] = up
        if prev == up or (prev is None and up):
            return  # no change (a domain first seen up is no news)
        if up:
            log.info("broker %s is back", domain, extra={"event": "broker_up", "shard": domain})
        else:
            log.warning("broker %s is down: %s", domain, why or "no answer",
                        extra={"event": "broker_down", "shard": domain, "reason": why})
        if self.on_change is not None:
            self.on_change(domain, up)

    def forget(self, domain: str) -> None:
        """A domain that left the topology (a Cluster master replaced by its replica)."""
        if not self.up.pop(domain, True) and self.on_change is not None:
            self.on_change(domain, True)  # nothing is routed to it any more

    def is_up(self, domain: str) -> bool:
        return self.up.get(domain, True)

    def check(self, domain: str) -> None:
        """Raise BrokerUnavailable at once when ``domain`` is down (no round trip to find out)."""
        if not self.up.get(domain, True):
            raise BrokerUnavailable(f"redis {domain} is down")

    def all_up(self) -> bool:
        return all(self.up.values())
