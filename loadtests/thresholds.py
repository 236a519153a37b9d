"""Pass/fail thresholds of every scenario: the one place to change them.

``THRESHOLDS[scenario]`` maps a metric to its limit; ``METRICS`` says what each metric is and
whether the limit is a maximum or a minimum. ``loadtests/run.py`` computes the metrics from the run's
summary (and, for the soak, the drift samples), checks them here, prints every miss and exits 1.
Override one for a run with ``--threshold NAME=VALUE`` (e.g. ``--threshold deliver_p95_ms=100``).

Latencies are in milliseconds, from the summary's 1 %-wide buckets (not Locust's whole-ms rounding).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["METRICS", "OPTIONAL", "THRESHOLDS", "Result", "check", "parse_overrides"]

# metric: (what it is, "max" or "min"); OPTIONAL ones pass as "not measured" when the runner cannot
# see relay (--url without --relay-pid), the others fail then.
METRICS: dict[str, tuple[str, str]] = {
    "error_ratio": ("failed / all requests (every type, lost publications included)", "max"),
    "deliver_p95_ms": ("p95 end-to-end delivery latency (publish ts -> push received), ms", "max"),
    "deliver_p99_ms": ("p99 end-to-end delivery latency, ms", "max"),
    "connect_p95_ms": ("p95 connect time (socket + handshake + connect reply), ms", "max"),
    "subscribe_p95_ms": ("p95 subscribe time, ms", "max"),
    "publish_p95_ms": ("p95 publish-acknowledge time, ms", "max"),
    "chat_p95_ms": ("p95 time from a shopper's question to the answer's push (agent think time included), ms",
                    "max"),
    "lost_messages": ("publications that never reached a subscriber (offset gaps after recovery)", "max"),
    "unrecovered": ("resubscribes relay could not recover (recovered: false)", "max"),
    "reconnect_p95_ms": ("p95 reconnect time (disconnect -> every channel resubscribed), ms", "max"),
    "reconnect_give_ups": ("clients that stopped trying to reconnect", "max"),
    "reconnects": ("reconnects that succeeded (the storm happened)", "min"),
    "deliveries": ("publications received live (the test did something)", "min"),
    "relay_errors": ("error lines in relay's log (relay started by the runner)", "max"),
    "rss_growth_pct": ("relay resident memory growth over the steady part, %", "max"),
    "deliver_p99_drift_ms": ("p99 delivery latency, end of the steady part minus its start, ms", "max"),
}

OPTIONAL = frozenset({"relay_errors", "rss_growth_pct"})

THRESHOLDS: dict[str, dict[str, float]] = {
    "flash_sale": {
        "relay_errors": 0,
        "error_ratio": 0.01,
        "deliver_p95_ms": 250.0,
        "connect_p95_ms": 1000.0,
        "subscribe_p95_ms": 500.0,
        "publish_p95_ms": 500.0,
        "chat_p95_ms": 15000.0,
        "lost_messages": 0,
        "unrecovered": 0,
        "deliveries": 1,
    },
    "reconnect_storm": {
        "relay_errors": 0,
        "error_ratio": 0.05,  # backend publishes fail (and are retried) while relay is down
        "deliver_p95_ms": 500.0,
        "reconnect_p95_ms": 15000.0,
        "reconnect_give_ups": 0,
        "lost_messages": 0,
        "unrecovered": 0,
        "reconnects": 1,
        "deliveries": 1,
    },
    "soak": {
        "relay_errors": 0,
        "error_ratio": 0.01,
        "deliver_p95_ms": 250.0,
        "lost_messages": 0,
        "unrecovered": 0,
        "reconnect_give_ups": 0,
        "rss_growth_pct": 25.0,
        "deliver_p99_drift_ms": 100.0,
        "deliveries": 1,
    },
}


@dataclass(frozen=True)
class Result:
    metric: str
    value: float | None
    limit: float
    kind: str  # "max" or "min"

    @property
    def passed(self) -> bool:
        if self.value is None:
            return self.metric in OPTIONAL
        return self.value <= self.limit if self.kind == "max" else self.value >= self.limit

    def line(self) -> str:
        what = METRICS[self.metric][0]
        op = "<=" if self.kind == "max" else ">="
        shown = "not measured" if self.value is None else f"{self.value:g}"
        mark = "ok    " if self.passed else "MISSED"
        return f"{mark} {self.metric} = {shown} (limit {op} {self.limit:g}): {what}"


def parse_overrides(items: list[str]) -> dict[str, float]:
    """``["deliver_p95_ms=100", ...]`` -> limits; unknown metrics are an error."""
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in METRICS:
            raise ValueError(f"--threshold {item!r}: expected NAME=VALUE with NAME one of {', '.join(METRICS)}")
        out[name] = float(value)
    return out


def check(scenario: str, metrics: dict[str, float | None], overrides: dict[str, float] | None = None) -> list[Result]:
    """Every threshold of ``scenario`` (with ``overrides``) against ``metrics``."""
    limits = {**THRESHOLDS[scenario], **(overrides or {})}
    return [Result(name, metrics.get(name), float(limit), METRICS[name][1]) for name, limit in limits.items()]
