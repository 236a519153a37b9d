"""atheris fuzz target for relay's input parsers: WebSocket frames (compiled core), raw TCP frames,
the JSON and msgpack command codecs and the handshake parser.

Run (see fuzz/README.md):  .venv/bin/python fuzz/fuzz_protocol.py -max_total_time=600 fuzz/corpus
Any exception other than the documented ProtocolError / HandshakeError is a finding.
"""

import sys

import atheris

with atheris.instrument_imports():
    from relay import core
    from relay.protocol.codec import JsonCodec, MsgpackCodec
    from relay.protocol.errors import ProtocolError
    from relay.protocol.tcp import TcpFrameReader
    from relay.protocol.websocket import HandshakeError, origin_allowed, parse_handshake

LIMIT = 4096


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    target = fdp.ConsumeIntInRange(0, 4)
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
                assert reader.buffered() <= LIMIT + 14 + len(chunk)  # never more than one frame's worth
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
