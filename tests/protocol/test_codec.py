"""Command codecs: JSON lines and msgpack, and their malformed inputs."""

import msgpack
import pytest

from relay.protocol.codec import JsonCodec, MsgpackCodec
from relay.protocol.errors import ProtocolError


def test_json_batch():
    assert JsonCodec.decode(b'{"id":1,"connect":{}}\n{"id":2,"subscribe":{"channel":"a"}}\n') == [
        {"id": 1, "connect": {}}, {"id": 2, "subscribe": {"channel": "a"}}]
    assert JsonCodec.decode(b"{}") == [{}]
    assert JsonCodec.encode({"id": 1, "publish": {}}) == b'{"id":1,"publish":{}}'


@pytest.mark.parametrize("bad", [b"{", b"[1,2]", b'"str"', b"{}\nnot json", b"\xff"])
def test_json_malformed(bad):
    with pytest.raises(ProtocolError) as e:
        JsonCodec.decode(bad)
    assert e.value.code == 3501


def test_msgpack_roundtrip():
    body = msgpack.packb({"id": 3, "publish": {"channel": "a", "data": {"k": [1, 2]}}})
    assert MsgpackCodec.decode(body) == [{"id": 3, "publish": {"channel": "a", "data": {"k": [1, 2]}}}]
    item = MsgpackCodec.encode({"id": 3, "publish": {}})
    assert int.from_bytes(item[:4], "big") == len(item) - 4
    assert msgpack.unpackb(item[4:]) == {"id": 3, "publish": {}}


@pytest.mark.parametrize("bad", [b"\xc1", msgpack.packb([1, 2]), msgpack.packb({1: 2}), b"\x81"])
def test_msgpack_malformed(bad):
    with pytest.raises(ProtocolError) as e:
        MsgpackCodec.decode(bad)
    assert e.value.code == 3501
