"""Centrifugo's protobuf client protocol (``centrifuge-protobuf``): the schema, and the codec between its
binary messages and the command, reply and push dicts the rest of relay speaks (the same dicts as the JSON
protocol, whose field names are the schema's).

On the wire each message is ``uvarint(length) || message``, several per WebSocket binary frame in both
directions: ``Command`` from the client, ``Reply`` to it (a push rides in ``Reply.push`` with id 0). The
server's ping is an empty ``Reply`` (the single byte 0x00), the client's pong an empty ``Command``.

The schema is written here as data and built into a private descriptor pool at import (no generated code,
no protoc): an SDK that registers Centrifugo's own ``client.proto`` in the default pool (centrifuge-python
does) lives beside it. The protobuf runtime does the parsing and serializing. ``bytes`` payload fields
(``data``, ``conn_info``, ``chan_info``) carry JSON here, as relay's payloads are JSON values on every wire:
a client's payload that is not JSON arrives as ``BinaryData`` and its command is refused (107).
"""

from __future__ import annotations

from typing import Any

import orjson
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from relay.codes import DISCONNECTS
from relay.protocol.errors import ProtocolError

__all__ = ["PACKAGE", "SCHEMA", "BinaryData", "Command", "Reply", "decode_commands", "encode_reply",
           "encode_command", "iter_replies", "PING", "varint"]

PACKAGE = "centrifugal.centrifuge.protocol"

