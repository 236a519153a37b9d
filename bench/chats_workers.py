"""chats.py's generator worker process: the two members of each of its chats, publishing and counting.

A member connects (JWT), subscribes to its chat and publishes when its turn comes: the worker sends its share
of the offered rate from its members' connections, round-robin, on an absolute schedule (``step``). Every
push is counted by its ``T=<ns>;<a|b>;`` stamp: to the OTHER member (a delivery, with its latency) or back to
the publisher (the echo), by stamp and by receive time, along with publish replies and errors.
"""

from __future__ import annotations

import asyncio
import os
import re
import resource
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import run_worker  # noqa: E402
from histogram import Histogram  # noqa: E402
from loadgen_workers import PAYLOAD_SIZE  # noqa: E402
from scenarios_common import sleep_until_ns  # noqa: E402
from workers import answer_close, disconnect_all, open_all, serve_pipe  # noqa: E402

__all__ = ["CHANNEL", "worker_main"]

CHANNEL = "chat:c{i}"
_FIND = re.compile(rb"T=(\d+);([ab]);").findall


# ------------------------------------------------------------------------------------------------
# worker process
# ------------------------------------------------------------------------------------------------

class _State:
    """One worker's counters for the current step (reset by ``step``)."""

    def __init__(self) -> None:
        self.lost = 0
        self.closing = False
        self.close_codes: dict[int, int] = {}
        self.pings = 0
        self.reset(0, 0)

    def reset(self, ws: int, we: int) -> None:
        self.ws, self.we, self.mid = ws, we, ws + (we - ws) // 2
        self.sent = self.pub_in_window = 0
        self.max_late_ns = 0
        self.other_in_window = self.other_recv_in_window = 0   # to the other member: by stamp / by receive time
        self.echo_in_window = self.echo_recv_in_window = 0     # back to the publisher
        self.total = 0
        self.frames_in_window = 0
        self.replies = self.errors = 0
        self.error_sample = ""
        self.hist = Histogram()
        self.hist_first = Histogram()
        self.hist_second = Histogram()


def _member_class():
    import orjson
    from picows import WSListener, WSMsgType

    TEXT, CLOSE = WSMsgType.TEXT, WSMsgType.CLOSE
    find, time_ns = _FIND, time.time_ns
    pad = b"x" * PAYLOAD_SIZE

    class Member(WSListener):
        """One chat member: connect, subscribe to its chat, publish when told, count pushes."""

        def __init__(self, st: _State, token: str, channel: str, me: bytes, ready: asyncio.Future) -> None:
            super().__init__()
            self.st, self.token, self.channel, self.me, self.ready = st, token, channel, me, ready
            self.ch = channel.encode()
            self.transport = None
            self.next_id = 3
            self.open = False

        def on_ws_connected(self, transport) -> None:
            self.transport = transport
            transport.send(TEXT, orjson.dumps({"id": 1, "connect": {"token": self.token}}))

        def on_ws_disconnected(self, transport) -> None:
            self.open = False
            if not self.ready.done():
                self.ready.set_exception(RuntimeError("disconnected before subscribing"))
            if not self.st.closing:
                self.st.lost += 1

        def publish(self, stamp: int) -> None:
            head = b"T=%d;%s;" % (stamp, self.me)
            self.transport.send(TEXT, b'{"id":%d,"publish":{"channel":"%s","data":"%s%s"}}'
                                % (self.next_id, self.ch, head, pad[:PAYLOAD_SIZE - len(head)]))
            self.next_id += 1

        def _setup(self, transport, data: bytes) -> None:
            for line in data.split(b"\n"):
                if not line or line == b"{}":
                    continue
                msg = orjson.loads(line)
                if "error" in msg:
                    if not self.ready.done():
                        self.ready.set_exception(RuntimeError(f"relay refused: {line.decode()}"))
                elif msg.get("id") == 1:
                    transport.send(TEXT, orjson.dumps({"id": 2, "subscribe": {"channel": self.channel}}))
                elif msg.get("id") == 2 and not self.ready.done():
                    self.open = True
                    self.ready.set_result(None)

        def on_ws_frame(self, transport, frame) -> None:
            if frame.msg_type is not TEXT:
                if frame.msg_type is CLOSE:
                    code = answer_close(transport, frame)
                    self.st.close_codes[code] = self.st.close_codes.get(code, 0) + 1
                return
            now = time_ns()
            data = frame.get_payload_as_bytes()
            st = self.st
            if not self.open:
                self._setup(transport, data)
                return
            found = find(data)
            if found:
                ws, we = st.ws, st.we
                in_recv = ws <= now < we
                st.total += len(found)
                if in_recv:
                    st.frames_in_window += 1
                me = self.me
                for stamp, who in found:
                    t = int(stamp)
                    if who == me:  # our own message coming back
                        if in_recv:
                            st.echo_recv_in_window += 1
                        if ws <= t < we:
                            st.echo_in_window += 1
                        continue
                    if in_recv:
                        st.other_recv_in_window += 1
                    if ws <= t < we:
                        st.other_in_window += 1
                        lat = now - t
                        st.hist.add(lat)
                        (st.hist_first if t < st.mid else st.hist_second).add(lat)
            if b'"id"' in data:
                st.replies += data.count(b'"publish":{}')
                if b'"error"' in data:
                    st.errors += data.count(b'"error"')
                    st.error_sample = st.error_sample or data[:300].decode(errors="replace")
            if data[:2] == b"{}" or b"\n{}" in data:  # a ping line is exactly "{}"
                transport.send(TEXT, b"{}")
                st.pings += 1

    return Member


