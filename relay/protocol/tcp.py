"""Raw TCP framing, sans-I/O: each message is a 4-byte big-endian length, then a msgpack body.

The length is checked against the limit as soon as the 4 header bytes arrive,
so an absurd length closes the connection without reading (or buffering) the body.
"""

from __future__ import annotations

__all__ = ["TcpFrameReader"]

from relay.codes import DISCONNECTS
from relay.protocol.errors import ProtocolError


class TcpFrameReader:
    __slots__ = ("max_frame", "_buf")

    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()

    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        out: list[bytes] = []
        pos = 0
        end = len(buf)
        while end - pos >= 4:
            n = int.from_bytes(buf[pos:pos + 4], "big")
            if n > self.max_frame:
                d = DISCONNECTS.MESSAGE_TOO_BIG
                raise ProtocolError(d.code, f"{d.reason}: frame of {n} bytes over limit {self.max_frame}")
            if end - pos - 4 < n:
                break
            out.append(bytes(buf[pos + 4:pos + 4 + n]))
            pos += 4 + n
        if pos:
            del buf[:pos]
        return out
