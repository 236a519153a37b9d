"""Helpers shared by the capacity-planning scenarios (``chats.py``, ``connrate.py``, ``latency.py``).

Only what ``common.py``, ``loadgen.py`` and ``fanout.py`` do not already offer; those are
imported read-only:

* :class:`Printer`: prints a line and keeps it for the JSON result;
* :func:`banner`: the machine line every benchmark prints first;
* :func:`percentiles`: p50/p90/p99/p99.9/max in ms from a ``histogram.Histogram``;
* :class:`CpuWindow`: CPU readings at the two edges of a measured window (server process,
  generator processes, this process, ``/proc/stat`` per core) turned into the figures
  fanout.py reports (server CPU, its user/sys split, CPU 0's softirq, generator CPU,
  GENERATOR-LIMITED, NOISY); :func:`per_unit` (server CPU per delivery / connection / ...)
  and :func:`noisy_mark`;
* :class:`WorkerPool` and :func:`serve_pipe` (generator worker processes driven by ``(command, *args)``
  tuples over pipes) are ``workers.py``'s, imported from here too;
* :func:`sleep_until_ns`, :func:`fmt_ms`.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import GENERATOR_CPU, SERVER_CPU, cpu_stat, proc_cpu_seconds, sum_cpu_times  # noqa: E402
from fanout import GEN_LIMIT_PCT, NOISE_PCT, _core_use  # noqa: E402
from workers import WorkerPool, serve_pipe  # noqa: E402

__all__ = ["Printer", "banner", "percentiles", "CpuWindow", "per_unit", "noisy_mark", "WorkerPool", "serve_pipe",
           "sleep_until_ns", "fmt_ms", "GEN_LIMIT_PCT", "NOISE_PCT"]


class Printer:
    """``print`` that also keeps every line (they go into the JSON result as ``printed``)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, s: str) -> None:
        print(s, flush=True)
        self.lines.append(s)


def banner(machine: dict[str, Any]) -> str:
    return (f"machine: {machine['cpu_model']}, {machine['cpus']} CPUs, kernel {machine['kernel']}, "
            f"Python {machine['python']}, picows {machine['picows']}, uvloop {machine['uvloop']}, "
            f"relay {machine['relay']} core={machine['relay_core']}")


def percentiles(h) -> dict[str, float | None]:
    """p50, p90, p99, p99.9 and max of a ``histogram.Histogram`` in ms (None when it is empty).

    The percentiles are bucket upper edges (20 us resolution below 1 s, 10 ms above).
    """
    def pct(q: float) -> float | None:
        v = h.percentile_ms(q)
        return None if v is None else round(v, 3)

    return {"p50": pct(50), "p90": pct(90), "p99": pct(99), "p99_9": pct(99.9),
            "max": round(h.max_ns / 1e6, 3) if h.count else None, "samples": h.count}


def fmt_ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"


async def sleep_until_ns(t_ns: int) -> None:
    await asyncio.sleep(max(0.0, (t_ns - time.time_ns()) / 1e9))


class CpuWindow:
    """CPU counters read at the start and the end of a measured window.

    ``server_cpu_times`` returns the server side's (user, system) seconds (one process, or
    a sum); ``generator_pids`` the generator's worker processes (this process is added).
    """

    def __init__(self, server_cpu_times: Callable[[], tuple[float, float]],
                 generator_pids: Callable[[], list[int]]) -> None:
        self.server_cpu_times = server_cpu_times
        self.generator_pids = generator_pids
        self.marks: dict[str, tuple] = {}

    def mark(self, which: str) -> None:
        """Read every counter now; ``which`` is ``"start"`` or ``"end"``."""
        self.marks[which] = (time.monotonic(), self.server_cpu_times(), sum_cpu_times(self.generator_pids()),
                             proc_cpu_seconds(os.getpid()), cpu_stat())

    def figures(self) -> dict[str, Any]:
        """The window's CPU figures (keys as in fanout.py's results)."""
        (t_a, srv_a, gen_a, me_a, st_a), (t_b, srv_b, gen_b, me_b, st_b) = self.marks["start"], self.marks["end"]
        wall = t_b - t_a
        s_user, s_sys = srv_b[0] - srv_a[0], srv_b[1] - srv_a[1]
        server = s_user + s_sys
        workers = (gen_b[0] - gen_a[0]) + (gen_b[1] - gen_a[1])
        gen = workers + (me_b - me_a)
        cores = _core_use(st_a, st_b, {SERVER_CPU: server, GENERATOR_CPU: gen}, wall)
        gen_pct = 100.0 * gen / wall if wall > 0 else 0.0
        return {
            "window_s": round(wall, 3),
            "server_cpu_s": round(server, 4), "server_user_s": round(s_user, 3), "server_sys_s": round(s_sys, 3),
            "server_cpu_pct": round(100.0 * server / wall, 1) if wall > 0 else 0.0,
            "server_core_softirq_s": round(cores.get(SERVER_CPU, {}).get("irq_softirq_s", 0.0), 3),
            "server_core_busy_pct": cores.get(SERVER_CPU, {}).get("busy_pct"),
            "cores": cores,
            "noisy": any(c["other_pct"] > NOISE_PCT or c["steal_pct"] > NOISE_PCT for c in cores.values()),
            "generator_cpu_pct": round(gen_pct, 1),
            "generator_workers_cpu_pct": round(100.0 * workers / wall, 1) if wall > 0 else 0.0,
            "generator_workers_user_s": round(gen_b[0] - gen_a[0], 3),
            "generator_workers_sys_s": round(gen_b[1] - gen_a[1], 3),
            "coordinator_cpu_pct": round(100.0 * (me_b - me_a) / wall, 1) if wall > 0 else 0.0,
            "generator_limited": gen_pct >= GEN_LIMIT_PCT,
        }


def per_unit(cpu: dict[str, Any], n: int, unit: str, units: str) -> dict[str, Any]:
    """Server CPU per ``unit`` (e.g. "delivery") of ``n`` in the window, in us: utime+stime
    (``server_cpu_us_per_<unit>``), the same plus CPU 0's irq+softirq time
    (``server_cpu_incl_softirq_us_per_<unit>``) and ``<units>_per_core_s`` (n / server CPU s)."""
    s, si = cpu["server_cpu_s"], cpu["server_core_softirq_s"]
    return {f"server_cpu_us_per_{unit}": round(s * 1e6 / n, 3) if n else None,
            f"server_cpu_incl_softirq_us_per_{unit}": round((s + si) * 1e6 / n, 3) if n else None,
            f"{units}_per_core_s": round(n / s, 1) if s > 0 else None}


def noisy_mark(cpu: dict[str, Any]) -> str:
    return "NOISY(" + ", ".join(f"cpu{c}: other {v['other_pct']:.0f}% steal {v['steal_pct']:.0f}%"
                                for c, v in cpu["cores"].items()) + ")"
