"""The server API's operations on users' connections: disconnect, unsubscribe, subscribe and refresh.

A user's connections may be on any node, so the API's node sends each operation through the broker
(``Broker.publish_control``) and every node, the sender included, applies it to its own sessions
(``apply``). With the embedded broker that is this node alone. The operations are msgpack maps with an
``op`` key; a node that gets one it does not know (a newer node in a rolling upgrade) logs and skips it."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

import msgpack

from relay.brokers.base import Broker, BrokerUnavailable, StreamPosition
from relay.codes import Disconnect
from relay.config import Config

__all__ = ["ServerOps"]

log = logging.getLogger("relay.node")

#: a relay.node.session.ClientSession
Session = Any


class ServerOps:
    def __init__(self, cfg: Config, broker: Broker, users: dict[str, set[Session]],
                 spawn: Callable[[Coroutine[Any, Any, Any]], None]) -> None:
        self.cfg = cfg
        self.broker = broker
        self.users = users  # the node's sessions by user, live
        self.spawn = spawn

    async def send(self, op: str, **params: Any) -> None:
        """Apply ``op`` on every node (raises BrokerUnavailable when the broker cannot carry it)."""
        await self.broker.publish_control(msgpack.packb({"op": op, **params}, use_bin_type=True))

    async def send_quietly(self, op: str, **params: Any) -> None:
        """``send`` for the node's own follow-ups (no caller to answer): a broker outage is logged."""
        try:
            await self.send(op, **params)
        except BrokerUnavailable as e:
            log.warning("server operation %s not sent: %s", op, e, extra={"event": "control_failed"})

    def apply(self, data: bytes) -> None:
        """An operation from the broker (relay.node.registry.Node.handle_control)."""
        try:
            params = msgpack.unpackb(data, raw=False)
            op = params.pop("op")
            handler = {"disconnect": self._disconnect, "unsubscribe": self._unsubscribe,
                       "subscribe": self._subscribe, "refresh": self._refresh}[op]
            handler(**params)
        except Exception as e:  # a malformed or unknown operation must not stop the broker's reader
            log.warning("server operation skipped: %s", e, extra={"event": "control_skipped"})

    def _targets(self, user: str, client: str) -> list[Session]:
        return [s for s in self.users.get(user, ()) if not client or s.client_id == client]

    def _disconnect(self, user: str, code: int, reason: str, client: str = "", whitelist: tuple = ()) -> None:
        d = Disconnect(code, reason)
        for s in self._targets(user, client):
            if s.client_id not in whitelist:
                s.disconnect(d)

    def _unsubscribe(self, user: str, channel: str, client: str = "") -> None:
        for s in self._targets(user, client):
            s.server_unsubscribe(channel)

    def _subscribe(self, user: str, channel: str, client: str = "", data: Any = None,
                   since: tuple[int, str] | None = None) -> None:
        opts = self.cfg.channel_options(channel)
        if opts is None:
            return  # this node's config has no such namespace (the API's node checked its own)
        pos = StreamPosition(*since) if since is not None else None
        for s in self._targets(user, client):
            self.spawn(s.server_subscribe(channel, opts, data, pos))

    def _refresh(self, user: str, client: str = "", expired: bool = False, expire_at: float | None = None,
                 info: Any = None) -> None:
        for s in self._targets(user, client):
            s.server_refresh(expired, expire_at, info)
