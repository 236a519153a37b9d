"""RFC 6455 opening handshake, sans-I/O.

``parse_handshake(buf, limits)`` looks at the bytes received so far and returns
``None`` (need more data), or a ``Handshake`` (a valid upgrade request), or
raises ``HandshakeError`` carrying the HTTP status and the response to send.
Header count and size are checked before anything is parsed further.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

__all__ = ["Handshake", "HandshakeError", "parse_handshake", "accept_response", "close_frame_payload",
           "parse_close_payload", "GUID", "origin_allowed", "SUBPROTOCOLS", "client_protocol"]

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 1.3


@dataclass(frozen=True, slots=True)
class Handshake:
    path: str
    headers: dict[str, str]  # lower-cased names; repeated headers joined with ", "
    key: str
    consumed: int  # bytes of the buffer taken by the request

    @property
    def origin(self) -> str | None:
        return self.headers.get("origin")


class HandshakeError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason

    def response(self) -> bytes:
        body = self.reason.encode() + b"\n"
        phrase = {400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
                  426: "Upgrade Required", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
                  503: "Service Unavailable"}.get(self.status, "Error")
        head = (f"HTTP/1.1 {self.status} {phrase}\r\nContent-Type: text/plain\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n")
        if self.status == 426:
            head += "Sec-WebSocket-Version: 13\r\n"
        return head.encode() + b"\r\n" + body


def parse_handshake(buf: bytes | bytearray, path: str | tuple[str, ...], max_size: int,
                    max_headers: int) -> Handshake | None:
    """Parse an HTTP/1.1 upgrade request (RFC 6455 4.2.1) for ``path`` (or one of several)."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > max_size:
            raise HandshakeError(431, "request headers too large")
        return None
    if end + 4 > max_size:
        raise HandshakeError(431, "request headers too large")
    try:
        text = bytes(buf[:end]).decode("latin-1")
    except Exception:  # pragma: no cover - latin-1 decodes anything
        raise HandshakeError(400, "bad request") from None
    lines = text.split("\r\n")
    if len(lines) - 1 > max_headers:
        raise HandshakeError(431, "too many request headers")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HandshakeError(400, "bad request line")
    method, target, version = parts
    if version != "HTTP/1.1":
        raise HandshakeError(400, "HTTP/1.1 required")
    if method != "GET":
        raise HandshakeError(405, "method not allowed")
    req_path = target.split("?", 1)[0]
    if req_path != path and req_path not in path:
        raise HandshakeError(404, "not found")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HandshakeError(400, "malformed header")
        name = name.lower()
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    if "websocket" not in headers.get("upgrade", "").lower():
        raise HandshakeError(426, "websocket upgrade required")
    if "upgrade" not in [t.strip() for t in headers.get("connection", "").lower().split(",")]:
        raise HandshakeError(400, "Connection header must include Upgrade")
    if headers.get("sec-websocket-version") != "13":
        raise HandshakeError(426, "unsupported websocket version")
    key = headers.get("sec-websocket-key", "")
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            raise ValueError
    except ValueError:
        raise HandshakeError(400, "invalid Sec-WebSocket-Key") from None
    return Handshake(path=target, headers=headers, key=key, consumed=end + 4)


#: the WebSocket subprotocols relay speaks, as Centrifugo names them, in its order of preference
SUBPROTOCOLS = ("centrifuge-json", "centrifuge-protobuf")


def client_protocol(hs: Handshake) -> tuple[str, str | None]:
    """Which client protocol a handshake asks for, as Centrifugo decides: ``?format=protobuf`` or
    ``?cf_protocol=protobuf`` in the query, else the first of the client's ``Sec-WebSocket-Protocol`` offers
    that relay speaks, else JSON. Returns ("json" or "protobuf", the subprotocol to echo or None)."""
    query = parse_qs(urlsplit(hs.path).query)
    offered = [p.strip() for p in hs.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
    chosen = next((p for p in offered if p in SUBPROTOCOLS), None)
    if "protobuf" in query.get("format", ()) or "protobuf" in query.get("cf_protocol", ()):
        return "protobuf", chosen
    return ("protobuf" if chosen == "centrifuge-protobuf" else "json"), chosen


def accept_response(key: str, subprotocol: str | None = None) -> bytes:
    """The 101 response for ``key`` (RFC 6455 4.2.2), echoing ``subprotocol`` if one was chosen (a browser
    fails a handshake that offered subprotocols and got none back). No extension."""
    accept = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
    chosen = f"Sec-WebSocket-Protocol: {subprotocol}\r\n" if subprotocol else ""
    return (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept}\r\n{chosen}\r\n"
    ).encode()


def close_frame_payload(code: int, reason: str) -> bytes:
    """Close frame body (RFC 6455 5.5.1): 2-byte code + UTF-8 reason, at most 125 bytes."""
    r = reason.encode("utf-8")[:123]
    return code.to_bytes(2, "big") + r


def parse_close_payload(payload: bytes) -> tuple[int, str] | None:
    """Code and reason of a received close frame; None when it had no body. Raises ValueError if invalid."""
    if not payload:
        return None
    if len(payload) == 1:
        raise ValueError("close frame body of one byte")
    code = int.from_bytes(payload[:2], "big")
    # RFC 6455 7.4.1/7.4.2: 1005, 1006, 1015 and unassigned codes never travel on the wire
    if code < 1000 or code in (1004, 1005, 1006, 1015) or 1016 <= code < 3000 or code >= 5000:
        raise ValueError("invalid close code")
    return code, payload[2:].decode("utf-8")


_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _split_origin(origin: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of a serialized origin (RFC 6454 6.2), lower-cased; None if malformed."""
    try:
        u = urlsplit(origin.strip().lower())
        port = u.port
    except ValueError:
        return None
    if u.scheme not in _DEFAULT_PORTS or not u.hostname or u.username or u.password or u.path or u.query \
            or u.fragment:
        return None
    return u.scheme, u.hostname, port or _DEFAULT_PORTS[u.scheme]


def origin_allowed(origin: str | None, host_header: str, allowed: list[str] | tuple[str, ...]) -> bool:
    """RFC 6455 10.2 origin check for a browser handshake.

    No Origin header (not a browser): allowed. ``allowed`` empty: the origin's host and
    port must be the Host the client connected to (same host). Otherwise an entry must
    match exactly in scheme, host and port; ``*.example.com`` matches subdomains only;
    ``*`` allows every origin. The opaque origin ``null`` is always refused.
    """
    if origin is None or "*" in allowed:
        return True
    got = _split_origin(origin)
    if got is None:
        return False
    scheme, host, port = got
    if not allowed:
        same = _split_origin(f"{scheme}://{host_header.strip()}")
        return same is not None and same[1:] == (host, port)
    for pattern in allowed:
        wildcard = "://*." in pattern
        want = _split_origin(pattern.replace("://*.", "://", 1))
        if want is None or want[0] != scheme or want[2] != port:
            continue
        if host == want[1] if not wildcard else host.endswith("." + want[1]):
            return True
    return False
