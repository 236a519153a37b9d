"""backpressure.py's load generator, all on CPU 1: the subscriber workers, the publisher process, and
:class:`Generator`, the coordinator's handle on them for one relay.

* Subscribers: relay subscribers (``loadgen_workers``': connect, subscribe, pings answered, close codes and
  lost connections counted), subscriber i on channel ``feed:c<i % channels>``, each on a socket whose
  receive buffer and segment size are fixed. Every subscriber counts the sequence numbers ``S=<seq>;`` it
  receives in a byte map, so missing, duplicate and unexpected deliveries are exact (:func:`check_deliveries`
  against the publisher's map). The workers can stop and resume reading (``--stall-factors``).
* The publisher: hand-built pipelined HTTP/1.1 to the server API at a fixed offered rate on an absolute
  schedule, channels round-robin; a 429 makes that connection wait ``Retry-After`` seconds, publications
  falling due meanwhile are held back. Its byte map per channel: 1 accepted, 2 unknown (no answer), 0 refused
  or never sent.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import time
from collections import deque
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RelayServer, proc_rss_bytes, run_worker, sum_cpu_times  # noqa: E402
from loadgen_workers import Target, _subscriber_class, _WorkerState  # noqa: E402
from workers import WorkerPool, disconnect_all, open_all, serve_pipe  # noqa: E402

__all__ = ["Generator", "check_deliveries"]

_FIND = re.compile(rb"S=(\d+);").findall

# byte maps: one byte per sequence number of a channel
_NONZERO = bytes([0] + [1] * 255)           # received at least once
_ZERO = bytes([1] + [0] * 255)              # never received
_IS1 = bytes([0, 1] + [0] * 254)            # accepted (the publisher's map: 1 accepted, 2 unknown)
_IS0 = bytes([1] + [0] * 255)               # not accepted and not unknown: refused or never sent


def _ones(b: bytes) -> int:
    return int.from_bytes(b, "little")


def check_deliveries(counts: bytearray, total: int, accepted: bytes) -> dict[str, int]:
    """One subscriber's byte map of received sequence numbers (``total`` deliveries) against the
    channel's accepted map."""
    n = len(accepted)
    c = bytes(counts[:n]).ljust(n, b"\0")
    beyond = bytes(counts[n:]).translate(_NONZERO).count(1)  # received, never even sent
    nz = c.translate(_NONZERO)
    return {
        "missing": (_ones(accepted.translate(_IS1)) & _ones(c.translate(_ZERO))).bit_count(),
        "duplicates": total - nz.count(1) - beyond,
        "unexpected": (_ones(accepted.translate(_IS0)) & _ones(nz)).bit_count() + beyond,
    }


# ------------------------------------------------------------------------------------------------
# subscriber worker (CPU 1)
# ------------------------------------------------------------------------------------------------

