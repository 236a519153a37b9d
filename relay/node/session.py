"""One client connection's state and commands (Centrifugo client protocol v2).

Transport-agnostic: a transport feeds it whole messages (a WebSocket message or
a raw TCP frame body) and implements ``close_with(code, reason)``. Replies and
pushes go into the connection's core ``Conn`` queue, in order, so a subscribe
reply always precedes the first publication of that subscription.

Commands of one connection run one after another, in the order received.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import random
import secrets
import sys
import termios
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol


from relay import __version__
from relay.auth import TokenExpired, TokenInvalid
from relay.brokers.base import BrokerUnavailable, StreamPosition
from relay.codes import DISCONNECTS, ERRORS, ClientError, Disconnect
from relay.core import LANE_BULK, WIRE_TCP
from relay.protocol.codec import codec_for, json_exact
from relay.protocol.errors import ProtocolError
from relay.integrations.proxy import ProxyFailure
from relay.rules.ratelimit import TokenBucket

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from relay.auth import TokenVerifier
    from relay.brokers.base import Broker, PresenceManager
    from relay.config import ChannelOptions, Config
    from relay.core import Hub
    from relay.integrations.proxy import EventProxy
    from relay.node.recovery import RecoveryCoalescer
    from relay.rules.redact import Redactor
    from relay.ops.stats import Stats

__all__ = ["ClientSession", "SessionHost", "join_leave_channel"]

log = logging.getLogger("relay.session")


class SessionHost(Protocol):
    """What a session needs of the node that hosts it (relay.node.registry.Node is one): its registry, the
    channels' broker interest and stream positions, publishing and history. A session knows the node by
    this contract only, so the node can import the session and not the other way round."""

    cfg: Config
    name: str
    stats: Stats
    hub: Hub
    broker: Broker
    presence: PresenceManager
    tokens: TokenVerifier
    recovery: RecoveryCoalescer
    proxy: EventProxy | None
    users: dict[str, set[ClientSession]]
    backlogged: set[ClientSession]

    # registry and pings
    def register(self, s: ClientSession) -> None: ...
    def unregister(self, s: ClientSession) -> None: ...
    def await_pong(self, s: ClientSession) -> None: ...
    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None: ...

    # channels: rules, broker interest, positions
    def valid_channel(self, channel: str) -> bool: ...
    def lane(self, channel: str, lane: int | None = None) -> int: ...
    def redactor(self, opts: ChannelOptions) -> Redactor | None: ...
    def check_subscribe(self, s: ClientSession, channel: str, opts: ChannelOptions) -> None: ...
    def check_access(self, s: ClientSession, channel: str, mode: str) -> None: ...
    async def acquire(self, channel: str) -> None: ...
    def release(self, channel: str) -> None: ...
    def collect(self, channel: str) -> list[dict]: ...
    def stop_collecting(self, channel: str, box: list[dict]) -> None: ...
    def delivered_offset(self, channel: str, epoch: str) -> int: ...
    async def offset_reached(self, channel: str, offset: int, timeout: float) -> None: ...
    def track_position(self, channel: str, pos: StreamPosition) -> str: ...
    async def add_subscription(self, s: ClientSession, channel: str, join_leave: bool, opts: ChannelOptions,
                               after: int = 0) -> None: ...
    def drop_subscription(self, s: ClientSession, channel: str, join_leave: bool) -> None: ...

    # publications and history
    async def publish(self, channel: str, data: Any, *, source: str = "api", **kw: Any) -> StreamPosition: ...
    async def publish_many(self, items: list[tuple[str, Any]], *, source: str = "api", **kw: Any) -> list: ...
    async def history(self, channel: str, p: dict) -> dict: ...

METHODS = ("connect", "subscribe", "unsubscribe", "publish", "presence", "presence_stats", "history",
           "refresh", "rpc", "sub_refresh", "send")

FLAG_REJECT_UNRECOVERED = 2  # subscribe "flag" bit: error 112 instead of recovered=false
# unsubscribe push codes >= 2500 make the SDKs resubscribe (and recover when positioned)
INSUFFICIENT_STATE = {"code": 2500, "reason": "insufficient state"}
# seconds a subscribe waits for this node's delivery of a channel to reach the position its history read
# gave (Session._catch_up) before it replies; still behind, the client joins when the delivery gets there
CATCH_UP_WAIT = 0.1


def _uint(p: dict, key: str) -> int:
    """``p[key]`` as a non-negative integer (absent or null: 0); anything else is a bad request (107)."""
    v = p.get(key)
    if v is None:
        return 0
    if type(v) is not int or v < 0:
        raise ERRORS.BAD_REQUEST
    return v


def _check_position(p: dict) -> None:
    """The stream fields of a subscribe (or of one connect.subs entry): ``flag`` and ``offset`` integers,
    ``epoch`` a string. Refused with 107 before any work, instead of failing halfway through it."""
    _uint(p, "flag")
    _uint(p, "offset")
    if p.get("epoch") is not None and not isinstance(p["epoch"], str):
        raise ERRORS.BAD_REQUEST


def _method(cmd: dict) -> str | None:
    """The command's method: the first protocol method key it has."""
    for m in METHODS:
        if m in cmd:
            return m
    return None


JOIN_LEAVE_PREFIX = "\x00jl\x00"


def join_leave_channel(channel: str) -> str:
    """The hub channel whose subscribers receive join/leave pushes for ``channel``."""
    return JOIN_LEAVE_PREFIX + channel