#: message -> fields (name, number, type); a type is a scalar, a message name, "repeated <type>" or
#: "map<string, <type>>". Field numbers are Centrifugo's (centrifugal/protocol client.proto); fields relay
#: never reads or writes (map subscriptions, shared poll, tag filters) are left out: the runtime skips them.
SCHEMA: dict[str, list[tuple[str, int, str]]] = {
    "Error": [("code", 1, "uint32"), ("message", 2, "string"), ("temporary", 3, "bool")],
    "EmulationRequest": [("node", 1, "string"), ("session", 2, "string"), ("data", 3, "bytes")],
    "Command": [("id", 1, "uint32"), ("connect", 4, "ConnectRequest"), ("subscribe", 5, "SubscribeRequest"),
                ("unsubscribe", 6, "UnsubscribeRequest"), ("publish", 7, "PublishRequest"),
                ("presence", 8, "PresenceRequest"), ("presence_stats", 9, "PresenceStatsRequest"),
                ("history", 10, "HistoryRequest"), ("ping", 11, "PingRequest"), ("send", 12, "SendRequest"),
                ("rpc", 13, "RPCRequest"), ("refresh", 14, "RefreshRequest"),
                ("sub_refresh", 15, "SubRefreshRequest")],
    "Reply": [("id", 1, "uint32"), ("error", 2, "Error"), ("push", 4, "Push"), ("connect", 5, "ConnectResult"),
              ("subscribe", 6, "SubscribeResult"), ("unsubscribe", 7, "UnsubscribeResult"),
              ("publish", 8, "PublishResult"), ("presence", 9, "PresenceResult"),
              ("presence_stats", 10, "PresenceStatsResult"), ("history", 11, "HistoryResult"),
              ("ping", 12, "PingResult"), ("rpc", 13, "RPCResult"), ("refresh", 14, "RefreshResult"),
              ("sub_refresh", 15, "SubRefreshResult")],
    "Push": [("id", 1, "int64"), ("channel", 2, "string"), ("pub", 4, "Publication"), ("join", 5, "Join"),
             ("leave", 6, "Leave"), ("unsubscribe", 7, "Unsubscribe"), ("message", 8, "Message"),
             ("subscribe", 9, "Subscribe"), ("connect", 10, "Connect"), ("disconnect", 11, "Disconnect"),
             ("refresh", 12, "Refresh")],
    "ClientInfo": [("user", 1, "string"), ("client", 2, "string"), ("conn_info", 3, "bytes"),
                   ("chan_info", 4, "bytes")],
    "Publication": [("data", 4, "bytes"), ("info", 5, "ClientInfo"), ("offset", 6, "uint64"),
                    ("tags", 7, "map<string, string>"), ("delta", 8, "bool"), ("time", 9, "int64"),
                    ("channel", 10, "string")],
    "Join": [("info", 1, "ClientInfo")],
    "Leave": [("info", 1, "ClientInfo")],
    "Unsubscribe": [("code", 2, "uint32"), ("reason", 3, "string")],
    "Subscribe": [("recoverable", 1, "bool"), ("epoch", 4, "string"), ("offset", 5, "uint64"),
                  ("positioned", 6, "bool"), ("data", 7, "bytes")],
    "Message": [("data", 1, "bytes")],
    "Connect": [("client", 1, "string"), ("version", 2, "string"), ("data", 3, "bytes"),
                ("subs", 4, "map<string, SubscribeResult>"), ("expires", 5, "bool"), ("ttl", 6, "uint32"),
                ("ping", 7, "uint32"), ("pong", 8, "bool"), ("session", 9, "string"), ("node", 10, "string"),
                ("time", 11, "int64")],
    "Disconnect": [("code", 1, "uint32"), ("reason", 2, "string"), ("reconnect", 3, "bool")],
    "Refresh": [("expires", 1, "bool"), ("ttl", 2, "uint32")],
    "ConnectRequest": [("token", 1, "string"), ("data", 2, "bytes"), ("subs", 3, "map<string, SubscribeRequest>"),
                       ("name", 4, "string"), ("version", 5, "string"), ("headers", 6, "map<string, string>"),
                       ("flag", 7, "int64")],
    "ConnectResult": [("client", 1, "string"), ("version", 2, "string"), ("expires", 3, "bool"), ("ttl", 4, "uint32"),
                      ("data", 5, "bytes"), ("subs", 6, "map<string, SubscribeResult>"), ("ping", 7, "uint32"),
                      ("pong", 8, "bool"), ("session", 9, "string"), ("node", 10, "string"), ("time", 11, "int64")],
    "RefreshRequest": [("token", 1, "string")],
    "RefreshResult": [("client", 1, "string"), ("version", 2, "string"), ("expires", 3, "bool"),
                      ("ttl", 4, "uint32")],
    "SubscribeRequest": [("channel", 1, "string"), ("token", 2, "string"), ("recover", 3, "bool"),
                         ("epoch", 6, "string"), ("offset", 7, "uint64"), ("data", 8, "bytes"),
                         ("positioned", 9, "bool"), ("recoverable", 10, "bool"), ("join_leave", 11, "bool"),
                         ("delta", 12, "string"), ("flag", 14, "int64")],
    "SubscribeResult": [("expires", 1, "bool"), ("ttl", 2, "uint32"), ("recoverable", 3, "bool"),
                        ("epoch", 6, "string"), ("publications", 7, "repeated Publication"),
                        ("recovered", 8, "bool"), ("offset", 9, "uint64"), ("positioned", 10, "bool"),
                        ("data", 11, "bytes"), ("was_recovering", 12, "bool"), ("delta", 13, "bool"),
                        ("id", 14, "int64")],
    "SubRefreshRequest": [("channel", 1, "string"), ("token", 2, "string")],
    "SubRefreshResult": [("expires", 1, "bool"), ("ttl", 2, "uint32")],
    "UnsubscribeRequest": [("channel", 1, "string")],
    "UnsubscribeResult": [],
    "PublishRequest": [("channel", 1, "string"), ("data", 2, "bytes")],
    "PublishResult": [],
    "PresenceRequest": [("channel", 1, "string")],
    "PresenceResult": [("presence", 1, "map<string, ClientInfo>")],
    "PresenceStatsRequest": [("channel", 1, "string")],
    "PresenceStatsResult": [("num_clients", 1, "uint32"), ("num_users", 2, "uint32")],
    "StreamPosition": [("offset", 1, "uint64"), ("epoch", 2, "string")],
    "HistoryRequest": [("channel", 1, "string"), ("limit", 7, "int32"), ("since", 8, "StreamPosition"),
                       ("reverse", 9, "bool")],
    "HistoryResult": [("publications", 1, "repeated Publication"), ("epoch", 2, "string"), ("offset", 3, "uint64")],
    "PingRequest": [],
    "PingResult": [],
    "RPCRequest": [("data", 1, "bytes"), ("method", 2, "string")],
    "RPCResult": [("data", 1, "bytes")],
    "SendRequest": [("data", 1, "bytes")],
}

#: bytes fields that are not a JSON payload (the emulation endpoint's data is a command frame)
_RAW_BYTES = frozenset({("EmulationRequest", "data")})

_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {"uint32": _F.TYPE_UINT32, "uint64": _F.TYPE_UINT64, "int32": _F.TYPE_INT32, "int64": _F.TYPE_INT64,
            "bool": _F.TYPE_BOOL, "string": _F.TYPE_STRING, "bytes": _F.TYPE_BYTES}


def _set_type(field: Any, tp: str) -> None:
    if tp in _SCALARS:
        field.type = _SCALARS[tp]
    else:
        field.type = _F.TYPE_MESSAGE
        field.type_name = f".{PACKAGE}.{tp}"


