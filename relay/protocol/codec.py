"""Client command codecs: JSON lines over WebSocket, msgpack maps over raw TCP, protobuf over WebSocket.

A codec turns one received message into a list of command dicts, and a reply or
push dict into the item a connection queues (a JSON line, or a complete TCP
frame). Malformed input raises ``ProtocolError`` with 3501 "bad request".
"""

from __future__ import annotations

import msgpack
import orjson

from relay.codes import DISCONNECTS
from relay.core import WIRE_TCP, WIRE_WS, WIRE_WS_PB, tcp_frame
from relay.protocol import protobuf
from relay.protocol.errors import ProtocolError

__all__ = ["JsonCodec", "MsgpackCodec", "ProtobufCodec", "codec_for", "json_exact"]

_BAD = DISCONNECTS.BAD_REQUEST


class JsonCodec:
    """Centrifugo JSON protocol: several commands per frame, one per line."""

    wire = WIRE_WS
    name = "json"
    binary = False  # payloads arrive as JSON already
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
    binary = True  # payloads may hold what JSON cannot (bytes, NaN): checked with json_exact
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


class ProtobufCodec:
    """Centrifugo's protobuf protocol over WebSocket (relay/protocol/protobuf.py): binary frames of
    varint-delimited Commands in, Replies out."""

    wire = WIRE_WS_PB
    name = "protobuf"
    binary = True  # a payload that is not JSON arrives as protobuf.BinaryData: json_exact refuses it
    PING = protobuf.PING
    decode = staticmethod(protobuf.decode_commands)
    encode = staticmethod(protobuf.encode_reply)


def json_exact(data: object) -> bool:
    """Whether ``data`` (decoded from msgpack) reaches a JSON client as the same value: JSON has no NaN and no
    Infinity (orjson would write ``null``), no bytes, no non-string keys and no nesting past orjson's limit.
    One publication must be one message on every wire, so anything else is refused at the publish (107)."""
    try:
        orjson.dumps(data)
    except TypeError:  # orjson.JSONEncodeError: a type JSON lacks, a non-str key, too deep
        return False
    stack = [data]
    while stack:
        v = stack.pop()
        if type(v) is float:
            if v != v or v in (_INF, -_INF):
                return False
        elif type(v) is dict:
            stack.extend(v.values())
        elif type(v) is list:
            stack.extend(v)
    return True


_INF = float("inf")


_CODECS = {WIRE_WS: JsonCodec, WIRE_TCP: MsgpackCodec, WIRE_WS_PB: ProtobufCodec}


def codec_for(wire: int):
    return _CODECS[wire]
