"""An efficient subscriber load generator and a fixed-rate publisher (picows client on uvloop).

Subscribers
    :class:`LoadGenerator` opens N WebSocket subscriber connections split over
    several worker processes (``multiprocessing``, spawn), each running its own
    uvloop with picows's compiled framing and pinned to ``GENERATOR_CPU``.
    For relay a subscriber speaks the Centrifugo JSON protocol v2 (connect with
    a JWT, subscribe to ``bench:fanout``, answer each ``{}`` ping with ``{}``);
    for the "raw" peers (picows, websockets, Node ws) a frame is just the raw
    payload; for nats-server a subscriber speaks the NATS text protocol (CONNECT,
    SUB, answer each ``PING`` with ``PONG``) and a frame holds any number of
    ``MSG`` records, the last one possibly continued in the next frame.

Counting, cheaply and exactly
    Every payload starts with ``T=<unix ns>;``. A received text frame (which,
    from relay, may hold several newline-separated pushes) is scanned with one
    compiled ``findall`` for the stamps; nothing is JSON-parsed on the hot path.
    Each stamp is one delivery. Two counts are kept per worker:

    * by *stamp*: deliveries of messages published inside the window, which
      against what the publisher sent in that window gives exact loss;
    * by *receive time*: deliveries received inside the window, which is what
      the server did during the window, so it is the figure server CPU is
      charged to (right even when the server falls behind).

    Latency (receive time - stamp) goes into a fixed-size two-level histogram
    (20 us buckets up to 1 s, 10 ms buckets up to 100 s) so memory stays flat.
    Frames carrying many pushes (relay coalesces) record up to 4 evenly spaced
    stamps, each weighted by the pushes it stands for; delivery counts stay exact.
    The stamps of one frame come from one publisher in publish order, so when
    the first and last stamps are inside the window every stamp is.

Publisher
    :class:`Publisher` (in the coordinating process, also on ``GENERATOR_CPU``)
    sends ``batch`` messages per tick at ``ticks_per_s`` ticks per second, all
    of one tick in ONE text frame joined with ``\\n``: relay gets publish
    commands (it accepts up to 100 per message), the raw peers get the raw
    payloads (they split the frame into lines and relay each as its own frame),
    nats-server gets one ``PUB`` per message, all in one binary frame.
    relay only lets subscribed clients publish, so relay's publisher is also a
    subscriber: relay does one extra delivery per message that is not counted.

Run a worker by hand (for debugging): ``python bench/loadgen.py URL N [raw|nats|relay TOKEN]``
connects N subscribers and prints counts every second.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import re
import resource
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (FANOUT_CHANNEL, proc_cpu_seconds, sum_cpu_times,  # noqa: E402
                    run_worker)

__all__ = ["Target", "Histogram", "LoadGenerator", "Publisher", "Window", "make_payload",
           "nats_pub_frame", "NATS_CONNECT", "PAYLOAD_SIZE"]

PAYLOAD_SIZE = 100  #: bytes of each published payload (stamp + padding)
_FIND_STAMPS = re.compile(rb"T=(\d+);").findall
_SAMPLES_PER_FRAME = 4

# histogram geometry: fine buckets of 20 us up to 1 s, then coarse buckets of 10 ms up to 100 s
_FINE_NS, _FINE_N = 20_000, 50_000
_COARSE_NS, _COARSE_N = 10_000_000, 10_000


@dataclass(frozen=True)
class Target:
    """Where subscribers and the publisher connect, and which protocol they speak."""

    name: str                 #: label in results ("relay", "picows", "websockets", "node-ws", "nats")
    kind: str                 #: "relay" (Centrifugo JSON protocol), "raw" (payload per frame) or "nats"
    url: str                  #: subscriber WebSocket URL
    pub_url: str              #: publisher WebSocket URL
    token: str = ""           #: relay connect token (JWT)
    channel: str = FANOUT_CHANNEL  #: may hold "{n}" (each connection its own channel) or "{pair}" (n // 2:
    #: connections 2k and 2k+1 share a channel, like the two members of a 1:1 chat)


def make_payload(stamp_ns: int, size: int = PAYLOAD_SIZE) -> bytes:
    """``T=<ns>;`` padded with ``x`` to ``size`` bytes (JSON-safe, so relay can carry it as a string)."""
    head = b"T=%d;" % stamp_ns
    return head + b"x" * max(0, size - len(head))


#: what a NATS client sends first: CONNECT without +OK acks (verbose false)
NATS_CONNECT = b'CONNECT {"verbose":false,"pedantic":false,"protocol":1}\r\n'


def nats_pub_frame(subject: str, payloads: list[bytes]) -> bytes:
    """One frame of ``PUB <subject> <n>\\r\\n<payload>\\r\\n`` records, one per payload."""
    subj = subject.encode()
    return b"".join(b"PUB %s %d\r\n%s\r\n" % (subj, len(p), p) for p in payloads)


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


# ------------------------------------------------------------------------------------------------
# worker process
# ------------------------------------------------------------------------------------------------

class _WorkerState:
    """Counters of one worker process for the current window (reset by each ``window`` command)."""

    def __init__(self) -> None:
        self.ws = self.we = self.mid = 0
        self.reset(0, 0)
        self.closing = False
        self.lost = 0                      # connections closed by the server or dropped
        self.close_codes: dict[int, int] = {}
        self.pings = 0
        self.errors: list[str] = []

    def reset(self, ws: int, we: int) -> None:
        self.ws, self.we, self.mid = ws, we, ws + (we - ws) // 2
        self.in_window = 0                 # deliveries of messages stamped in [ws, we)
        self.recv_in_window = 0            # deliveries received in [ws, we)
        self.total = 0                     # every delivery since the reset
        self.frames_in_window = 0
        self.hist_first = Histogram()      # stamps in the first half of the window
        self.hist_second = Histogram()     # stamps in the second half

    def account(self, stamps: list[bytes], now: int) -> int:
        """Count one frame's stamps; returns how many were stamped inside the window."""
        n = len(stamps)
        self.total += n
        ws, we = self.ws, self.we
        if ws <= now < we:
            self.recv_in_window += n
            self.frames_in_window += 1
        first = int(stamps[0])
        if n == 1:  # the common case at one message per tick: keep it short
            if ws <= first < we:
                (self.hist_first if first < self.mid else self.hist_second).add(now - first)
                self.in_window += 1
                return 1
            return 0
        last = int(stamps[-1])
        if last < ws or first >= we:
            return 0
        if first >= ws and last < we:
            add = (self.hist_first if first < self.mid else self.hist_second).add
            if n <= _SAMPLES_PER_FRAME:
                for s in stamps:
                    add(now - int(s))
            else:  # evenly spaced samples, each weighted by the pushes it stands for
                start = 0
                for j in range(1, _SAMPLES_PER_FRAME + 1):
                    end = n * j // _SAMPLES_PER_FRAME
                    add(now - int(stamps[start]), end - start)
                    start = end
            self.in_window += n
            return n
        k = 0  # a frame straddling a window edge: check each stamp
        mid = self.mid
        for s in stamps:
            t = int(s)
            if ws <= t < we:
                (self.hist_first if t < mid else self.hist_second).add(now - t)
                k += 1
        self.in_window += k
        return k


