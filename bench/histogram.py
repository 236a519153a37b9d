"""The latency histogram of the load generators: flat memory, exact counts, mergeable across processes.

Fixed-size and two-level (20 us buckets up to 1 s, 10 ms buckets up to 100 s), so a worker can record every
delivery of a long run; :meth:`Histogram.to_sparse` is what a worker sends over its pipe and
:meth:`Histogram.merge_sparse` what the coordinator adds up. ``scenarios_common.percentiles`` reads one.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Histogram"]

# histogram geometry: fine buckets of 20 us up to 1 s, then coarse buckets of 10 ms up to 100 s
_FINE_NS, _FINE_N = 20_000, 50_000
_COARSE_NS, _COARSE_N = 10_000_000, 10_000


class Histogram:
    """Latency histogram with flat memory: 20 us buckets to 1 s, 10 ms buckets to 100 s."""

    __slots__ = ("fine", "coarse", "count", "max_ns")

    def __init__(self) -> None:
        self.fine = [0] * _FINE_N
        self.coarse = [0] * _COARSE_N
        self.count = 0
        self.max_ns = 0

    def add(self, lat_ns: int, weight: int = 1) -> None:
        if lat_ns < 0:
            lat_ns = 0
        i = lat_ns // _FINE_NS
        if i < _FINE_N:
            self.fine[i] += weight
        else:
            i = lat_ns // _COARSE_NS
            self.coarse[i if i < _COARSE_N else _COARSE_N - 1] += weight
        self.count += weight
        if lat_ns > self.max_ns:
            self.max_ns = lat_ns

    def to_sparse(self) -> dict[str, Any]:
        """A compact picklable form (only non-empty buckets)."""
        return {"fine": {i: c for i, c in enumerate(self.fine) if c},
                "coarse": {i: c for i, c in enumerate(self.coarse) if c},
                "count": self.count, "max_ns": self.max_ns}

    def merge_sparse(self, s: dict[str, Any]) -> None:
        for i, c in s["fine"].items():
            self.fine[i] += c
        for i, c in s["coarse"].items():
            self.coarse[i] += c
        self.count += s["count"]
        self.max_ns = max(self.max_ns, s["max_ns"])

    def percentile_ms(self, q: float) -> float | None:
        """Upper edge of the bucket holding the q-th percentile, in ms (None when empty)."""
        if not self.count:
            return None
        want = q / 100.0 * self.count
        seen = 0
        for i, c in enumerate(self.fine):
            if c:
                seen += c
                if seen >= want:
                    return min((i + 1) * _FINE_NS, self.max_ns) / 1e6
        for i, c in enumerate(self.coarse):
            if c:
                seen += c
                if seen >= want:
                    return min((i + 1) * _COARSE_NS, self.max_ns) / 1e6
        return self.max_ns / 1e6
