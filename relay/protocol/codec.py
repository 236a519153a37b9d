"""Client command codecs: JSON lines over WebSocket, msgpack maps over raw TCP.

A codec turns one received message into a list of command dicts, and a reply or
push dict into the item a connection queues (a JSON line, or a complete TCP
frame). Malformed input raises ``ProtocolError`` with 3501 "bad request".
"""

from __future__ import annotations

import msgpack
import orjson

from relay.codes import DISCONNECTS
from relay.core import WIRE_TCP, WIRE_WS, tcp_frame
from relay.protocol.errors import ProtocolError

__all__ = ["JsonCodec", "MsgpackCodec", "codec_for"]

_BAD = DISCONNECTS.BAD_REQUEST


class JsonCodec:
    """Centrifugo JSON protocol: several commands per frame, one per line."""

    wire = WIRE_WS
    name = "json"
    PING = b"{}"

    @staticmethod
    def decode(message: bytes) -> list[dict]:
        commands = []
        for line in message.split(b"\n"):
            if not line.strip():
                continue
            try:
                cmd = orjson.loads(line)
            except orjson.JSONDecodeError:
                raise ProtocolError(_BAD.code, "bad request: invalid JSON") from None
            if not isinstance(cmd, dict):
                raise ProtocolError(_BAD.code, "bad request: command must be an object")
            commands.append(cmd)
        return commands

    @staticmethod
    def encode(obj: dict) -> bytes:
        return orjson.dumps(obj)


_packb = msgpack.Packer(use_bin_type=True).pack


class MsgpackCodec:
    """Raw TCP: one msgpack map per frame (the same fields as the JSON protocol)."""

    wire = WIRE_TCP
    name = "msgpack"
    PING = tcp_frame(_packb({}))

    @staticmethod
    def decode(message: bytes) -> list[dict]:
        try:
            cmd = msgpack.unpackb(message, raw=False, strict_map_key=True)
        except Exception:
            raise ProtocolError(_BAD.code, "bad request: invalid msgpack") from None
        if not isinstance(cmd, dict):
            raise ProtocolError(_BAD.code, "bad request: command must be a map")
        return [cmd]

    @staticmethod
    def encode(obj: dict) -> bytes:
        return tcp_frame(_packb(obj))


def codec_for(wire: int):
    return JsonCodec if wire == WIRE_WS else MsgpackCodec
