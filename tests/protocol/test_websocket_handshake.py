"""RFC 6455 opening handshake, without an event loop."""

import base64
import hashlib

import pytest

from relay.protocol.websocket import (GUID, HandshakeError, accept_response, close_frame_payload,
                                      parse_close_payload, parse_handshake)

KEY = base64.b64encode(b"0123456789abcdef").decode()


def request(path="/connection/websocket", method="GET", version="HTTP/1.1", **headers):
    h = {"Host": "x", "Upgrade": "websocket", "Connection": "keep-alive, Upgrade",
         "Sec-WebSocket-Key": KEY, "Sec-WebSocket-Version": "13"}
    for k, v in headers.items():
        k = k.replace("_", "-")
        if v is None:
            h.pop(k, None)
        else:
            h[k] = v
    lines = [f"{method} {path} {version}"] + [f"{k}: {v}" for k, v in h.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def parse(buf, max_size=8192, max_headers=64):
    return parse_handshake(buf, "/connection/websocket", max_size, max_headers)


def test_valid_request_and_accept_key():
    req = request("/connection/websocket?format=json", Origin="https://shop.example.com")
    hs = parse(req + b"\x81\x80")
    assert hs.consumed == len(req)
    assert hs.origin == "https://shop.example.com"
    resp = accept_response(hs.key)
    expected = base64.b64encode(hashlib.sha1(KEY.encode() + GUID).digest())
    assert resp.startswith(b"HTTP/1.1 101 ") and b"Sec-WebSocket-Accept: " + expected in resp
    # RFC 6455 1.3 example
    assert b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in accept_response("dGhlIHNhbXBsZSBub25jZQ==")


def test_incomplete_request_needs_more_data():
    assert parse(request()[:-2]) is None


@pytest.mark.parametrize("req,status", [
    (request(path="/other"), 404),
    (request(method="POST"), 405),
    (request(version="HTTP/1.0"), 400),
    (request(Upgrade=None), 426),
    (request(Connection="keep-alive"), 400),
    (request(Sec_WebSocket_Version="8"), 426),
    (request(Sec_WebSocket_Key="short"), 400),
    (request(Sec_WebSocket_Key=None), 400),
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET /connection/websocket HTTP/1.1\r\nbad header line\r\n\r\n", 400),
])
def test_bad_requests(req, status):
    with pytest.raises(HandshakeError) as e:
        parse(req)
    assert e.value.status == status
    assert e.value.response().startswith(f"HTTP/1.1 {status} ".encode())


def test_header_limits():
    many = request(**{f"X-H{i}": "v" for i in range(70)})
    with pytest.raises(HandshakeError) as e:
        parse(many)
    assert e.value.status == 431
    with pytest.raises(HandshakeError) as e:
        parse(b"GET / HTTP/1.1\r\nX: " + b"a" * 9000)  # no end of headers in sight
    assert e.value.status == 431
    with pytest.raises(HandshakeError) as e:
        parse(request(X_Big="a" * 9000))
    assert e.value.status == 431


def test_close_payloads():
    assert close_frame_payload(3008, "slow") == b"\x0b\xc0slow"
    assert len(close_frame_payload(1000, "é" * 200)) <= 125
    assert parse_close_payload(b"") is None
    assert parse_close_payload(b"\x03\xe8bye") == (1000, "bye")
    for bad in (b"\x03", b"\x03\xed", b"\x00\x01", b"\x13\x88", b"\x03\xe8\xff"):
        with pytest.raises((ValueError, UnicodeDecodeError)):
            parse_close_payload(bad)
