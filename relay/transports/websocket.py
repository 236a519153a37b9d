"""WebSocket transport: an asyncio protocol feeding the handshake parser and the core's FrameReader."""

from __future__ import annotations

import asyncio
import logging

from relay.codes import WS_CLOSE
from relay.core import WIRE_WS, FrameReader, ws_frame
from relay.protocol.errors import ProtocolError
from relay.protocol.websocket import (HandshakeError, accept_response, close_frame_payload, origin_allowed,
                                      parse_close_payload, parse_handshake)

__all__ = ["WebSocketProtocol"]

log = logging.getLogger("relay.ws")

OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x2, 0x8, 0x9, 0xA
_HANDSHAKE, _OPEN, _CLOSING, _CLOSED = range(4)


class WebSocketProtocol(asyncio.Protocol):
    __slots__ = ("node", "transport", "state", "buf", "reader", "session", "_timer", "remote", "_admitted",
                 "echo")

    def __init__(self, node) -> None:
        self.node = node
        self.transport: asyncio.Transport | None = None
        self.state = _HANDSHAKE
        self.buf: bytearray | None = bytearray()
        self.reader = None
        self.session = None
        self._timer: asyncio.TimerHandle | None = None
        self.remote = ""
        self._admitted = False
        self.echo = False  # the conformance-test echo endpoint (ws_echo_path)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport
        cfg = self.node.cfg
        transport.set_write_buffer_limits(high=cfg.client_write_high_water)
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if peer else ""
        self.node.tune_socket(transport)
        refused = self.node.admit(self.remote)
        if refused is not None:
            self._refuse(HandshakeError(503, "server full") if refused == "full" else
                         HandshakeError(429, "too many connections from this address"))
            return
        self._admitted = True
        self._timer = asyncio.get_running_loop().call_later(cfg.handshake_timeout, self._handshake_timeout)

    def _handshake_timeout(self) -> None:
        if self.state == _HANDSHAKE:
            self.node.stats.handshake_failure("timeout")
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.state == _OPEN:
            self._frames(data)
        elif self.state == _HANDSHAKE:
            self._handshake(data)
        # _CLOSING: our close frame is out; input is discarded until the peer closes

    def eof_received(self) -> bool:
        return False  # close our side too

    def _handshake(self, data: bytes) -> None:
        cfg = self.node.cfg
        self.buf += data
        try:
            paths = (cfg.ws_path, cfg.ws_echo_path) if cfg.ws_echo_path else cfg.ws_path
            hs = parse_handshake(self.buf, paths, cfg.max_handshake_size, cfg.max_handshake_headers)
        except HandshakeError as e:
            self.node.stats.handshake_failure(f"http_{e.status}")
            self._refuse(e)
            return
        if hs is None:
            return
        if not origin_allowed(hs.origin, hs.headers.get("host", ""), cfg.allowed_origins):
            self.node.stats.handshake_failure("origin")
            self._refuse(HandshakeError(403, "origin not allowed"))
            return
        if self.node.draining:
            self.node.stats.handshake_failure("draining")
            self._refuse(HandshakeError(503, "shutting down"))
            return
        self._timer.cancel()
        rest = bytes(self.buf[hs.consumed:])
        self.buf = None
        self.transport.write(accept_response(hs.key))
        self.state = _OPEN
        self.reader = FrameReader(cfg.max_ws_message_size)
        if cfg.ws_echo_path and hs.path.split("?", 1)[0] == cfg.ws_echo_path:
            self.echo = True
        else:
            self.session = self.node.new_session(self, self.transport, WIRE_WS, self.remote)
            if self.node.proxy is not None:  # what the event proxy may forward to the backend
                self.session.headers = self.node.proxy.forward(hs.headers)
        if rest:
            self._frames(rest)

    def _refuse(self, err: HandshakeError) -> None:
        """Answer the handshake with an HTTP error, then half-close and discard the rest of the request,
        so a client still sending (2,000 headers, a huge header) reads the answer instead of a RST."""
        self.state = _CLOSING
        self.buf = None
        if self._timer is not None:
            self._timer.cancel()
        self.transport.write(err.response())
        if self.transport.can_write_eof():
            self.transport.write_eof()
        else:
            self.transport.close()
        asyncio.get_running_loop().call_later(self.node.cfg.shutdown_timeout, self._abort_if_open)

    def _frames(self, data: bytes) -> None:
        try:
            messages = self.reader.feed(data)
        except ProtocolError as e:
            self._fail(e.code, e.reason)
            return
        session = self.session
        for op, payload in messages:
            if self.state != _OPEN:
                return
            if self.echo and op in (OP_TEXT, OP_BINARY):
                self.transport.write(ws_frame(payload, op))
            elif op == OP_TEXT:
                session.feed(payload)
            elif op == OP_PING:
                self.transport.write(ws_frame(payload, OP_PONG))  # RFC 6455 5.5.2
            elif op == OP_CLOSE:
                self._peer_closed(payload)
            elif op == OP_BINARY:
                self._fail(WS_CLOSE.UNSUPPORTED_DATA, "binary messages are not supported (JSON protocol)")
            # OP_PONG: unsolicited pongs are allowed and ignored (RFC 6455 5.5.3)
        err = self.reader.error
        if err is not None and self.state == _OPEN:  # a violation after the valid messages above
            self._fail(err.code, err.reason)

    def _peer_closed(self, payload: bytes) -> None:
        """RFC 6455 5.5.1: answer a close frame with one, then close the TCP connection."""
        try:
            parsed = parse_close_payload(payload)
        except (ValueError, UnicodeDecodeError):
            self._fail(WS_CLOSE.PROTOCOL_ERROR, "invalid close frame")
            return
        code = parsed[0] if parsed else WS_CLOSE.NORMAL
        self.state = _CLOSING
        frame = ws_frame(close_frame_payload(code, ""), OP_CLOSE)
        if self.session is not None:
            self.session.conn.close(frame)
            self.session.on_closed()
        else:
            self.transport.write(frame)
        self.transport.close()

    def _fail(self, code: int, reason: str) -> None:
        self.node.stats.disconnect(code)
        self.close_with(code, reason, flush=True)
        if self.session is not None:
            self.session.on_closed()

    def close_with(self, code: int, reason: str, flush: bool = True) -> None:
        """Send a close frame with ``code`` after what is queued (unless ``flush`` is False), then close."""
        if self.state != _OPEN:
            return
        self.state = _CLOSING
        frame = ws_frame(close_frame_payload(code, reason), OP_CLOSE)
        if self.session is not None:
            self.session.conn.close(frame, flush)
        else:
            self.transport.write(frame)
        # Half-close and discard what the peer still sends: closing with unread input would
        # make the kernel send RST and the peer could lose our close frame.
        if self.transport.can_write_eof():
            self.transport.write_eof()
        else:
            self.transport.close()
        # a peer that does not read lets the buffer never drain: abort after the shutdown timeout
        loop = asyncio.get_running_loop()
        loop.call_later(self.node.cfg.shutdown_timeout, self._abort_if_open)

    def _abort_if_open(self) -> None:
        if self.state != _CLOSED and self.transport is not None:
            self.transport.abort()

    def pause_writing(self) -> None:
        if self.session is not None:
            self.session.pause_writing()

    def resume_writing(self) -> None:
        if self.session is not None:
            self.session.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = _CLOSED
        if self._admitted:
            self._admitted = False
            self.node.release_connection(self.remote)
        if self._timer is not None:
            self._timer.cancel()
        if self.session is not None:
            self.session.conn.close(b"", False)
            self.session.on_closed()
