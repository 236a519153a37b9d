"""An efficient subscriber load generator and a fixed-rate publisher (picows client on uvloop).

Subscribers
    :class:`LoadGenerator` opens N WebSocket subscriber connections split over
    several worker processes (``workers.WorkerPool``: spawn, one pipe each), each running its own
    uvloop with picows's compiled framing and pinned to ``GENERATOR_CPU``. What a worker
    runs is in ``loadgen_workers.py``: the subscriber of each protocol (relay's Centrifugo
    JSON protocol, the raw peers' payload per frame, nats-server's text protocol) and the
    counting, by stamp and by receive time, cheap and exact; this module merges the
    workers' counts of each window (:class:`Window`).

Publisher
    :class:`Publisher` (in the coordinating process, also on ``GENERATOR_CPU``)
    sends ``batch`` messages per tick at ``ticks_per_s`` ticks per second, all
    of one tick in ONE text frame joined with ``\\n``: relay gets publish
    commands (it accepts up to 100 per message), the raw peers get the raw
    payloads (they split the frame into lines and relay each as its own frame),
    nats-server gets one ``PUB`` per message, all in one binary frame.
    relay only lets subscribed clients publish, so relay's publisher is also a
    subscriber: relay does one extra delivery per message that is not counted.
    Its tick loop, :class:`TickPublisher`, is also that of redis_scaling.py's publishers.

Run a worker by hand (for debugging): ``python bench/loadgen.py URL N [raw|nats|relay TOKEN]``
connects N subscribers and prints counts every second.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import FANOUT_CHANNEL, proc_cpu_seconds, sum_cpu_times  # noqa: E402
from histogram import Histogram  # noqa: E402
from loadgen_workers import NATS_CONNECT, PAYLOAD_SIZE, Target, make_payload, nats_pub_frame, worker_main  # noqa: E402
from workers import WorkerPool  # noqa: E402

__all__ = ["Target", "Histogram", "LoadGenerator", "Publisher", "TickPublisher", "Window", "make_payload",
           "nats_pub_frame", "NATS_CONNECT", "PAYLOAD_SIZE"]


@dataclass
class Window:
    """Totals of one measured window, merged over workers."""

    connections: int = 0
    in_window: int = 0
    recv_in_window: int = 0
    frames_in_window: int = 0
    bytes_in_window: int = 0
    lost: int = 0
    pings: int = 0
    per_conn_min: int = 0
    per_conn_max: int = 0
    close_codes: dict[int, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    hist: Histogram = field(default_factory=Histogram)
    hist_first: Histogram = field(default_factory=Histogram)
    hist_second: Histogram = field(default_factory=Histogram)


class LoadGenerator:
    """N subscribers to ``target`` over ``workers`` processes pinned to the generator core.

    The methods block on the workers' pipes; call them from a thread (``asyncio.to_thread``)
    when an event loop must keep running meanwhile.
    """

    def __init__(self, target: Target, subscribers: int, workers: int) -> None:
        self.target = target
        self.subscribers = subscribers
        self.workers = max(1, min(workers, subscribers))
        self.pool: WorkerPool | None = None
        self.connected = 0
        self.errors: list[str] = []

    @property
    def pids(self) -> list[int]:
        return self.pool.pids if self.pool is not None else []

    def cpu_seconds(self) -> float:
        """utime + stime of all worker processes."""
        return sum(self.cpu_times())

    def cpu_times(self) -> tuple[float, float]:
        """(user, system) CPU seconds summed over the worker processes."""
        return sum_cpu_times(self.pids)

    def connect(self, timeout: float = 300.0) -> int:
        """Start the workers and wait until every subscriber is subscribed; returns how many are."""
        share = [self.subscribers // self.workers + (i < self.subscribers % self.workers)
                 for i in range(self.workers)]
        self.pool = WorkerPool(worker_main, [(self.target, n, sum(share[:i])) for i, n in enumerate(share)])
        for _, ok, errors, n_err in self.pool.recv_all(timeout):
            self.connected += ok
            if n_err:
                self.errors += [f"{n_err} connections failed, e.g. {errors}"]
        return self.connected

    def _all(self, *cmd: Any) -> list[tuple]:
        return self.pool.all(*cmd) if self.pool is not None else []

    def set_window(self, ws_ns: int, we_ns: int) -> None:
        """Reset counters; count stamps and receive times in [ws_ns, we_ns)."""
        self._all("window", ws_ns, we_ns)

    def counts(self) -> tuple[int, int, int]:
        """(deliveries stamped in the window, all deliveries since the reset, lost connections)."""
        replies = self._all("count")
        return (sum(r[1] for r in replies), sum(r[2] for r in replies), sum(r[3] for r in replies))

    def report(self) -> Window:
        w = Window(per_conn_min=1 << 62)
        for _, r in self._all("report"):
            w.connections += r["connections"]
            w.in_window += r["in_window"]
            w.recv_in_window += r["recv_in_window"]
            w.frames_in_window += r["frames_in_window"]
            w.bytes_in_window += r["bytes_in_window"]
            w.lost += r["lost"]
            w.pings += r["pings"]
            w.per_conn_min = min(w.per_conn_min, r["per_conn_min"])
            w.per_conn_max = max(w.per_conn_max, r["per_conn_max"])
            w.errors += r["errors"]
            for code, c in r["close_codes"].items():
                w.close_codes[code] = w.close_codes.get(code, 0) + c
            for key in ("hist_first", "hist_second"):
                getattr(w, key).merge_sparse(r[key])
                w.hist.merge_sparse(r[key])
        return w

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None


class TickPublisher:
    """A fixed-rate publisher's tick loop: ``batch`` messages per tick, ``ticks_per_s`` ticks per second.

    Subclasses implement ``_tick(batch, ws_ns, we_ns, started) -> (sent, sent_in_window)``: publish one
    tick's messages now, and say how many of them count as published in the window [ws_ns, we_ns)
    (``started``: the window has opened).
    """

    def __init__(self) -> None:
        self.published = 0    # messages sent since connect

    def _tick(self, batch: int, ws_ns: int, we_ns: int, started: bool) -> tuple[int, int]:  # pragma: no cover
        raise NotImplementedError

    async def run(self, ticks_per_s: float, batch: int, ws_ns: int, we_ns: int,
                  on_window_edge=None) -> dict[str, Any]:
        """Publish ``batch`` messages per tick until ``we_ns``; returns what was sent in the window.

        Ticks are scheduled on an absolute grid, so a late tick is followed by catch-up ticks and
        the offered rate holds on average. ``on_window_edge(edge)`` is called once when the window
        opens (``"start"``) and once when it closes (``"end"``) to read CPU counters.
        """
        time_ns = time.time_ns
        interval = 1e9 / ticks_per_s
        next_tick = float(time_ns())
        in_window = sent = max_late_ns = 0
        started = False
        while True:
            now = time_ns()
            if not started and now >= ws_ns:
                started = True
                if on_window_edge:
                    on_window_edge("start")
            if now >= we_ns:
                break
            if now >= next_tick:
                n, k = self._tick(batch, ws_ns, we_ns, started)
                sent += n
                in_window += k
                if started and k:  # how late the ticks that published into the window were
                    max_late_ns = max(max_late_ns, now - int(next_tick))
                next_tick += interval
                continue
            await asyncio.sleep(max(0.0, (next_tick - now) / 1e9))
        if on_window_edge:
            on_window_edge("end")
        self.published += sent
        return {"sent": sent, "in_window": in_window, "max_late_ms": max_late_ns / 1e6}


class Publisher(TickPublisher):
    """The publishing connection (runs on the caller's event loop, which must be picows-capable)."""

    def __init__(self, target: Target) -> None:
        super().__init__()
        self.target = target
        self.transport = None
        self.opcode = None    # WSMsgType of the published frames (binary for nats, else text)
        self.replies = 0      # relay: publish replies ({"id":K,"publish":{}})
        self.errors = 0       # relay: error replies
        self.error_sample = ""
        self.next_id = 3
        self._ready: asyncio.Future | None = None

    async def connect(self) -> None:
        import orjson
        from picows import WSListener, WSMsgType, ws_connect

        TEXT, BINARY = WSMsgType.TEXT, WSMsgType.BINARY
        loop = asyncio.get_running_loop()
        self._ready = ready = loop.create_future()
        pub = self
        relay = self.target.kind in ("relay", "relay-pb")  # the publisher speaks JSON either way
        nats = self.target.kind == "nats"
        self.opcode = BINARY if nats else TEXT

        class Listener(WSListener):
            def on_ws_connected(self, transport) -> None:
                if relay:
                    transport.send(TEXT, orjson.dumps({"id": 1, "connect": {"token": pub.target.token}}))
                elif nats:
                    transport.send(BINARY, NATS_CONNECT + b"PING\r\n")  # the PONG says CONNECT was taken
                else:
                    ready.set_result(None)

            def on_ws_frame(self, transport, frame) -> None:
                if nats:
                    if frame.msg_type is BINARY or frame.msg_type is TEXT:
                        self._nats(transport, frame.get_payload_as_bytes())
                    return
                if frame.msg_type is not TEXT or not relay:
                    return
                data = frame.get_payload_as_bytes()
                if data[:2] == b"{}" or b"\n{}" in data:
                    transport.send(TEXT, b"{}")
                pub.replies += data.count(b'"publish":{}')
                if b'"error"' in data:
                    pub.errors += data.count(b'"error"')
                    pub.error_sample = pub.error_sample or data[:300].decode(errors="replace")
                if not ready.done():
                    if b'"error"' in data:
                        ready.set_exception(RuntimeError(data.decode(errors="replace")))
                    elif data.startswith(b'{"id":1,'):
                        transport.send(TEXT, orjson.dumps(
                            {"id": 2, "subscribe": {"channel": pub.target.channel}}))
                    elif data.startswith(b'{"id":2,'):
                        ready.set_result(None)

            def _nats(self, transport, data: bytes) -> None:
                """INFO, PING (answered), PONG (ready), -ERR; a line cut between frames is not expected."""
                pings = data.count(b"PING\r\n")
                if pings:
                    transport.send(BINARY, b"PONG\r\n" * pings)
                if b"-ERR" in data:
                    pub.errors += data.count(b"-ERR")
                    pub.error_sample = pub.error_sample or data[:300].decode(errors="replace")
                    if not ready.done():
                        ready.set_exception(RuntimeError(data.decode(errors="replace")))
                if not ready.done() and b"PONG\r\n" in data:
                    ready.set_result(None)

        self.transport, _ = await ws_connect(Listener, self.target.pub_url, enable_auto_ping=False)
        await asyncio.wait_for(ready, 30)

    def frame(self, stamps: list[int]) -> bytes:
        """One frame carrying a message per stamp (publish commands for relay, PUBs for nats)."""
        if self.target.kind == "nats":
            return nats_pub_frame(self.target.channel, [make_payload(s) for s in stamps])
        if self.target.kind in ("relay", "relay-pb"):
            ch = self.target.channel.encode()
            parts = []
            for s in stamps:
                parts.append(b'{"id":%d,"publish":{"channel":"%s","data":"%s"}}'
                             % (self.next_id, ch, make_payload(s)))
                self.next_id += 1
            return b"\n".join(parts)
        return b"\n".join(make_payload(s) for s in stamps)

    def send(self, stamps: list[int]) -> None:
        from picows import WSMsgType

        self.transport.send(self.opcode or WSMsgType.TEXT, self.frame(stamps))
        self.published += len(stamps)

    def _tick(self, batch: int, ws_ns: int, we_ns: int, started: bool) -> tuple[int, int]:
        stamps = [time.time_ns() for _ in range(batch)]
        self.transport.send(self.opcode, self.frame(stamps))
        # by stamp, as the subscribers count: a tick begun just before the window opens may
        # carry stamps inside it
        return batch, sum(1 for s in stamps if ws_ns <= s < we_ns)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.disconnect(graceful=False)
            self.transport = None


def self_cpu_seconds() -> float:
    """utime + stime of the calling process (the coordinator and its publisher)."""
    return proc_cpu_seconds(os.getpid())


def _main() -> None:  # pragma: no cover - manual debugging aid
    url, n = sys.argv[1], int(sys.argv[2])
    kind = sys.argv[3] if len(sys.argv) > 3 else "raw"
    token = sys.argv[4] if len(sys.argv) > 4 else ""
    channel = "bench.fanout" if kind == "nats" else FANOUT_CHANNEL
    lg = LoadGenerator(Target("manual", kind, url, url, token, channel), n, 1)
    print("connected", lg.connect())
    lg.set_window(time.time_ns(), time.time_ns() + 10**12)
    try:
        while True:
            time.sleep(1)
            print("counts", lg.counts())
    finally:
        lg.close()


if __name__ == "__main__":
    _main()
