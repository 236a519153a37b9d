"""The load generator's subscriber worker process (picows client on uvloop): its protocols and its counting.

Subscribers
    ``loadgen.LoadGenerator`` starts worker processes (``multiprocessing``, spawn), each running
    :func:`worker_main`: its own uvloop with picows's compiled framing, pinned to ``GENERATOR_CPU``.
    For relay a subscriber speaks the Centrifugo JSON protocol v2 (connect with
    a JWT, subscribe to ``bench:fanout``, answer each ``{}`` ping with ``{}``), or
    with kind "relay-pb" the protobuf one (binary frames of varint-delimited
    messages; ping and pong are the byte 0x00);
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
    (``histogram.Histogram``: 20 us buckets up to 1 s, 10 ms buckets up to 100 s) so memory stays flat.
    Frames carrying many pushes (relay coalesces) record up to 4 evenly spaced
    stamps, each weighted by the pushes it stands for; delivery counts stay exact.
    The stamps of one frame come from one publisher in publish order, so when
    the first and last stamps are inside the window every stamp is.
"""

from __future__ import annotations

import asyncio
import os
import re
import resource
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import FANOUT_CHANNEL, run_worker  # noqa: E402
from histogram import Histogram  # noqa: E402
from workers import answer_close, disconnect_all, open_all, serve_pipe  # noqa: E402

__all__ = ["Target", "make_payload", "nats_pub_frame", "NATS_CONNECT", "PAYLOAD_SIZE", "worker_main"]

PAYLOAD_SIZE = 100  #: bytes of each published payload (stamp + padding)
_FIND_STAMPS = re.compile(rb"T=(\d+);").findall
_SAMPLES_PER_FRAME = 4


@dataclass(frozen=True)
class Target:
    """Where subscribers and the publisher connect, and which protocol they speak."""

    name: str                 #: label in results ("relay", "picows", "websockets", "node-ws", "nats")
    kind: str                 #: "relay" (Centrifugo JSON protocol), "relay-pb" (its protobuf protocol), "raw"
    #: (payload per frame) or "nats"
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
        self.bytes_in_window = 0           # WebSocket payload bytes of the frames received in [ws, we)
        self.hist_first = Histogram()      # stamps in the first half of the window
        self.hist_second = Histogram()     # stamps in the second half

    def account(self, stamps: list[bytes], now: int, nbytes: int = 0) -> int:
        """Count one frame's stamps (``nbytes``: the frame's payload size); returns how many were stamped
        inside the window."""
        n = len(stamps)
        self.total += n
        ws, we = self.ws, self.we
        if ws <= now < we:
            self.recv_in_window += n
            self.frames_in_window += 1
            self.bytes_in_window += nbytes
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

    from relay.protocol import protobuf as pb

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
                code = answer_close(transport, frame)
                cc = self.st.close_codes
                cc[code] = cc.get(code, 0) + 1

        def on_ws_frame(self, transport, frame) -> None:
            if frame.msg_type is not TEXT:
                self._non_text(transport, frame)
                return
            now = time_ns()
            data = frame.get_payload_as_bytes()
            stamps = find(data)
            if stamps:
                self.n += self.st.account(stamps, now, len(data))

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

        data_type = TEXT
        sep = 1  # bytes between two messages of a frame ("\n")

        def __init__(self, st: _WorkerState, target: Target, ready: asyncio.Future, channel: str = "") -> None:
            super().__init__(st, target, ready, channel)
            self.unit = -2  # bytes of one push and its separator, once learned

        def on_ws_connected(self, transport) -> None:
            self.transport = transport
            self._send(transport, {"id": 1, "connect": {"token": self.target.token}})

        def _send(self, transport, obj: dict) -> None:
            transport.send(TEXT, orjson.dumps(obj))

        def _reply(self, transport, msg_id: int | None, error: str | None) -> None:
            """The connect reply (id 1) subscribes; the subscribe reply (id 2) makes the subscriber ready."""
            if error is not None:
                self.st.errors.append(error[:200])
                if not self.ready.done():
                    self.ready.set_exception(RuntimeError(f"relay refused: {error}"))
            elif msg_id == 1:
                self._send(transport, {"id": 2, "subscribe": {"channel": self.channel}})
            elif msg_id == 2 and not self.ready.done():
                self.ready.set_result(None)

        def _slow(self, transport, data: bytes) -> None:
            """Slow path: pings, replies, errors; learns the push length."""
            for line in data.split(b"\n"):
                if line == b"{}":
                    transport.send(TEXT, b"{}")  # pong
                    self.st.pings += 1
                elif line.startswith(b'{"push"'):
                    self.unit = len(line) + 1
                elif line:
                    msg = orjson.loads(line)
                    self._reply(transport, msg.get("id"), line.decode(errors="replace") if "error" in msg else None)

        def on_ws_frame(self, transport, frame) -> None:
            if frame.msg_type is not self.data_type:
                self._non_text(transport, frame)
                return
            now = time_ns()
            data = frame.get_payload_as_bytes()
            stamps = find(data)
            n = len(stamps)
            if len(data) != n * self.unit - self.sep:
                self._slow(transport, data)
            if n:
                self.n += self.st.account(stamps, now, len(data))

    class RelayPbSubscriber(RelaySubscriber):
        """A relay subscriber over the protobuf protocol: the same steps in binary frames of varint-delimited
        Commands and Replies (no separator), a ping and its pong the byte 0x00."""

        data_type = BINARY
        sep = 0

        def _send(self, transport, obj: dict) -> None:
            transport.send(BINARY, pb.encode_command(obj))

        def _slow(self, transport, data: bytes) -> None:
            for raw, reply in pb.iter_replies(data):
                if not raw:
                    transport.send(BINARY, b"\x00")  # pong: an empty Command
                    self.st.pings += 1
                elif reply.HasField("push"):
                    self.unit = len(pb.varint(len(raw))) + len(raw)
                else:
                    self._reply(transport, reply.id, str(reply.error) if reply.HasField("error") else None)

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
                self.n += self.st.account(stamps, now, len(data))

    return {"relay": RelaySubscriber, "relay-pb": RelayPbSubscriber, "nats": NatsSubscriber}.get(kind, RawSubscriber)


