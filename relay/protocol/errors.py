"""Errors raised by the sans-I/O protocol layer (and by the core's frame reader)."""

from __future__ import annotations

__all__ = ["ProtocolError"]


class ProtocolError(Exception):
    """The peer broke the wire protocol: the connection must close with ``code``.

    ``code`` is a WebSocket close code (RFC 6455 7.4.1) for WebSocket framing
    errors, or a Centrifugo disconnect code for raw TCP and command errors.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    def __repr__(self) -> str:
        return f"ProtocolError({self.code}, {self.reason!r})"
