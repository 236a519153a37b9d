"""The contract between a client session and the node that hosts it: what a session needs of its node
(relay.node.registry.Node fulfils it). The session and its parts know the node by this contract only, so the
node can import the session and not the other way round."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Coroutine

    from relay.auth import TokenVerifier
    from relay.brokers.base import Broker, PresenceManager, StreamPosition
    from relay.config import ChannelOptions, Config
    from relay.core import Hub
    from relay.integrations.proxy import EventProxy
    from relay.node.pings import PingWheel
    from relay.node.recovery import RecoveryCoalescer
    from relay.node.serverops import ServerOps
    from relay.node.streams import Streams
    from relay.ops.stats import Stats
    from relay.rules.redact import Redactor

__all__ = ["SessionHost", "SessionState", "Session"]

#: a relay.node.session.ClientSession (named loosely here: the session imports this module)
Session = Any


class SessionHost(Protocol):
    """What a session needs of the node that hosts it: its registry, the channels' broker interest and stream
    positions, publishing and history."""

    cfg: Config
    name: str
    stats: Stats
    hub: Hub
    broker: Broker
    presence: PresenceManager
    tokens: TokenVerifier
    recovery: RecoveryCoalescer
    proxy: EventProxy | None
    users: dict[str, set[Session]]
    backlogged: set[Session]
    pings: PingWheel  # await_pong
    streams: Streams  # track, delivered_offset, offset_reached
    server_ops: ServerOps  # send_quietly: a follow-up on a user's connections on every node

    # registry
    def register(self, s: Session) -> None: ...
    def unregister(self, s: Session) -> None: ...
    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None: ...

    # channels: rules, broker interest, positions
    def valid_channel(self, channel: str) -> bool: ...
    def lane(self, channel: str, lane: int | None = None) -> int: ...
    def redactor(self, opts: ChannelOptions) -> Redactor | None: ...
    def check_subscribe(self, s: Session, channel: str, opts: ChannelOptions) -> None: ...
    def check_access(self, s: Session, channel: str, mode: str) -> None: ...
    async def acquire(self, channel: str) -> None: ...
    def release(self, channel: str) -> None: ...
    def channel_id(self, channel: str) -> int: ...
    def collect(self, channel: str) -> list[dict]: ...
    def stop_collecting(self, channel: str, box: list[dict]) -> None: ...
    async def add_subscription(self, s: Session, channel: str, join_leave: bool, opts: ChannelOptions,
                               after: int = 0) -> None: ...
    def drop_subscription(self, s: Session, channel: str, join_leave: bool) -> None: ...

    # publications and history
    async def publish(self, channel: str, data: Any, *, source: str = "api", **kw: Any) -> StreamPosition: ...
    async def publish_many(self, items: list[tuple[str, Any]], *, source: str = "api", **kw: Any) -> list: ...
    async def history(self, channel: str, p: dict) -> dict: ...


class SessionState:
    """The state of a session that its parts (relay/node/connect.py, subscribe.py, proxycalls.py) read and
    write: declared once here, set by relay.node.session.ClientSession.__init__, which mixes the parts in."""

    __slots__ = ()
    node: SessionHost
    conn: Any  # relay.core.Conn
    codec: Any  # relay.protocol.codec: JsonCodec, MsgpackCodec or ProtobufCodec
    client_id: str
    user: str
    remote: str
    conn_info: Any
    meta: Any  # the connect hook's meta: sent back to the backend, never to the client
    headers: dict[str, str]  # handshake headers the event proxy forwards
    expire_at: float | None
    connected: bool
    closed: bool
    subs: dict[str, bool]  # channel -> receives join/leave
    _proxied: bool
    _info_cache: dict | None
    _server_subs: frozenset[str]
    _token_subs: set[str] | None
    _cids: dict[str, int] | None  # channel compaction: channel -> its id, for the subscriptions that asked
    _deltas: set[str] | None  # channels subscribed with fossil deltas
    _sub_timers: dict[str, asyncio.TimerHandle] | None
    _stale_timer: asyncio.TimerHandle
    _expiry_timer: asyncio.TimerHandle | None
