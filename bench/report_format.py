"""Number formats and server order shared by the benchmark report (``report.py``) and its plots
(``report_plots.py``)."""

from __future__ import annotations

from collections.abc import Iterable

RELAY = "relay"
#: servers in the order their columns appear; others follow in order of appearance
SERVER_ORDER = ("relay", "picows", "websockets", "node-ws", "nats")
P99_BOUND_MS = 50.0          #: goal: relay's p99 at 80 % of its saturation stays under this


def fmt_rate(x: float | None) -> str:
    """12345678 -> '12.35M', 45678 -> '45.7k'."""
    if x is None:
        return "–"
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e3:
        return f"{x / 1e3:.1f}k"
    return f"{x:.0f}" if x >= 10 or x == int(x) else f"{x:.1f}"


def fmt_ms(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def fmt_us(v: float | None) -> str:
    return "–" if v is None else (f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}")


def fmt_x(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}×"


def server_order(names: Iterable[str]) -> list[str]:
    """relay first, its variants (relay-wd20) next, then the known peers, then the rest."""
    seen = list(dict.fromkeys(names))

    def key(n: str) -> tuple[int, int]:
        if n == RELAY:
            return (0, 0)
        if n.startswith(RELAY):
            return (1, seen.index(n))
        if n in SERVER_ORDER:
            return (2, SERVER_ORDER.index(n))
        return (3, seen.index(n))

    return sorted(seen, key=key)
