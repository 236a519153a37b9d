"""``relay serve --workers N``: N worker processes sharing the listening ports, supervised.

Each worker is a whole relay (its own uvloop, node and broker connections) that
binds the same ports with SO_REUSEPORT, so the kernel spreads new connections
over them; workers meet through Redis. The supervisor binds nothing: it starts
the workers, restarts one that dies (and logs why), and on SIGTERM or SIGINT
stops them all and waits for them to finish their own shutdown.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing as mp
import os
import signal
import time

from relay.config import Config

__all__ = ["supervise"]

log = logging.getLogger("relay.supervisor")

RESTART_BACKOFF = (0.1, 0.5, 1.0, 2.0, 5.0)


def _worker_main(cfg: Config, index: int) -> None:
    from relay.ops import logs

    logs.setup(cfg, worker=index)
    from relay.app import run

    run(cfg)


class _Worker:
    def __init__(self, ctx, cfg: Config, index: int) -> None:
        self.ctx, self.cfg, self.index = ctx, cfg, index
        self.proc: mp.Process | None = None
        self.restarts = 0
        self.started_at = 0.0

    def start(self) -> None:
        name = f"{self.cfg.node_name or os.uname().nodename}-w{self.index}"
        cfg = dataclasses.replace(self.cfg, node_name=name, workers=1, reuse_port=True)
        self.proc = self.ctx.Process(target=_worker_main, args=(cfg, self.index), name=f"relay-w{self.index}",
                                     daemon=False)
        self.proc.start()
        self.started_at = time.monotonic()


def _metrics_dir() -> str:
    """One fresh directory for every worker's metric files (prometheus-client multiprocess mode): a
    scrape answered by any worker then sums the whole node. Set before any worker starts."""
    import tempfile

    path = tempfile.mkdtemp(prefix="relay-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path


def supervise(cfg: Config) -> int:
    import shutil

    metrics_dir = _metrics_dir() if cfg.metrics else None
    try:
        return _supervise(cfg)
    finally:
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _worker_exited(pid: int) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # its live gauges (connections, ...) leave the sums


def _supervise(cfg: Config) -> int:
    n = cfg.worker_count()
    ctx = mp.get_context("spawn")
    workers = [_Worker(ctx, cfg, i) for i in range(n)]
    stopping = False

    def on_signal(signum, frame) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for w in workers:
        w.start()
    log.info("supervising %d workers (pids %s)", n, ", ".join(str(w.proc.pid) for w in workers))
    restart_at: dict[int, float] = {}
    while not stopping:
        time.sleep(0.1)
        now = time.monotonic()
        for w in workers:
            if w.proc is not None and not w.proc.is_alive() and w.index not in restart_at:
                code = w.proc.exitcode
                if now - w.started_at > 30:
                    w.restarts = 0  # it ran for a while: not a crash loop
                delay = RESTART_BACKOFF[min(w.restarts, len(RESTART_BACKOFF) - 1)]
                log.error("worker %d (pid %d) exited with %s; restarting in %.1fs", w.index, w.proc.pid,
                          f"signal {-code}" if code is not None and code < 0 else f"code {code}", delay)
                _worker_exited(w.proc.pid)
                restart_at[w.index] = now + delay
            if restart_at.get(w.index, float("inf")) <= now:
                del restart_at[w.index]
                w.restarts += 1
                w.start()
                if cfg.metrics:
                    from relay.ops.metrics import count_worker_restart

                    count_worker_restart()
                log.info("worker %d restarted (pid %d)", w.index, w.proc.pid)
    log.info("stopping %d workers", n)
    for w in workers:
        if w.proc is not None and w.proc.is_alive():
            os.kill(w.proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + cfg.drain_window + 6  # each worker drains, then exits within 5 s
    for w in workers:
        if w.proc is not None:
            w.proc.join(max(0.0, deadline - time.monotonic()))
            if w.proc.is_alive():
                log.error("worker %d did not stop in time; killing it", w.index)
                w.proc.kill()
                w.proc.join()
    return 0
