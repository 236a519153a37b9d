"""Latency histogram with 1 % wide buckets, mergeable across Locust processes (Locust's own rounds
times under 100 ms to whole milliseconds, too coarse for sub-millisecond thresholds)."""

from __future__ import annotations

import math

__all__ = ["LogHistogram"]

_GROWTH = math.log(1.01)


class LogHistogram:
    """Latencies in buckets 1 % wide (from 1 microsecond up), mergeable across processes."""

    __slots__ = ("buckets",)

    def __init__(self, buckets: dict[int, int] | None = None) -> None:
        self.buckets: dict[int, int] = dict(buckets or {})

    def add(self, ms: float) -> None:
        k = int(math.log(max(ms, 0.0) * 1000.0 + 1.0) / _GROWTH)
        self.buckets[k] = self.buckets.get(k, 0) + 1

    def merge(self, buckets: dict) -> None:
        for k, n in buckets.items():
            k = int(k)
            self.buckets[k] = self.buckets.get(k, 0) + int(n)

    @property
    def count(self) -> int:
        return sum(self.buckets.values())

    def percentile(self, p: float) -> float:
        """The ``p`` (0-1) quantile in ms (the middle of its bucket); 0.0 when empty."""
        total = self.count
        if not total:
            return 0.0
        rank = max(1, math.ceil(p * total))
        seen = 0
        for k in sorted(self.buckets):
            seen += self.buckets[k]
            if seen >= rank:
                return (math.exp((k + 0.5) * _GROWTH) - 1.0) / 1000.0
        return 0.0  # pragma: no cover

    def summary(self) -> dict:
        return {"count": self.count, "p50": round(self.percentile(0.50), 3), "p95": round(self.percentile(0.95), 3),
                "p99": round(self.percentile(0.99), 3), "max": round(self.percentile(1.0), 3)}
