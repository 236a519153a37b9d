"""The ping timing wheel: each connected session sits in one random slot of ping_interval, and a tick of
the loop pings one slot, so clients that connected together (a reconnect storm) are neither pinged nor
answer together, and no tick walks every session. Pings awaiting their pong sit on a second wheel, checked
at the first tick after pong_timeout. No per-ping timer: 100,000 sessions cost 0 timers."""

from __future__ import annotations

import asyncio
import math
import random
import time
from typing import Any

__all__ = ["PingWheel"]

#: a relay.node.session.ClientSession: ``ping(now)`` sends a ping, ``pong_due(now)`` checks its answer
Session = Any


class PingWheel:
    def __init__(self, ping_interval: float, pong_timeout: float) -> None:
        # slots of at most 0.1 s over ping_interval
        self._wheel: list[set[Session]] = [set() for _ in range(max(1, math.ceil(ping_interval / 0.1)))]
        self._slot: dict[Session, int] = {}
        self.tick = ping_interval / len(self._wheel)
        # one slot more than pong_timeout spans, so a check never lands before its deadline
        self._pongs: list[set[Session]] = [set() for _ in range(math.ceil(pong_timeout / self.tick) + 2)]
        self._ticks = 0  # ticks of the loop so far

    def add(self, s: Session) -> None:
        slot = random.randrange(len(self._wheel))
        self._slot[s] = slot
        self._wheel[slot].add(s)

    def discard(self, s: Session) -> None:
        slot = self._slot.pop(s, None)
        if slot is not None:
            self._wheel[slot].discard(s)

    def await_pong(self, s: Session) -> None:
        """``s`` just pinged and waits for its pong: check it at the first tick after pong_timeout (the
        ping wheel itself comes back only after ping_interval)."""
        pongs = self._pongs
        pongs[(self._ticks + len(pongs) - 1) % len(pongs)].add(s)

    async def run(self) -> None:
        """Ping each session once per ping_interval, and check the pongs that are due, until cancelled."""
        wheel, pongs = self._wheel, self._pongs
        while True:
            await asyncio.sleep(self.tick)
            self._ticks += 1
            now = time.monotonic()
            for s in list(wheel[self._ticks % len(wheel)]):
                s.ping(now)
            j = self._ticks % len(pongs)
            due = pongs[j]
            if due:
                pongs[j] = set()
                for s in due:
                    s.pong_due(now)