def _subscriber_class(kind: str):
    """Build the picows listener class for ``kind`` lazily (only workers need picows)."""
    import orjson
    from picows import WSListener, WSMsgType

    TEXT, BINARY, CLOSE = WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CLOSE
    find, time_ns = _FIND_STAMPS, time.time_ns

    class RawSubscriber(WSListener):
        """A subscriber of the picows peer: every text frame is one raw payload."""

        def __init__(self, st: _WorkerState, target: Target, ready: asyncio.Future, channel: str = "") -> None:
            super().__init__()
            self.st = st
            self.target = target
            self.ready = ready
            self.channel = channel or target.channel
            self.n = 0  # deliveries stamped in the window on this connection
            self.transport = None

        def on_ws_connected(self, transport) -> None:
            self.transport = transport
            if not self.ready.done():
                self.ready.set_result(None)

        def _non_text(self, transport, frame) -> None:
            if frame.msg_type is CLOSE:
                code = frame.get_close_code()
                code = int(getattr(code, "value", code))
                cc = self.st.close_codes
                cc[code] = cc.get(code, 0) + 1
                transport.send_close(frame.get_close_code())
                transport.disconnect()

        def on_ws_frame(self, transport, frame) -> None:
            if frame.msg_type is not TEXT:
                self._non_text(transport, frame)
                return
            now = time_ns()
            stamps = find(frame.get_payload_as_bytes())
            if stamps:
                self.n += self.st.account(stamps, now)

        def on_ws_disconnected(self, transport) -> None:
            if not self.ready.done():
                self.ready.set_exception(RuntimeError("disconnected before subscribing"))
            if not self.st.closing:
                self.st.lost += 1

    class RelaySubscriber(RawSubscriber):
        """A relay subscriber: connect, subscribe, answer pings, count pushes.

        A frame holds newline-separated lines. The pushes of one publisher on one channel
        all have the same length L, so a frame of n stamps that is exactly n*(L+1)-1 bytes
        long holds nothing but those n pushes; any other frame (a ping ``{}``, a reply,
        a push of another length) goes the slow way, line by line. That keeps the ping
        check O(1) instead of a scan of every frame.
        """

        def __init__(self, st: _WorkerState, target: Target, ready: asyncio.Future, channel: str = "") -> None:
            super().__init__(st, target, ready, channel)
            self.line_len = -2  # L + 1 once learned

        def on_ws_connected(self, transport) -> None:
            self.transport = transport
            transport.send(TEXT, orjson.dumps({"id": 1, "connect": {"token": self.target.token}}))

        def _lines(self, transport, data: bytes) -> None:
            """Slow path: pings, replies to connect (id 1) and subscribe (id 2), errors."""
            for line in data.split(b"\n"):
                if line == b"{}":
                    transport.send(TEXT, b"{}")  # pong
                    self.st.pings += 1
                elif line.startswith(b'{"push"'):
                    self.line_len = len(line) + 1
                elif line:
                    msg = orjson.loads(line)
                    if "error" in msg:
                        self.st.errors.append(line.decode(errors="replace")[:200])
                        if not self.ready.done():
                            self.ready.set_exception(RuntimeError(f"relay refused: {line.decode()}"))
                    elif msg.get("id") == 1:
                        transport.send(TEXT, orjson.dumps({"id": 2, "subscribe": {"channel": self.channel}}))
                    elif msg.get("id") == 2 and not self.ready.done():
                        self.ready.set_result(None)

        def on_ws_frame(self, transport, frame) -> None:
            if frame.msg_type is not TEXT:
                self._non_text(transport, frame)
                return
            now = time_ns()
            data = frame.get_payload_as_bytes()
            stamps = find(data)
            n = len(stamps)
            if len(data) != n * self.line_len - 1:
                self._lines(transport, data)
            if n:
                self.n += self.st.account(stamps, now)

    class NatsSubscriber(RawSubscriber):
        """A nats-server subscriber over WebSocket: CONNECT, SUB, answer PINGs, count MSGs.

        nats-server sends binary frames holding any number of ``MSG <subject> 1 <n>\\r\\n
        <payload>\\r\\n`` records and may cut a record between two frames. A frame that
        ends with ``\\r\\n`` and is exactly n full records long (n stamps) holds nothing
        else: that O(1) check is the hot path. Any other frame (INFO, PING, PONG, -ERR,
        a record cut in two) is looked at: the tail after its last ``\\r\\n`` is kept
        and prefixed to the next frame, so a cut stamp is counted once, when whole.
        """

        def __init__(self, st: _WorkerState, target: Target, ready: asyncio.Future, channel: str = "") -> None:
            super().__init__(st, target, ready, channel)
            self.carry = b""
            self.msg_len = len(b"MSG %s 1 %d\r\n" % (self.channel.encode(), PAYLOAD_SIZE)) + PAYLOAD_SIZE + 2

        def on_ws_connected(self, transport) -> None:
            self.transport = transport
            # PING after SUB: its PONG says the subscription is in place
            transport.send(BINARY, NATS_CONNECT + b"SUB %s 1\r\nPING\r\n" % self.channel.encode())

        def _records(self, transport, data: bytes) -> bytes:
            """Slow path: keep a cut record for the next frame, answer PINGs, note PONG and -ERR."""
            if not data.endswith(b"\r\n"):
                cut = data.rfind(b"\r\n")
                cut = 0 if cut < 0 else cut + 2
                self.carry, data = data[cut:], data[:cut]
            pings = data.count(b"PING\r\n")
            if pings:
                transport.send(BINARY, b"PONG\r\n" * pings)
                self.st.pings += pings
            if b"-ERR" in data:
                for line in data.split(b"\r\n"):
                    if line.startswith(b"-ERR"):
                        self.st.errors.append(line.decode(errors="replace")[:200])
                        if not self.ready.done():
                            self.ready.set_exception(RuntimeError(f"nats-server refused: {line.decode()}"))
            if not self.ready.done() and b"PONG\r\n" in data:
                self.ready.set_result(None)
            return data

        def on_ws_frame(self, transport, frame) -> None:
            mt = frame.msg_type
            if mt is not BINARY and mt is not TEXT:
                self._non_text(transport, frame)
                return
            now = time_ns()
            data = frame.get_payload_as_bytes()
            if self.carry:
                data = self.carry + data
                self.carry = b""
            stamps = find(data)
            if len(data) != len(stamps) * self.msg_len or not data.endswith(b"\r\n"):
                data = self._records(transport, data)
                stamps = find(data)
            if stamps:
                self.n += self.st.account(stamps, now)

    return {"relay": RelaySubscriber, "nats": NatsSubscriber}.get(kind, RawSubscriber)


