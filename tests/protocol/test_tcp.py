"""Raw TCP framing, without an event loop."""

import pytest

from relay.protocol.errors import ProtocolError
from relay.protocol.tcp import TcpFrameReader


def frame(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


def test_frames_split_anywhere():
    data = frame(b"abc") + frame(b"") + frame(b"x" * 300)
    for step in (1, 2, 3, 7, len(data)):
        r = TcpFrameReader(1000)
        out = []
        for i in range(0, len(data), step):
            out += r.feed(data[i:i + step])
        assert out == [b"abc", b"", b"x" * 300]
        assert r.buffered() == 0


def test_absurd_length_refused_from_header():
    r = TcpFrameReader(1000)
    with pytest.raises(ProtocolError) as e:
        r.feed(b"\xff\xff\xff\xff")  # 4 GiB announced, no body sent
    assert e.value.code == 3501 and "too big" in e.value.reason