def _build_pool() -> descriptor_pool.DescriptorPool:
    fdp = descriptor_pb2.FileDescriptorProto(name="relay/client.proto", package=PACKAGE, syntax="proto3")
    for name, fields in SCHEMA.items():
        msg = fdp.message_type.add(name=name)
        for fname, number, tp in fields:
            field = msg.field.add(name=fname, number=number, json_name=fname)
            if tp.startswith("map<"):
                value_tp = tp[len("map<string, "):-1]
                entry = msg.nested_type.add(name="".join(p.title() for p in fname.split("_")) + "Entry")
                entry.options.map_entry = True
                entry.field.add(name="key", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
                _set_type(entry.field.add(name="value", number=2, label=_F.LABEL_OPTIONAL), value_tp)
                field.label = _F.LABEL_REPEATED
                field.type = _F.TYPE_MESSAGE
                field.type_name = f".{PACKAGE}.{name}.{entry.name}"
            elif tp.startswith("repeated "):
                field.label = _F.LABEL_REPEATED
                _set_type(field, tp[len("repeated "):])
            else:
                field.label = _F.LABEL_OPTIONAL
                _set_type(field, tp)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return pool


_POOL = _build_pool()


def message_class(name: str) -> Any:
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{PACKAGE}.{name}"))


Command = message_class("Command")
Reply = message_class("Reply")


class BinaryData(bytes):
    """A client's payload that is not JSON: relay's payloads are JSON values, so its command is refused."""


# --- message <-> dict ---------------------------------------------------------------------------------------

def _repeated(field: Any) -> bool:
    """``is_repeated`` on protobuf 6.31 and later; ``label`` (removed in 7) before."""
    rep = getattr(field, "is_repeated", None)
    return rep if rep is not None else field.label == _F.LABEL_REPEATED


def _is_map(field: Any) -> bool:
    mt = field.message_type
    return mt is not None and mt.GetOptions().map_entry


def to_dict(msg: Any) -> dict:
    """A decoded message as the dict the JSON protocol would have given (default values absent)."""
    out: dict = {}
    owner = msg.DESCRIPTOR.name
    for field, value in msg.ListFields():
        name = field.name
        if _is_map(field):
            vf = field.message_type.fields_by_name["value"]
            out[name] = {k: (to_dict(v) if vf.message_type is not None else v) for k, v in value.items()}
        elif field.message_type is not None:
            out[name] = [to_dict(v) for v in value] if _repeated(field) else to_dict(value)
        elif field.type == _F.TYPE_BYTES and (owner, name) not in _RAW_BYTES:
            try:
                out[name] = orjson.loads(value)
            except orjson.JSONDecodeError:
                out[name] = BinaryData(value)
        else:
            out[name] = value
    # a message field that is present but empty (``connect {}``) lists nothing: keep it, it names the method
    for field in msg.DESCRIPTOR.fields:
        if field.message_type is not None and not _repeated(field) and field.name not in out \
                and msg.HasField(field.name):
            out[field.name] = {}
    return out


def from_dict(msg: Any, obj: dict) -> Any:
    """Fill ``msg`` from a reply or push dict; keys the schema lacks are dropped (relay's own extensions)."""
    fields = msg.DESCRIPTOR.fields_by_name
    owner = msg.DESCRIPTOR.name
    for name, value in obj.items():
        field = fields.get(name)
        if field is None or (value is None and field.type != _F.TYPE_BYTES):
            continue  # (a JSON payload of null is the bytes "null")
        if _is_map(field):
            target = getattr(msg, name)
            message_value = field.message_type.fields_by_name["value"].message_type is not None
            for k, v in value.items():
                if message_value:
                    from_dict(target[k], v)
                else:
                    target[k] = v
        elif field.message_type is not None:
            if _repeated(field):
                target = getattr(msg, name)
                for v in value:
                    from_dict(target.add(), v)
            else:
                sub = getattr(msg, name)
                sub.SetInParent()
                from_dict(sub, value)
        elif field.type == _F.TYPE_BYTES and (owner, name) not in _RAW_BYTES:
            setattr(msg, name, value if isinstance(value, bytes) else orjson.dumps(value))
        else:
            setattr(msg, name, value)
    return msg


# --- framing --------------------------------------------------------------------------------------------------

def varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_BAD = DISCONNECTS.BAD_REQUEST
_MAX_VARINT_BYTES = 10


def _uvarint(frame: bytes, pos: int, end: int) -> tuple[int, int]:
    """The message length at ``pos`` and where its message starts; ProtocolError 3501 if it does not fit."""
    n = shift = 0
    while True:
        if pos >= end or shift >= 7 * _MAX_VARINT_BYTES:
            raise ProtocolError(_BAD.code, "bad request: truncated length")
        b = frame[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    if n > end - pos:
        raise ProtocolError(_BAD.code, "bad request: message past the end of the frame")
    return n, pos


def decode_commands(frame: bytes) -> list[dict]:
    """A binary frame's ``uvarint(len) || Command`` messages, as command dicts (an empty Command, the pong,
    is ``{}``). Malformed input raises ProtocolError 3501."""
    commands = []
    pos, end = 0, len(frame)
    while pos < end:
        n, pos = _uvarint(frame, pos, end)
        cmd = Command()
        try:
            cmd.ParseFromString(frame[pos:pos + n])
        except DecodeError:
            raise ProtocolError(_BAD.code, "bad request: invalid protobuf") from None
        pos += n
        commands.append(to_dict(cmd))
    if not commands:
        raise ProtocolError(_BAD.code, "bad request: empty frame")
    return commands


def iter_replies(frame: bytes):
    """A server frame's ``uvarint(len) || Reply`` messages as (message bytes, Reply): what a client reads (load
    generators, tests). Malformed input raises ProtocolError."""
    pos, end = 0, len(frame)
    while pos < end:
        n, pos = _uvarint(frame, pos, end)
        raw = frame[pos:pos + n]
        pos += n
        reply = Reply()
        reply.ParseFromString(raw)
        yield raw, reply


def encode_command(obj: dict) -> bytes:
    """A command dict as ``uvarint(len) || Command`` (what a client sends: load generators, tests)."""
    body = from_dict(Command(), obj).SerializeToString()
    return varint(len(body)) + body


def encode_reply(obj: dict) -> bytes:
    """A reply or push dict (``{"id": 1, "connect": {...}}``, ``{"push": {...}}``) as ``uvarint(len) || Reply``."""
    if len(obj) == 1 and "push" in obj:
        fast = _publication_push(obj["push"])
        if fast is not None:
            return varint(len(fast)) + fast
    body = from_dict(Reply(), obj).SerializeToString()
    return varint(len(body)) + body


# --- the hot path: a publication push, written by hand ----------------------------------------------------------
# The core encodes every publication once per wire format (relay/core); for protobuf subscribers this is that
# encoding. Field numbers as in SCHEMA: Reply.push 4; Push.id 1, channel 2, pub 4; Publication.data 4, info 5,
# offset 6, tags 7 (entries: key 1, value 2), delta 8; ClientInfo.user 1, client 2, conn_info 3, chan_info 4.
# tests/protocol/test_protobuf.py checks it parses to the same message as the generic encoder, for any input.

_TAGS = [bytes((t,)) for t in range(128)]
_PUB_KEYS = frozenset({"data", "offset", "info", "tags", "delta"})
_INFO_KEYS = frozenset({"user", "client", "conn_info", "chan_info"})


_VARINTS = [varint(n) for n in range(1 << 14)]  # the lengths of nearly every field: one lookup


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field (``tag`` = field number << 3 | 2, below 128)."""
    n = len(payload)
    return _TAGS[tag] + (_VARINTS[n] if n < 16384 else varint(n)) + payload


def _json(value: Any) -> bytes:
    return value if isinstance(value, bytes) else orjson.dumps(value)


def _client_info(info: dict) -> bytes | None:
    if not _INFO_KEYS.issuperset(info):
        return None
    out = b""
    if info.get("user"):
        out += _field(0x0A, info["user"].encode())
    if info.get("client"):
        out += _field(0x12, info["client"].encode())
    for tag, key in ((0x1A, "conn_info"), (0x22, "chan_info")):
        if key in info:
            out += _field(tag, _json(info[key]))
    return out


def _publication_push(push: dict) -> bytes | None:
    """``Reply{push: Push{channel, pub}}`` for a publication push, or None for any other shape (the generic
    encoder takes it)."""
    pub = push.get("pub")
    if len(push) != 2 or pub is None or not isinstance(pub, dict) or not _PUB_KEYS.issuperset(pub):
        return None
    channel = push.get("channel")
    cid = push.get("id")  # channel compaction: the channel's numeric id instead of its name
    if not isinstance(channel, str) and not (type(cid) is int and cid > 0):
        return None
    body = b""
    if "data" in pub:
        body += _field(0x22, _json(pub["data"]))
    info = pub.get("info")
    if info is not None:
        enc = _client_info(info) if isinstance(info, dict) else None
        if enc is None:
            return None
        body += _field(0x2A, enc)
    offset = pub.get("offset")
    if offset:
        if type(offset) is not int or offset < 0:
            return None
        body += b"\x30" + varint(offset)
    tags = pub.get("tags")
    if tags:
        for k, v in tags.items():
            body += _field(0x3A, _field(0x0A, k.encode()) + _field(0x12, v.encode()))
    if pub.get("delta"):
        body += b"\x40\x01"
    head = (b"\x08" + varint(cid)) if channel is None else (_field(0x12, channel.encode()) if channel else b"")
    return _field(0x22, head + _field(0x22, body))


#: the server's ping: an empty Reply
PING = encode_reply({})