async def _open_members(url: str, token: str, first_chat: int, chats: int, st: _State) -> tuple[list, list[str]]:
    """Two members per chat, chats ``first_chat .. first_chat + chats - 1``; (members, errors)."""
    Member = _member_class()

    def member(k: int, ready: asyncio.Future) -> Any:  # the a-members of every chat, then the b-members
        me, chat = (b"a", b"b")[k // chats], first_chat + k % chats
        return Member(st, token, CHANNEL.format(i=chat), me, ready)

    members, errors = await open_all(2 * chats, member, url, read_buffer_init_size=4096)
    # publishing order: every member of every chat in turn, a-members then b-members
    members.sort(key=lambda m: (m.me, m.channel))
    return members, errors


async def _publish(members: list, st: _State, rate: float, start_ns: int, ws: int, we: int) -> None:
    """Send ``rate`` publish commands per second, round-robin over ``members``, until ``we``."""
    time_ns = time.time_ns
    await sleep_until_ns(start_ns)
    if rate <= 0 or not members:
        return
    interval = 1e9 / rate
    nxt = float(start_ns)
    i, n = 0, len(members)
    while True:
        now = time_ns()
        if now >= we:
            return
        while nxt <= now and nxt < we:
            m = members[i]
            i = (i + 1) % n
            if not m.open:  # a closed member: its turn is not offered (shows as UNDER-OFFERED)
                nxt += interval
                continue
            stamp = time_ns()
            m.publish(stamp)
            st.sent += 1
            if ws <= stamp < we:
                st.pub_in_window += 1
                if now - nxt > st.max_late_ns:
                    st.max_late_ns = int(now - nxt)
            nxt += interval
        # uvloop's timers tick in ms: a shorter sleep returns at once and would spin, so sleep >= 1 ms and
        # send whatever fell due meanwhile (the stamp is taken at send time: latency stays exact)
        await asyncio.sleep(max(0.001, (nxt - time_ns()) / 1e9))


async def _worker_async(pipe: Connection, url: str, token: str, first_chat: int, chats: int) -> None:
    st = _State()
    members, errors = await _open_members(url, token, first_chat, chats, st)
    pipe.send(("ready", len(members), errors[:3], len(errors)))
    task: asyncio.Task | None = None

    async def handle(cmd: str, *args: Any) -> tuple:
        nonlocal task
        if cmd == "step":
            rate, start_ns, ws, we = args
            st.reset(ws, we)
            task = asyncio.ensure_future(_publish(members, st, rate, start_ns, ws, we))
            return ("ok",)
        if cmd == "count":
            return ("count", st.pub_in_window, st.other_in_window, st.echo_in_window, st.total,
                    task is None or task.done(), st.lost)
        if cmd == "report":
            return ("report", {
                "connections": len(members), "sent": st.sent, "pub_in_window": st.pub_in_window,
                "max_late_ns": st.max_late_ns, "other_in_window": st.other_in_window,
                "other_recv_in_window": st.other_recv_in_window, "echo_in_window": st.echo_in_window,
                "echo_recv_in_window": st.echo_recv_in_window, "frames_in_window": st.frames_in_window,
                "replies": st.replies, "errors": st.errors, "error_sample": st.error_sample,
                "lost": st.lost, "close_codes": dict(st.close_codes), "pings": st.pings,
                "hist": st.hist.to_sparse(), "hist_first": st.hist_first.to_sparse(),
                "hist_second": st.hist_second.to_sparse(),
                "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            })
        if cmd == "close":
            st.closing = True
            await disconnect_all(members)
            return ("closed",)
        return ("error", f"unknown command {cmd!r}")

    await serve_pipe(pipe, handle)


def worker_main(pipe: Connection, url: str, token: str, first_chat: int, chats: int) -> None:
    run_worker(_worker_async, pipe, url, token, first_chat, chats)
