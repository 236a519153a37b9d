"""Arbitrary bytes never crash the protocol layer: they parse, ask for more, or raise the documented error."""

import importlib

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.protocol.codec import JsonCodec, MsgpackCodec
from relay.protocol.errors import ProtocolError
from relay.protocol.tcp import TcpFrameReader
from relay.protocol.websocket import HandshakeError, parse_handshake
from tests.wsframes import client_frame

IMPLS = [importlib.import_module("relay.core._core_py")]
try:
    IMPLS.append(importlib.import_module("relay.core._core"))
except ImportError:  # pragma: no cover
    pass

frames = st.lists(st.tuples(st.binary(max_size=300), st.sampled_from([0, 1, 2, 8, 9, 10, 3]), st.booleans(),
                            st.booleans()), max_size=6)


def feed_all(impl, data: bytes, cuts: list[int]):
    r = impl.FrameReader(200)
    out = []
    pos = 0
    try:
        for c in sorted(set(cuts)) + [len(data)]:
            out += r.feed(data[pos:c])
            pos = max(pos, c)
        return ("ok", out, r.error.code if r.error is not None else None)
    except ProtocolError as e:
        return ("error", e.code)


@settings(max_examples=300, deadline=None)
@given(spec=frames, junk=st.binary(max_size=20), cuts=st.lists(st.integers(0, 2000), max_size=5))
def test_frame_reader_cores_agree_on_any_input(spec, junk, cuts):
    data = b"".join(client_frame(p, opcode=op, fin=fin, mask=mask) for p, op, fin, mask in spec) + junk
    results = [feed_all(impl, data, cuts) for impl in IMPLS]
    # both cores: same messages or the same close code, whatever the chunking
    assert all(r == results[0] for r in results)
    if results[0][0] == "error":
        assert results[0][1] in (1002, 1007, 1009)


fragment_streams = st.lists(st.tuples(st.binary(max_size=3), st.sampled_from([0, 0, 0, 1, 2, 9, 10]), st.booleans()),
                            min_size=1, max_size=40)


@settings(max_examples=300, deadline=None)
@given(spec=fragment_streams, step=st.integers(1, 64))
def test_fragment_and_control_frame_streams(spec, step):
    """Long streams of tiny fragments with pings and pongs among them, fed in small pieces: both cores give
    the same messages or close code, a message has at most max_fragments frames, and what a reader holds
    between feeds is never more than a partial frame and the message being reassembled."""
    data = b"".join(client_frame(p, opcode=op, fin=fin or op >= 8) for p, op, fin in spec)
    results = []
    for impl in IMPLS:
        r = impl.FrameReader(200, 8)
        out, err = [], None
        try:
            for i in range(0, len(data), step):
                out += r.feed(data[i:i + step])
                assert r.buffered() <= 2 * 200 + 14
                if r.error is not None:
                    err = r.error.code
                    break
        except ProtocolError as e:
            err = e.code
        results.append((out, err))
    assert all(x == results[0] for x in results)
    assert results[0][1] in (None, 1002, 1007, 1009)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_codecs_only_raise_protocol_error(data):
    for codec in (JsonCodec, MsgpackCodec):
        try:
            cmds = codec.decode(data)
            assert all(isinstance(c, dict) for c in cmds)
        except ProtocolError as e:
            assert e.code == 3501


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=100), st.integers(1, 50))
def test_tcp_reader_only_raises_protocol_error(data, limit):
    try:
        TcpFrameReader(limit).feed(data)
    except ProtocolError as e:
        assert e.code == 3501


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_handshake_parser_only_raises_handshake_error(data):
    try:
        parse_handshake(b"GET /connection/websocket HTTP/1.1\r\n" + data, "/connection/websocket", 8192, 64)
    except HandshakeError as e:
        assert 400 <= e.status < 500
