"""Publisher backpressure: refuse new publications while the node cannot deliver what it has.

A publish flood at several times a node's capacity must not turn into memory: every accepted
publication becomes bytes queued for its subscribers, and a node that keeps accepting grows until
the kernel kills it. So the node watches four signals and, while any is past its limit, refuses new
publications at the door (the server API answers 429 with ``Retry-After``, a client publish gets
error 106 "limit exceeded: node overloaded", temporary) instead of buffering them:

* ``backpressure_queue_bytes``: bytes queued for clients that do not keep up (relay's queues and the
  paused transports' buffers, ``Node.backlog_bytes``);
* ``backpressure_memory_bytes``: the process's resident memory;
* ``backpressure_publish_latency``: the broker's publish round trip (a moving average of the latest
  publishes): a slow Redis means publishes pile up waiting for it;
* ``max_publishes_in_flight``: publishes waiting for the broker right now.

The first two are the node's own; the broker's two are kept per failure domain of the broker (a Redis
shard, a Cluster master: ``Broker.domain``), so a master that fails over makes the node refuse the
channels it owns, and only those: the others keep flowing.

Signals are sampled every ``INTERVAL`` seconds (the queue sum walks the backlogged sessions only;
the in-flight count and the latency average are updated as publishes happen, and while the latency
is what refuses, one publication every ``PROBE_INTERVAL`` goes through to measure it). Refusing
stops once every signal is back under ``RELEASE`` of its limit, so the node does not flap at the edge.
Publications already accepted are never dropped by this: they are delivered.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import time
from collections.abc import Callable

__all__ = ["Backpressure", "INTERVAL", "RELEASE", "PROBE_INTERVAL", "resident_bytes"]

log = logging.getLogger("relay.backpressure")

INTERVAL = 0.05  # seconds between samples of the queue and memory signals
RELEASE = 0.8  # refusing stops when every signal is under this share of its limit
PROBE_INTERVAL = 0.25  # while refusing for latency: one publication let through this often, to measure it
_EWMA = 0.2  # weight of the latest publish in the latency average

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int:
    """This process's resident memory (Linux /proc; 0 where unknown)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


