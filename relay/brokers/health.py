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

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from relay.brokers.base import BrokerUnavailable

__all__ = ["Health", "Liveness", "PING_TOKEN", "Link", "LinkEvents", "Strikes", "SETTLE", "BACKOFF_MIN", "BACKOFF_MAX",
           "command_ping", "check_link", "watch"]

log = logging.getLogger("relay.redis")

PING_TOKEN = b"relay-liveness"  # the PING message of the liveness checks, told apart from anyone else's
BACKOFF_MIN = 0.05  # seconds before the first reconnect attempt of a pub/sub link
BACKOFF_MAX = 2.0  # the cap of the exponential backoff (with jitter) between attempts
SETTLE = 0.05  # seconds the watch waits before calling a link silent: pongs already here get read first


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


# --- the watch: one loop per broker, shared by a set of shards and a Cluster's masters ----------------------

@dataclass(frozen=True, slots=True)
class LinkEvents:
    """What a pub/sub link tells its broker (relay.brokers.redis_pubsub, redis_sharded)."""

    on_message: Callable[[bytes, bytes], None]  # (pub/sub channel, data)
    on_error: Callable[[], None]  # a failure (relay_broker_errors_total)
    on_reconnect: Callable[[], None]  # back after failures (relay_broker_reconnects_total)
    spawn: Callable[[Any], None]  # run a coroutine in the broker's task set


class Link(Protocol):
    """A pub/sub connection as the watch sees it (relay.brokers.redis_pubsub.PubSubConn, redis_sharded's _Link):
    a PING on it comes back in order with its messages, so a silent link is seen, not just a closed one."""

    liveness: Liveness

    @property
    def up(self) -> bool: ...
    def send_ping(self, now: float) -> None: ...
    def kill(self, why: str) -> None: ...


async def command_ping(ping: Callable[[], Awaitable[Any]], timeout: float) -> str:
    """PING a command connection with a deadline: "" (answered), "timeout", "late" (the deadline passed
    because this process was slow, not the server: no verdict), or the error."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    try:
        await asyncio.wait_for(ping(), timeout)
        return ""
    except TimeoutError:
        return "late" if loop.time() - t0 >= timeout * 1.5 else "timeout"
    except Exception as e:
        return f"PING failed: {e}"


class Strikes:
    """Command PINGs that timed out in a row, per domain: a domain is down after two (one may be this
    process being slow), at once on an error."""

    def __init__(self) -> None:
        self.count: dict[str, int] = {}

    def verdict(self, domain: str, result: str, timeout: float) -> str:
        """Why ``domain`` is down after a command_ping ``result``, or ""."""
        n = self.count.get(domain, 0)
        if result == "timeout":
            n += 1
        elif result and result != "late":
            n = 2
        elif not result:
            n = 0
        self.count[domain] = n
        if n < 2:
            return ""
        return result if result not in ("timeout", "late") else f"no answer to PING within {timeout} s"


def check_link(link: Link, now: float, timeout: float, lagged: bool) -> str:
    """Why ``link`` is down ("" if not): down, or silent past ``timeout`` (then killed, so it reconnects and
    subscribes again). A live link without a PING out gets one (and every link, after this process lagged)."""
    if not link.up:
        return "pub/sub connection down"
    sent = link.liveness.sent
    if sent is not None and now - sent > timeout and not lagged:
        why = f"pub/sub connection silent for {now - sent:.1f} s"
        link.kill(why)
        return why
    if sent is None or lagged:
        link.send_ping(now)
    return ""


async def watch(interval: float, timeout: float, links: Callable[[], Iterable[Link]],
                check: Callable[[float, bool], Awaitable[None]]) -> None:
    """Every ``interval``, ``check(now, lagged)`` the broker's domains. ``lagged``: this process woke late,
    so silence seen now may be its own: no link is called silent then. Before a check finds a link silent,
    the loop waits SETTLE, so a pong this process has received but not read yet gets read."""
    loop = asyncio.get_running_loop()
    due = loop.time()
    while True:
        due += interval
        await asyncio.sleep(max(0.0, due - loop.time()))
        now = loop.time()
        lagged = now - due > min(0.25, timeout / 2)
        if now > due:
            due = now
        if not lagged and any(lk.up and lk.liveness.expired(now, timeout) for lk in links()):
            await asyncio.sleep(SETTLE)
            now = loop.time()
        await check(now, lagged)
