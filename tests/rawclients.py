"""Minimal real-socket clients for tests: a raw WebSocket client (can send malformed frames)
and a raw TCP msgpack client. Both speak relay's protocol over real sockets."""

from __future__ import annotations

import asyncio
import base64
import collections
import os
import socket

import msgpack
import orjson

from tests.wsframes import client_frame, parse_server_frames

TIMEOUT = 10


class RawWS:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rest: bytes) -> None:
        self.reader = reader
        self.writer = writer
        self.buf = bytearray(rest)
        self.frames: collections.deque[tuple[int, bytes]] = collections.deque()
        self.lines: list[dict] = []
        self.pushes: list[dict] = []  # pushes read while waiting for a reply
        self._id = 0
        self.client_id = ""  # from the connect reply (ws_connected)

    @classmethod
    async def open(cls, port: int, path: str = "/connection/websocket", extra: str = "",
                   rcvbuf: int = 0) -> "RawWS":
        """``rcvbuf``: a small kernel receive buffer (SO_RCVBUF), so a client that stops reading backs up
        into relay quickly instead of into megabytes of loopback buffers."""
        if rcvbuf:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: the window
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
            reader, writer = await asyncio.open_connection(sock=sock)
        else:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                      f"{extra}\r\n").encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer, b"")

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send_text(self, text: str | bytes) -> None:
        await self.send_raw(client_frame(text.encode() if isinstance(text, str) else text))

    async def send_cmds(self, *cmds: dict) -> None:
        await self.send_text(b"\n".join(orjson.dumps(c) for c in cmds))

    async def frame(self, timeout: float = TIMEOUT) -> tuple[int, bytes]:
        """The next server frame; (-1, b"") at EOF."""
        while not self.frames:
            data = await asyncio.wait_for(self.reader.read(262144), timeout)
            if not data:
                return -1, b""
            self.buf += data
            self.frames.extend(parse_server_frames(self.buf))
        return self.frames.popleft()

    async def message(self, timeout: float = TIMEOUT) -> dict:
        """The next JSON line (pings `{}` included)."""
        while not self.lines:
            op, payload = await self.frame(timeout)
            if op == 1:
                self.lines += [orjson.loads(x) for x in payload.split(b"\n")]
            elif op in (8, -1):
                raise ConnectionError(f"closed: {self.close_info(payload) if op == 8 else 'EOF'}")
        return self.lines.pop(0)

    async def call(self, method: str, params: dict | None = None) -> dict:
        """Send one command and return its reply (pushes that arrive first are kept in ``pushes``)."""
        self._id += 1
        await self.send_cmds({"id": self._id, method: params or {}})
        return await self.reply(self._id)

    async def reply(self, cmd_id: int) -> dict:
        while True:
            msg = await self.message()
            if msg.get("id") == cmd_id:
                return msg
            if "push" in msg:
                self.pushes.append(msg["push"])

    async def push(self, timeout: float = TIMEOUT) -> dict:
        if self.pushes:
            return self.pushes.pop(0)
        while True:
            msg = await self.message(timeout)
            if "push" in msg:
                return msg["push"]

    async def pub(self, timeout: float = TIMEOUT) -> dict:
        """The next publication push (join/leave pushes are skipped)."""
        while True:
            p = await self.push(timeout)
            if "pub" in p:
                return p

    @staticmethod
    def close_info(payload: bytes) -> tuple[int, str]:
        return int.from_bytes(payload[:2], "big"), payload[2:].decode()

    async def expect_close(self, timeout: float = TIMEOUT) -> tuple[int, str]:
        """Read until the server's close frame; return (code, reason). Fails on EOF without one."""
        while True:
            op, payload = await self.frame(timeout)
            if op == 8:
                return self.close_info(payload)
            if op == -1:
                raise AssertionError("connection ended without a close frame")

    async def eof(self, timeout: float = TIMEOUT) -> bool:
        """True once the server closed the TCP connection."""
        while True:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                return True

    def close(self) -> None:
        self.writer.close()


async def ws_connected(port: int, token: str, rcvbuf: int = 0) -> RawWS:
    ws = await RawWS.open(port, rcvbuf=rcvbuf)
    reply = await ws.call("connect", {"token": token})
    assert "connect" in reply, reply
    ws.client_id = reply["connect"]["client"]
    return ws


class RawTCP:
    """Raw TCP client: 4-byte big-endian length + msgpack map per message."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._id = 0
        self.pending: list[dict] = []

    @classmethod
    async def open(cls, port: int) -> "RawTCP":
        r, w = await asyncio.open_connection("127.0.0.1", port)
        return cls(r, w)

    async def send(self, obj: dict) -> None:
        body = msgpack.packb(obj, use_bin_type=True)
        self.writer.write(len(body).to_bytes(4, "big") + body)
        await self.writer.drain()

    async def message(self, timeout: float = TIMEOUT) -> dict:
        head = await asyncio.wait_for(self.reader.readexactly(4), timeout)
        body = await asyncio.wait_for(self.reader.readexactly(int.from_bytes(head, "big")), timeout)
        return msgpack.unpackb(body, raw=False)

    async def call(self, method: str, params: dict | None = None) -> dict:
        self._id += 1
        await self.send({"id": self._id, method: params or {}})
        while True:
            msg = await self.message()
            if msg.get("id") == self._id:
                return msg
            if "push" in msg:
                self.pending.append(msg["push"])

    async def push(self, timeout: float = TIMEOUT) -> dict:
        if self.pending:
            return self.pending.pop(0)
        while True:
            msg = await self.message(timeout)
            if "push" in msg:
                return msg["push"]

    def close(self) -> None:
        self.writer.close()
