"""A minimal hand-written WebSocket client, for the generators that open many connections cheaply
(``connrate_workers.py``, ``pacing_workers.py``, ``recovery.py``): a fixed upgrade request, client frames
masked with the all-zero key (so the payload goes as is), complete server frames cut from a byte buffer,
failures named by kind, and connections dropped with RST (no TIME_WAIT).
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
from typing import Any

__all__ = ["upgrade_request", "client_frame", "PONG", "server_frames", "closed_by_server", "upgrade_answer",
           "take_upgrade", "failure_kind", "abort", "abort_all"]

_WS_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="          # RFC 6455's sample key: any valid key will do
_WS_ACCEPT = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="    # its Sec-WebSocket-Accept
_LINGER_RST = struct.pack("ii", 1, 0)           # SO_LINGER on, 0 s: close sends RST, no TIME_WAIT


def upgrade_request(host: str, port: int, path: str) -> bytes:
    """The HTTP upgrade request of every connection to ``path`` on ``host:port`` (the same bytes each time)."""
    return (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {_WS_KEY.decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


def client_frame(payload: bytes, opcode: int = 1) -> bytes:
    """A client WebSocket frame (FIN, masked with the all-zero key, so the payload goes as is)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


PONG = client_frame(b"{}")  #: the answer to relay's ``{}`` ping


def server_frames(buf: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Complete unmasked server frames in ``buf`` as (opcode, payload), and the rest."""
    out, i, size = [], 0, len(buf)
    while size - i >= 2:
        n, h = buf[i + 1] & 0x7F, 2
        if n == 126:
            if size - i < 4:
                break
            n, h = int.from_bytes(buf[i + 2:i + 4], "big"), 4
        elif n == 127:
            if size - i < 10:
                break
            n, h = int.from_bytes(buf[i + 2:i + 10], "big"), 10
        if size - i < h + n:
            break
        out.append((buf[i] & 0x0F, buf[i + h:i + h + n]))
        i += h + n
    return out, buf[i:]


def closed_by_server(client: Any, opcode: int, payload: bytes) -> bool:
    """Whether a server frame is a close frame; if it is, ``client.failed("closed_<code>", its reason)``."""
    if opcode != 8:
        return False
    code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
    client.failed(f"closed_{code}", payload[2:80].decode(errors="replace"))
    return True



def upgrade_answer(buf: bytes) -> tuple[str, bytes, bytes]:
    """The server's answer to the upgrade request at the start of ``buf``, as (status, rest, head): ("more", buf,
    b"") while its head is incomplete; ("ok", what follows the head, head) for a 101 with the expected
    Sec-WebSocket-Accept; ("failed", b"", head) for anything else (the head is for the error message)."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return "more", buf, b""
    head = buf[:end]
    if not head.startswith(b"HTTP/1.1 101") or _WS_ACCEPT not in head:
        return "failed", b"", head
    return "ok", buf[end + 4:], head


def take_upgrade(client: Any, buf: bytes) -> bytes | None:
    """``upgrade_answer`` for a client protocol with ``buf``, ``upgraded`` and ``failed(kind, detail)``: the bytes
    after the head once upgraded (``client.upgraded`` set), else None: an incomplete head is kept in
    ``client.buf``, a refused upgrade is ``client.failed("handshake_<status>", head)``."""
    status, rest, head = upgrade_answer(buf)
    if status == "ok":
        client.upgraded = True
        return rest
    if status == "more":
        client.buf = buf
    else:
        client.failed("handshake_" + head[9:12].decode(errors="replace"), head[:120].decode(errors="replace"))
    return None


def failure_kind(e: BaseException) -> str:
    """A failed connection's kind, for the failure counts: timeout, refused, reset, no_local_port, ..."""
    if isinstance(e, (asyncio.TimeoutError, TimeoutError)):
        return "timeout"
    if isinstance(e, ConnectionRefusedError):
        return "refused"
    if isinstance(e, ConnectionResetError):
        return "reset"
    if isinstance(e, OSError):
        if e.errno == errno.EADDRNOTAVAIL:
            return "no_local_port"
        if e.errno in (errno.EMFILE, errno.ENFILE):
            return "client_fd_limit"
        return f"oserror_{errno.errorcode.get(e.errno or 0, e.errno)}"
    return type(e).__name__


def abort(t: asyncio.BaseTransport) -> None:
    try:
        sock = t.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    except OSError:
        pass
    t.abort()  # type: ignore[attr-defined]


def abort_all(clients) -> None:
    """``abort`` the transport of every client that has one (``client.transport``)."""
    for c in clients:
        if c.transport is not None:
            abort(c.transport)
