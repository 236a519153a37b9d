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
import sys
import termios
import time
from collections import deque
from typing import TYPE_CHECKING, Any


from relay.codes import DISCONNECTS, ERRORS, ClientError, Disconnect
from relay.protocol.codec import codec_for, json_exact
from relay.protocol.errors import ProtocolError
from relay.node.connect import Connecting
from relay.node.proxycalls import ProxyCalls
from relay.node.subscribe import Subscriptions
from relay.rules.ratelimit import TokenBucket

if TYPE_CHECKING:
    from relay.node.host import SessionHost

__all__ = ["ClientSession"]

log = logging.getLogger("relay.session")


METHODS = ("connect", "subscribe", "unsubscribe", "publish", "presence", "presence_stats", "history",
           "refresh", "rpc", "sub_refresh", "send")

def _method(cmd: dict) -> str | None:
    """The command's method: the first protocol method key it has."""
    for m in METHODS:
        if m in cmd:
            return m
    return None


class ClientSession(Connecting, Subscriptions, ProxyCalls):
    """One client connection: its commands, its queue, its lifetime. Connecting (credentials, server-side
    subscriptions, refresh and expiry) is relay/node/connect.py's part of it, subscribing (with recovery and
    catch-up) relay/node/subscribe.py's, the calls to the backend's event proxy relay/node/proxycalls.py's."""

    __slots__ = ("node", "transport", "conn", "codec", "client_id", "user", "conn_info", "expire_at",
                 "connected", "closed", "subs", "_queue", "_task", "_pong_deadline", "_stale_timer",
                 "_info_cache", "remote", "_commands", "_publishes", "_refused", "_expiry_timer", "_sub_timers",
                 "_server_subs", "_token_subs", "_cids", "_deltas", "headers", "meta", "_proxied", "_pending_bytes",
                 "_reading_paused")

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
        self._cids: dict[str, int] | None = None  # channel compaction: channel -> its id (subscribe flag bit 1)
        self._deltas: set[str] | None = None  # channels subscribed with fossil deltas
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
            self.node.pings.await_pong(self)

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

    def _channel(self, p: dict) -> str:
        channel = p.get("channel")
        if not isinstance(channel, str) or not self.node.valid_channel(channel):
            raise ERRORS.BAD_REQUEST
        return channel


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
        if self.codec.binary and not json_exact(data):  # must reach JSON subscribers as it is
            raise ClientError(107, "bad request: data must be JSON (NaN, Infinity and binary data cannot reach "
                                   "JSON subscribers)")
        redactor = self.node.redactor(opts)
        if redactor is not None:  # before the publish hook, the broker, history and every subscriber
            data, cards, matches = redactor.data(data)
            if cards or matches:
                red = self.node.stats.redactions
                red["card"] += cards
                red["pattern"] += matches
        return channel, data, opts


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
        if proxy is None or not proxy.enabled("rpc"):
            raise ERRORS.NOT_AVAILABLE  # no rpc handler at all (Centrifugo: 108)
        endpoint = proxy.rpc_endpoint(method)
        if endpoint is None:
            raise ERRORS.METHOD_NOT_FOUND  # handlers exist, none for this method
        if self.codec.binary and "data" in p and not json_exact(p["data"]):  # the backend speaks JSON
            raise ERRORS.BAD_REQUEST
        fields = {"method": method, **({"data": p["data"]} if "data" in p else {})}
        res = await self._proxy_call("rpc", self._proxy_body(**fields), endpoint=endpoint)
        return {"data": res["data"]} if "data" in res else {}


