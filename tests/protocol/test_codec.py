"""Command codecs: JSON lines and msgpack, and their malformed inputs."""

import msgpack
import pytest

from relay.protocol.codec import JsonCodec, MsgpackCodec, json_exact
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


@pytest.mark.parametrize("data,exact", [
    ({"a": [1, 2.5, "x", None, True]}, True),
    (1e308, True),
    (float("nan"), False),
    (float("inf"), False),
    ([0, [1, [2, {"k": -float("inf")}]]], False),
    (b"bytes", False),
    ({1: "non-str key"}, False),
])
def test_json_exact(data, exact):
    """What a msgpack client publishes must reach JSON clients as the same value."""
    assert json_exact(data) is exact


def test_json_exact_refuses_nesting_deeper_than_json_encoders_allow():
    deep: list = []
    for _ in range(300):
        deep = [deep]
    assert json_exact(deep) is False
