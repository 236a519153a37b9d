"""lanes.py's generator worker processes: the SDK-like clients, and the publisher of the flood and the chats.

* The clients (``clients_worker``, picows framing): client i subscribes to the bulk channel ``prices:all``
  and its own ``chat:<i>``, through relay or (a slow client) through the bandwidth-limited proxy. Like an SDK,
  it resubscribes at once after a 2500 unsubscribe, retries a 111 after 0.5-1 s, and reconnects 0.5-1 s
  after being closed, recovering its chat from the last offset and epoch it saw. Chats are counted by stamp
  (``T=<ns>;K=<i>;S=<seq>;``: live, recovered, duplicate; latency), bulk pushes by stamp and by receive time,
  events (closes by code, 2500s, 111s, reconnects) per class, fast and slow.
* The publisher (``publisher_worker``, one connection): on an absolute schedule of ``tick_hz`` frames/s, the
  bulk publications to ``prices:all`` and the chats round-robin over every ``chat:<i>``, from the start of
  the warm-up to the end of the window; it counts what it published inside the window, per chat channel.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import run_worker  # noqa: E402
from histogram import Histogram  # noqa: E402
from scenarios_common import sleep_until_ns  # noqa: E402
from workers import answer_close, disconnect_all, serve_pipe  # noqa: E402

__all__ = ["BULK_CHANNEL", "CHAT_CHANNEL", "FAST", "SLOW", "RETRY_BACKOFF", "clients_worker", "publisher_worker"]

BULK_CHANNEL = "prices:all"
CHAT_CHANNEL = "chat:{}"
FAST, SLOW = 0, 1
BULK_MARK = b'{"push":{"channel":"prices:all","pub":'
RETRY_BACKOFF = (0.5, 1.0)  #: seconds before a reconnect or a retried subscribe (uniform), like an SDK's minimum


# ------------------------------------------------------------------------------------------------
# client worker process
# ------------------------------------------------------------------------------------------------

class _St:
    """One worker's counters, per class (FAST, SLOW)."""

    def __init__(self) -> None:
        self.ws = self.we = 0
        self.closing = False
        self.chat_unique = [0, 0]      # chats stamped in the window, first arrival (live or recovered)
        self.chat_live = [0, 0]
        self.chat_recovered = [0, 0]
        self.chat_dups = [0, 0]
        self.chat_recv_win = [0, 0]    # chat deliveries received in the window (any stamp): CPU accounting
        self.bulk_recv_win = [0, 0]    # bulk deliveries received in the window
        self.bulk_stamp_win = [0, 0]   # bulk deliveries stamped in the window
        self.total = 0                 # every delivery since the start: the drain's progress
        self.h_live = [Histogram(), Histogram()]
        self.h_recovered = [Histogram(), Histogram()]
        self.h_bulk = [Histogram(), Histogram()]  # one sample per frame (its first stamp), weighted
        self.events: list[dict[str, int]] = [{}, {}]
        self.samples: list[str] = []
        self.per_channel: dict[int, int] = {}  # client index -> unique chats stamped in the window

    def event(self, k: int, name: str) -> None:
        ev = self.events[k]
        ev[name] = ev.get(name, 0) + 1

    def sample(self, s: str) -> None:
        if len(self.samples) < 5:
            self.samples.append(s[:300])

    def bulk(self, k: int, stamps: list[bytes], now: int) -> None:
        n = len(stamps)
        self.total += n
        ws, we = self.ws, self.we
        if ws <= now < we:
            self.bulk_recv_win[k] += n
        first, last = int(stamps[0]), int(stamps[-1])
        if first >= ws and last < we:
            self.bulk_stamp_win[k] += n
            self.h_bulk[k].add(now - first, n)
        elif last >= ws and first < we:
            self.bulk_stamp_win[k] += sum(1 for s in stamps if ws <= int(s) < we)

    def chat(self, k: int, client: Any, stamp: int, seq: int, now: int, recovered: bool) -> None:
        self.total += 1
        if self.ws <= now < self.we:
            self.chat_recv_win[k] += 1
        if seq in client.seen:
            self.chat_dups[k] += 1
            return
        client.seen.add(seq)
        if not self.ws <= stamp < self.we:
            return
        self.chat_unique[k] += 1
        self.per_channel[client.idx] = self.per_channel.get(client.idx, 0) + 1
        if recovered:
            self.chat_recovered[k] += 1
            self.h_recovered[k].add(now - stamp)
        else:
            self.chat_live[k] += 1
            self.h_live[k].add(now - stamp)

    def report(self) -> dict[str, Any]:
        return {"chat_unique": self.chat_unique, "chat_live": self.chat_live, "chat_recovered": self.chat_recovered,
                "chat_dups": self.chat_dups, "chat_recv_win": self.chat_recv_win,
                "bulk_recv_win": self.bulk_recv_win, "bulk_stamp_win": self.bulk_stamp_win,
                "h_live": [h.to_sparse() for h in self.h_live],
                "h_recovered": [h.to_sparse() for h in self.h_recovered],
                "h_bulk": [h.to_sparse() for h in self.h_bulk],
                "events": self.events, "samples": self.samples, "per_channel": self.per_channel}


