"""Publisher backpressure under a publish flood (issue 11): bounded memory, nothing accepted lost.

What it shows: when subscribers cannot take what publishers send, relay with backpressure on
refuses new publications (server API 429 with ``Retry-After``) and its resident memory stays
under the configured ceiling, while every publication it accepted (HTTP 200) still reaches every
subscriber of its channel, once. The baseline in the same run is the same flood against relay
with backpressure off: it accepts everything and buffers it, so its memory grows with the flood.

Set-up (``/work/shared/BENCHMARKING.md``):

* **relay** on CPU 0 (``common.RelayServer``, the compiled core is checked: ``core=cython``),
  memory broker, a ``[namespaces.feed]`` (no history, chat lane: never dropped),
  ``client_queue_max_size`` 1 GiB so no subscriber is disconnected as slow (3008) in either
  run: the only difference between the runs is the backpressure keys. A fresh relay per run.
* **Subscribers** on CPU 1: ``--subscribers`` WebSocket clients (picows framing, uvloop) over
  ``--workers`` processes, subscriber i on channel ``feed:c<i % channels>``, reading as fast as
  they can. Each publication's data is ``S=<seq>;xxx…`` (``--payload`` bytes, ``seq`` numbered per
  channel); every subscriber counts each sequence number it receives in a byte map, so missing
  and duplicated deliveries are counted exactly. The subscriber workers run at nice 5, so the
  publisher, on the same core, offers its rate even when they are saturated.
* **Publisher** on CPU 1: one process with ``--conns`` keep-alive HTTP/1.1 connections to the
  server API, requests built by hand and pipelined up to ``--depth`` per connection, at a fixed
  offered rate on an absolute schedule, channels round-robin (``--method publish``: one
  ``POST /api/publish`` per publication; ``broadcast``: one ``POST /api/broadcast`` to every
  channel, i.e. ``channels`` publications). It behaves like a well-mannered backend: a 429
  makes that connection wait ``Retry-After`` seconds; publications falling due meanwhile are
  *held back* (not sent, counted). 200 = accepted, 429 = refused; a request without an answer
  is "unknown" and excluded from the delivery check.
* **Capacity** (skipped with ``--capacity``): on a fresh relay with backpressure off, the offered
  rate rises step by step (``--steps`` of ``--step-duration`` s); a step keeps up when, at its
  end, the subscribers are less than 250 ms of deliveries behind and the publisher sent what was
  offered. Capacity = the highest step that kept up. The same relay's RSS with the subscribers
  connected and idle gives the memory ceiling of the "on" run.
* **Flood**: for each ``--factors`` multiple of capacity, two runs, fresh relay each: ``on``
  (``backpressure_queue_bytes`` = ``--queue-limit`` MiB, ``backpressure_memory_bytes`` = idle RSS
  + ``--headroom`` MiB: the **ceiling**) and ``off`` (every backpressure key 0). The flood lasts
  ``--duration`` s; relay's RSS is read from /proc every 100 ms from start to the end of the
  drain (the time until every subscriber has every accepted publication).

Per run it prints one line (accepted/s, refused/s, held back, peak RSS against the ceiling,
deliveries, missing / duplicate / unexpected deliveries, drain time, 3008 disconnects, relay
CPU, generator CPU) and the comparison, and writes ``bench/results/backpressure-<stamp>.json``.

Run: ``.venv/bin/python bench/backpressure.py`` (about 3 minutes) or ``--quick`` (under a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import re
import sys
import threading
import time
from collections import deque
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scenarios_common import CpuWindow, noisy_mark  # noqa: E402
from common import (GENERATOR_CPU, RelayServer, bench_parser, fmt_rate, machine_description, pin_to,  # noqa: E402
                    proc_rss_bytes, raise_nofile, run_worker, save_result, sum_cpu_times)

__all__ = ["main"]

MiB = 1 << 20
NAMESPACE = {"feed": {"publish_access": "subscribers"}}
QUEUE_CAP = 1 << 30  # client_queue_max_size in both runs: nobody is disconnected as slow
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

    import orjson
    from picows import WSListener, WSMsgType, ws_connect

    if nice:
        os.nice(nice)
    TEXT, CLOSE = WSMsgType.TEXT, WSMsgType.CLOSE
    find = _FIND
    state = {"total": 0, "lost": 0, "closing": False, "codes": {}, "errors": [], "pings": 0}

    class Sub(WSListener):
        def __init__(self, channel: int, ready: asyncio.Future) -> None:
            super().__init__()
            self.channel = channel
            self.ready = ready
            self.counts = bytearray(4096)
            self.total = 0
            self.transport = None

        def on_ws_connected(self, transport) -> None:
            self.transport = transport
            transport.send(TEXT, orjson.dumps({"id": 1, "connect": {"token": token}}))

        def _lines(self, transport, data: bytes) -> None:
            for line in data.split(b"\n"):
                if line == b"{}":
                    transport.send(TEXT, b"{}")
                    state["pings"] += 1
                elif line.startswith(b'{"id"'):
                    msg = orjson.loads(line)
                    if "error" in msg:
                        state["errors"].append(line.decode(errors="replace")[:200])
                        if not self.ready.done():
                            self.ready.set_exception(RuntimeError(line.decode(errors="replace")))
                    elif msg.get("id") == 1:
                        transport.send(TEXT, orjson.dumps({"id": 2, "subscribe": {"channel": f"feed:c{self.channel}"}}))
                    elif msg.get("id") == 2 and not self.ready.done():
                        self.ready.set_result(None)

        def on_ws_frame(self, transport, frame) -> None:
            if frame.msg_type is not TEXT:
                if frame.msg_type is CLOSE:
                    code = int(getattr(frame.get_close_code(), "value", frame.get_close_code()))
                    state["codes"][code] = state["codes"].get(code, 0) + 1
                    transport.send_close(frame.get_close_code())
                    transport.disconnect()
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
                state["total"] += len(seqs)
            if not seqs or b"{}" in data or b'{"id"' in data:
                self._lines(transport, data)

        def on_ws_disconnected(self, transport) -> None:
            if not self.ready.done():
                self.ready.set_exception(RuntimeError("disconnected before subscribing"))
            if not state["closing"]:
                state["lost"] += 1

    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(64)
    subs: list[Sub] = []
    errors: list[str] = []

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

    async def one(k: int) -> None:
        async with sem:
            ready = loop.create_future()
            try:
                _, listener = await ws_connect(lambda: Sub((first + k) % channels, ready), url,
                                               enable_auto_ping=False, websocket_handshake_timeout=30,
                                               socket_factory=small_window)
                await asyncio.wait_for(ready, 30)
                subs.append(listener)
            except Exception as e:
                errors.append(f"{type(e).__name__}: {e}")

    await asyncio.gather(*(one(k) for k in range(n)))
    per_channel = [0] * channels
    for s in subs:
        per_channel[s.channel] += 1
    pipe.send(("ready", len(subs), per_channel, errors[:3], sorted(os.sched_getaffinity(0))))
    while True:
        cmd, *args = await loop.run_in_executor(None, pipe.recv)
        if cmd == "count":
            pipe.send(("count", state["total"], state["lost"]))
        elif cmd == "check":
            accepted: list[bytes] = args[0]
            out = {"missing": 0, "duplicates": 0, "unexpected": 0, "subscribers_missing_some": 0}
            for s in subs:
                r = check_deliveries(s.counts, s.total, accepted[s.channel])
                for k in ("missing", "duplicates", "unexpected"):
                    out[k] += r[k]
                out["subscribers_missing_some"] += r["missing"] > 0
            out.update(received=state["total"], lost=state["lost"], close_codes=dict(state["codes"]),
                       errors=state["errors"][:3], pings=state["pings"])
            pipe.send(("check", out))
        elif cmd in ("pause", "resume"):  # --stall: the subscribers stop reading during the flood
            for s in subs:
                if s.transport is not None:
                    ut = s.transport.underlying_transport
                    ut.pause_reading() if cmd == "pause" else ut.resume_reading()
            pipe.send((cmd,))
        elif cmd == "close":
            state["closing"] = True
            for s in subs:
                if s.transport is not None:
                    s.transport.disconnect(graceful=False)
            await asyncio.sleep(0.2)
            pipe.send(("closed",))
            return


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
    loop = asyncio.get_running_loop()
    while True:
        cmd, *args = await loop.run_in_executor(None, pipe.recv)
        if cmd == "flood":
            pipe.send(("flood", await pub.flood(*args)))
        elif cmd == "accepted":
            pipe.send(("accepted", [bytes(m) for m in pub.accepted]))
        elif cmd == "close":
            for c in pub.conns:
                if c.transport is not None:
                    c.transport.close()
            pipe.send(("closed",))
            return


def _pub_worker(pipe, *args) -> None:
    run_worker(_pub_main, pipe, *args)


# ------------------------------------------------------------------------------------------------
# coordinator
# ------------------------------------------------------------------------------------------------

class Generator:
    """Subscriber workers and the publisher process for one relay, all on CPU 1."""

    def __init__(self, relay: RelayServer, args: argparse.Namespace) -> None:
        ctx = mp.get_context("spawn")
        self.subs: list[tuple[Any, Any]] = []
        self.per_channel = [0] * args.channels
        share = [args.subscribers // args.workers + (i < args.subscribers % args.workers)
                 for i in range(args.workers)]
        first = 0
        for n in share:
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_sub_worker, daemon=True,
                            args=(child, relay.ws_url, relay.token(), first, n, args.channels, args.nice,
                                  args.rcvbuf * 1024, args.mss))
            p.start()
            child.close()
            self.subs.append((p, parent))
            first += n
        self.connected = 0
        self.errors: list[str] = []
        for _, pipe in self.subs:
            if not pipe.poll(120):
                raise TimeoutError("subscriber workers did not connect in time")
            _, ok, per_channel, errors, self.affinity = pipe.recv()
            self.connected += ok
            self.per_channel = [a + b for a, b in zip(self.per_channel, per_channel, strict=True)]
            self.errors += errors
        parent, child = ctx.Pipe()
        self.pub_proc = ctx.Process(target=_pub_worker, daemon=True,
                                    args=(child, "127.0.0.1", relay.api_port, relay.api_key, args.channels,
                                          args.method, args.conns, args.depth, args.payload))
        self.pub_proc.start()
        child.close()
        self.pub = parent
        if not parent.poll(30):
            raise TimeoutError("publisher did not connect")
        parent.recv()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p, _ in self.subs] + [self.pub_proc.pid]

    def sub_cpu(self) -> float:
        return sum(sum_cpu_times([p.pid for p, _ in self.subs]))

    def pub_cpu(self) -> float:
        return sum(sum_cpu_times([self.pub_proc.pid]))

    def flood(self, rate: float, duration: float, rss_abort: int, relay_pid: int) -> dict[str, Any]:
        self.pub.send(("flood", rate, duration, rss_abort, relay_pid))
        return self.pub.recv()[1]

    def reading(self, on: bool) -> None:
        for _, pipe in self.subs:
            pipe.send(("resume" if on else "pause",))
        for _, pipe in self.subs:
            pipe.recv()

    def received(self) -> tuple[int, int]:
        for _, pipe in self.subs:
            pipe.send(("count",))
        replies = [pipe.recv() for _, pipe in self.subs]
        return sum(r[1] for r in replies), sum(r[2] for r in replies)

    def expected(self, accepted_per_channel: list[int]) -> int:
        return sum(a * n for a, n in zip(accepted_per_channel, self.per_channel, strict=True))

    def check(self) -> dict[str, Any]:
        self.pub.send(("accepted",))
        accepted = self.pub.recv()[1]
        for _, pipe in self.subs:
            pipe.send(("check", accepted))
        out: dict[str, Any] = {"missing": 0, "duplicates": 0, "unexpected": 0, "subscribers_missing_some": 0,
                               "received": 0, "lost": 0, "close_codes": {}, "errors": []}
        for _, pipe in self.subs:
            r = pipe.recv()[1]
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
        for pipe in [p for _, p in self.subs] + [self.pub]:
            try:
                pipe.send(("close",))
            except OSError:
                pass
        for pipe in [p for _, p in self.subs] + [self.pub]:
            try:
                if pipe.poll(10):
                    pipe.recv()
            except (OSError, EOFError):
                pass
        for p in [p for p, _ in self.subs] + [self.pub_proc]:
            p.join(5)
            if p.is_alive():
                p.terminate()
                p.join(5)


def kernel_queues(port: int) -> tuple[int, int]:
    """Bytes in the kernel's TCP queues of relay's WebSocket port (/proc/net/tcp): (relay's send queues,
    the subscribers' receive queues). Memory the flood costs that relay's RSS does not show."""
    hexport = f":{port:04X}"
    send = recv = 0
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for ln in f:
                parts = ln.split()
                tx, rx = parts[4].split(":")
                if parts[1].endswith(hexport):
                    send += int(tx, 16)
                elif parts[2].endswith(hexport):
                    recv += int(rx, 16)
    except OSError:
        pass
    return send, recv


class RssSampler(threading.Thread):
    """relay's RSS from /proc/<pid>/statm every ``interval`` s: (seconds since start, bytes); every
    ``kernel_every`` samples also the kernel's TCP queues of ``port`` (:func:`kernel_queues`)."""

    def __init__(self, pid: int, port: int, interval: float = 0.1, kernel_every: int = 3) -> None:
        super().__init__(daemon=True)
        self.pid, self.port, self.interval, self.kernel_every = pid, port, interval, kernel_every
        self.samples: list[tuple[float, int]] = []
        self.kernel: list[tuple[float, int, int]] = []
        self.t0 = time.time()
        self._halt = threading.Event()

    def run(self) -> None:
        i = 0
        while not self._halt.is_set():
            try:
                self.samples.append((time.time() - self.t0, proc_rss_bytes(self.pid)))
            except OSError:
                return
            if i % self.kernel_every == 0:
                self.kernel.append((time.time() - self.t0, *kernel_queues(self.port)))
            i += 1
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(2)

    def peak(self, since: float = 0.0) -> int:
        return max((b for t, b in self.samples if t >= since - self.t0), default=0)


def relay_config(mode: str, args: argparse.Namespace, ceiling: int = 0) -> dict[str, Any]:
    # client_send_buffer in both runs: the kernel's autotuned send buffers (about 1.3 MiB per lagging
    # loopback connection) would hide the backlog from relay (docs/backpressure.md, "The kernel's share")
    cfg: dict[str, Any] = {"namespaces": NAMESPACE, "client_queue_max_size": QUEUE_CAP,
                           "backpressure_retry_after": args.retry_after,
                           "client_send_buffer": args.send_buffer * 1024}
    if mode == "on":
        cfg.update(backpressure_queue_bytes=args.queue_limit * MiB, backpressure_memory_bytes=ceiling)
    else:  # the baseline, and the capacity probe: no limit at all
        cfg.update(backpressure_queue_bytes=0, backpressure_memory_bytes=0, backpressure_publish_latency=0,
                   max_publishes_in_flight=0)
    return cfg


def start_relay(name: str, cfg: dict[str, Any]) -> RelayServer:
    relay = RelayServer(name=name, extra_config=cfg)
    relay.start()
    core = relay.core()
    print(f"  [{name} core={core} pid={relay.pid}]", flush=True)
    if core != "cython":
        relay.cleanup()
        raise SystemExit(f"{name}: relay runs core={core}, not the compiled core (make build)")
    return relay


def metric_totals(relay: RelayServer) -> dict[str, float]:
    try:
        m = relay.metrics()
    except Exception as e:  # the figures from /proc and the subscribers still stand
        return {"error": f"{type(e).__name__}: {e}"}
    return {"refused_api": m[("relay_publications_refused_total", {"source": "api"})],
            "slow_disconnects": m.total("relay_slow_consumer_disconnects_total"),
            "outbound_queue_bytes": m.total("relay_outbound_queue_bytes"),
            "backpressure_active": m.total("relay_backpressure_active")}


def wait_drain(gen: Generator, expected: int, timeout: float) -> tuple[float | None, int]:
    """Seconds until the subscribers have ``expected`` deliveries (None: not within ``timeout``)."""
    t0 = time.time()
    got = 0
    while time.time() - t0 < timeout:
        got, _ = gen.received()
        if got >= expected:
            return time.time() - t0, got
        time.sleep(0.05)
    return None, got


def probe_capacity(args: argparse.Namespace) -> dict[str, Any]:
    """Idle RSS with the subscribers connected and, unless --capacity is given, the capacity ramp."""
    relay = start_relay("relay-capacity", relay_config("off", args))
    gen = None
    try:
        gen = Generator(relay, args)
        time.sleep(0.5)
        idle = relay.rss_bytes()
        print(f"  {gen.connected} subscribers connected over {len(gen.subs)} workers (CPUs {gen.affinity}), "
              f"{gen.per_channel} per channel; relay idle RSS {idle / MiB:.1f} MiB", flush=True)
        out: dict[str, Any] = {"idle_rss_bytes": idle, "steps": [], "connected": gen.connected}
        if args.capacity:
            out["capacity_per_s"] = args.capacity
            out["source"] = "--capacity"
            return out
        subs_per_pub = args.subscribers / args.channels * (args.channels if args.method == "broadcast" else 1)
        rate, best = args.start_rate, None
        for _ in range(args.steps):
            window = CpuWindow(relay.cpu_times, lambda: gen.pids)
            window.mark("start")
            before, _ = gen.received()
            st = gen.flood(rate, args.step_duration, 0, relay.pid)
            window.mark("end")
            got, _ = gen.received()
            fig = window.figures()
            cpu, gcpu = fig["server_cpu_pct"] / 100, fig["generator_cpu_pct"] / 100
            behind = gen.expected(st["accepted_per_channel"]) - got
            behind_s = behind / max(1.0, rate * subs_per_pub)
            kept_up = (behind_s < 0.25 and st["sent"] >= 0.95 * st["offered"] and not st["errors"]
                       and st["answered_for_s"] < args.step_duration + 0.5)
            step = {"offered_per_s": rate, "accepted_per_s": st["accepted"] / st["sent_for_s"],
                    "deliveries_per_s": (got - before) / st["answered_for_s"], "behind_s": behind_s,
                    "queue_full": st["queue_full"], "relay_cpu_pct": cpu * 100, "generator_cpu_pct": gcpu * 100,
                    "kept_up": kept_up, "noisy": fig["noisy"]}
            out["steps"].append(step)
            print(f"  capacity {fmt_rate(rate):>6} {args.method}/s: {fmt_rate(step['deliveries_per_s'])} deliv/s, "
                  f"behind {behind_s * 1000:.0f} ms, relay CPU {cpu * 100:.0f}%, gen CPU {gcpu * 100:.0f}%"
                  f"{'' if kept_up else '  FELL BEHIND'}", flush=True)
            # let the backlog drain before the next step
            wait_drain(gen, gen.expected(st["accepted_per_channel"]), 30)
            if not kept_up:
                break
            best = rate
            rate = round(rate * args.factor_step)
        out["capacity_per_s"] = best or args.start_rate
        out["source"] = "ramp" if best else "ramp (even the first step fell behind)"
        return out
    finally:
        try:
            if gen is not None:
                gen.close()
        finally:
            relay.cleanup()


def flood_run(mode: str, factor: float, stall: bool, rate: float, ceiling: int,
              args: argparse.Namespace) -> dict[str, Any]:
    relay = start_relay(f"relay-{mode}-{factor:g}x{'-stall' if stall else ''}", relay_config(mode, args, ceiling))
    gen = None
    sampler = RssSampler(relay.pid, relay.ws_port)
    try:
        gen = Generator(relay, args)
        time.sleep(0.3)
        rss_start = relay.rss_bytes()
        sampler.start()
        window = CpuWindow(relay.cpu_times, lambda: gen.pids)
        window.mark("start")
        s0, p0 = gen.sub_cpu(), gen.pub_cpu()
        rss_abort = args.rss_abort * MiB if mode == "off" else 0
        if stall:
            gen.reading(False)
        st = gen.flood(rate, args.duration, rss_abort, relay.pid)
        if stall:
            gen.reading(True)
        flood_s = st["answered_for_s"]
        window.mark("end")
        cpu = window.figures()
        cpu1, s1, p1 = relay.cpu_seconds(), gen.sub_cpu(), gen.pub_cpu()
        metrics_flood = metric_totals(relay)
        expected = gen.expected(st["accepted_per_channel"])
        waited, got = wait_drain(gen, expected, args.drain_timeout)
        drain_s = time.time() - st["end_wall"] if waited is not None else None  # from the last send
        cpu2 = relay.cpu_seconds()
        time.sleep(0.3)  # duplicates would arrive now
        check = gen.check()
        sampler.stop()
        metrics_end = metric_totals(relay)
        peak = sampler.peak(st["start_wall"])
        n_pub = args.channels if args.method == "broadcast" else 1
        row = {
            "mode": mode, "factor": factor, "stall": stall, "case": f"{factor:g}x" + (" stalled" if stall else ""),
            "offered_per_s": rate, "method": args.method,
            "publications_per_request": n_pub, "duration_s": args.duration, "flood_s": flood_s,
            "offered": st["offered"], "sent": st["sent"], "accepted": st["accepted"], "refused": st["refused"],
            "held_back": st["held_back"], "queue_full": st["queue_full"], "errors": st["errors"],
            "unknown": st["unknown"], "error_sample": st["error_sample"],
            "accepted_per_s": st["accepted"] / st["sent_for_s"], "refused_per_s": st["refused"] / st["sent_for_s"],
            "sent_per_s": st["sent"] / st["sent_for_s"], "retry_after": st["retry_after"],
            "aborted_at_rss": st["aborted_rss"],
            "ceiling_bytes": ceiling if mode == "on" else None,
            "queue_limit_bytes": args.queue_limit * MiB if mode == "on" else None,
            "rss_start_bytes": rss_start, "rss_peak_bytes": peak,
            "rss_end_bytes": sampler.samples[-1][1] if sampler.samples else None,
            "under_ceiling": (peak <= ceiling) if mode == "on" else None,
            "expected_deliveries": check["expected"], "deliveries": check["received"],
            "missing": check["missing"], "duplicates": check["duplicates"], "unexpected": check["unexpected"],
            "subscribers_missing_some": check["subscribers_missing_some"],
            "accepted_publications": check["accepted_publications"] * n_pub,
            "unknown_publications": check["unknown_publications"],
            "drain_s": drain_s, "drained": drain_s is not None,
            "deliveries_at_drain_end": got,
            "slow_disconnects_3008": int(check["close_codes"].get("3008", 0)),
            "close_codes": check["close_codes"], "lost_connections": check["lost"],
            "subscribers": gen.connected, "subscriber_errors": (gen.errors + check["errors"])[:5],
            "relay_cpu_pct_flood": cpu["server_cpu_pct"], "cpu_window": cpu, "noisy": cpu["noisy"],
            "relay_cpu_pct_drain": (cpu2 - cpu1) / waited * 100 if waited else None,
            "subscriber_cpu_pct": (s1 - s0) / flood_s * 100, "publisher_cpu_pct": (p1 - p0) / flood_s * 100,
            "metrics_after_flood": metrics_flood, "metrics_end": metrics_end,
            "kernel_send_queue_peak_bytes": max((k[1] for k in sampler.kernel), default=0),
            "kernel_recv_queue_peak_bytes": max((k[2] for k in sampler.kernel), default=0),
            "rss_samples": [[round(t, 2), round(b / MiB, 1)] for t, b in sampler.samples],
            "kernel_queue_samples": [[round(t, 2), round(a / MiB, 1), round(b / MiB, 1)] for t, a, b in sampler.kernel],
            "timeline": st["timeline"], "server_alive": relay.alive(),
        }
        row["generator_cpu_pct"] = cpu["generator_cpu_pct"]  # subscribers + publisher + this coordinator
        # publications that fell due while their connection still waited for --depth answers: relay answers
        # (or the publisher reads) too slowly for the offered rate
        row["queue_full_share"] = row["queue_full"] / max(1, row["offered"])
        row["generator_busy"] = row["generator_cpu_pct"] >= 95
        return row
    finally:
        try:
            sampler.stop()
            if gen is not None:
                gen.close()
        finally:
            relay.cleanup()


def line(r: dict[str, Any]) -> str:
    ceil = f" / ceiling {r['ceiling_bytes'] / MiB:.0f}" if r["ceiling_bytes"] else ""
    marks = []
    if r["mode"] == "on" and not r["under_ceiling"]:
        marks.append("OVER-CEILING")
    if r["missing"] or r["duplicates"] or r["unexpected"]:
        marks.append("DELIVERY-ERRORS")
    if not r["drained"]:
        marks.append("NOT-DRAINED")
    if r["aborted_at_rss"]:
        marks.append("STOPPED-AT-RSS-LIMIT")
    if r["queue_full_share"] > 0.05:
        marks.append(f"QUEUE-FULL({r['queue_full_share']:.0%})")
    if r["generator_busy"]:
        marks.append("GEN-BUSY")
    if r["slow_disconnects_3008"] or r["lost_connections"]:
        marks.append("DISCONNECTS")
    if not r["server_alive"]:
        marks.append("DIED")
    if r["noisy"]:
        marks.append(noisy_mark(r["cpu_window"]))
    drain = f"{r['drain_s']:.2f} s" if r["drain_s"] is not None else "timeout"
    return (f"  {r['mode']:>3} {r['case']:<11} {fmt_rate(r['offered_per_s']):>6}/s: accepted "
            f"{fmt_rate(r['accepted_per_s'])}/s, refused {fmt_rate(r['refused_per_s'])}/s, held back "
            f"{r['held_back']:,}, RSS peak {r['rss_peak_bytes'] / MiB:.0f} MiB{ceil} (start "
            f"{r['rss_start_bytes'] / MiB:.0f}; kernel send queues {r['kernel_send_queue_peak_bytes'] / MiB:.0f}), "
            f"deliveries {r['deliveries']:,}/{r['expected_deliveries']:,} "
            f"missing {r['missing']} dup {r['duplicates']} unexpected {r['unexpected']}, drain {drain}, "
            f"3008 {r['slow_disconnects_3008']}, relay CPU {r['relay_cpu_pct_flood']:.0f}%, "
            f"gen CPU {r['generator_cpu_pct']:.0f}% (pub {r['publisher_cpu_pct']:.0f}%)"
            + (f"  {' '.join(marks)}" if marks else ""))


def main(argv: list[str] | None = None) -> int:
    ap = bench_parser("relay publisher backpressure under a publish flood", __doc__)
    ap.add_argument("--quick", action="store_true", help="short run, small numbers (under a minute)")
    ap.add_argument("--subscribers", type=int, help="WebSocket subscribers (default 1000; quick 200)")
    ap.add_argument("--workers", type=int, default=2, help="subscriber worker processes (default 2)")
    ap.add_argument("--channels", type=int, default=4, help="channels feed:c0..; subscriber i on i %% channels")
    ap.add_argument("--payload", type=int, default=512, help="bytes of each publication's data (default 512)")
    ap.add_argument("--method", choices=("publish", "broadcast"), default="broadcast",
                    help="broadcast (default): one request publishes to every channel; publish: one channel each")
    ap.add_argument("--conns", type=int, default=32, help="publisher keep-alive HTTP connections (default 32)")
    ap.add_argument("--depth", type=int, default=8, help="requests pipelined per connection at most (default 8)")
    ap.add_argument("--capacity", type=float, help="skip the ramp: capacity in requests/s")
    ap.add_argument("--start-rate", type=float, help="first ramp step, requests/s (default 100; quick 500)")
    ap.add_argument("--factor-step", type=float, default=1.5, help="ramp: rate multiplier per step")
    ap.add_argument("--steps", type=int, default=12, help="ramp: at most this many steps")
    ap.add_argument("--step-duration", type=float, help="ramp step seconds (default 3; quick 1.5)")
    ap.add_argument("--factors", help="flood rates as multiples of capacity, subscribers reading as fast as they "
                                      "can (default 3,5; quick none)")
    ap.add_argument("--duration", type=float, help="flood seconds (default 10; quick 3)")
    ap.add_argument("--queue-limit", type=int, default=32, help="on: backpressure_queue_bytes in MiB (default 32)")
    ap.add_argument("--headroom", type=int, default=96,
                    help="on: backpressure_memory_bytes = idle RSS + this many MiB (the ceiling; default 96)")
    ap.add_argument("--retry-after", type=float, default=1.0, help="backpressure_retry_after (default 1 s)")
    ap.add_argument("--send-buffer", type=int, default=128,
                    help="client_send_buffer in KiB, both runs (default 128; 0: the kernel's autotuning)")
    ap.add_argument("--drain-timeout", type=float, help="seconds to wait for the backlog (default 120; quick 30)")
    ap.add_argument("--rss-abort", type=int, default=6144,
                    help="off: stop the flood early when relay's RSS passes this many MiB (default 6144)")
    ap.add_argument("--rcvbuf", type=int, default=64,
                    help="SO_RCVBUF of each subscriber socket in KiB (default 64; 0: the kernel's autotuning)")
    ap.add_argument("--mss", type=int, default=8948,
                    help="TCP_MAXSEG of each subscriber socket (default 8948, a jumbo-frame network; 0: loopback's)")
    ap.add_argument("--stall-factors",
                    help="more floods (multiples of capacity) during which the subscribers stop reading, catching "
                         "up after it (default 5; quick 5); empty: none")
    ap.add_argument("--nice", type=int, default=5, help="niceness of the subscriber workers (default 5)")
    args = ap.parse_args(argv)
    q = args.quick
    args.subscribers = args.subscribers or (200 if q else 1000)
    args.start_rate = args.start_rate or (500.0 if q else 100.0)
    args.step_duration = args.step_duration or (1.5 if q else 3.0)
    args.duration = args.duration or (3.0 if q else 10.0)
    args.drain_timeout = args.drain_timeout or (30.0 if q else 120.0)
    args.workers = max(1, min(args.workers, args.subscribers))
    args.factors = [float(x) for x in (("" if q else "3,5") if args.factors is None else args.factors).split(",") if x]
    args.stall_factors = [float(x) for x in ("5" if args.stall_factors is None else args.stall_factors).split(",")
                          if x]

    pin_to(GENERATOR_CPU)
    raise_nofile()
    print(f"backpressure: relay on CPU 0, {args.subscribers} subscribers on {args.channels} channels and the "
          f"publisher ({args.conns} HTTP connections, {args.method}, {args.payload} B) on CPU {GENERATOR_CPU}"
          ,
          flush=True)
    probe = probe_capacity(args)
    cap = probe["capacity_per_s"]
    ceiling = probe["idle_rss_bytes"] + args.headroom * MiB
    print(f"  capacity {fmt_rate(cap)} {args.method}/s ({probe['source']}); on: backpressure_queue_bytes "
          f"{args.queue_limit} MiB, backpressure_memory_bytes {ceiling / MiB:.0f} MiB (idle "
          f"{probe['idle_rss_bytes'] / MiB:.0f} + {args.headroom})", flush=True)
    rows: list[dict[str, Any]] = []
    printed: list[str] = []
    cases = [(f, False) for f in args.factors] + [(f, True) for f in args.stall_factors]
    for factor, stall in cases:
        for mode in ("on", "off"):
            r = flood_run(mode, factor, stall, cap * factor, ceiling, args)
            rows.append(r)
            printed.append(line(r))
            print(printed[-1], flush=True)
    summary: dict[str, Any] = {"capacity_per_s": cap, "ceiling_bytes": ceiling,
                               "queue_limit_bytes": args.queue_limit * MiB, "cases": {}}
    print("comparison (on vs off, same flood):")
    for factor, stall in cases:
        on = next(r for r in rows if (r["factor"], r["stall"], r["mode"]) == (factor, stall, "on"))
        off = next(r for r in rows if (r["factor"], r["stall"], r["mode"]) == (factor, stall, "off"))
        s = {"on_peak_rss_bytes": on["rss_peak_bytes"], "off_peak_rss_bytes": off["rss_peak_bytes"],
             "on_under_ceiling": on["under_ceiling"], "off_over_ceiling_by_bytes": off["rss_peak_bytes"] - ceiling,
             "on_accepted_per_s": on["accepted_per_s"], "off_accepted_per_s": off["accepted_per_s"],
             "on_refused_per_s": on["refused_per_s"], "on_missing": on["missing"], "off_missing": off["missing"],
             "on_duplicates": on["duplicates"], "on_unexpected": on["unexpected"],
             "on_drain_s": on["drain_s"], "off_drain_s": off["drain_s"]}
        summary["cases"][on["case"]] = s
        txt = (f"  {on['case']}: peak RSS on {on['rss_peak_bytes'] / MiB:.0f} MiB "
               f"({'under' if on['under_ceiling'] else 'OVER'} the {ceiling / MiB:.0f} MiB ceiling) vs off "
               f"{off['rss_peak_bytes'] / MiB:.0f} MiB; accepted/s on {fmt_rate(on['accepted_per_s'])} vs off "
               f"{fmt_rate(off['accepted_per_s'])}; drain on "
               f"{on['drain_s'] if on['drain_s'] is None else round(on['drain_s'], 2)} s vs off "
               f"{off['drain_s'] if off['drain_s'] is None else round(off['drain_s'], 2)} s; missing on "
               f"{on['missing']} / off {off['missing']}")
        printed.append(txt)
        print(txt, flush=True)
    summary["all_on_under_ceiling"] = all(r["under_ceiling"] for r in rows if r["mode"] == "on")
    summary["missing_total"] = sum(r["missing"] for r in rows)
    summary["duplicates_total"] = sum(r["duplicates"] for r in rows)
    summary["unexpected_total"] = sum(r["unexpected"] for r in rows)
    definitions = {
        "accepted": "server API requests answered 200 (broadcast: each is publications_per_request publications)",
        "refused": "requests answered 429 (the connection then waits Retry-After seconds)",
        "held_back": "publications that fell due while their connection waited out a Retry-After: not sent",
        "queue_full": "publications not sent because their connection already had --depth requests unanswered",
        "missing": "(accepted publication, subscriber of its channel) pairs never delivered",
        "duplicates": "deliveries beyond the first of the same publication to the same subscriber",
        "unexpected": "distinct publications delivered although not accepted (refused or never sent)",
        "drain_s": "seconds from the flood's last request until every subscriber had every accepted publication",
        "rss_peak_bytes": "highest relay RSS (/proc statm, every 100 ms) from the flood's start to the drain's end",
        "ceiling_bytes": "backpressure_memory_bytes of the on run: idle RSS with the subscribers + --headroom",
        "capacity_per_s": "highest ramp step (backpressure off) whose subscribers ended < 250 ms behind",
    }
    save_result("backpressure", {
        "kind": "backpressure", "machine": machine_description(), "args": vars(args), "definitions": definitions,
        "capacity": probe, "results": rows, "summary": summary, "printed": printed})
    return 0


if __name__ == "__main__":
    sys.exit(main())
