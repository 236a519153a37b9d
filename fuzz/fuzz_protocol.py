"""atheris fuzz target for relay's input parsers: WebSocket frames (compiled core), raw TCP frames,
the JSON and msgpack command codecs and the handshake parser; and, built from the fuzzer's choices,
streams of fragments and control frames, checked against the pure-Python twin and the memory bounds.

Run (see fuzz/README.md):  .venv/bin/python fuzz/fuzz_protocol.py -max_total_time=600 fuzz/corpus
Any exception other than the documented ProtocolError / HandshakeError is a finding.
"""

import sys

import atheris

with atheris.instrument_imports():
    from relay import core
    from relay.core import _core_py
    from relay.protocol.codec import JsonCodec, MsgpackCodec
    from relay.protocol.errors import ProtocolError
    from relay.protocol.tcp import TcpFrameReader
    from relay.protocol.websocket import HandshakeError, origin_allowed, parse_handshake

LIMIT = 4096
FRAGMENTS = 16


def fuzzed_frame(fdp: "atheris.FuzzedDataProvider") -> bytes:
    """One client frame from the fuzzer's choices: mostly valid shapes (continuations, pings, pongs, close,
    empty and 1-byte fragments), sometimes not (no mask, reserved bits, a control frame too long)."""
    opcode = fdp.PickValueInList([0x0, 0x0, 0x0, 0x1, 0x2, 0x8, 0x9, 0x9, 0xA, 0x3])
    fin = fdp.ConsumeBool()
    n = fdp.PickValueInList([0, 1, 1, 2, 125, 126, fdp.ConsumeIntInRange(0, 300)])
    payload = fdp.ConsumeBytes(n).ljust(n, b"a")
    rsv = 0x40 if fdp.ConsumeIntInRange(0, 30) == 0 else 0
    masked = fdp.ConsumeIntInRange(0, 30) != 0
    mbit = 0x80 if masked else 0
    length = bytes((mbit | n,)) if n < 126 else bytes((mbit | 126,)) + n.to_bytes(2, "big")
    head = bytes(((0x80 if fin else 0) | rsv | opcode,)) + length
    key = fdp.ConsumeBytes(4).ljust(4, b"\0") if masked else b""
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload)) if masked else payload
    return head + key + body


def run_reader(impl, stream: list[bytes]):
    """What a reader makes of ``stream`` fed chunk by chunk: its messages and its first error."""
    reader = impl.FrameReader(LIMIT, FRAGMENTS)
    out = []
    try:
        for chunk in stream:
            got = reader.feed(chunk)
            for _op, payload in got:
                assert len(payload) <= LIMIT
            out += got
            # held between feeds: at most a partial frame (<= LIMIT + 14) and a message being reassembled
            assert reader.buffered() <= 2 * LIMIT + 14
            if reader.error is not None:
                return out, (reader.error.code, reader.error.reason)
    except ProtocolError as e:
        return out, (e.code, e.reason)
    return out, None


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    target = fdp.ConsumeIntInRange(0, 5)
    if target == 5:  # fragments and control frames: both cores agree, and stay within their bounds
        frames = b"".join(fuzzed_frame(fdp) for _ in range(fdp.ConsumeIntInRange(1, 40)))
        step = fdp.ConsumeIntInRange(1, 64)
        stream = [frames[i:i + step] for i in range(0, len(frames), step)]
        assert run_reader(core, stream) == run_reader(_core_py, stream)
        return
    cuts = sorted(fdp.ConsumeIntInRange(0, 64) for _ in range(fdp.ConsumeIntInRange(0, 4)))
    body = fdp.ConsumeBytes(fdp.remaining_bytes())
    chunks, pos = [], 0
    for c in cuts:
        chunks.append(body[pos:pos + c])
        pos += c
    chunks.append(body[pos:])
    try:
        if target == 0:
            reader = core.FrameReader(LIMIT)
            for chunk in chunks:
                for _op, payload in reader.feed(chunk):
                    assert len(payload) <= LIMIT
                # a partial frame and a message being reassembled, never more
                assert reader.buffered() <= 2 * LIMIT + 14
        elif target == 1:
            reader = TcpFrameReader(LIMIT)
            for chunk in chunks:
                for frame in reader.feed(chunk):
                    assert len(frame) <= LIMIT
        elif target == 2:
            for cmd in JsonCodec.decode(body):
                assert isinstance(cmd, dict)
        elif target == 3:
            for cmd in MsgpackCodec.decode(body):
                assert isinstance(cmd, dict)
        else:
            hs = parse_handshake(body, "/connection/websocket", 8192, 64)
            if hs is not None:
                origin_allowed(hs.origin, hs.headers.get("host", ""), ["https://*.example.com"])
    except (ProtocolError, HandshakeError):
        pass


def main() -> None:
    print(f"fuzzing with the {core.IMPLEMENTATION} core", file=sys.stderr)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