def _client_classes():
    import orjson
    from picows import WSListener, WSMsgType, ws_connect

    TEXT, CLOSE = WSMsgType.TEXT, WSMsgType.CLOSE
    time_ns = time.time_ns
    find_bulk = re.compile(rb"B=(\d+);").findall
    chat_re = re.compile(r"T=(\d+);K=(\d+);S=(\d+);").match
    loop = asyncio.get_running_loop()

    class Conn(WSListener):
        """One WebSocket connection of a :class:`Client` (a reconnect makes a new one)."""

        def __init__(self, client: Client) -> None:
            super().__init__()
            self.client = client
            self.transport = None
            self.close_code: int | None = None

        def on_ws_connected(self, transport) -> None:
            self.transport = transport
            self.client.on_connected(self)

        def on_ws_frame(self, transport, frame) -> None:
            if frame.msg_type is not TEXT:
                if frame.msg_type is CLOSE:
                    self.close_code = answer_close(transport, frame)
                return
            now = time_ns()
            data = frame.get_payload_as_bytes()
            c = self.client
            nb = data.count(BULK_MARK)
            if nb:
                c.st.bulk(c.k, find_bulk(data), now)
            if data.count(b"\n") + 1 != nb:  # something else than bulk pushes: look at each line
                for line in data.split(b"\n"):
                    if not line or line.startswith(BULK_MARK):
                        continue
                    if line == b"{}":
                        transport.send(TEXT, b"{}")
                        continue
                    c.on_message(self, orjson.loads(line), now)

        def on_ws_disconnected(self, transport) -> None:
            self.client.on_disconnected(self)

    class Client:
        """An SDK-like client: connects, subscribes to the bulk channel and its chat, resubscribes after
        2500, retries a 111 after a backoff, reconnects and recovers its chat after being closed."""

        def __init__(self, st: _St, idx: int, slow: bool, url: str, token: str) -> None:
            self.st, self.idx, self.k, self.url, self.token = st, idx, SLOW if slow else FAST, url, token
            self.chat_ch = CHAT_CHANNEL.format(idx)
            self.offset = 0
            self.epoch: str | None = None
            self.seen: set[int] = set()
            self.conn: Conn | None = None
            self.next_id = 1
            self.pending: dict[int, tuple] = {}
            self.subscribed: set[str] = set()
            self.ready = loop.create_future()

        async def connect(self) -> None:
            try:
                await ws_connect(lambda: Conn(self), self.url, enable_auto_ping=False,
                                 websocket_handshake_timeout=30, read_buffer_init_size=16384)
            except Exception as e:
                self.st.event(self.k, "connect_failed")
                self.st.sample(f"connect: {type(e).__name__}: {e}")
                if not self.ready.done():
                    self.ready.set_exception(RuntimeError(f"connect failed: {e}"))
                elif not self.st.closing:
                    self.reconnect_later()

        def reconnect_later(self) -> None:
            self.st.event(self.k, "reconnects")
            loop.call_later(random.uniform(*RETRY_BACKOFF), lambda: asyncio.ensure_future(self.connect()))

        def send(self, conn: Conn, cmd: dict[str, Any], what: tuple) -> None:
            i = self.next_id
            self.next_id += 1
            self.pending[i] = what
            conn.transport.send(TEXT, orjson.dumps({"id": i, **cmd}))

        def on_connected(self, conn: Conn) -> None:
            self.conn = conn
            self.subscribed.clear()
            self.pending.clear()
            self.send(conn, {"connect": {"token": self.token}}, ("connect",))

        def subscribe(self, conn: Conn, ch: str) -> None:
            if conn is not self.conn or ch in self.subscribed or self.st.closing:
                return
            if any(w[0] == "sub" and w[1] == ch for w in self.pending.values()):
                return  # one subscribe in flight per channel
            params: dict[str, Any] = {"channel": ch}
            recovering = ch == self.chat_ch and self.epoch is not None
            if recovering:
                params.update(recover=True, offset=self.offset, epoch=self.epoch)
            self.send(conn, {"subscribe": params}, ("sub", ch, recovering))

        def on_message(self, conn: Conn, msg: dict[str, Any], now: int) -> None:
            st, k = self.st, self.k
            push = msg.get("push")
            if push is not None:
                ch = push.get("channel")
                if "pub" in push:
                    if ch == self.chat_ch:
                        self.chat(push["pub"], now, False)
                    else:  # a bulk push the fast path did not recognise
                        st.event(k, "other_pushes")
                elif "unsubscribe" in push:
                    code = push["unsubscribe"].get("code")
                    st.event(k, f"unsub_{code}_{'bulk' if ch == BULK_CHANNEL else 'chat'}")
                    self.subscribed.discard(ch)
                    if code == 2500 or (isinstance(code, int) and 2500 <= code < 3000):
                        self.subscribe(conn, ch)  # the SDK resubscribes at once (and recovers a chat)
                return
            what = self.pending.pop(msg.get("id"), None)
            if what is None:
                return
            err = msg.get("error")
            if err is not None:
                code = err.get("code")
                if what[0] == "connect":
                    st.event(k, f"connect_error_{code}")
                    st.sample(f"connect error: {err}")
                    conn.transport.disconnect()
                elif code == 111:
                    st.event(k, f"err_111_{'bulk' if what[1] == BULK_CHANNEL else 'chat'}")
                    loop.call_later(random.uniform(*RETRY_BACKOFF), self.subscribe, conn, what[1])
                else:
                    st.event(k, f"sub_error_{code}")
                    st.sample(f"subscribe {what[1]}: {err}")
                return
            if what[0] == "connect":
                self.subscribe(conn, BULK_CHANNEL)
                self.subscribe(conn, self.chat_ch)
                return
            ch = what[1]
            self.subscribed.add(ch)
            if ch == self.chat_ch:
                reply = msg.get("subscribe") or {}
                for pub in reply.get("publications") or ():
                    self.chat(pub, now, True)
                if what[2]:
                    st.event(k, "recovered" if reply.get("recovered") else "recover_failed")
                if reply.get("epoch"):
                    self.epoch = reply["epoch"]
                off = reply.get("offset")
                if isinstance(off, int) and off > self.offset:
                    self.offset = off
            if len(self.subscribed) == 2 and not self.ready.done():
                self.ready.set_result(None)

        def chat(self, pub: dict[str, Any], now: int, recovered: bool) -> None:
            off = pub.get("offset")
            if isinstance(off, int) and off > self.offset:
                self.offset = off
            m = chat_re(pub.get("data") or "")
            if m is None:
                self.st.event(self.k, "bad_chat")
                return
            self.st.chat(self.k, self, int(m.group(1)), int(m.group(3)), now, recovered)

        def on_disconnected(self, conn: Conn) -> None:
            st = self.st
            if conn is not self.conn:
                if self.conn is None and conn.transport is None:  # never got connected
                    pass
                return
            self.conn = None
            self.subscribed.clear()
            self.pending.clear()
            if st.closing:
                return
            st.event(self.k, f"close_{conn.close_code if conn.close_code is not None else 'none'}")
            if not self.ready.done():
                self.ready.set_exception(RuntimeError(f"closed ({conn.close_code}) before subscribing"))
                return
            self.reconnect_later()

    return Client


