"""Every error and disconnect code relay sends, in one place.

Client error codes (in command replies) and disconnect codes (WebSocket close
codes, or a ``disconnect`` push on raw TCP) follow Centrifugo's client protocol
so that its SDKs react correctly: 3000-3499 means "reconnect", 3500-3999 means
"do not reconnect". WebSocket-level violations use the RFC 6455 7.4.1 codes.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ClientError", "Disconnect", "ERRORS", "DISCONNECTS", "WS_CLOSE"]


@dataclass(frozen=True, slots=True)
class ClientError(Exception):
    """An error returned in a reply: the command failed, the connection lives."""

    code: int
    message: str
    temporary: bool = False

    def to_dict(self) -> dict:
        d = {"code": self.code, "message": self.message}
        if self.temporary:
            d["temporary"] = True
        return d


@dataclass(frozen=True, slots=True)
class Disconnect(Exception):
    """The connection must end with this code and reason."""

    code: int
    reason: str

    @property
    def reconnect(self) -> bool:
        return not (3500 <= self.code < 4000 or 4500 <= self.code < 5000)


class ERRORS:
    INTERNAL = ClientError(100, "internal server error", temporary=True)
    UNAUTHORIZED = ClientError(101, "unauthorized")
    UNKNOWN_CHANNEL = ClientError(102, "unknown channel")
    PERMISSION_DENIED = ClientError(103, "permission denied")
    METHOD_NOT_FOUND = ClientError(104, "method not found")
    ALREADY_SUBSCRIBED = ClientError(105, "already subscribed")
    LIMIT_EXCEEDED = ClientError(106, "limit exceeded")
    BAD_REQUEST = ClientError(107, "bad request")
    NOT_AVAILABLE = ClientError(108, "not available")
    TOKEN_EXPIRED = ClientError(109, "token expired")
    EXPIRED = ClientError(110, "expired")
    TOO_MANY_REQUESTS = ClientError(111, "too many requests", temporary=True)
    UNRECOVERABLE_POSITION = ClientError(112, "unrecoverable position")
    # a subscribe to an update/bulk channel while the connection is still behind (priority lanes):
    # temporary, so the SDKs retry with backoff
    CATCHING_UP = ClientError(111, "too many requests: catching up", temporary=True)
    # publisher backpressure (relay/rules/backpressure.py): the node refuses new publications for now; the
    # server API answers it with HTTP 429 and Retry-After
    OVERLOADED = ClientError(106, "limit exceeded: node overloaded, retry later", temporary=True)


class DISCONNECTS:
    CONNECTION_CLOSED = Disconnect(3000, "connection closed")
    SHUTDOWN = Disconnect(3001, "shutdown")
    SERVER_ERROR = Disconnect(3004, "internal server error")
    EXPIRED = Disconnect(3005, "connection expired")
    SUB_EXPIRED = Disconnect(3006, "subscription expired")
    SLOW = Disconnect(3008, "slow")
    WRITE_ERROR = Disconnect(3009, "write error")
    INSUFFICIENT_STATE = Disconnect(3010, "insufficient state")
    FORCE_RECONNECT = Disconnect(3011, "force reconnect")
    SERVER_FULL = Disconnect(3011, "server full")  # max_connections reached: reconnect (maybe elsewhere)
    NO_PONG = Disconnect(3012, "no pong")
    TOO_MANY_REQUESTS = Disconnect(3013, "too many requests")
    INVALID_TOKEN = Disconnect(3500, "invalid token")
    BAD_REQUEST = Disconnect(3501, "bad request")
    STALE = Disconnect(3502, "stale")
    FORCE_NO_RECONNECT = Disconnect(3503, "force disconnect")
    CONNECTION_LIMIT = Disconnect(3504, "connection limit")
    CHANNEL_LIMIT = Disconnect(3505, "channel limit")
    PERMISSION_DENIED = Disconnect(3507, "permission denied")
    MESSAGE_TOO_BIG = Disconnect(3501, "message too big")


class WS_CLOSE:
    """RFC 6455 7.4.1 status codes used for WebSocket-level violations."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    INVALID_PAYLOAD = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
