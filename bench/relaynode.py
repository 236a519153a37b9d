"""The relay node a benchmark runs against, on SERVER_CPU: one process, or a supervisor with worker processes
sharing the ports (SO_REUSEPORT) and a redis-server of its own (``RelayNode``); how many processes a number of
connections needs under the open-file limit (``choose_relay_workers``, ``process_capacity``); and an optional
log of relay's garbage collections (``GC_LOG_SITECUSTOMIZE``, ``RelayNode(gc_log=True)``, ``_gc_pauses``).

Used by ``pacing.py`` (see its docstring, *Relay workers*).
"""

from __future__ import annotations

import math
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, SERVER_CPU, RelayServer, child_pids, proc_rss_bytes, sum_cpu_times  # noqa: E402

from relay.testing import RedisProcess  # noqa: E402

__all__ = ["RelayNode", "process_capacity", "choose_relay_workers", "FD_MARGIN", "WORKER_FILL", "METRICS_INTERVAL",
           "GC_LOG_SITECUSTOMIZE"]

#: descriptors kept free in relay's process besides the clients (listeners, epoll, log, API, metrics, Redis)
FD_MARGIN = 200
#: with relay workers, the share of a worker's descriptors (limit - FD_MARGIN) the chosen count fills on
#: average: SO_REUSEPORT hashes connections to workers, so some get more than their share
WORKER_FILL = 0.85
#: relay's metrics_interval, set explicitly: with workers, how old the other workers' figures in a scrape may be
METRICS_INTERVAL = 1.0
#: put on relay's PYTHONPATH by ``RelayNode(gc_log=True)`` (pacing.py's ``--no-gc-log`` leaves it out): logs each
#: of relay's garbage collections that took 1 ms or more, so a chat stall can be told apart from the fan-out
#: (relay's objects grow with its connections)
GC_LOG_SITECUSTOMIZE = """\
import gc, os, time
_path = os.environ.get("PACING_BENCH_GC_LOG")
if _path:
    _log = open(_path, "a", buffering=1)
    _t = [0, 0]
    def _relay_bench_gc(phase, info):
        if phase == "start":
            _t[0], _t[1] = time.time_ns(), time.perf_counter_ns()
        elif time.perf_counter_ns() - _t[1] >= 1000000:
            _log.write(f"{_t[0]} {info['generation']} {time.perf_counter_ns() - _t[1]}\\n")
    gc.callbacks.append(_relay_bench_gc)
"""