async def _clients_async(pipe: Connection, relay_url: str, proxy_url: str, token: str,
                         clients: list[tuple[int, bool]]) -> None:
    Client = _client_classes()
    st = _St()
    objs = [Client(st, i, slow, proxy_url if slow else relay_url, token) for i, slow in clients]
    sem = asyncio.Semaphore(64)
    errors: list[str] = []

    async def one(c) -> None:
        async with sem:
            await c.connect()
            try:
                await asyncio.wait_for(asyncio.shield(c.ready), 60)
            except Exception as e:
                errors.append(f"{c.chat_ch}: {type(e).__name__}: {e}")

    await asyncio.gather(*(one(c) for c in objs))
    pipe.send(("ready", len(objs) - len(errors), errors[:3], len(errors)))

    async def handle(cmd: str, *args: Any) -> tuple:
        if cmd == "window":
            st.ws, st.we = args
            return ("ok",)
        if cmd == "count":
            return ("count", st.chat_unique, st.total)
        if cmd == "report":
            return ("report", st.report())
        if cmd == "close":
            st.closing = True
            await disconnect_all([c.conn for c in objs if c.conn is not None], graceful=True)
            return ("ok",)
        return ("error", cmd)

    await serve_pipe(pipe, handle)


def clients_worker(pipe: Connection, *args: Any) -> None:
    run_worker(_clients_async, pipe, *args)