class ClientSession:
    __slots__ = ("node", "transport", "conn", "codec", "client_id", "user", "conn_info", "expire_at",
                 "connected", "closed", "subs", "_queue", "_task", "_pong_deadline", "_stale_timer",
                 "_info_cache", "remote", "_commands", "_publishes", "_refused", "_expiry_timer", "_sub_timers",
                 "_server_subs", "_token_subs", "headers", "meta", "_proxied", "_pending_bytes", "_reading_paused")

    def __init__(self, node: SessionHost, transport: Any, raw_transport: asyncio.Transport, wire: int,
                 remote: str = "") -> None:
        self.node = node
        self.transport = transport
        self.codec = codec_for(wire)
        self.conn = node.hub.conn(raw_transport, wire, node.cfg.client_queue_max_size, self)
        self.conn.bulk_limit, self.conn.update_limit = node.cfg.lane_limits()
        self.client_id = ""
        self.user = ""
        self.conn_info: Any = None
        self.expire_at: float | None = None
        self.connected = False
        self.closed = False
        self.subs: dict[str, bool] = {}  # channel -> receives join/leave
        self._queue: deque[dict] = deque()
        self._task: asyncio.Task | None = None
        self._pong_deadline = 0.0
        self._info_cache: dict | None = None
        self.remote = remote
        cfg = node.cfg
        self._commands = TokenBucket(cfg.client_command_rate, cfg.client_command_burst)
        self._publishes: TokenBucket | None = None  # made on the first publish
        self._refused = 0  # commands refused in a row for the rate
        self._expiry_timer: asyncio.TimerHandle | None = None
        self._sub_timers: dict[str, asyncio.TimerHandle] | None = None  # subscription-token expiries
        self._server_subs: frozenset[str] = frozenset()  # subscribed by the server (token channels)
        self._token_subs: set[str] | None = None  # subscribed with a subscription token
        self.headers: dict[str, str] = {}  # handshake headers the event proxy forwards (allow-listed)
        self.meta: Any = None  # the connect hook's meta: sent back to the backend, never to the client
        self._proxied = False  # authenticated by the connect hook (refreshed by the refresh hook)
        self._pending_bytes = 0  # bytes of the messages whose commands wait in _queue
        self._reading_paused = False
        loop = asyncio.get_running_loop()
        self._stale_timer = loop.call_later(node.cfg.client_stale_timeout, self._stale)

    # --- input -----------------------------------------------------------------------------------

    def feed(self, message: bytes) -> None:
        """Handle one message from the transport: a batch of commands (or pongs)."""
        if self.closed:
            return
        try:
            commands = self.codec.decode(message)
        except ProtocolError as e:
            self.disconnect(Disconnect(e.code, e.reason))
            return
        if len(commands) > self.node.cfg.max_commands_per_message:
            self.disconnect(Disconnect(DISCONNECTS.BAD_REQUEST.code, "bad request: too many commands"))
            return
        now = time.monotonic()
        for cmd in commands:
            if not self._commands.take(now):  # a pong ({}) counts too: one per ping is all a client needs
                self._refused += 1
                if self._refused >= self.node.cfg.client_command_burst:
                    self.disconnect(DISCONNECTS.TOO_MANY_REQUESTS)
                    return
                cmd_id = cmd.get("id")
                self.node.stats.command("rate_limited", "error")
                if type(cmd_id) is int and cmd_id > 0:
                    self._reply_error(cmd_id, ERRORS.TOO_MANY_REQUESTS)
                continue
            self._refused = 0
            if not cmd:
                self._pong_deadline = 0.0  # pong: an empty command
                continue
            self._queue.append(cmd)
        if self._queue:
            # Commands wait while an earlier one awaits the broker or the backend. Past one message's
            # worth of them, stop reading the socket until they have run: what a client has sent and
            # relay has not handled stays in the kernel, not in this process (docs/architecture.md).
            self._pending_bytes += len(message)
            if self._pending_bytes > self.node.cfg.max_ws_message_size and not self._reading_paused:
                self._reading_paused = True
                try:
                    self.conn.transport.pause_reading()
                except Exception:  # closing meanwhile
                    pass
        if self._queue and self._task is None:
            # a task, not a call: redis-py (asyncio.timeout) and others need to run inside one
            self._task = asyncio.get_running_loop().create_task(self._drain())

    def control_frame(self) -> bool:
        """A WebSocket ping or pong from the client: a command for the rate (client_command_rate), so a flood
        of them is refused, then disconnected (3013), as a flood of commands is. False: refused."""
        if self.closed:
            return False
        if self._commands.take(time.monotonic()):
            self._refused = 0
            return True
        self._refused += 1
        self.node.stats.command("rate_limited", "error")
        if self._refused >= self.node.cfg.client_command_burst:
            self.disconnect(DISCONNECTS.TOO_MANY_REQUESTS)
        return False

    async def _drain(self) -> None:
        queue = self._queue
        try:
            while queue and not self.closed:
                cmd = queue.popleft()
                if self.connected and _method(cmd) == "publish" and queue and _method(queue[0]) == "publish":
                    # consecutive publishes go to the broker together: one round trip, order kept,
                    # and their fan-out shares frames as it would with the memory broker
                    batch = [cmd]
                    limit = self.node.cfg.max_commands_per_message
                    while queue and _method(queue[0]) == "publish" and len(batch) < limit:
                        batch.append(queue.popleft())
                    await self._publish_batch(batch)
                else:
                    await self._dispatch(cmd)
        finally:
            self._task = None
            self._pending_bytes = 0
            if self._reading_paused:
                self._reading_paused = False
                if not self.closed:
                    try:
                        self.conn.transport.resume_reading()
                    except Exception:
                        pass

    async def _publish_batch(self, cmds: list[dict]) -> None:
        stats = self.node.stats
        replies: list[dict | None] = []
        items: list[tuple[int, str, Any, bool]] = []  # (reply index, channel, data, skip_history)
        proxied = False
        for cmd in cmds:
            cmd_id, p = cmd.get("id"), cmd.get("publish")
            if type(cmd_id) is not int or cmd_id <= 0 or not isinstance(p, dict):
                replies.append(None)
                await self._dispatch(cmd)  # the usual path gives the usual error or disconnect
                if self.closed:
                    return
                continue
            try:
                channel, data, opts = self._check_publish(p)
                skip = False
                if opts.proxy_publish and self.node.proxy is not None:
                    proxied = True
                    data, skip = await self._proxy_publish(channel, data)
            except ClientError as e:
                stats.command("publish", "error")
                replies.append({"id": cmd_id, "error": e.to_dict()})
                continue
            except Disconnect as d:
                stats.command("publish", "disconnect")
                self.disconnect(d)
                return
            items.append((len(replies), channel, data, skip))
            replies.append({"id": cmd_id, "publish": {}})
        if items:
            info = self.client_info()
            if proxied:  # the backend may have asked to skip history for some: one by one, in order
                results: list = []
                for _, ch, data, skip in items:
                    try:
                        results.append(await self.node.publish(ch, data, info=info, source="client",
                                                               **({"skip_history": True} if skip else {})))
                    except ClientError as e:
                        results.append(e)
            else:
                results = await self.node.publish_many([(ch, data) for _, ch, data, _ in items], info=info,
                                                       source="client")
            for (i, _, _, _), res in zip(items, results, strict=True):
                if isinstance(res, ClientError):
                    stats.command("publish", "error")
                    replies[i] = {"id": replies[i]["id"], "error": res.to_dict()}
                else:
                    stats.command("publish", "ok")
        for reply in replies:
            if reply is not None:
                self.send(reply)

    async def _dispatch(self, cmd: dict) -> None:
        method = _method(cmd)
        cmd_id = cmd.get("id")
        stats = self.node.stats
        if method == "send":
            stats.command(method, "error")
            # Centrifugo: an async message with no handler on the server ends the connection.
            self.disconnect(Disconnect(3508, "not available"))
            return
        if type(cmd_id) is not int or cmd_id <= 0:
            stats.command(method or "unknown", "bad_request")
            self.disconnect(Disconnect(DISCONNECTS.BAD_REQUEST.code, "bad request: command without id"))
            return
        if method is None:
            stats.command("unknown", "error")
            self._reply_error(cmd_id, ERRORS.METHOD_NOT_FOUND)
            return
        if (method == "connect") == self.connected:
            stats.command(method, "bad_request")
            why = "already connected" if self.connected else "connect first"
            self.disconnect(Disconnect(DISCONNECTS.BAD_REQUEST.code, f"bad request: {why}"))
            return
        params = cmd[method]
        if params is None:
            params = {}
        if not isinstance(params, dict):
            stats.command(method, "bad_request")
            self.disconnect(Disconnect(DISCONNECTS.BAD_REQUEST.code, f"bad request: {method} must be an object"))
            return
        try:
            result = await getattr(self, "_cmd_" + method)(params, cmd_id)
        except ClientError as e:
            stats.command(method, "error")
            self._reply_error(cmd_id, e)
            return
        except Disconnect as d:
            stats.command(method, "disconnect")
            self.disconnect(d)
            return
        except Exception:
            stats.command(method, "internal_error")
            log.exception("command %s failed (client %s)", method, self.client_id)
            self._reply_error(cmd_id, ERRORS.INTERNAL)
            return
        stats.command(method, "ok")
        if result is not None:
            self.send({"id": cmd_id, method: result})

    # --- output ----------------------------------------------------------------------------------

    def pause_writing(self) -> None:
        """The transport's buffer is full (a slow reader): hold output in the queue until it drains."""
        self.conn.pause_writing()
        self.node.backlogged.add(self)

    def resume_writing(self) -> None:
        self.node.backlogged.discard(self)
        self.conn.resume_writing()

    def transport_buffered(self) -> int:
        """Bytes written to this client and not sent yet: the transport's buffer and the kernel's send
        queue (SIOCOUTQ), which on a fast link can hold megabytes that no process memory figure shows."""
        transport = self.conn.transport
        try:
            n = transport.get_write_buffer_size()
        except Exception:
            return 0
        try:
            out = fcntl.ioctl(transport.get_extra_info("socket").fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
            n += int.from_bytes(out, sys.byteorder)
        except Exception:  # not a socket (tests), or closed meanwhile
            pass
        return n

    def send(self, obj: dict) -> None:
        if not self.conn.send(self.codec.encode(obj)):
            self.disconnect(DISCONNECTS.SLOW)

    def _reply_error(self, cmd_id: int, err: ClientError) -> None:
        self.send({"id": cmd_id, "error": err.to_dict()})

    def ping(self, now: float) -> None:
        """Called by the node's ping scan for connected clients."""
        if self._pong_deadline and now > self._pong_deadline:
            self.disconnect(DISCONNECTS.NO_PONG)
            return
        if not self.conn.send(self.codec.PING):
            self.disconnect(DISCONNECTS.SLOW)
            return
        if not self._pong_deadline:
            self._pong_deadline = now + self.node.cfg.pong_timeout
            self.node.await_pong(self)

    def pong_due(self, now: float) -> None:
        """Called by the node's ping loop once pong_timeout has passed since the ping."""
        if not self.closed and self._pong_deadline and now > self._pong_deadline:
            self.disconnect(DISCONNECTS.NO_PONG)

    def client_info(self) -> dict:
        info = self._info_cache
        if info is None:
            info = {"client": self.client_id, "user": self.user}
            if self.conn_info is not None:
                info["conn_info"] = self.conn_info
            self._info_cache = info
        return info

    # --- lifecycle -------------------------------------------------------------------------------

    def _schedule_expiry(self) -> None:
        """At the token's exp: tell the client to refresh; after token_expire_grace without a
        refresh: disconnect 3005 (connection expired)."""
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
            self._expiry_timer = None
        if self.expire_at is None:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, self.expire_at - time.time())
        self._expiry_timer = loop.call_later(delay, self._expired)

    def _expired(self) -> None:
        if self.closed:
            return
        if self._proxied:
            proxy = self.node.proxy
            if proxy is None or not proxy.enabled("refresh"):
                self.disconnect(DISCONNECTS.EXPIRED)
            else:
                self._expiry_timer = None
                self.node.spawn(self._proxy_refresh())
            return
        self.send({"push": {"refresh": {"expires": True, "ttl": 0}}})
        self._expiry_timer = asyncio.get_running_loop().call_later(
            self.node.cfg.token_expire_grace, self.disconnect, DISCONNECTS.EXPIRED)

    def _stale(self) -> None:
        if not self.connected and not self.closed:
            self.disconnect(DISCONNECTS.STALE)

    def disconnect(self, d: Disconnect) -> None:
        """End the connection with ``d`` (close frame, or a disconnect push on raw TCP)."""
        if self.closed:
            return
        self.node.stats.disconnect(d.code)
        slow = d.code == DISCONNECTS.SLOW.code
        if slow or log.isEnabledFor(logging.DEBUG):
            log.log(logging.WARNING if slow else logging.DEBUG, "client disconnected: %s", d.reason,
                    extra={"event": "disconnect", "client": self.client_id, "user": self.user, "code": d.code,
                           "remote": self.remote})
        self.transport.close_with(d.code, d.reason, flush=not slow)
        self.on_closed()

    def on_closed(self) -> None:
        """The transport is gone (or going): drop every subscription, presence and the registration."""
        if self.closed:
            return
        self.closed = True
        self._stale_timer.cancel()
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
        for timer in (self._sub_timers or {}).values():
            timer.cancel()
        if self._task is not None:
            self._task.cancel()
        self._queue.clear()
        self.node.unregister(self)
        for channel, jl in self.subs.items():
            self.node.drop_subscription(self, channel, jl)
        self.subs = {}

    # --- commands --------------------------------------------------------------------------------

    async def _cmd_connect(self, p: dict, cmd_id: int) -> None:
        node = self.node
        cfg = node.cfg
        token = p.get("token")
        server_channels: tuple[str, ...] = ()
        self.client_id = secrets.token_hex(16)
        proxy_data: Any = None
        proxy_subs: dict = {}
        if token:
            if not isinstance(token, str):
                raise Disconnect(DISCONNECTS.BAD_REQUEST.code, "bad request: token must be a string")
            try:
                creds = node.tokens.verify(token)
            except TokenExpired:
                node.stats.auth_failure("token_expired", remote=self.remote)
                raise ERRORS.TOKEN_EXPIRED from None
            except TokenInvalid:
                node.stats.auth_failure("invalid_token", remote=self.remote)
                raise DISCONNECTS.INVALID_TOKEN from None
            self.user = creds.user
            self.expire_at = creds.expire_at
            self.conn_info = creds.info
            server_channels = creds.channels
        elif node.proxy is not None and node.proxy.enabled("connect"):
            fields = {k: p[k] for k in ("name", "version", "data") if k in p}
            res = await self._proxy_call("connect", self._proxy_body(**fields))
            self.user = res.get("user", "")
            expire_at = res.get("expire_at") or None
            if expire_at is not None and expire_at <= time.time():
                raise DISCONNECTS.EXPIRED
            self.expire_at = expire_at
            self.conn_info = res.get("info")
            self.meta = res.get("meta")
            self._proxied = True
            proxy_data = res.get("data")
            proxy_subs = res.get("subs", {})
            server_channels = self._proxy_channels([*res.get("channels", ()), *proxy_subs])
        elif cfg.allow_anonymous_connect:
            self.user = ""
        else:
            node.stats.auth_failure("no_credentials", remote=self.remote)
            raise Disconnect(DISCONNECTS.BAD_REQUEST.code, "bad request: credentials not found")
        limit = cfg.max_connections_per_user
        if limit and self.user and len(node.users.get(self.user, ())) >= limit:
            node.stats.auth_failure("user_limit", remote=self.remote, user=self.user)
            raise DISCONNECTS.CONNECTION_LIMIT
        self.connected = True
        self._stale_timer.cancel()
        node.register(self)
        self._schedule_expiry()
        result: dict = {"client": self.client_id, "version": __version__, "ping": int(cfg.ping_interval),
                        "pong": True}
        if self.expire_at is not None:
            result["expires"] = True
            result["ttl"] = max(1, int(self.expire_at - time.time()))
        if node.name:
            result["node"] = node.name
        if proxy_data is not None:
            result["data"] = proxy_data
        # Server-side subscriptions named by the token (e.g. the user's personal channel): the token is
        # the permission; the SDK asks to recover them on reconnect through connect.subs.
        recover = p.get("subs") if isinstance(p.get("subs"), dict) else {}
        joins: list = []
        try:
            for channel in server_channels[:cfg.max_channels_per_connection]:
                opts = cfg.channel_options(channel)
                if opts is None or not node.valid_channel(channel) or any(j[0] == channel for j in joins):
                    log.warning("token of %r names unusable channel %r: skipped", self.user, channel)
                    continue
                req = recover.get(channel) if isinstance(recover.get(channel), dict) else {}
                _check_position(req)
                prepared = await self._prepare(channel, {**req, "recoverable": True}, opts)
                if prepared is None:
                    raise asyncio.CancelledError  # the client went away
                sub_data = proxy_subs.get(channel, {})
                if sub_data.get("data") is not None:  # the connect hook's initial data for it
                    prepared[0]["data"] = sub_data["data"]
                result.setdefault("subs", {})[channel] = prepared[0]
                joins.append((channel, prepared, opts))
        except BaseException:
            for channel, _, _ in joins:
                node.release(channel)
            raise
        self._server_subs = frozenset(j[0] for j in joins)
        self.send({"id": cmd_id, "connect": result})
        for channel, (res, extra), opts in joins:
            await self._join(channel, res, extra, opts.join_leave and opts.force_push_join_leave, opts)

    async def _cmd_refresh(self, p: dict, cmd_id: int) -> dict:
        token = p.get("token")
        if not isinstance(token, str) or not token:
            raise ERRORS.BAD_REQUEST
        try:
            creds = self.node.tokens.verify(token)
        except TokenExpired:
            raise ERRORS.TOKEN_EXPIRED from None
        except TokenInvalid:
            raise DISCONNECTS.INVALID_TOKEN from None
        if creds.user != self.user:
            raise DISCONNECTS.INVALID_TOKEN
        self.expire_at = creds.expire_at
        self._schedule_expiry()
        result: dict = {"client": self.client_id, "version": __version__}
        if self.expire_at is not None:
            result["expires"] = True
            result["ttl"] = max(1, int(self.expire_at - time.time()))
        return result

    def _channel(self, p: dict) -> str:
        channel = p.get("channel")
        if not isinstance(channel, str) or not self.node.valid_channel(channel):
            raise ERRORS.BAD_REQUEST
        return channel

    async def _cmd_subscribe(self, p: dict, cmd_id: int) -> None:
        node = self.node
        channel = self._channel(p)
        _check_position(p)
        if channel in self.subs:
            raise ERRORS.ALREADY_SUBSCRIBED
        if len(self.subs) >= node.cfg.max_channels_per_connection:
            raise ERRORS.LIMIT_EXCEEDED
        opts = node.cfg.channel_options(channel)
        if opts is None:
            raise ERRORS.UNKNOWN_CHANNEL
        lane = node.lane(channel)
        conn = self.conn
        if lane and conn.paused and conn.queued > (conn.bulk_limit if lane == LANE_BULK else conn.update_limit) // 2:
            # still behind on what its lane lost (lane_dropped): the SDK retries with backoff, and the
            # recovery then comes once the queue has drained rather than onto the backlog
            raise ERRORS.CATCHING_UP
        token = p.get("token")
        sub_expires: float | None = None
        proxied: dict | None = None
        if token:  # a subscription token is the permission (private channels, token-only namespaces)
            sub_expires = self._verify_sub_token(token, channel)
        else:
            node.check_subscribe(self, channel, opts)
            if opts.proxy_subscribe and node.proxy is not None:  # the backend may refuse what config allows
                fields = {"channel": channel, **({"data": p["data"]} if "data" in p else {})}
                proxied = await self._proxy_call("subscribe", self._proxy_body(**fields))
                if proxied.get("expire_at"):
                    sub_expires = float(proxied["expire_at"])
                    if sub_expires <= time.time():
                        raise ERRORS.EXPIRED
        granted = self._token_subs
        if token:
            if granted is None:
                granted = self._token_subs = set()
            granted.add(channel)
        elif granted is not None:
            granted.discard(channel)
        join_leave = opts.join_leave and (bool(p.get("join_leave")) or opts.force_push_join_leave)
        prepared = await self._prepare(channel, p, opts)
        if prepared is None:
            return
        if proxied is not None and "data" in proxied:
            prepared[0]["data"] = proxied["data"]
        if sub_expires is not None:
            prepared[0]["expires"] = True
            prepared[0]["ttl"] = max(1, int(sub_expires - time.time()))
            if proxied is not None and opts.proxy_sub_refresh:
                self._refresh_sub_at(channel, sub_expires)
            else:
                self._expire_sub_at(channel, sub_expires)
        # Queue the reply, then join the hub in the same step: the reply precedes every
        # publication, and nothing published since the history read is lost.
        self.send({"id": cmd_id, "subscribe": prepared[0]})
        await self._join(channel, *prepared, join_leave, opts)

    async def _prepare(self, channel: str, p: dict, opts) -> tuple[dict, list[dict]] | None:
        """Receive the channel on this node first, then read its position: a publication can then be
        missed by neither (it is in the history, or it is collected here). The subscribe result and the
        publications still to push, or None if the client went away meanwhile."""
        node = self.node
        await node.acquire(channel)
        box = node.collect(channel)
        try:
            result, extra = await self._position(channel, p, opts, box)
        except BaseException:
            node.stop_collecting(channel, box)
            node.release(channel)
            raise
        node.stop_collecting(channel, box)
        if self.closed or channel in self.subs:
            node.release(channel)
            return None
        return result, extra

    async def _join(self, channel: str, result: dict, extra: list[dict], join_leave: bool, opts) -> None:
        """After the reply is queued: the publications collected meanwhile, then the hub and presence."""
        for pub in extra:
            self.send({"push": {"channel": channel, "pub": pub}})
        self.subs[channel] = join_leave
        after = 0
        if "epoch" in result:
            last = max(result["offset"], extra[-1].get("offset", 0) if extra else 0)
            verdict = self.node.track_position(channel, StreamPosition(last, result["epoch"]))
            if verdict == "behind":
                # the node has delivered past what this client got: 2500, and the SDK resubscribes and
                # recovers the stretch from history
                self.node.release(channel)
                del self.subs[channel]
                self.send({"push": {"channel": channel, "unsubscribe": INSUFFICIENT_STATE}})
                return
            if verdict == "wait":
                after = last  # the node's delivery has not reached it: join when it does
        await self.node.add_subscription(self, channel, join_leave, opts, after)

    def lane_dropped(self, channel: str) -> None:
        """A publication of ``channel`` in the update or bulk lane did not fit this connection's queue: the
        channel is dropped with 2500, as for a gap, so the SDK resubscribes and recovers (once caught up)."""
        if channel in self.subs or channel in self._server_subs:
            self.node.stats.lane_resyncs += 1
            self.resync(channel)

    def resync(self, channel: str) -> None:
        """Drop ``channel`` with Centrifugo's 'insufficient state' (2500): the SDK resubscribes and recovers.
        A server-side subscription cannot be resubscribed by the client: it reconnects (3010) and recovers
        it through connect.subs."""
        if channel in self._server_subs:
            self.disconnect(DISCONNECTS.INSUFFICIENT_STATE)
        elif channel in self.subs:
            jl = self.subs.pop(channel)
            self.node.drop_subscription(self, channel, jl)
            self.send({"push": {"channel": channel, "unsubscribe": INSUFFICIENT_STATE}})

    async def _position(self, channel: str, p: dict, opts, box: list[dict]) -> tuple[dict, list[dict]]:
        """The subscribe reply (stream position, recovered publications) and the publications
        collected meanwhile that the client must still get, in order."""
        result: dict = {}
        if not (opts.history_size > 0 and (opts.force_recovery or p.get("recoverable"))):
            return result, box  # no stream: what arrived since the broker subscription follows the reply
        result["recoverable"] = True
        result["positioned"] = True
        pos, pubs, recovered = await self._recover(channel, p, opts)
        if self.node.broker.lossy_delivery:
            await self._catch_up(channel, pos, box)
        newer = [x for x in box if x.get("offset", 0) > pos.offset]
        if p.get("recover"):
            if not recovered and _uint(p, "flag") & FLAG_REJECT_UNRECOVERED:
                raise ERRORS.UNRECOVERABLE_POSITION
            result["was_recovering"] = True
            result["recovered"] = recovered
            if recovered and newer:
                pubs = pubs + newer
                pos = StreamPosition(newer[-1]["offset"], pos.epoch)
                newer = []
            if pubs:
                result["publications"] = pubs
        result["epoch"] = pos.epoch
        result["offset"] = pos.offset
        return result, newer

    async def _catch_up(self, channel: str, pos: StreamPosition, box: list[dict]) -> None:
        """On Redis the history read can see a publication before its pub/sub message reaches this node;
        delivered through the hub after the reply, it would repeat an offset the reply already covers.
        When this node is receiving the channel (it tracks its position, or publications are arriving)
        and is behind ``pos``, wait briefly (CATCH_UP_WAIT) until it has caught up (the node wakes this when
        the offset arrives). Still behind after that (a backlog held up in the network), the client joins
        the hub only once the node's delivery reaches ``pos`` (relay.node.registry.Node.track_position)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CATCH_UP_WAIT
        while True:
            seen = self.node.delivered_offset(channel, pos.epoch)
            if box:
                seen = max(seen, box[-1].get("offset", 0))
            left = deadline - loop.time()
            if seen == 0 or seen >= pos.offset or left <= 0:
                return  # nothing known to be in flight, caught up, or given up
            await self.node.offset_reached(channel, pos.offset, left)

    async def _recover(self, channel: str, p: dict, opts) -> tuple[StreamPosition, list, bool]:
        """The stream position and, when the client asks to recover, what it missed since its offset:
        (position, publications, recovered). The read goes through the node's RecoveryCoalescer, which
        serves every subscribe of the channel waiting at that moment with one broker read, and never with a
        read issued before this call (so before this subscribe's collector existed: see _prepare)."""
        since = None
        if p.get("recover"):
            since = StreamPosition(_uint(p, "offset"), p.get("epoch") or "")
        try:
            return await self.node.recovery.read(channel, since)
        except BrokerUnavailable:
            raise ERRORS.INTERNAL from None

    async def _cmd_unsubscribe(self, p: dict, cmd_id: int) -> dict:
        channel = self._channel(p)
        if channel in self.subs:
            jl = self.subs.pop(channel)
            self.node.drop_subscription(self, channel, jl)
            if self._sub_timers:
                self._expire_sub_at(channel, None)
        return {}

    async def _cmd_publish(self, p: dict, cmd_id: int) -> dict:
        channel, data, opts = self._check_publish(p)
        skip = False
        if opts.proxy_publish and self.node.proxy is not None:
            data, skip = await self._proxy_publish(channel, data)
        await self.node.publish(channel, data, info=self.client_info(), source="client",
                                **({"skip_history": True} if skip else {}))
        return {}

    def _check_publish(self, p: dict) -> tuple[str, Any, Any]:
        """The channel, data and options of a publish command the client may make, or the ClientError to
        answer."""
        channel = self._channel(p)
        opts = self.node.cfg.channel_options(channel)
        if opts is None:
            raise ERRORS.UNKNOWN_CHANNEL
        self.node.check_access(self, channel, opts.publish_access)
        if "data" not in p:
            raise ERRORS.BAD_REQUEST
        if self._publishes is None:
            cfg = self.node.cfg
            self._publishes = TokenBucket(cfg.client_publish_rate, cfg.client_publish_burst)
        if not self._publishes.take(time.monotonic()):
            raise ERRORS.TOO_MANY_REQUESTS
        data = p["data"]
        redactor = self.node.redactor(opts)
        if redactor is not None:  # before the publish hook, the broker, history and every subscriber
            data, cards, matches = redactor.data(data)
            if cards or matches:
                red = self.node.stats.redactions
                red["card"] += cards
                red["pattern"] += matches
        if self.conn.wire == WIRE_TCP and not json_exact(data):  # must reach JSON subscribers as it is
            raise ERRORS.BAD_REQUEST
        return channel, data, opts

    def token_granted(self, channel: str) -> bool:
        """Whether the subscription to ``channel`` came from a signed token (connect or subscription)."""
        return channel in self._server_subs or (self._token_subs is not None and channel in self._token_subs)

    def _allowed_opts(self, p: dict, op: str):
        channel = self._channel(p)
        opts = self.node.cfg.channel_options(channel)
        if opts is None:
            raise ERRORS.UNKNOWN_CHANNEL
        self.node.check_access(self, channel, getattr(opts, op))
        return channel, opts

    async def _cmd_presence(self, p: dict, cmd_id: int) -> dict:
        channel, opts = self._allowed_opts(p, "presence_access")
        if not opts.presence:
            raise ERRORS.NOT_AVAILABLE
        return {"presence": await self.node.presence.presence(channel)}

    async def _cmd_presence_stats(self, p: dict, cmd_id: int) -> dict:
        channel, opts = self._allowed_opts(p, "presence_access")
        if not opts.presence:
            raise ERRORS.NOT_AVAILABLE
        clients, users = await self.node.presence.presence_stats(channel)
        return {"num_clients": clients, "num_users": users}

    async def _cmd_history(self, p: dict, cmd_id: int) -> dict:
        channel, opts = self._allowed_opts(p, "history_access")
        if opts.history_size <= 0:
            raise ERRORS.NOT_AVAILABLE
        return await self.node.history(channel, p)

    async def _cmd_rpc(self, p: dict, cmd_id: int) -> dict:
        """``rpc`` (centrifuge.rpc(method, data)): routed by method to the backend's rpc hook."""
        method = p.get("method", "")
        if not isinstance(method, str) or len(method) > 256:
            raise ERRORS.BAD_REQUEST
        proxy = self.node.proxy
        endpoint = proxy.rpc_endpoint(method) if proxy is not None else None
        if endpoint is None:
            raise ERRORS.METHOD_NOT_FOUND
        if self.conn.wire == WIRE_TCP and "data" in p and not json_exact(p["data"]):  # the backend speaks JSON
            raise ERRORS.BAD_REQUEST
        fields = {"method": method, **({"data": p["data"]} if "data" in p else {})}
        res = await self._proxy_call("rpc", self._proxy_body(**fields), endpoint=endpoint)
        return {"data": res["data"]} if "data" in res else {}

    async def _cmd_sub_refresh(self, p: dict, cmd_id: int) -> dict:
        channel = self._channel(p)
        token = p.get("token")
        if channel not in self.subs or not isinstance(token, str) or not token:
            raise ERRORS.BAD_REQUEST
        expires = self._verify_sub_token(token, channel)
        self._expire_sub_at(channel, expires)
        if expires is None:
            return {}
        return {"expires": True, "ttl": max(1, int(expires - time.time()))}

    def _verify_sub_token(self, token: Any, channel: str) -> float | None:
        if not isinstance(token, str):
            raise ERRORS.BAD_REQUEST
        try:
            return self.node.tokens.verify_subscription(token, self.user, channel)
        except TokenExpired:
            raise ERRORS.TOKEN_EXPIRED from None
        except TokenInvalid:
            self.node.stats.auth_failure("invalid_sub_token", client=self.client_id, user=self.user)
            raise ERRORS.PERMISSION_DENIED from None

    def _expire_sub_at(self, channel: str, expires: float | None) -> None:
        """A subscription whose token expired and was not refreshed (sub_refresh) within the grace ends
        the connection with 3006 (subscription expired): the SDK reconnects with fresh tokens."""
        delay = None if expires is None else max(0.0, expires - time.time()) + self.node.cfg.token_expire_grace
        self._sub_timer(channel, delay, self._sub_expired, channel)

    def _sub_timer(self, channel: str, delay: float | None, callback, *args) -> None:
        """The one timer of ``channel``'s subscription (token expiry or proxy refresh): replaced, or
        cancelled when ``delay`` is None."""
        timers = self._sub_timers
        if timers is None:
            timers = self._sub_timers = {}
        old = timers.pop(channel, None)
        if old is not None:
            old.cancel()
        if delay is not None:
            timers[channel] = asyncio.get_running_loop().call_later(delay, callback, *args)

    def _sub_expired(self, channel: str) -> None:
        if channel in self.subs:
            self.disconnect(DISCONNECTS.SUB_EXPIRED)

    # --- event proxy -----------------------------------------------------------------------------

    def _proxy_body(self, **fields: Any) -> dict:
        """A hook request in Centrifugo's proxy format."""
        tcp = self.conn.wire == WIRE_TCP
        body = {"client": self.client_id, "transport": "tcp" if tcp else "websocket",
                "protocol": "msgpack" if tcp else "json", "encoding": "json", "user": self.user}
        if self.meta is not None:
            body["meta"] = self.meta
        body.update(fields)
        return body

    async def _proxy_call(self, hook: str, body: dict, endpoint: str | None = None) -> dict:
        """The hook's result; its error or disconnect as ours; a failure as the temporary error 100 (the
        SDKs retry with backoff), 111 when shed, and for connect the configured code or, when shed, a
        reconnect-later disconnect with jittered advice."""
        proxy = self.node.proxy
        assert proxy is not None
        try:
            return await proxy.call(hook, body, self.headers, endpoint)
        except ClientError:
            if hook == "connect":
                self.node.stats.auth_failure("proxy_refused", remote=self.remote)
            raise
        except ProxyFailure as e:
            if hook == "connect":
                if e.kind == "overloaded":
                    raise Disconnect(DISCONNECTS.TOO_MANY_REQUESTS.code,
                                     f"backend busy, retry in {proxy.shed_advice():.1f}s") from None
                code = proxy.opts.connect_failure_code
                if code:
                    raise Disconnect(code, "backend unavailable") from None
            if e.kind == "overloaded":
                raise ERRORS.TOO_MANY_REQUESTS from None
            raise ERRORS.INTERNAL from None

    def _proxy_channels(self, channels: list[str]) -> tuple[str, ...]:
        """The server-side subscriptions a connect hook named that config allows: known namespace, valid
        name, and a '#' user list that names this user. The others are refused and logged."""
        node = self.node
        out: list[str] = []
        for ch in dict.fromkeys(channels):
            _, sep, users = ch.rpartition("#")
            listed = not sep or (bool(self.user) and self.user in users.split(","))
            if not node.valid_channel(ch) or node.cfg.channel_options(ch) is None or not listed:
                node.stats.auth_failure("proxy_channel", client=self.client_id, user=self.user)
                log.warning("connect hook named channel %r for user %r: refused by config", ch, self.user,
                            extra={"event": "proxy_channel_refused", "user": self.user})
                continue
            out.append(ch)
        return tuple(out)

    async def _proxy_publish(self, channel: str, data: Any) -> tuple[Any, bool]:
        """The publish hook: (data to fan out, skip history)."""
        res = await self._proxy_call("publish", self._proxy_body(channel=channel, data=data))
        return res.get("data", data), bool(res.get("skip_history"))

    async def _proxy_refresh(self) -> None:
        """A proxy-authenticated connection reached expire_at: the refresh hook prolongs it or ends it (3005).
        A failed hook is retried every few seconds (the backend may be restarting)."""
        if self.closed:
            return
        try:
            res = await self._proxy_call("refresh", self._proxy_body())
        except Disconnect as d:
            self.disconnect(d)
            return
        except ClientError:
            if not self.closed:
                self._expiry_timer = asyncio.get_running_loop().call_later(
                    random.uniform(3.0, 6.0), self._expired)
            return
        if self.closed:
            return
        expire_at = res.get("expire_at") or 0
        if res.get("expired") or (expire_at and expire_at <= time.time()):
            self.disconnect(DISCONNECTS.EXPIRED)
            return
        if "info" in res:
            self.conn_info = res["info"]
            self._info_cache = None
        self.expire_at = float(expire_at) if expire_at else None
        self._schedule_expiry()

    def _refresh_sub_at(self, channel: str, expires: float) -> None:
        """A proxied subscription with an expiry: at expire_at ask the sub_refresh hook to prolong it."""
        self._sub_timer(channel, max(0.0, expires - time.time()),
                        lambda: self.node.spawn(self._proxy_sub_refresh(channel)))

    async def _proxy_sub_refresh(self, channel: str) -> None:
        if self.closed or channel not in self.subs:
            return
        try:
            res = await self._proxy_call("sub_refresh", self._proxy_body(channel=channel))
        except Disconnect as d:
            self.disconnect(d)
            return
        except ClientError:
            if not self.closed and channel in self.subs:
                self._refresh_sub_at(channel, time.time() + random.uniform(3.0, 6.0))
            return
        expire_at = res.get("expire_at") or 0
        if res.get("expired") or (expire_at and expire_at <= time.time()):
            self.disconnect(DISCONNECTS.SUB_EXPIRED)
        elif expire_at:
            self._refresh_sub_at(channel, float(expire_at))
