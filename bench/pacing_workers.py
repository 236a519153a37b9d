"""pacing.py's generator worker processes: the subscribers of the big channel, and the 1:1 chats.

Every client is ``wsclient.py``'s minimal hand-written client: the fixed upgrade request, then ``connect`` +
``subscribe`` in one frame; it answers relay's ``{}`` pings. A subscriber worker binds its sockets to its own
source address (its own ephemeral ports) and records the first arrival of each broadcast and any repeat; the
chat worker (run at nice -10) publishes stamped messages through the members' connections on an absolute
schedule and records the other member's receive time. Connections are opened at a given rate, at most 200
handshakes under way; then the worker's garbage collection is switched off so it cannot delay a read.
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

import orjson

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import run_worker  # noqa: E402
from scenarios_common import sleep_until_ns  # noqa: E402
from workers import serve_pipe  # noqa: E402
from wsclient import (PONG, abort, abort_all, client_frame, closed_by_server, failure_kind, server_frames,  # noqa: E402
                      take_upgrade, upgrade_request)

__all__ = ["CHANNEL", "CHAT", "subscriber_main", "chat_main"]

CHANNEL = "sale:all"
CHAT = "chat:p{}"
WS_PATH = "/connection/websocket"


class _State:
    """A worker's clients and what they received."""

    def __init__(self) -> None:
        self.pending = 0
        self.done = asyncio.Event()
        self.ok = 0
        self.lost = 0  # subscribed clients whose connection closed afterwards
        self.failures: dict[str, int] = {}
        self.failure_sample = ""
        # subscribers: broadcast tag -> first-arrival offsets (ns); tag -> duplicate arrivals
        self.offsets: dict[bytes, list[int]] = {}
        self.dups: dict[bytes, int] = {}
        # chats: (stamp ns, latency ns) of every message received by the other member; sent stamps; errors
        self.chat_samples: list[tuple[int, int]] = []
        self.chat_sent: list[int] = []
        self.chat_errors = 0
        self.chat_error_sample = ""
        self.chat_late_max_ns = 0
        self.echoes = 0

    def finished(self) -> None:
        self.pending -= 1
        if self.pending == 0:
            self.done.set()


class _Client(asyncio.Protocol):
    """One client: upgrade, ``connect`` + ``subscribe`` in one frame, then pings answered and pushes read.

    A subscriber (``role`` empty) records the first arrival of each broadcast tag (``B=<tag>;T=<ns>;``) and
    counts repeats; a chat member (``role`` b"a" or b"b") records the other member's messages
    (``C=<ns>;<role>;``) and counts its publish replies' errors."""

    __slots__ = ("st", "request", "commands", "role", "transport", "upgraded", "subscribed", "done", "buf",
                 "seen", "settled")

    def __init__(self, st: _State, request: bytes, commands: bytes, role: bytes = b"") -> None:
        self.st, self.request, self.commands, self.role = st, request, commands, role
        self.transport: asyncio.Transport | None = None
        self.upgraded = self.subscribed = self.done = False
        self.buf = b""
        self.seen: dict[bytes, int] | None = None
        self.settled: asyncio.Future | None = None  # set by ``_open`` while it waits for the handshake

    def _settle(self) -> None:
        if self.settled is not None and not self.settled.done():
            self.settled.set_result(None)

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport
        transport.write(self.request)

    def failed(self, kind: str, detail: str = "") -> None:
        if self.done:
            return
        self.done = True
        self._settle()
        st = self.st
        st.failures[kind] = st.failures.get(kind, 0) + 1
        st.failure_sample = st.failure_sample or f"{kind}: {detail}"[:200]
        st.finished()
        if self.transport is not None:
            abort(self.transport)

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        buf = self.buf + data if self.buf else data
        if not self.upgraded:
            buf = take_upgrade(self, buf)
            if buf is None:
                return
            self.transport.write(self.commands)  # type: ignore[union-attr]
        frames, self.buf = server_frames(buf)
        for opcode, payload in frames:
            if opcode != 1:
                if closed_by_server(self, opcode, payload):
                    return
                if opcode == 9:
                    self.transport.write(client_frame(payload, 10))  # type: ignore[union-attr]
                continue
            for line in payload.split(b"\n"):
                if line.startswith(b'{"push"'):
                    self._push(line, now)
                elif line == b"{}":
                    self.transport.write(PONG)  # type: ignore[union-attr]
                elif line.startswith(b'{"id":'):
                    self._reply(line)

    def _push(self, line: bytes, now: int) -> None:
        st = self.st
        i = line.find(b"B=")
        if i >= 0:
            j = line.find(b";", i)
            k = line.find(b"T=", j)
            tag = line[i + 2:j]
            seen = self.seen
            if seen is None:
                seen = self.seen = {}
            if tag in seen:
                seen[tag] += 1
                st.dups[tag] = st.dups.get(tag, 0) + 1
                return
            seen[tag] = 1
            offs = st.offsets.get(tag)
            if offs is None:
                offs = st.offsets[tag] = []
            offs.append(now - int(line[k + 2:line.find(b";", k)]))
            return
        i = line.find(b"C=")
        if i >= 0:
            j = line.find(b";", i)
            if line[j + 1:j + 2] == self.role:
                st.echoes += 1  # its own message coming back
                return
            stamp = int(line[i + 2:j])
            st.chat_samples.append((stamp, now - stamp))

    def _reply(self, line: bytes) -> None:
        if b'"error"' in line:
            if not self.subscribed:
                self.failed("error", line[:200].decode(errors="replace"))
            else:
                self.st.chat_errors += 1
                self.st.chat_error_sample = self.st.chat_error_sample or line[:200].decode(errors="replace")
            return
        if not self.subscribed and line.startswith(b'{"id":2,'):
            self.subscribed = self.done = True
            self._settle()
            self.st.ok += 1
            self.st.finished()

    def connection_lost(self, exc) -> None:
        if not self.done:
            self.failed(failure_kind(exc) if exc else "closed_before_reply", repr(exc))
        elif self.subscribed:
            self.st.lost += 1


