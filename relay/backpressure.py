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
        self.reason: str | None = None  # the signal that started the refusing, while refusing
        self.values = {"queue": 0.0, "memory": 0.0, "latency": 0.0, "in_flight": 0.0}
        self.refused: dict[str, int] = {"api": 0, "client": 0}  # publications refused, by source
        self.episodes = 0  # times refusing started
        self._probe_at = 0.0
        self._task: asyncio.Task | None = None

    @property
    def enabled(self) -> bool:
        return any(self.limits.values())

    # --- signals --------------------------------------------------------------------------------

    def publish_started(self, n: int = 1) -> None:
        self.values["in_flight"] += n
        self._judge()

    def publish_done(self, seconds: float, n: int = 1) -> None:
        v = self.values
        v["in_flight"] -= n
        v["latency"] += _EWMA * (seconds - v["latency"])
        self._judge()

    def sample(self) -> None:
        """Read the queue and memory signals (every INTERVAL) and decide."""
        if self.limits["queue"]:
            self.values["queue"] = self._backlog()
        if self.limits["memory"]:
            self.values["memory"] = self._memory()
        self._judge()

    def _judge(self) -> None:
        limits, values = self.limits, self.values
        if self.reason is None:
            for name, limit in limits.items():
                # in flight: at most max_publishes_in_flight at once, so the one that reaches it closes the door
                if limit and (values[name] > limit or (name == "in_flight" and values[name] >= limit)):
                    self.reason = name
                    self.episodes += 1
                    self._probe_at = time.monotonic()
                    log.warning("refusing publications: %s over its limit", name,
                                extra={"event": "backpressure_on", "signal": name, "value": values[name],
                                       "limit": limit})
                    return
        elif all(not limit or values[name] <= limit * RELEASE for name, limit in limits.items()):
            log.info("accepting publications again", extra={"event": "backpressure_off", "signal": self.reason})
            self.reason = None

    # --- the decision ---------------------------------------------------------------------------

    def refuse(self, source: str) -> bool:
        """True (and counted) when a publication from ``source`` ('api' or 'client') must be refused."""
        if self.reason is None:
            return False
        if self.reason == "latency" and not self.values["in_flight"]:
            # the latency average only moves when publishes happen: let one through now and then as a
            # probe, so the node learns that the broker is fast again
            now = time.monotonic()
            if now - self._probe_at >= PROBE_INTERVAL:
                self._probe_at = now
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