class Backpressure:
    """The node's admission decision for new publications (``reason`` is None while they are accepted)."""

    def __init__(self, *, queue_bytes: int, memory_bytes: int, publish_latency: float, max_in_flight: int,
                 retry_after: float, backlog: Callable[[], int], memory: Callable[[], int] = resident_bytes) -> None:
        self.limits = {"queue": queue_bytes, "memory": memory_bytes, "latency": publish_latency,
                       "in_flight": max_in_flight}
        self.retry_after = retry_after
        self._backlog = backlog
        self._memory = memory
        self.node_reason: str | None = None  # "queue" or "memory" while they refuse every publication
        self.values = {"queue": 0.0, "memory": 0.0, "latency": 0.0, "in_flight": 0.0}
        # per broker failure domain: {"latency": moving average, "in_flight": n}, and the signal refusing it
        self.domains: dict[str, dict[str, float]] = {}
        self.slow: dict[str, str] = {}
        self._probe_at: dict[str, float] = {}
        self.refused: dict[str, int] = {"api": 0, "client": 0}  # publications refused, by source
        self.episodes = 0  # times refusing started
        self._task: asyncio.Task | None = None

    @property
    def enabled(self) -> bool:
        return any(self.limits.values())

    @property
    def reason(self) -> str | None:
        """The signal refusing publications (the node's own first, else a broker domain's), or None."""
        if self.node_reason is not None:
            return self.node_reason
        return next(iter(self.slow.values()), None)

    # --- signals --------------------------------------------------------------------------------

    def _domain(self, domain: str) -> dict[str, float]:
        d = self.domains.get(domain)
        if d is None:
            d = self.domains[domain] = {"latency": 0.0, "in_flight": 0.0}
        return d

    def publish_started(self, n: int = 1, domain: str = "") -> None:
        self._domain(domain)["in_flight"] += n
        self.values["in_flight"] += n
        self._judge_domain(domain)

    def publish_done(self, seconds: float, n: int = 1, domain: str = "") -> None:
        d = self._domain(domain)
        d["in_flight"] -= n
        d["latency"] += _EWMA * (seconds - d["latency"])
        v = self.values
        v["in_flight"] -= n
        v["latency"] = max(x["latency"] for x in self.domains.values())
        self._judge_domain(domain)

    def sample(self) -> None:
        """Read the queue and memory signals (every INTERVAL) and decide."""
        if self.limits["queue"]:
            self.values["queue"] = self._backlog()
        if self.limits["memory"]:
            self.values["memory"] = self._memory()
        self._judge()

    def _over(self, name: str, value: float) -> bool:
        limit = self.limits[name]
        # in flight: at most max_publishes_in_flight at once, so the one that reaches it closes the door
        return bool(limit) and (value > limit or (name == "in_flight" and value >= limit))

    def _start(self, name: str, value: float, domain: str | None) -> None:
        self.episodes += 1
        log.warning("refusing publications: %s over its limit%s", name,
                    "" if domain is None else f" (broker shard {domain or 'the broker'})",
                    extra={"event": "backpressure_on", "signal": name, "value": value,
                           "limit": self.limits[name], **({} if domain is None else {"shard": domain})})

    def _judge(self) -> None:
        """The node's own signals: queue and memory refuse every publication."""
        limits, values = self.limits, self.values
        if self.node_reason is None:
            for name in ("queue", "memory"):
                if self._over(name, values[name]):
                    self.node_reason = name
                    self._start(name, values[name], None)
                    return
        elif all(not limits[n] or values[n] <= limits[n] * RELEASE for n in ("queue", "memory")):
            log.info("accepting publications again", extra={"event": "backpressure_off", "signal": self.node_reason})
            self.node_reason = None

    def _judge_domain(self, domain: str) -> None:
        """A broker domain's signals: latency and in flight refuse the publications of its channels."""
        limits, d = self.limits, self.domains[domain]
        if domain not in self.slow:
            for name in ("latency", "in_flight"):
                if self._over(name, d[name]):
                    self.slow[domain] = name
                    self._probe_at[domain] = time.monotonic()
                    self._start(name, d[name], domain)
                    return
        elif all(not limits[n] or d[n] <= limits[n] * RELEASE for n in ("latency", "in_flight")):
            log.info("accepting publications again", extra={"event": "backpressure_off", "signal": self.slow[domain],
                                                             "shard": domain})
            del self.slow[domain]

    # --- the decision ---------------------------------------------------------------------------

    def refuse(self, source: str, domain: str = "") -> bool:
        """True (and counted) when a publication from ``source`` ('api' or 'client') to a channel of the
        broker's ``domain`` must be refused."""
        if self.node_reason is None:
            why = self.slow.get(domain)
            if why is None:
                return False
            if why == "latency" and not self.domains[domain]["in_flight"]:
                # the latency average only moves when publishes happen: let one through now and then as a
                # probe, so the node learns that the broker is fast again
                now = time.monotonic()
                if now - self._probe_at[domain] >= PROBE_INTERVAL:
                    self._probe_at[domain] = now
                    return False
        self.refused[source] = self.refused.get(source, 0) + 1
        return True

    def retry_after_header(self) -> str:
        """Whole seconds for ``Retry-After``: between retry_after and twice it, so refused publishers
        do not all come back in the same second."""
        return str(max(1, math.ceil(self.retry_after * random.uniform(1.0, 2.0))))

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        if self.enabled and self._task is None and (self.limits["queue"] or self.limits["memory"]):
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(INTERVAL)
            try:
                self.sample()
            except Exception:  # a failed sample must not end the sampling
                log.exception("backpressure sample failed")