# ------------------------------------------------------------------------------------------------
# publisher process
# ------------------------------------------------------------------------------------------------

async def _publisher_async(pipe: Connection, url: str, token: str, n_chats: int, chat_rate: float,
                           bulk_rate: float, bulk_size: int, chat_size: int, tick_hz: float) -> None:
    from picows import WSListener, WSMsgType, ws_connect

    TEXT = WSMsgType.TEXT
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    st: dict[str, Any] = {"replies": 0, "errors": 0, "error_sample": ""}

    class Pub(WSListener):
        def on_ws_connected(self, transport) -> None:
            transport.send(TEXT, b'{"id":1,"connect":{"token":"%s"}}' % token.encode())

        def on_ws_frame(self, transport, frame) -> None:
            if frame.msg_type is not TEXT:
                return
            data = frame.get_payload_as_bytes()
            if not ready.done():
                if not data.startswith(b'{"id":1,'):
                    return
                if b'"error"' in data:
                    ready.set_exception(RuntimeError(data.decode(errors="replace")[:300]))
                else:
                    ready.set_result(None)
                return
            if data == b"{}" or data.startswith(b"{}\n") or b"\n{}" in data:
                transport.send(TEXT, b"{}")
            st["replies"] += data.count(b'"publish":{}')
            if b'"error"' in data:
                st["errors"] += data.count(b'"error"')
                st["error_sample"] = st["error_sample"] or data[:300].decode(errors="replace")

        def on_ws_disconnected(self, transport) -> None:
            st["disconnected"] = True

    transport, _ = await ws_connect(Pub, url, enable_auto_ping=False, websocket_handshake_timeout=30)
    await asyncio.wait_for(ready, 30)
    pipe.send(("ready",))
    time_ns = time.time_ns
    per_channel = [0] * n_chats
    counts = {"chat_sent": 0, "bulk_sent": 0, "chat_in_window": 0, "bulk_in_window": 0, "max_late_ms": 0.0}
    task: asyncio.Task | None = None

    async def publish(start_ns: int, ws: int, we: int) -> None:
        bulk_pad = b"x" * bulk_size
        chat_pad = b"x" * chat_size
        seq = [0] * n_chats
        ch_i = 0
        nid = 2
        interval = 1e9 / tick_hz
        nxt = float(start_ns)
        await sleep_until_ns(start_ns)
        while True:
            now = time_ns()
            if now >= we:
                return
            counts["max_late_ms"] = max(counts["max_late_ms"], (now - nxt) / 1e6)
            elapsed = (now - start_ns) / 1e9
            due_bulk = int(elapsed * bulk_rate) - counts["bulk_sent"]
            due_chat = int(elapsed * chat_rate * n_chats) - counts["chat_sent"]
            in_win = ws <= now < we
            cmds = []
            if due_bulk > 0:
                head = b"B=%d;" % now
                data = head + bulk_pad[:max(0, bulk_size - len(head))]
                for _ in range(due_bulk):
                    cmds.append(b'{"id":%d,"publish":{"channel":"prices:all","data":"%s"}}' % (nid, data))
                    nid += 1
                counts["bulk_sent"] += due_bulk
                if in_win:
                    counts["bulk_in_window"] += due_bulk
            for _ in range(max(0, due_chat)):
                i = ch_i
                ch_i = (ch_i + 1) % n_chats
                seq[i] += 1
                head = b"T=%d;K=%d;S=%d;" % (now, i, seq[i])
                cmds.append(b'{"id":%d,"publish":{"channel":"chat:%d","data":"%s%s"}}'
                            % (nid, i, head, chat_pad[:max(0, chat_size - len(head))]))
                nid += 1
                counts["chat_sent"] += 1
                if in_win:
                    counts["chat_in_window"] += 1
                    per_channel[i] += 1
            for j in range(0, len(cmds), 100):
                transport.send(TEXT, b"\n".join(cmds[j:j + 100]))
            nxt += interval
            await asyncio.sleep(max(0.001, (nxt - time_ns()) / 1e9))

    async def handle(cmd: str, *args: Any) -> tuple:
        nonlocal task
        if cmd == "run":
            task = asyncio.ensure_future(publish(*args))
            return ("ok",)
        if cmd == "report":
            if task is not None and task.done() and task.exception() is not None:
                st["error_sample"] = st["error_sample"] or repr(task.exception())
            return ("report", {**counts, **st, "per_channel": per_channel,
                               "done": task is not None and task.done()})
        return ("error", cmd)

    await serve_pipe(pipe, handle)


def publisher_worker(pipe: Connection, *args: Any) -> None:
    run_worker(_publisher_async, pipe, *args)
