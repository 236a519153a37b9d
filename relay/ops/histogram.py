"""Latency histograms kept in plain Python lists on the hot paths (fan-out, broker publishes, proxy calls,
support chats), and their buckets. relay.ops.metrics adds them to Prometheus histograms at each sync, so the
parts that observe never import the exporter (or prometheus-client)."""

from __future__ import annotations

import bisect
from typing import Any

__all__ = ["LocalHistogram", "LATENCY_BUCKETS", "FIRST_RESPONSE_BUCKETS"]

# seconds: 50 µs to 5 s; fan-out and a Redis round trip both live at the low end
LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                   0.5, 1.0, 2.5, 5.0)

# seconds: a support chat's first response (relay/rules/support.py): human replies, from a few seconds to an hour
# (a bot's instant answer lands in the first bucket)
FIRST_RESPONSE_BUCKETS = (5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0, 600.0, 900.0, 1800.0,
                          3600.0)


class LocalHistogram:
    """Bucket counts kept in a list (a bisect and two additions per observation); ``flush`` adds them
    to a prometheus-client Histogram in one step per bucket."""

    __slots__ = ("bounds", "counts", "total", "n")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.n += 1

    def flush(self, hist: Any) -> None:
        if not self.n:
            return
        # prometheus-client keeps one (non-cumulative) value per bucket and the sum; adding to them is
        # what observe() does, once per observation; tests/ops/test_metrics.py checks the result
        for value, count in zip(hist._buckets, self.counts, strict=True):
            if count:
                value.inc(count)
        hist._sum.inc(self.total)
        self.counts = [0] * len(self.counts)
        self.total = 0.0
        self.n = 0
