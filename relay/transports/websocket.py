"""WebSocket transport: an asyncio protocol feeding the handshake parser and the core's FrameReader."""

from __future__ import annotations

import asyncio
import logging

from relay.codes import WS_CLOSE
from relay.core import WIRE_WS, WIRE_WS_PB, FrameReader, ws_frame
from relay.protocol.errors import ProtocolError
from relay.protocol.websocket import (HandshakeError, accept_response, client_protocol, close_frame_payload,
                                      origin_allowed, parse_close_payload, parse_handshake)

__all__ = ["WebSocketProtocol"]

log = logging.getLogger("relay.ws")

OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x2, 0x8, 0x9, 0xA
_HANDSHAKE, _OPEN, _CLOSING, _CLOSED = range(4)


class WebSocketProtocol(asyncio.Protocol):
    __slots__ = ("node", "transport", "state", "buf", "reader", "session", "_timer", "remote", "_admitted",
                 "echo", "data_op", "_pong", "_paused", "_discarded")

    def __init__(self, node) -> None:
        self.node = node
        self.transport: asyncio.Transport | None = None
        self.state = _HANDSHAKE
        self.buf: bytearray | None = bytearray()
        self.reader = None
        self.session = None
        self._timer: asyncio.TimerHandle | None = None
        self.remote = ""
        # "handshake" (pending, node.admission.handshaking), then "open" (node.admission.per_ip)
        self._admitted: str | None = None
        self.echo = False  # the conformance-test echo endpoint (ws_echo_path)
        self.data_op = OP_TEXT  # the message type of the client protocol (binary: protobuf)
        self._pong: bytes | None = None  # the latest ping not answered while the peer was not reading
        self._paused = False  # the transport's buffer is full: the peer is not reading
        self._discarded = 0  # bytes received after our close frame or refusal

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport
        cfg = self.node.cfg
        transport.set_write_buffer_limits(high=cfg.client_write_high_water)
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if peer else ""
        self.node.tune_socket(transport)
        if self.node.admission.admit_handshake(self.remote, self) is not None:
            self._refuse(HandshakeError(503, "server full"))
            return
        self._admitted = "handshake"
        self._timer = asyncio.get_running_loop().call_later(cfg.handshake_timeout, self._handshake_timeout)

    def evict(self) -> None:
        """Closed by the node to make room for a newer handshake from the same address (already released)."""
        self._admitted = None
        if self._timer is not None:
            self._timer.cancel()
        self.transport.abort()

    def _handshake_timeout(self) -> None:
        if self.state == _HANDSHAKE:
            self.node.stats.handshake_failure("timeout")
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.state == _OPEN:
            self._frames(data)
        elif self.state == _HANDSHAKE:
            self._handshake(data)
        elif self.state == _CLOSING:
            # Our close frame (or HTTP refusal) is out; input is read and discarded until the peer closes,
            # so that unread input does not turn our close into a RST. A peer that keeps sending more than
            # a message's worth after it is not closing: it is aborted, not read at its own pace forever.
            self._discarded += len(data)
            if self._discarded > self.node.cfg.max_ws_message_size:
                self.transport.abort()

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
        self._admitted = None
        if self.node.admission.handshake_done(self.remote, self, True) is not None:
            self._refuse(HandshakeError(429, "too many connections from this address"))
            return
        self._admitted = "open"
        self._timer.cancel()
        rest = bytes(self.buf[hs.consumed:])
        self.buf = None
        protocol, subprotocol = client_protocol(hs)
        self.data_op = OP_BINARY if protocol == "protobuf" else OP_TEXT  # the message type the protocol uses
        self.transport.write(accept_response(hs.key, subprotocol))
        self.state = _OPEN
        self.reader = FrameReader(cfg.max_ws_message_size, cfg.max_ws_fragments)
        if cfg.ws_echo_path and hs.path.split("?", 1)[0] == cfg.ws_echo_path:
            self.echo = True
        else:
            wire = WIRE_WS_PB if protocol == "protobuf" else WIRE_WS
            self.session = self.node.new_session(self, self.transport, wire, self.remote)
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
            elif op == self.data_op:
                session.feed(payload)
            elif op == OP_PING:
                self._ping(payload)
            elif op == OP_CLOSE:
                self._peer_closed(payload)
            elif op in (OP_TEXT, OP_BINARY):  # the other data type than the protocol's
                self._fail(WS_CLOSE.UNSUPPORTED_DATA, "binary messages need the protobuf protocol"
                           if op == OP_BINARY else "text messages need the JSON protocol")
            elif session is not None:  # OP_PONG: allowed unsolicited and ignored (RFC 6455 5.5.3), but counted
                session.control_frame()
        err = self.reader.error
        if err is not None and self.state == _OPEN:  # a violation after the valid messages above
            self._fail(err.code, err.reason)

    def _ping(self, payload: bytes) -> None:
        """RFC 6455 5.5.2: a ping is answered with a pong, at once and in order with the rest. A ping is a
        command (it counts toward client_command_rate, and a flood of them is disconnected with 3013 like
        any other). While the peer does not read (the transport's buffer is full), only the latest ping
        keeps a pong (5.5.3 allows it), sent when it reads again: one pending pong per connection, at most
        125 bytes, instead of pongs piling up in memory."""
        if self.session is not None and not self.session.control_frame():
            return
        if self._paused:
            self._pong = payload
        else:
            self.transport.write(ws_frame(payload, OP_PONG))

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
        self._paused = True
        if self.session is not None:
            self.session.pause_writing()

    def resume_writing(self) -> None:
        self._paused = False
        if self.session is not None:
            self.session.resume_writing()
        if self._pong is not None and self.state == _OPEN:
            payload, self._pong = self._pong, None
            self.transport.write(ws_frame(payload, OP_PONG))

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = _CLOSED
        if self._admitted == "handshake":
            self.node.admission.handshake_done(self.remote, self, False)
        elif self._admitted == "open":
            self.node.admission.release(self.remote)
        self._admitted = None
        if self._timer is not None:
            self._timer.cancel()
        if self.session is not None:
            self.session.conn.close(b"", False)
            self.session.on_closed()