def _commands(token: str, channel: str) -> bytes:
    return client_frame(orjson.dumps({"id": 1, "connect": {"token": token}}) + b"\n"
                        + orjson.dumps({"id": 2, "subscribe": {"channel": channel}}))


#: Linux: bind() to an address without taking a port; the port is chosen at connect() by the whole 4-tuple.
#: Without it every bind(source, 0) searches for a port no other socket on that address holds, which slows
#: down as the worker's connections fill the ephemeral range (the ramp fell from 1,800/s to under 900/s)
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


def _socket(source: str | None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    if source:
        try:
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        except OSError:
            pass  # not Linux: bind takes a port, as before
        sock.bind((source, 0))
    return sock


async def _open(st: _State, clients: list[_Client], host: str, port: int, source: str | None, rate: float,
                timeout: float) -> float:
    """Connect every client, ``rate`` per second with at most 200 handshakes under way; seconds it took."""
    loop = asyncio.get_running_loop()
    st.pending = len(clients)
    st.done.clear()
    gate = asyncio.Semaphore(200)
    t0 = time.monotonic()

    async def one(c: _Client) -> None:
        async with gate:
            c.settled = loop.create_future()
            sock = None
            try:
                sock = _socket(source)
                await loop.sock_connect(sock, (host, port))
                await loop.create_connection(lambda: c, sock=sock)
            except OSError as e:
                if sock is not None:
                    sock.close()
                c.failed(failure_kind(e), f"{type(e).__name__}: {e}")
                return
            await c.settled  # subscribed or failed: the next handshake may start

    tasks = []
    for i, c in enumerate(clients):
        due = t0 + i / rate
        if due > time.monotonic():
            await asyncio.sleep(due - time.monotonic())
        tasks.append(loop.create_task(one(c)))
    if st.pending:
        try:
            await asyncio.wait_for(st.done.wait(), timeout)
        except TimeoutError:
            for c in clients:
                c.failed("timeout")
    await asyncio.gather(*tasks, return_exceptions=True)
    return time.monotonic() - t0


def _no_gc_pauses() -> None:
    """A generator worker's own garbage collection must not delay its reads (a full collection over thousands
    of clients takes 100+ ms): once its clients are open, their objects are frozen and collection is off."""
    gc.collect()
    gc.freeze()
    gc.disable()


def _open_report(st: _State, clients: list[_Client], took: float) -> tuple:
    return ("opened", {"clients": len(clients), "ok": st.ok, "failures": st.failures,
                       "failure_sample": st.failure_sample, "took_s": round(took, 2)})


async def _subscriber_worker(pipe: Connection, host: str, port: int, source: str | None, token: str,
                             n: int) -> None:
    st = _State()
    request, commands = upgrade_request(host, port, WS_PATH), _commands(token, CHANNEL)
    clients = [_Client(st, request, commands) for _ in range(n)]
    pipe.send(("ready",))

    async def handle(cmd: str, *args: Any) -> tuple:
        if cmd == "open":
            rate, timeout = args
            took = await _open(st, clients, host, port, source, rate, timeout)
            _no_gc_pauses()
            return _open_report(st, clients, took)
        if cmd == "count":  # subscribers that have the broadcast ``tag`` so far
            return ("count", len(st.offsets.get(args[0].encode(), ())))
        if cmd == "report":
            tag = args[0].encode()
            offs = st.offsets.get(tag, [])
            once = sum(1 for c in clients if c.seen is not None and c.seen.get(tag) == 1)
            more = sum(1 for c in clients if c.seen is not None and c.seen.get(tag, 0) > 1)
            return ("report", {"offsets": offs, "once": once, "more": more, "dups": st.dups.get(tag, 0),
                               "never": st.ok - once - more, "lost": st.lost})
        return ("error", f"unknown command {cmd!r}")

    await serve_pipe_and_close(pipe, handle, clients)


async def _chat_worker(pipe: Connection, host: str, port: int, token: str, chats: int) -> None:
    st = _State()
    request = upgrade_request(host, port, WS_PATH)
    members = [[_Client(st, request, _commands(token, CHAT.format(k)), role) for role in (b"a", b"b")]
               for k in range(chats)]
    clients = [c for pair in members for c in pair]
    sender: asyncio.Task | None = None
    pipe.send(("ready",))

    async def send(rate: float) -> None:
        t0 = time.time_ns()
        i = 0
        while True:
            due = t0 + int(i * 1e9 / rate)
            await sleep_until_ns(due)
            now = time.time_ns()
            st.chat_late_max_ns = max(st.chat_late_max_ns, now - due)
            k = i % chats
            c = members[k][(i // chats) % 2]
            if c.transport is not None and not c.transport.is_closing():
                msg = {"id": 100 + i, "publish": {"channel": CHAT.format(k), "data": f"C={now};{c.role.decode()};"}}
                c.transport.write(client_frame(orjson.dumps(msg)))
                st.chat_sent.append(now)
            i += 1

    async def handle(cmd: str, *args: Any) -> tuple:
        nonlocal sender
        if cmd == "open":
            rate, timeout = args
            took = await _open(st, clients, host, port, None, rate, timeout)
            _no_gc_pauses()
            return _open_report(st, clients, took)
        if cmd == "start":
            sender = asyncio.get_running_loop().create_task(send(args[0]))
            return ("started",)
        if cmd == "stop":
            if sender is not None:
                sender.cancel()
            await asyncio.sleep(1.0)  # the last messages arrive
            return ("samples", {"samples": st.chat_samples, "sent": st.chat_sent, "errors": st.chat_errors,
                                "error_sample": st.chat_error_sample, "late_max_ms": st.chat_late_max_ns / 1e6,
                                "echoes": st.echoes, "lost": st.lost})
        return ("error", f"unknown command {cmd!r}")

    await serve_pipe_and_close(pipe, handle, clients)


async def serve_pipe_and_close(pipe: Connection, handle, clients: list[_Client]) -> None:
    await serve_pipe(pipe, handle)
    abort_all(clients)


def subscriber_main(pipe: Connection, *args: Any) -> None:
    run_worker(_subscriber_worker, pipe, *args)


def chat_main(pipe: Connection, *args: Any) -> None:
    try:  # the chats' reads must not wait behind a subscriber worker busy with the broadcast
        os.setpriority(os.PRIO_PROCESS, 0, -10)
    except OSError:
        pass
    run_worker(_chat_worker, pipe, *args)
