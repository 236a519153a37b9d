"""connrate.py's generator worker process: new connections at a fixed rate, each one counted once.

A worker starts a connection every 1/rate s on an absolute schedule (``step``), with a connect frame per
connection made before the step (``prepare``: for relay its own user and JWT); a connection is the HTTP
upgrade and, for relay, its connect command, until relay's reply (``wsclient.py``'s minimal client, so the
generator spends little per connection). Attempts scheduled inside the window are counted (successes,
failures by kind, connect time); every connection stays open until ``close`` drops them all with RST.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RELAY_SECRET, run_worker  # noqa: E402
from histogram import Histogram  # noqa: E402
from scenarios_common import sleep_until_ns  # noqa: E402
from workers import serve_pipe  # noqa: E402
from wsclient import (abort, client_frame, closed_by_server, failure_kind, server_frames, take_upgrade,  # noqa: E402
                      upgrade_request)

__all__ = ["worker_main"]


class _State:
    def __init__(self) -> None:
        self.transports: list[asyncio.Transport] = []
        self.pending: set[_Attempt] = set()
        self.reset(0, 0)

    def reset(self, ws: int, we: int) -> None:
        self.ws, self.we = ws, we
        self.attempts = self.finished = 0                 # every attempt of the step
        self.attempts_in_window = self.ok_in_window = 0   # attempts scheduled in the window
        self.completed_in_window = 0                      # successful connects completed in the window
        self.failures: dict[str, int] = {}
        self.failure_sample = ""
        self.max_late_ns = 0
        self.hist = Histogram()

    def fail(self, a: _Attempt, kind: str, detail: str = "") -> None:
        if a.in_window:
            self.failures[kind] = self.failures.get(kind, 0) + 1
            self.failure_sample = self.failure_sample or (detail or kind)[:200]


class _Attempt(asyncio.Protocol):
    """One connection attempt: HTTP upgrade, then (relay) the connect command; counts itself once.

    A hand-written minimal client (fixed request bytes, frames masked with a zero key, a
    connect frame built before the step) so the generator spends little per connection.
    """

    __slots__ = ("st", "t0", "in_window", "request", "connect", "transport", "upgraded", "buf", "done", "task")

    def __init__(self, st: _State, t0: int, in_window: bool, request: bytes, connect: bytes | None) -> None:
        self.st, self.t0, self.in_window = st, t0, in_window
        self.request, self.connect = request, connect
        self.transport: asyncio.Transport | None = None
        self.upgraded = False
        self.buf = b""
        self.done = False
        self.task: asyncio.Future | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport
        transport.write(self.request)

    def _ok(self, now: int) -> None:
        st = self.st
        self.done = True
        st.pending.discard(self)
        st.finished += 1
        st.transports.append(self.transport)  # type: ignore[arg-type]
        if self.in_window:
            st.ok_in_window += 1
            st.hist.add(now - self.t0)
        if st.ws <= now < st.we:
            st.completed_in_window += 1

    def failed(self, kind: str, detail: str = "") -> None:
        if self.done:
            return
        self.done = True
        st = self.st
        st.pending.discard(self)
        st.finished += 1
        st.fail(self, kind, detail)
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.transport is not None:
            abort(self.transport)

    def data_received(self, data: bytes) -> None:
        if self.done:
            return
        now = time.time_ns()
        buf = self.buf + data
        if not self.upgraded:
            buf = take_upgrade(self, buf)
            if buf is None:
                return
            if self.connect is None:  # the picows peer: the handshake is the whole connection
                self.buf = b""
                self._ok(now)
                return
            self.transport.write(self.connect)  # type: ignore[union-attr]
        frames, self.buf = server_frames(buf)
        for opcode, payload in frames:
            if closed_by_server(self, opcode, payload):
                return
            if opcode == 1:
                if payload.startswith(b'{"id":1,"connect"'):
                    self._ok(now)
                    return
                if b'"error"' in payload:
                    code = payload.split(b'"code":', 1)[1].split(b",", 1)[0].split(b"}", 1)[0] \
                        if b'"code":' in payload else b"?"
                    self.failed(f"connect_error_{code.decode(errors='replace')}",
                                payload[:200].decode(errors="replace"))
                    return

    def connection_lost(self, exc) -> None:
        if not self.done:
            self.failed(failure_kind(exc) if exc else "closed_before_reply", repr(exc))


def _start(loop, st: _State, host: str, port: int, scheduled: int, request: bytes, connect: bytes | None) -> None:
    t0 = time.time_ns()
    in_window = st.ws <= scheduled < st.we
    st.attempts += 1
    if in_window:
        st.attempts_in_window += 1
        if t0 - scheduled > st.max_late_ns:
            st.max_late_ns = t0 - scheduled
    a = _Attempt(st, t0, in_window, request, connect)
    st.pending.add(a)
    a.task = task = loop.create_task(loop.create_connection(lambda: a, host, port))

    def connected(f: asyncio.Future) -> None:
        if f.cancelled():
            return
        e = f.exception()
        if e is not None:
            a.failed(failure_kind(e), f"{type(e).__name__}: {e}")

    task.add_done_callback(connected)


async def _schedule(st: _State, host: str, port: int, request: bytes, connects: list[bytes | None], rate: float,
                    first_ns: int, we: int, timeout: float) -> None:
    """Start a connection every 1/rate s from ``first_ns`` until ``we``; time attempts out after ``timeout``."""
    loop = asyncio.get_running_loop()
    time_ns = time.time_ns
    await sleep_until_ns(first_ns)
    interval = 1e9 / rate
    nxt = float(first_ns)
    k = 0
    timeout_ns = int(timeout * 1e9)
    sweep = time_ns() + 100_000_000
    while nxt < we or st.pending:
        now = time_ns()
        while nxt <= now and nxt < we:
            _start(loop, st, host, port, int(nxt), request, connects[k % len(connects)])
            k += 1
            nxt += interval
        if now >= sweep:  # time out attempts that took too long (every 100 ms)
            sweep = now + 100_000_000
            for a in [a for a in st.pending if now - a.t0 > timeout_ns]:
                a.failed("timeout")
        wake = min(nxt if nxt < we else float("inf"), sweep)
        await asyncio.sleep(max(0.001, (wake - time_ns()) / 1e9))  # >= 1 ms: uvloop's timer resolution


def _close_all(st: _State) -> int:
    n = 0
    for t in st.transports:
        if not t.is_closing():
            n += 1
            abort(t)
    st.transports = []
    return n


async def _worker_async(pipe: Connection, url: str, kind: str, worker: int) -> None:
    from urllib.parse import urlsplit

    from relay.auth import make_connect_token

    u = urlsplit(url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    request = upgrade_request(host, port, u.path or "/")
    st = _State()
    connects: list[bytes | None] = []
    task: asyncio.Future | None = None
    pipe.send(("ready",))

    async def handle(cmd: str, *args: Any) -> tuple:
        nonlocal task, connects
        if cmd == "prepare":  # a connect frame per connection (its own user and JWT), made before the window
            (n,) = args
            if kind == "relay":
                while len(connects) < n:
                    token = make_connect_token(f"c{worker}-{len(connects)}", RELAY_SECRET, ttl=None)
                    connects.append(client_frame(b'{"id":1,"connect":{"token":"%s"}}' % token.encode()))
            else:
                connects = connects or [None]
            return ("ok",)
        if cmd == "step":
            rate, first_ns, ws, we, timeout = args
            st.reset(ws, we)
            task = asyncio.ensure_future(_schedule(st, host, port, request, connects, rate, first_ns, we, timeout))
            return ("ok",)
        if cmd == "count":
            return ("count", st.attempts, st.finished, task is None or task.done())
        if cmd == "report":
            return ("report", {
                "attempts": st.attempts, "attempts_in_window": st.attempts_in_window,
                "ok_in_window": st.ok_in_window, "completed_in_window": st.completed_in_window,
                "failures": dict(st.failures), "failure_sample": st.failure_sample,
                "max_late_ns": st.max_late_ns, "open": sum(1 for t in st.transports if not t.is_closing()),
                "hist": st.hist.to_sparse(),
            })
        if cmd == "close":
            if task is not None:
                task.cancel()
            for a in list(st.pending):
                a.failed("cancelled")
            n = _close_all(st)
            await asyncio.sleep(0.2)
            return ("closed", n)
        return ("error", f"unknown command {cmd!r}")

    await serve_pipe(pipe, handle)
    _close_all(st)


def worker_main(pipe: Connection, url: str, kind: str, worker: int) -> None:
    run_worker(_worker_async, pipe, url, kind, worker)
