"""The plots of the benchmark report (``report.py``): PNGs drawn with matplotlib (Agg) from the figures
``report.extract`` returns: latency against offered load, fan-out CPU per delivery, idle memory per connection.

matplotlib is imported when ``write_plots`` runs, so that its ImportError reaches ``report.main`` (which then
says the plots were skipped) and the report works without it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report_format import P99_BOUND_MS, SERVER_ORDER, fmt_rate, fmt_us, server_order  # noqa: E402

__all__ = ["PLOT_NAMES", "color_of", "write_plots"]


def color_of(server: str) -> str:
    """The same colour for a server in every plot: relay C0, picows C1, websockets C2, node-ws C3, nats C4."""
    if server in SERVER_ORDER:
        return f"C{SERVER_ORDER.index(server)}"
    return f"C{5 + sum(map(ord, server)) % 5}"


PLOT_NAMES = ("latency-offered-load", "fanout-cpu-per-delivery", "idle-memory-per-connection")


def write_plots(figures: dict[str, dict[str, Any] | None], plot_dir: Path) -> dict[str, Path]:
    """Write the PNGs that have data; remove this report's stale ones. Returns {name: path}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")
    plot_dir.mkdir(parents=True, exist_ok=True)
    for name in PLOT_NAMES:
        (plot_dir / f"{name}.png").unlink(missing_ok=True)
    written: dict[str, Path] = {}

    def save(fig: Any, name: str) -> None:
        path = plot_dir / f"{name}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written[name] = path

    lat = figures.get("latency")
    series = {srv: sorted(((s.rate, s.p99, s.p50, "SAT" in s.flags) for s in lat["steps"]
                           if s.server == srv and not s.skipped and s.rate and s.p99), key=lambda p: p[0])
              for srv in server_order(s.server for s in lat["steps"])} if lat else {}
    series = {k: v for k, v in series.items() if v}
    if series:
        fig, ax = plt.subplots(figsize=(9.5, 5))
        for srv, pts in series.items():
            color = color_of(srv)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=color, label=f"{srv} p99")
            p50 = [(p[0], p[2]) for p in pts if p[2]]
            if p50:
                ax.plot([p[0] for p in p50], [p[1] for p in p50], ":", color=color, alpha=0.7, label=f"{srv} p50")
            sat = [p for p in pts if p[3]]
            if sat:
                ax.plot([p[0] for p in sat], [p[1] for p in sat], "x", color=color, markersize=10)
            at80 = lat["saturation"].get(srv, {})
            if at80.get("at_80_rate") and at80.get("p99_at_80"):
                ax.plot([at80["at_80_rate"]], [at80["p99_at_80"]], "*", color=color, markersize=12)
        ax.axhline(P99_BOUND_MS, color="grey", linestyle="--", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        rate = FuncFormatter(lambda v, _: fmt_rate(v))
        for axis, fmt, (lo, hi) in ((ax.yaxis, plain, ax.get_ylim()), (ax.xaxis, rate, ax.get_xlim())):
            axis.set_major_formatter(fmt)
            axis.set_minor_formatter(fmt if lo > 0 and hi / lo < 30 else NullFormatter())  # labels for 1-2 decades
        ax.tick_params(which="minor", labelsize=7)
        ax.set_xlabel("offered load (per second, log scale)")
        ax.set_ylabel("latency (ms, log scale)")
        ax.set_title("Latency against offered load (x: saturated step; *: p99 at 80 % of saturation, fresh server;"
                     " dashed: 50 ms)", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
        save(fig, "latency-offered-load")

    fan = figures.get("fanout")
    if fan:
        steps = [s for s in fan["steps"] if not s.skipped and s.cpu_us]
        servers = server_order(s.server for s in steps)
        groups = sorted(dict.fromkeys((s.group, s.label) for s in steps),
                        key=lambda g: (g[0], min(s.order for s in steps if (s.group, s.label) == g)))
        if steps:
            fig, ax = plt.subplots(figsize=(max(7.0, 1.1 * len(groups) + 3), 5))
            width = 0.8 / max(1, len(servers))
            by = {(s.group, s.label, s.server): s.cpu_us for s in steps}
            for i, srv in enumerate(servers):
                xs = [j + (i - (len(servers) - 1) / 2) * width for j in range(len(groups))]
                ys = [by.get((g, lab, srv)) or 0 for g, lab in groups]
                bars = ax.bar(xs, ys, width, label=srv, color=color_of(srv))
                for b, v in zip(bars, ys, strict=True):
                    if v:
                        ax.annotate(fmt_us(v), (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom",
                                    fontsize=7)
            ax.set_xticks(range(len(groups)))
            ax.set_xticklabels([f"{g}: {lab}" if g else lab for g, lab in groups], rotation=30, ha="right",
                               fontsize=8)
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(plain)
            ax.tick_params(axis="y", which="minor", labelsize=7)
            ax.set_ylabel("server CPU per delivery (µs, log scale)")
            ax.set_title("Fan-out: server CPU per delivery, per server and step")
            ax.grid(True, axis="y", which="both", alpha=0.3)
            ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
            save(fig, "fanout-cpu-per-delivery")

    idle = figures.get("idle")
    if idle:
        rows = [r for r in idle["rows"] if r["per_conn_bytes"]]
        order = server_order(r["server"] for r in rows)
        rows.sort(key=lambda r: order.index(r["server"]))
        if rows:
            fig, ax = plt.subplots(figsize=(6, 4))
            vals = [r["per_conn_bytes"] / 1024 for r in rows]
            bars = ax.bar([r["server"] for r in rows], vals, color=[color_of(r["server"]) for r in rows])
            for b, v in zip(bars, vals, strict=True):
                ax.annotate(f"{v:.1f}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=8)
            n = max((r["connections"] or 0) for r in rows)
            ax.set_ylabel("RSS per idle connection (KiB)")
            ax.set_title(f"Memory per idle WebSocket connection ({n:,.0f} connections)")
            ax.grid(True, axis="y", alpha=0.3)
            save(fig, "idle-memory-per-connection")
    return written


