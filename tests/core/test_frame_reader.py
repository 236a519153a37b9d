"""RFC 6455 client-frame parsing, both cores."""

import pytest

from relay.protocol.errors import ProtocolError
from tests.wsframes import client_frame


def test_single_and_split_frames(impl):
    r = impl.FrameReader(1000)
    data = client_frame(b"hello") + client_frame(b"world", opcode=2)
    assert r.feed(data[:3]) == []
    assert r.feed(data[3:]) == [(1, b"hello"), (2, b"world")]
    assert r.buffered() == 0


def test_byte_by_byte(impl):
    r = impl.FrameReader(100000)
    payload = bytes(range(256)) * 300  # 16-bit and 64-bit length paths; unmask with odd tails
    payload = payload[:70001]
    data = client_frame(payload, opcode=2)
    out = []
    for i in range(0, len(data), 997):
        out += r.feed(data[i:i + 997])
    assert out == [(2, payload)]


def test_fragmented_message_with_interleaved_ping(impl):
    r = impl.FrameReader(1000)
    data = (client_frame(b"he", fin=False) + client_frame(b"ping!", opcode=9)
            + client_frame(b"ll", opcode=0, fin=False) + client_frame(b"o", opcode=0))
    assert r.feed(data) == [(9, b"ping!"), (1, b"hello")]


@pytest.mark.parametrize("frame,code", [
    (client_frame(b"x", mask=False), 1002),                        # RFC 6455 5.1: clients mask
    (client_frame(b"x", rsv=1), 1002),                             # no extension negotiated
    (client_frame(b"x", opcode=3), 1002),                          # reserved opcode
    (client_frame(b"x", opcode=0), 1002),                          # continuation with nothing to continue
    (client_frame(b"x" * 126, opcode=9), 1002),                    # control frame > 125 bytes
    (client_frame(b"x", opcode=9, fin=False), 1002),               # fragmented control frame
    (client_frame(b"\xff\xfe"), 1007),                             # invalid UTF-8 in text
    (client_frame(b"a" * 101), 1009),                              # over max message size
])
def test_violations(impl, frame, code):
    r = impl.FrameReader(100)
    with pytest.raises(ProtocolError) as e:
        r.feed(frame)
    assert e.value.code == code


def test_size_checked_from_header_before_payload(impl):
    r = impl.FrameReader(1000)
    head = client_frame(b"", length_override=2**40)[:10]  # claims a terabyte, sends only the header
    with pytest.raises(ProtocolError) as e:
        r.feed(head)
    assert e.value.code == 1009


def test_fragments_count_towards_limit(impl):
    r = impl.FrameReader(10)
    r.feed(client_frame(b"123456", fin=False))
    with pytest.raises(ProtocolError) as e:
        r.feed(client_frame(b"123456", opcode=0))
    assert e.value.code == 1009


def test_new_message_during_fragmented_one(impl):
    r = impl.FrameReader(100)
    r.feed(client_frame(b"ab", fin=False))
    with pytest.raises(ProtocolError) as e:
        r.feed(client_frame(b"cd"))
    assert e.value.code == 1002


def test_utf8_split_across_fragments_is_valid(impl):
    r = impl.FrameReader(100)
    s = "é".encode()
    assert r.feed(client_frame(s[:1], fin=False) + client_frame(s[1:], opcode=0)) == [(1, s)]


def test_unmasking_never_mutates_shared_bytes(impl):
    """Regression: unmasking in place corrupted CPython's cached 1-byte bytes objects."""
    r = impl.FrameReader(100)
    for value in range(256):
        payload = bytes([value])
        assert r.feed(client_frame(payload, opcode=2)) == [(2, payload)]
    # every 1-byte singleton still holds its own value
    assert all(bytes([i])[0] == i for i in range(256))


def test_valid_messages_before_a_violation_come_first(impl):
    r = impl.FrameReader(100)
    out = r.feed(client_frame(b"first") + client_frame(b"x", rsv=2) + client_frame(b"never"))
    assert out == [(1, b"first")] and r.error.code == 1002
    with pytest.raises(ProtocolError):
        r.feed(client_frame(b"more"))


def test_fragments_are_reassembled_in_one_buffer_without_overhead(impl):
    """1-byte fragments cost 1 byte each while the message is incomplete (no object per fragment): what
    the reader holds is the payload so far, whatever the fragmentation."""
    r = impl.FrameReader(100000, 100000)
    payload = bytes(range(256)) * 40
    frames = [client_frame(payload[:1], opcode=2, fin=False)]  # binary: the bytes are not UTF-8
    frames += [client_frame(payload[i:i + 1], opcode=0, fin=False) for i in range(1, len(payload) - 1)]
    assert r.feed(b"".join(frames)) == []
    assert r.buffered() == len(payload) - 1
    assert r.feed(client_frame(payload[-1:], opcode=0)) == [(2, payload)]
    assert r.buffered() == 0


def test_endless_empty_continuations_are_refused(impl):
    """A text frame and then empty continuation frames forever: each adds nothing to the payload, so the
    size limit never trips; the fragment count does (1009) once the message reaches max_fragments frames."""
    r = impl.FrameReader(1000, 16)
    assert r.feed(client_frame(b"", fin=False) + client_frame(b"", opcode=0, fin=False) * 14) == []
    with pytest.raises(ProtocolError) as e:
        r.feed(client_frame(b"", opcode=0, fin=False) * 2)
    assert e.value.code == 1009 and "fragments" in e.value.reason
    ok = impl.FrameReader(1000, 16)  # exactly max_fragments frames is a message
    assert ok.feed(client_frame(b"a", fin=False) + client_frame(b"b", opcode=0, fin=False) * 14
                   + client_frame(b"c", opcode=0)) == [(1, b"a" + b"b" * 14 + b"c")]
    assert impl.FrameReader(10).max_fragments == impl.FRAGMENTS_MAX


def test_control_frames_between_fragments_do_not_count_as_fragments(impl):
    r = impl.FrameReader(1000, 2)
    data = (client_frame(b"a", fin=False) + client_frame(b"p", opcode=9) * 5 + client_frame(b"b", opcode=0))
    assert r.feed(data) == [(9, b"p")] * 5 + [(1, b"ab")]