def process_capacity() -> tuple[int, int]:
    """(open-file hard limit, connections one process holds: the limit less FD_MARGIN)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return hard, hard - FD_MARGIN


def choose_relay_workers(n: int, chats: int) -> tuple[int, str]:
    """relay's processes for ``n`` subscribers and ``chats`` chats: 1 while they fit one process's descriptors,
    else enough workers to fill each to WORKER_FILL of its own on average; and why."""
    hard, per = process_capacity()
    conns = n + 2 * chats
    if conns <= per:
        return 1, f"{conns:,} connections fit one process (open-file hard limit {hard:,}, {FD_MARGIN} spare)"
    w = math.ceil(conns / (WORKER_FILL * per))
    return w, (f"{conns:,} connections do not fit one process (open-file hard limit {hard:,} per process, "
               f"{FD_MARGIN} spare): {w} workers, ~{conns / w:,.0f} each on average, at most "
               f"{WORKER_FILL:.0%} of {per:,} (SO_REUSEPORT spreads connections by hash, not evenly)")


def _children(pid: int) -> list[int]:
    """Child pids of ``pid`` (/proc/PID/task/*/children), without multiprocessing's resource_tracker."""
    keep = []
    for c in child_pids(pid):
        try:
            if b"resource_tracker" not in Path(f"/proc/{c}/cmdline").read_bytes():
                keep.append(c)
        except OSError:
            pass
    return sorted(keep)


class RelayNode:
    """The relay under test, on SERVER_CPU: one process (memory broker), or a supervisor with ``workers``
    worker processes sharing the ports (SO_REUSEPORT) and a redis-server of its own (``broker`` "redis", also
    possible with one process). ``relay`` is the RelayServer (its API, metrics and token)."""

    def __init__(self, workers: int, broker: str, extra_config: dict[str, Any], gc_log: bool = False) -> None:
        self.workers, self.broker = workers, broker
        self.redis = RedisProcess(cpu=SERVER_CPU) if broker == "redis" else None
        cfg = dict(extra_config)
        if self.redis is not None:
            cfg.update(broker="redis", redis_urls=[self.redis.url], workers=workers,
                       metrics_interval=METRICS_INTERVAL)
        self.relay = RelayServer(extra_config=cfg)
        self.worker_pids: list[int] = []
        #: relay's garbage-collection log (``gc_log``: GC_LOG_SITECUSTOMIZE on its PYTHONPATH), else None
        self.gc_log = _enable_gc_log(self.relay) if gc_log else None

    def start(self, timeout: float = 60.0) -> None:
        if self.redis is not None:
            self.redis.start()
        self.relay.start(timeout)
        deadline = time.monotonic() + timeout
        while True:  # /readyz answers as soon as one worker does: wait for all of them
            self.worker_pids = _children(self.relay.pid) if self.workers > 1 else []
            started = self.relay.log().count("relay started:")
            if started >= self.workers and (self.workers == 1 or len(self.worker_pids) >= self.workers):
                return
            if time.monotonic() > deadline or not self.relay.alive():
                raise RuntimeError(f"{started}/{self.workers} relay workers started:\n{self.relay.log()[-3000:]}")
            time.sleep(0.1)

    def cores(self) -> list[str]:
        """The fan-out core of every relay process (its start line's ``core=``)."""
        return [line.split("core=", 1)[1].split()[0] for line in self.relay.log().splitlines()
                if "relay started:" in line and "core=" in line]

    def pids(self) -> list[int]:
        """The relay processes: the single one, or the supervisor and its workers."""
        return [self.relay.pid] + self.worker_pids

    def server_cpu_times(self) -> tuple[float, float]:
        """(user, system) seconds of everything on the server core: relay's processes and redis-server."""
        return sum_cpu_times(self.pids() + ([self.redis.pid] if self.redis is not None else []))

    def redis_cpu_s(self) -> float:
        return sum(sum_cpu_times([self.redis.pid])) if self.redis is not None else 0.0

    def rss_bytes(self) -> int:
        """relay's resident memory, all its processes."""
        total = 0
        for pid in self.pids():
            try:
                total += proc_rss_bytes(pid)
            except OSError:
                pass
        return total

    def redis_rss_bytes(self) -> int | None:
        return proc_rss_bytes(self.redis.pid) if self.redis is not None and self.redis.alive() else None

    def fds(self) -> list[int]:
        """Open descriptors of each process holding clients (each worker, or the single process)."""
        out = []
        for pid in self.worker_pids or [self.relay.pid]:
            try:
                out.append(len(os.listdir(f"/proc/{pid}/fd")))
            except OSError:
                out.append(0)
        return out

    def alive(self) -> bool:
        """relay, its redis-server and every worker it started run (no worker died and was restarted)."""
        return (self.relay.alive() and (self.redis is None or self.redis.alive())
                and (self.workers == 1 or _children(self.relay.pid) == self.worker_pids))

    def log_tail(self) -> str:
        return self.relay.log()[-2000:]

    def gc_pauses(self) -> list[tuple[int, int, float]]:
        """relay's logged garbage collections so far (none without ``gc_log``): see ``_gc_pauses``."""
        return _gc_pauses(self.gc_log)

    def cleanup(self) -> None:
        self.relay.cleanup()
        if self.redis is not None:
            self.redis.cleanup()


def _enable_gc_log(relay: RelayServer) -> Path:
    """Have ``relay`` (not started yet) log its garbage collections: GC_LOG_SITECUSTOMIZE in a folder of its
    temporary directory, put on its PYTHONPATH; returns the log file's path."""
    diag = Path(relay.tmp.name) / "gclog"
    diag.mkdir()
    (diag / "sitecustomize.py").write_text(GC_LOG_SITECUSTOMIZE)
    gc_log = diag / "gc.log"
    relay.env = {**relay.env, "PACING_BENCH_GC_LOG": str(gc_log),
                 "PYTHONPATH": os.pathsep.join([str(ROOT), str(diag), os.environ.get("PYTHONPATH", "")])}
    return gc_log


def _gc_pauses(path: Path | None) -> list[tuple[int, int, float]]:
    """relay's logged garbage collections: (start unix ns, generation, ms)."""
    if path is None or not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            t, g, d = line.split()
            out.append((int(t), int(g), int(d) / 1e6))
        except ValueError:
            continue
    return out