async def _open_all(target: Target, n: int, st: _WorkerState, first: int = 0,
                    concurrency: int = 64) -> tuple[list, list[str]]:
    """Open ``n`` subscribers, ``concurrency`` handshakes at a time; returns (listeners, errors).

    Connection k of this worker is number ``first + k`` overall (used for "{n}" channels).
    """
    from picows import ws_connect

    Subscriber = _subscriber_class(target.kind)
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(concurrency)
    subs: list = []
    errors: list[str] = []

    async def one(k: int) -> None:
        channel = target.channel.replace("{n}", str(first + k)).replace("{pair}", str((first + k) // 2))
        async with sem:
            ready = loop.create_future()
            try:
                _, listener = await ws_connect(lambda: Subscriber(st, target, ready, channel), target.url,
                                               enable_auto_ping=False, websocket_handshake_timeout=30,
                                               read_buffer_init_size=4096)
                await asyncio.wait_for(ready, 30)
                subs.append(listener)
            except Exception as e:  # reported, the run decides whether to go on
                errors.append(f"{type(e).__name__}: {e}")

    await asyncio.gather(*(one(k) for k in range(n)))
    return subs, errors


async def _worker_async(pipe: Connection, target: Target, n: int, first: int) -> None:
    st = _WorkerState()
    subs, errors = await _open_all(target, n, st, first)
    pipe.send(("ready", len(subs), errors[:5], len(errors)))
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue = asyncio.Queue()
    loop.add_reader(pipe.fileno(), lambda: inbox.put_nowait(pipe.recv()))
    os.set_blocking(pipe.fileno(), True)  # add_reader made it non-blocking; replies must not fail
    while True:
        cmd, *args = await inbox.get()
        if cmd == "window":
            st.reset(*args)
            for s in subs:
                s.n = 0
            pipe.send(("ok",))
        elif cmd == "count":
            pipe.send(("count", st.in_window, st.total, st.lost))
        elif cmd == "report":
            per_conn = [s.n for s in subs] or [0]
            ru = resource.getrusage(resource.RUSAGE_SELF)
            pipe.send(("report", {
                "connections": len(subs), "in_window": st.in_window, "recv_in_window": st.recv_in_window,
                "total": st.total, "frames_in_window": st.frames_in_window,
                "hist_first": st.hist_first.to_sparse(), "hist_second": st.hist_second.to_sparse(),
                "per_conn_min": min(per_conn), "per_conn_max": max(per_conn), "lost": st.lost,
                "close_codes": dict(st.close_codes), "pings": st.pings, "maxrss_kib": ru.ru_maxrss,
                "errors": st.errors[:5],
            }))
        elif cmd == "close":
            st.closing = True
            for s in subs:
                if s.transport is not None:
                    s.transport.disconnect(graceful=False)
            await asyncio.sleep(0.2)
            pipe.send(("closed",))
            return


def worker_main(pipe: Connection, target: Target, n: int, first: int = 0) -> None:
    """Entry point of a worker process (common.run_worker: dies with its parent, pinned, uvloop)."""
    run_worker(_worker_async, pipe, target, n, first)


# ------------------------------------------------------------------------------------------------
# coordinator side
# ------------------------------------------------------------------------------------------------

@dataclass
class Window:
    """Totals of one measured window, merged over workers."""

    connections: int = 0
    in_window: int = 0
    recv_in_window: int = 0
    frames_in_window: int = 0
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
        self.procs: list[mp.process.BaseProcess] = []
        self.pipes: list[Connection] = []
        self.connected = 0
        self.errors: list[str] = []

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def cpu_seconds(self) -> float:
        """utime + stime of all worker processes."""
        return sum(self.cpu_times())

    def cpu_times(self) -> tuple[float, float]:
        """(user, system) CPU seconds summed over the worker processes."""
        return sum_cpu_times(self.pids)

    def connect(self, timeout: float = 300.0) -> int:
        """Start the workers and wait until every subscriber is subscribed; returns how many are."""
        ctx = mp.get_context("spawn")
        share = [self.subscribers // self.workers + (i < self.subscribers % self.workers)
                 for i in range(self.workers)]
        first = 0
        for n in share:
            parent, child = ctx.Pipe()
            p = ctx.Process(target=worker_main, args=(child, self.target, n, first), daemon=True)
            first += n
            p.start()
            child.close()
            self.procs.append(p)
            self.pipes.append(parent)
        deadline = time.monotonic() + timeout
        for pipe in self.pipes:
            if not pipe.poll(max(0.0, deadline - time.monotonic())):
                raise TimeoutError("load generator workers did not connect in time")
            _, ok, errors, n_err = pipe.recv()
            self.connected += ok
            if n_err:
                self.errors += [f"{n_err} connections failed, e.g. {errors}"]
        return self.connected

    def _all(self, *cmd: Any) -> list[tuple]:
        for pipe in self.pipes:
            pipe.send(cmd)
        return [pipe.recv() for pipe in self.pipes]

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
        for pipe in self.pipes:
            try:
                pipe.send(("close",))
            except OSError:
                pass
        for pipe in self.pipes:
            try:
                if pipe.poll(10):
                    pipe.recv()
            except (OSError, EOFError):
                pass
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.terminate()
                p.join(5)
        self.procs, self.pipes = [], []


class Publisher:
    """The publishing connection (runs on the caller's event loop, which must be picows-capable)."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.transport = None
        self.opcode = None    # WSMsgType of the published frames (binary for nats, else text)
        self.replies = 0      # relay: publish replies ({"id":K,"publish":{}})
        self.errors = 0       # relay: error replies
        self.error_sample = ""
        self.next_id = 3
        self.published = 0    # messages sent since connect
        self._ready: asyncio.Future | None = None

    async def connect(self) -> None:
        import orjson
        from picows import WSListener, WSMsgType, ws_connect

        TEXT, BINARY = WSMsgType.TEXT, WSMsgType.BINARY
        loop = asyncio.get_running_loop()
        self._ready = ready = loop.create_future()
        pub = self
        relay = self.target.kind == "relay"
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
        if self.target.kind == "relay":
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

    async def run(self, ticks_per_s: float, batch: int, ws_ns: int, we_ns: int,
                  on_window_edge=None) -> dict[str, Any]:
        """Publish ``batch`` messages per tick until ``we_ns``; returns what was sent in the window.

        Ticks are scheduled on an absolute grid, so a late tick is followed by catch-up ticks and
        the offered rate holds on average. ``on_window_edge(edge)`` is called once when the window
        opens (``"start"``) and once when it closes (``"end"``) to read CPU counters.
        """
        from picows import WSMsgType

        opcode, time_ns = self.opcode or WSMsgType.TEXT, time.time_ns
        interval = 1e9 / ticks_per_s
        t0 = time_ns()
        next_tick = float(t0)
        in_window = 0
        sent = 0
        max_late_ns = 0
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
                stamps = [time_ns() for _ in range(batch)]
                self.transport.send(opcode, self.frame(stamps))
                sent += batch
                # by stamp, as the subscribers count: a tick begun just before the window opens may
                # carry stamps inside it
                in_window += sum(1 for s in stamps if ws_ns <= s < we_ns)
                if started:
                    max_late_ns = max(max_late_ns, now - int(next_tick))
                next_tick += interval
                continue
            await asyncio.sleep(max(0.0, (next_tick - now) / 1e9))
        if on_window_edge:
            on_window_edge("end")
        self.published += sent
        return {"sent": sent, "in_window": in_window, "max_late_ms": max_late_ns / 1e6}

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