async def _worker_async(pipe: Connection, target: Target, n: int, first: int) -> None:
    st = _WorkerState()
    Subscriber = _subscriber_class(target.kind)

    def listener(k: int, ready: asyncio.Future) -> Any:  # connection k of this worker: number first + k overall
        channel = target.channel.replace("{n}", str(first + k)).replace("{pair}", str((first + k) // 2))
        return Subscriber(st, target, ready, channel)

    subs, errors = await open_all(n, listener, target.url, read_buffer_init_size=4096)
    pipe.send(("ready", len(subs), errors[:5], len(errors)))

    async def handle(cmd: str, *args: Any) -> tuple:
        if cmd == "window":
            st.reset(*args)
            for s in subs:
                s.n = 0
            return ("ok",)
        if cmd == "count":
            return ("count", st.in_window, st.total, st.lost)
        if cmd == "report":
            per_conn = [s.n for s in subs] or [0]
            ru = resource.getrusage(resource.RUSAGE_SELF)
            return ("report", {
                "connections": len(subs), "in_window": st.in_window, "recv_in_window": st.recv_in_window,
                "total": st.total, "frames_in_window": st.frames_in_window, "bytes_in_window": st.bytes_in_window,
                "hist_first": st.hist_first.to_sparse(), "hist_second": st.hist_second.to_sparse(),
                "per_conn_min": min(per_conn), "per_conn_max": max(per_conn), "lost": st.lost,
                "close_codes": dict(st.close_codes), "pings": st.pings, "maxrss_kib": ru.ru_maxrss,
                "errors": st.errors[:5],
            })
        return ("error", f"unknown command {cmd!r}")

    await serve_pipe(pipe, handle)
    st.closing = True
    await disconnect_all(subs)


def worker_main(pipe: Connection, target: Target, n: int, first: int = 0) -> None:
    """Entry point of a worker process (common.run_worker: dies with its parent, pinned, uvloop)."""
    run_worker(_worker_async, pipe, target, n, first)
