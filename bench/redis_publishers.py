"""redis_scaling.py's publishers that are not a WebSocket client (the ``hot`` case's is ``loadgen.Publisher``).

* :class:`ApiBroadcastPublisher`: relay's HTTP server API ``broadcast``, requests built by hand and pipelined
  over keep-alive connections (SO_REUSEPORT spreads them over relay's workers);
* :class:`RedisDirectPublisher`: relay's pub/sub wire format written straight into Redis, so a relay worker's
  pub/sub read path is the only relay work besides a coalesced write.

Both keep ``loadgen.TickPublisher``'s interface, ``run()`` being what the step runner calls: ``batch``
publications per tick, channels round-robin, every publication of a tick with the same stamped payload.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable

import msgpack

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from loadgen import TickPublisher, make_payload  # noqa: E402

from relay.brokers.redis import _key_hash, jump_hash  # noqa: E402

__all__ = ["PREFIX", "ApiBroadcastPublisher", "RedisDirectPublisher"]

PREFIX = "relay"  #: relay's default redis_prefix (pub/sub channels are ``relay:ps:{<channel>}``)


class _ChannelPublisher(TickPublisher):
    """A tick publisher over ``channels``, round-robin: subclasses implement ``_send(stamp_ns, batch) -> int``
    (publications sent, all stamped ``stamp_ns``) and count ``replies`` and ``errors``. A tick counts as
    published in the window when the window has opened and its stamp is inside it."""

    def __init__(self, channels: list[str]) -> None:
        super().__init__()
        self.channels = channels
        self.next_channel = 0
        self.replies = 0
        self.errors = 0
        self.error_sample = ""
        self.conns: list[_Counter] = []

    def _take(self, n: int) -> list[str]:
        """The next ``n`` channels, round-robin."""
        out = []
        chs, i = self.channels, self.next_channel
        for _ in range(n):
            out.append(chs[i])
            i = (i + 1) % len(chs)
        self.next_channel = i
        return out

    def _send(self, stamp_ns: int, batch: int) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def _tick(self, batch: int, ws_ns: int, we_ns: int, started: bool) -> tuple[int, int]:
        stamp = time.time_ns()
        n = self._send(stamp, batch)
        # by stamp, as the subscribers count: a tick the loop began just before the window opened may carry a
        # stamp inside it (counting it out made a 'loss' of -0.5 % once, 10,000 delivered of 9,950)
        return n, (n if ws_ns <= stamp < we_ns else 0)

    def close(self) -> None:
        for c in self.conns:
            if c.transport is not None:
                c.transport.close()
        self.conns = []


class _Counter(asyncio.Protocol):
    """Reads a reply stream and counts replies with ``count(data)``; keeps the first error."""

    def __init__(self, owner: _ChannelPublisher, count: Callable[[bytes], tuple[int, int]]) -> None:
        self.owner, self.count = owner, count
        self.transport: asyncio.Transport | None = None
        self.tail = b""

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        ok, bad = self.count(data)
        self.owner.replies += ok
        if bad:
            self.owner.errors += bad
            self.owner.error_sample = self.owner.error_sample or data[:300].decode(errors="replace")


class ApiBroadcastPublisher(_ChannelPublisher):
    """HTTP server API ``broadcast`` over ``conns`` pipelined keep-alive HTTP/1.1 connections.

    Each tick splits ``batch`` channels (round-robin over ``channels``) over the connections,
    one ``POST /api/broadcast`` each, all with the same stamped payload. Requests are built by
    hand and replies are only counted (``"result":{}`` per channel, ``"error"``), so the
    generator pays a few microseconds per request, not an HTTP client library's cost.
    With several relay workers SO_REUSEPORT spreads the connections over them: publications
    enter through every worker.
    """

    def __init__(self, host: str, port: int, api_key: str, channels: list[str], conns: int = 8) -> None:
        super().__init__(channels)
        self.host, self.port, self.api_key, self.n_conns = host, port, api_key, conns
        self.turn = 0

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()

        def count(data: bytes) -> tuple[int, int]:
            return data.count(b'{"result":{}}'), data.count(b'"error"')

        for _ in range(self.n_conns):
            _, proto = await loop.create_connection(lambda: _Counter(self, count), self.host, self.port)
            self.conns.append(proto)

    def _send(self, stamp_ns: int, batch: int) -> int:
        data = make_payload(stamp_ns).decode()
        per = max(1, -(-batch // len(self.conns)))
        sent = 0
        while sent < batch:
            chs = self._take(min(per, batch - sent))
            body = b'{"channels":["' + '","'.join(chs).encode() + b'"],"data":"' + data.encode() + b'"}'
            req = (b"POST /api/broadcast HTTP/1.1\r\nHost: %s:%d\r\nX-API-Key: %s\r\n"
                   b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                   % (self.host.encode(), self.port, self.api_key.encode(), len(body))) + body
            conn = self.conns[self.turn % len(self.conns)]
            self.turn += 1
            assert conn.transport is not None
            conn.transport.write(req)
            sent += len(chs)
        return sent


class RedisDirectPublisher(_ChannelPublisher):
    """Publishes relay's pub/sub wire format straight into Redis, pipelined, one write per tick.

    Message: ``p0::`` + msgpack ``{"data": "<payload>"}`` (offset 0, empty epoch: no history)
    on ``relay:ps:{<channel>}``, the format relay's PUBLISH_LUA emits. Channels map to Redis
    instances exactly as relay maps them (jump consistent hash). Redis answers each PUBLISH
    with the number of its subscribers that got the message (relay pub/sub connections):
    ``receivers`` sums them, so receivers / replies shows how many relay workers each
    publication reached.
    """

    def __init__(self, ports: list[int], channels: list[str]) -> None:
        super().__init__(channels)
        self.ports = ports
        self.receivers = 0
        self._ps = {ch: f"{PREFIX}:ps:{{{ch}}}".encode() for ch in channels}
        self._shard = {ch: jump_hash(_key_hash(ch), len(ports)) for ch in channels}

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        me = self

        def count(data: bytes) -> tuple[int, int]:
            ok = bad = 0
            for line in data.split(b"\r\n"):  # replies are ":<n>" (never split mid-write in practice)
                if line[:1] == b":":
                    ok += 1
                    me.receivers += int(line[1:])
                elif line[:1] == b"-":
                    bad += 1
            return ok, bad

        for port in self.ports:
            _, proto = await loop.create_connection(lambda: _Counter(self, count), "127.0.0.1", port)
            self.conns.append(proto)

    def _send(self, stamp_ns: int, batch: int) -> int:
        msg = b"p0::" + msgpack.packb({"data": make_payload(stamp_ns).decode()})
        tail = b"\r\n$%d\r\n%s\r\n" % (len(msg), msg)
        out: list[list[bytes]] = [[] for _ in self.conns]
        for ch in self._take(batch):
            ps = self._ps[ch]
            out[self._shard[ch]].append(b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s%s" % (len(ps), ps, tail))
        for conn, cmds in zip(self.conns, out, strict=True):
            if cmds:
                assert conn.transport is not None
                conn.transport.write(b"".join(cmds))
        return batch
