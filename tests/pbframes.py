"""Protobuf frames as a Centrifugo SDK builds and reads them, with centrifuge-python's own varint functions and
generated classes, so relay's codec (relay/protocol/protobuf.py) is checked against an independent one."""

from __future__ import annotations

from centrifuge.codecs import _varint_decode, _varint_encode
from centrifuge.protocol.client_pb2 import Reply

__all__ = ["delimited", "replies"]


def delimited(*msgs) -> bytes:
    """Messages as ``uvarint(len) || message``, concatenated (one frame's payload)."""
    return b"".join(_varint_encode(len(b)) + b for b in (m.SerializeToString() for m in msgs))


def replies(payload: bytes) -> list[Reply]:
    out, pos = [], 0
    while pos < len(payload):
        n, pos = _varint_decode(payload, pos)
        reply = Reply()
        reply.ParseFromString(bytes(payload[pos:pos + n]))
        out.append(reply)
        pos += n
    return out