async def _sub_main(pipe, url: str, token: str, first: int, n: int, channels: int, nice: int, rcvbuf: int,
                    mss: int) -> None:
    import socket

    from picows import WSMsgType

    if nice:
        os.nice(nice)
    TEXT = WSMsgType.TEXT
    find = _FIND
    st = _WorkerState()
    target = Target("relay", "relay", url, url, token)

    class Sub(_subscriber_class("relay")):
        """A relay subscriber of ``feed:c<index>`` counting the sequence numbers it receives, one byte each."""

        def __init__(self, index: int, ready: asyncio.Future) -> None:
            super().__init__(st, target, ready, f"feed:c{index}")
            self.index = index
            self.counts = bytearray(4096)
            self.total = 0

        def on_ws_frame(self, transport, frame) -> None:
            if frame.msg_type is not TEXT:
                self._non_text(transport, frame)
                return
            data = frame.get_payload_as_bytes()
            seqs = find(data)
            if seqs:
                c = self.counts
                for s in seqs:
                    i = int(s)
                    if i >= len(c):
                        c.extend(bytes(i - len(c) + 65536))
                    v = c[i]
                    if v < 255:
                        c[i] = v + 1
                self.total += len(seqs)
                st.total += len(seqs)
            if not seqs or b"{}" in data or b'{"id"' in data:
                self._slow(transport, data)

    loop = asyncio.get_running_loop()

    async def small_window(parsed) -> socket.socket:
        """A socket whose receive buffer is fixed at ``rcvbuf`` (no autotuning up to tcp_rmem's 32 MiB):
        a subscriber that falls behind leaves its backlog with relay, as a client on a real network does,
        instead of in a large loopback socket buffer on the generator's side."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if mss:  # the segment size relay's side may use: loopback's 64 KiB lets its send buffer grow to MiBs
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, mss)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        await loop.sock_connect(sock, (parsed.host, parsed.port))
        return sock

    subs, errors = await open_all(n, lambda k, ready: Sub((first + k) % channels, ready), url,
                                  socket_factory=small_window)
    per_channel = [0] * channels
    for s in subs:
        per_channel[s.index] += 1
    pipe.send(("ready", len(subs), per_channel, errors[:3], sorted(os.sched_getaffinity(0))))

    async def handle(cmd: str, *args: Any) -> tuple:
        if cmd == "count":
            return ("count", st.total, st.lost)
        if cmd == "check":
            accepted: list[bytes] = args[0]
            out = {"missing": 0, "duplicates": 0, "unexpected": 0, "subscribers_missing_some": 0}
            for s in subs:
                r = check_deliveries(s.counts, s.total, accepted[s.index])
                for k in ("missing", "duplicates", "unexpected"):
                    out[k] += r[k]
                out["subscribers_missing_some"] += r["missing"] > 0
            out.update(received=st.total, lost=st.lost, close_codes=dict(st.close_codes),
                       errors=st.errors[:3], pings=st.pings)
            return ("check", out)
        if cmd in ("pause", "resume"):  # --stall: the subscribers stop reading during the flood
            for s in subs:
                if s.transport is not None:
                    ut = s.transport.underlying_transport
                    ut.pause_reading() if cmd == "pause" else ut.resume_reading()
            return (cmd,)
        return ("error", f"unknown command {cmd!r}")

    await serve_pipe(pipe, handle)
    st.closing = True
    await disconnect_all(subs)


def _sub_worker(pipe, *args) -> None:
    run_worker(_sub_main, pipe, *args)


# ------------------------------------------------------------------------------------------------
# publisher worker (CPU 1): hand-built pipelined HTTP/1.1, 429 + Retry-After honoured per connection
# ------------------------------------------------------------------------------------------------

class _Conn(asyncio.Protocol):
    def __init__(self, pub: _Publisher) -> None:
        self.pub = pub
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.pending: deque = deque()  # (channel or -1 for broadcast, seq) per request in flight
        self.backoff_until = 0.0
        self.open = True

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            i = head.find(b"content-length:")
            clen = int(head[i + 15:head.find(b"\r\n", i) if head.find(b"\r\n", i) > 0 else None]) if i >= 0 else 0
            if len(buf) < end + 4 + clen:
                return
            body = bytes(buf[end + 4:end + 4 + clen])
            del buf[:end + 4 + clen]
            self.pub.answer(self, int(head[9:12]), head, body, self.pending.popleft())

    def connection_lost(self, exc) -> None:
        self.open = False
        self.pub.lost_conns += 1
        while self.pending:
            self.pub.mark(self.pending.popleft(), 2)  # outcome unknown


class _Publisher:
    def __init__(self, host: str, port: int, api_key: str, channels: int, method: str, conns: int, depth: int,
                 payload: int) -> None:
        self.host, self.port, self.channels, self.method = host, port, channels, method
        self.n_conns, self.depth = conns, depth
        self.pad = b"x" * max(0, payload - 12)
        self.head = (b"POST /api/%s HTTP/1.1\r\nHost: %s:%d\r\nX-API-Key: %s\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " % (method.encode(), host.encode(), port, api_key.encode()))
        self.chan_list = b'","'.join(b"feed:c%d" % c for c in range(channels))
        self.conns: list[_Conn] = []
        self.accepted = [bytearray() for _ in range(channels)]  # 1 accepted, 2 unknown, 0 refused / not sent
        self.next_seq = [0] * channels
        self.rr_channel = 0
        self.lost_conns = 0
        self.stats = self._zero()

    @staticmethod
    def _zero() -> dict[str, Any]:
        return {"offered": 0, "sent": 0, "accepted": 0, "refused": 0, "errors": 0, "unknown": 0, "held_back": 0,
                "queue_full": 0, "retry_after": {}, "error_sample": "", "timeline": []}

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(self.n_conns):
            _, proto = await loop.create_connection(lambda: _Conn(self), self.host, self.port)
            self.conns.append(proto)

    def mark(self, key: tuple[int, int], value: int) -> None:
        ch, seq = key
        for c in (range(self.channels) if ch < 0 else (ch,)):
            m = self.accepted[c]
            if seq >= len(m):
                m.extend(bytes(seq - len(m) + 65536))
            m[seq] = value
        if value == 2:
            self.stats["unknown"] += 1

    def answer(self, conn: _Conn, status: int, head: bytes, body: bytes, key: tuple[int, int]) -> None:
        st = self.stats
        if status == 200 and b'"error"' not in body:
            self.mark(key, 1)
            st["accepted"] += 1
        elif status == 429:
            st["refused"] += 1
            i = head.find(b"retry-after:")
            ra = float(head[i + 12:head.find(b"\r\n", i) if head.find(b"\r\n", i) > 0 else None]) if i >= 0 else 1.0
            st["retry_after"][str(ra)] = st["retry_after"].get(str(ra), 0) + 1
            conn.backoff_until = max(conn.backoff_until, time.monotonic() + ra)
        else:
            st["errors"] += 1
            st["error_sample"] = st["error_sample"] or f"{status} {body[:200].decode(errors='replace')}"

    def _request(self) -> tuple[bytes, tuple[int, int]]:
        if self.method == "broadcast":
            seq = self.next_seq[0]
            for c in range(self.channels):
                self.next_seq[c] += 1
            body = b'{"channels":["%s"],"data":"S=%d;%s"}' % (self.chan_list, seq, self.pad)
            key = (-1, seq)
        else:
            ch = self.rr_channel
            self.rr_channel = (ch + 1) % self.channels
            seq = self.next_seq[ch]
            self.next_seq[ch] += 1
            body = b'{"channel":"feed:c%d","data":"S=%d;%s"}' % (ch, seq, self.pad)
            key = (ch, seq)
        return self.head + b"%d\r\n\r\n" % len(body) + body, key

    async def flood(self, rate: float, duration: float, rss_abort: int, relay_pid: int) -> dict[str, Any]:
        """``rate`` requests/s for ``duration`` s; then wait for every answer."""
        self.stats = st = self._zero()
        conns = [c for c in self.conns if c.open]
        t0 = time.monotonic()
        wall0 = time.time()
        done = 0
        turn = 0
        next_bin, bin_acc, bin_ref, bin_held = t0 + 1.0, 0, 0, 0
        aborted = False
        while True:
            now = time.monotonic()
            if now - t0 >= duration:
                break
            due = int(rate * (now - t0)) - done
            if due > 0:
                out: dict[int, list[bytes]] = {}
                for _ in range(due):
                    conn = conns[turn % len(conns)]
                    turn += 1
                    if conn.backoff_until > now:
                        st["held_back"] += 1
                    elif len(conn.pending) >= self.depth or not conn.open:
                        st["queue_full"] += 1
                    else:
                        req, key = self._request()
                        conn.pending.append(key)
                        out.setdefault(id(conn), []).append(req)
                        st["sent"] += 1
                for conn in conns:
                    reqs = out.get(id(conn))
                    if reqs and conn.transport is not None:
                        conn.transport.write(b"".join(reqs))
                done += due
            if now >= next_bin:
                st["timeline"].append([round(now - t0, 1), st["accepted"] - bin_acc, st["refused"] - bin_ref,
                                       st["held_back"] - bin_held])
                bin_acc, bin_ref, bin_held = st["accepted"], st["refused"], st["held_back"]
                next_bin += 1.0
                if rss_abort and proc_rss_bytes(relay_pid) > rss_abort:
                    aborted = True
                    break
            await asyncio.sleep(0.001)
        sent_for = time.monotonic() - t0
        wall_end = time.time()
        st["offered"] = done
        deadline = time.monotonic() + 120
        while any(c.pending for c in conns) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for c in conns:
            while c.pending:
                self.mark(c.pending.popleft(), 2)
        st.update(sent_for_s=sent_for, answered_for_s=time.monotonic() - t0, start_wall=wall0, end_wall=wall_end,
                  aborted_rss=aborted, lost_connections=self.lost_conns,
                  accepted_per_channel=[m.count(1) for m in self.accepted])
        return st


async def _pub_main(pipe, host: str, port: int, api_key: str, channels: int, method: str, conns: int, depth: int,
                    payload: int) -> None:
    pub = _Publisher(host, port, api_key, channels, method, conns, depth, payload)
    await pub.connect()
    pipe.send(("ready",))

    async def handle(cmd: str, *args: Any) -> tuple:
        if cmd == "flood":
            return ("flood", await pub.flood(*args))
        if cmd == "accepted":
            return ("accepted", [bytes(m) for m in pub.accepted])
        return ("error", f"unknown command {cmd!r}")

    await serve_pipe(pipe, handle)
    for c in pub.conns:
        if c.transport is not None:
            c.transport.close()


def _pub_worker(pipe, *args) -> None:
    run_worker(_pub_main, pipe, *args)


# ------------------------------------------------------------------------------------------------
# coordinator
# ------------------------------------------------------------------------------------------------

class Generator:
    """Subscriber workers and the publisher process for one relay, all on CPU 1."""

    def __init__(self, relay: RelayServer, args: argparse.Namespace) -> None:
        share = [args.subscribers // args.workers + (i < args.subscribers % args.workers)
                 for i in range(args.workers)]
        self.subs = WorkerPool(_sub_worker, [(relay.ws_url, relay.token(), sum(share[:i]), n, args.channels,
                                              args.nice, args.rcvbuf * 1024, args.mss) for i, n in enumerate(share)])
        self.per_channel = [0] * args.channels
        self.connected = 0
        self.errors: list[str] = []
        for _, ok, per_channel, errors, affinity in self.subs.recv_all(120):
            self.connected += ok
            self.per_channel = [a + b for a, b in zip(self.per_channel, per_channel, strict=True)]
            self.errors += errors
            self.affinity = affinity
        self.pub = WorkerPool(_pub_worker, [("127.0.0.1", relay.api_port, relay.api_key, args.channels,
                                             args.method, args.conns, args.depth, args.payload)])
        self.pub.recv_all(30)

    @property
    def pids(self) -> list[int]:
        return self.subs.pids + self.pub.pids

    def sub_cpu(self) -> float:
        return sum(sum_cpu_times(self.subs.pids))

    def pub_cpu(self) -> float:
        return sum(sum_cpu_times(self.pub.pids))

    def flood(self, rate: float, duration: float, rss_abort: int, relay_pid: int) -> dict[str, Any]:
        """The publisher's flood (it then waits up to 120 s for the last answers)."""
        return self.pub.all("flood", rate, duration, rss_abort, relay_pid, timeout=duration + 300)[0][1]

    def reading(self, on: bool) -> None:
        self.subs.all("resume" if on else "pause")

    def received(self) -> tuple[int, int]:
        replies = self.subs.all("count")
        return sum(r[1] for r in replies), sum(r[2] for r in replies)

    def expected(self, accepted_per_channel: list[int]) -> int:
        return sum(a * n for a, n in zip(accepted_per_channel, self.per_channel, strict=True))

    def check(self) -> dict[str, Any]:
        accepted = self.pub.all("accepted")[0][1]
        out: dict[str, Any] = {"missing": 0, "duplicates": 0, "unexpected": 0, "subscribers_missing_some": 0,
                               "received": 0, "lost": 0, "close_codes": {}, "errors": []}
        for _, r in self.subs.all("check", accepted):
            for k in ("missing", "duplicates", "unexpected", "subscribers_missing_some", "received", "lost"):
                out[k] += r[k]
            for code, n in r["close_codes"].items():
                out["close_codes"][str(code)] = out["close_codes"].get(str(code), 0) + n
            out["errors"] += r["errors"]
        out["accepted_publications"] = sum(m.count(1) for m in accepted)
        out["unknown_publications"] = sum(m.count(2) for m in accepted)
        out["expected"] = sum(m.count(1) * n for m, n in zip(accepted, self.per_channel, strict=True))
        return out

    def close(self) -> None:
        self.subs.close()
        self.pub.close()
