"""Raw TCP transport: length-prefixed msgpack frames; disconnects are a ``disconnect`` push then close."""

from __future__ import annotations

import asyncio

from relay.codes import DISCONNECTS, Disconnect
from relay.core import WIRE_TCP
from relay.protocol.codec import MsgpackCodec
from relay.protocol.errors import ProtocolError
from relay.protocol.tcp import TcpFrameReader

__all__ = ["TcpProtocol"]


class TcpProtocol(asyncio.Protocol):
    __slots__ = ("node", "transport", "reader", "session", "open", "remote", "_discarded")

    def __init__(self, node) -> None:
        self.node = node
        self.transport: asyncio.Transport | None = None
        self.reader = TcpFrameReader(node.cfg.max_tcp_frame_size)
        self.session = None
        self.open = False
        self.remote = ""
        self._discarded = 0  # bytes received after our disconnect push

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if peer else ""
        self.node.tune_socket(transport)
        refused = self.node.admission.admit(self.remote)
        if refused is not None:
            d = DISCONNECTS.SERVER_FULL if refused == "full" else DISCONNECTS.CONNECTION_LIMIT
            transport.write(self._disconnect_push(d.code, d.reason))
            transport.close()
            self.transport = None
            return
        self.open = True
        transport.set_write_buffer_limits(high=self.node.cfg.client_write_high_water)
        self.session = self.node.new_session(self, transport, WIRE_TCP, self.remote)

    def data_received(self, data: bytes) -> None:
        if not self.open:
            # after the disconnect push: discarded (so the push is not lost to a RST), up to one frame's worth
            self._discarded += len(data)
            if self._discarded > self.node.cfg.max_tcp_frame_size and self.transport is not None:
                self.transport.abort()
            return
        try:
            frames = self.reader.feed(data)
        except ProtocolError as e:
            self.session.disconnect(Disconnect(e.code, e.reason))
            return
        for body in frames:
            if not self.open:
                return
            self.session.feed(body)

    def close_with(self, code: int, reason: str, flush: bool = True) -> None:
        if not self.open:
            return
        self.open = False
        self.session.conn.close(self._disconnect_push(code, reason), flush)
        # half-close so unread input cannot turn our close into a RST that loses the push
        if self.transport.can_write_eof():
            self.transport.write_eof()
        else:
            self.transport.close()
        asyncio.get_running_loop().call_later(self.node.cfg.shutdown_timeout, self._abort)

    @staticmethod
    def _disconnect_push(code: int, reason: str) -> bytes:
        d = Disconnect(code, reason)
        return MsgpackCodec.encode({"push": {"disconnect": {"code": code, "reason": reason, "reconnect": d.reconnect}}})

    def _abort(self) -> None:
        if self.transport is not None:  # connection_lost not seen yet: the peer is not reading
            self.transport.abort()

    def eof_received(self) -> bool:
        return False

    def pause_writing(self) -> None:
        self.session.pause_writing()

    def resume_writing(self) -> None:
        self.session.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self.transport = None
        if self.session is not None:
            self.node.admission.release(self.remote)
            self.session.conn.close(b"", False)
            self.session.on_closed()
