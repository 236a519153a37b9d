"""Client-side WebSocket frame helpers for tests (masking, parsing server frames)."""

from __future__ import annotations

import os
import struct


def client_frame(payload: bytes, opcode: int = 0x1, fin: bool = True, mask: bool = True,
                 rsv: int = 0, length_override: int | None = None) -> bytes:
    """A client frame (RFC 6455 5.2), masked unless told otherwise; may lie about its length."""
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload) if length_override is None else length_override
    mbit = 0x80 if mask else 0
    if n < 126:
        head = bytes((b0, mbit | n))
    elif n < 65536:
        head = bytes((b0, mbit | 126)) + struct.pack("!H", n)
    else:
        head = bytes((b0, mbit | 127)) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + masked


def parse_server_frames(buf: bytearray) -> list[tuple[int, bytes]]:
    """Pop complete unmasked server frames from ``buf``."""
    out = []
    while len(buf) >= 2:
        op = buf[0] & 0x0F
        n = buf[1] & 0x7F
        h = 2
        if n == 126:
            if len(buf) < 4:
                break
            n = struct.unpack("!H", buf[2:4])[0]
            h = 4
        elif n == 127:
            if len(buf) < 10:
                break
            n = struct.unpack("!Q", buf[2:10])[0]
            h = 10
        if len(buf) < h + n:
            break
        out.append((op, bytes(buf[h:h + n])))
        del buf[:h + n]
    return out
