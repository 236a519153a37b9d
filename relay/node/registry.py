"""The node: one relay process's registry of clients and channels, and its entry points.

It owns the hub (fan-out core), the broker and the presence manager, receives
publications from the broker (``handle_publication``) and hands them to the hub,
and offers the operations the HTTP server API calls.
"""

from __future__ import annotations

import asyncio
import fnmatch
import functools
import logging
import random
import re
import socket
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from relay import __version__
from relay.auth import TokenVerifier
from relay.rules.backpressure import Backpressure
from relay.brokers.base import Broker, BrokerUnavailable, PresenceManager, StreamPosition
from relay.codes import DISCONNECTS, ERRORS
from relay.config import ChannelOptions, Config
from relay.core import IMPLEMENTATION, LANE_CHAT, LANES, Hub
from relay.protocol.variants import COMPACT, DELTA_FIRST
from relay.node.admission import Admission
from relay.node.deltas import Deltas
from relay.node.outages import Outages
from relay.node.pings import PingWheel
from relay.node.publishing import Publisher
from relay.node.recovery import RecoveryCoalescer
from relay.node.serverops import ServerOps
from relay.node.streams import Streams
from relay.rules.redact import Redactor
from relay.node.session import ClientSession
from relay.node.subscribe import JOIN_LEAVE_PREFIX, join_leave_channel
from relay.ops.stats import Stats

if TYPE_CHECKING:  # pragma: no cover
    from relay.integrations.proxy import EventProxy
    from relay.rules.support import SupportDesk

__all__ = ["Node", "Stats"]  # Stats: relay/stats.py, kept importable from here

log = logging.getLogger("relay.node")


_CONTROL_CHAR = re.compile("[\x00-\x1f\x7f]").search  # not allowed in a channel name


def _user_listed(s: ClientSession, channel: str) -> bool:
    """A user-limited channel (``ns:room#alice,bob``) is only for the users it names."""
    _, sep, users = channel.rpartition("#")
    return not sep or (bool(s.user) and s.user in users.split(","))

class Node:
    def __init__(self, cfg: Config, broker: Broker, presence: PresenceManager, *,
                 proxy: EventProxy | None = None, support: SupportDesk | None = None) -> None:
        """``proxy`` (the event proxy to the backend) and ``support`` (support chat timing) are the node's
        hooks, made and handed over by the composition root (relay/app.py), each None when not configured."""
        self.cfg = cfg
        self.broker = broker
        self.presence = presence
        self.name = cfg.node_name or socket.gethostname()
        self.started_at = time.time()
        self.stats = Stats()
        self.tokens = TokenVerifier.from_config(cfg)
        self.proxy = proxy
        self._redactors: dict[int, Redactor | None] = {}
        # subscribe-time stream reads (position, recovery), one broker read per channel for many clients
        self.recovery = RecoveryCoalescer(broker, coalesce=cfg.recovery_coalesce,
                                          max_concurrent_reads=cfg.recovery_max_concurrent_reads,
                                          read_interval=cfg.recovery_read_interval,
                                          meta_ttl=cfg.history_meta_ttl, reads=self.stats.history_reads)
        self.outbox: Any = None  # relay.integrations.outbox.OutboxConsumer, made by the app when outbox_dsn is set
        # first-response tracking (relay/rules/support.py); None unless a namespace has support_chat
        self.support = support
        self.hub: Hub = None  # type: ignore[assignment]  # created in start(), needs the loop
        # refuses new publications while the node cannot deliver what it has (relay/rules/backpressure.py)
        self.backpressure = Backpressure(queue_bytes=cfg.backpressure_queue_bytes,
                                         memory_bytes=cfg.backpressure_memory_bytes,
                                         publish_latency=cfg.backpressure_publish_latency,
                                         max_in_flight=cfg.max_publishes_in_flight,
                                         retry_after=cfg.backpressure_retry_after, backlog=self.backlog_bytes)
        self.publisher = Publisher(cfg, broker, self.backpressure, self.stats, support)
        self.sessions: dict[str, ClientSession] = {}
        self.users: dict[str, set[ClientSession]] = {}
        self.open_sessions: set[ClientSession] = set()
        # client sockets: counted against the caps, handshakes in their own pool (relay/node/admission.py)
        self.admission = Admission(cfg, self.stats)
        self.pings = PingWheel(cfg.ping_interval, cfg.pong_timeout)  # relay/node/pings.py
        self._ping_task: asyncio.Task | None = None
        self._presence_task: asyncio.Task | None = None
        self._background: set[asyncio.Task] = set()
        # sessions subscribed or subscribing per channel: the node's interest in the broker
        self._interest: dict[str, int] = {}
        # publications received while a subscribe is between its broker subscription and the hub
        self._collectors: dict[str, list[list[dict]]] = {}
        # channels whose broker subscription is on its way: later subscribers wait for it
        self._subscribing: dict[str, asyncio.Future] = {}
        # channel compaction: a numeric id per channel with compacting subscribers here, never reused
        self._cids: dict[str, int] = {}
        self._last_cid = 0
        # delta compression: each delta-publishing channel's previous publication (relay/node/deltas.py), and
        # the subscriptions taking deltas per channel
        self.deltas = Deltas()
        self._delta_subs: Counter[str] = Counter()
        # where this node's delivery of each recoverable channel stands (relay/node/streams.py)
        self.streams = Streams(cfg, broker, self.stats)
        self._position_task: asyncio.Task | None = None
        # the server API's operations on users' connections, on every node (relay/node/serverops.py)
        self.server_ops = ServerOps(cfg, broker, self.users, self.spawn)
        # broker domains down or back: tells their subscribers (relay/node/outages.py)
        self.outages = Outages(cfg, broker, self.stats, self._interest.keys())
        self.core = IMPLEMENTATION
        self.draining = False
        self.join_leave_subs = 0  # hub subscriptions that are a client's join/leave feed, not a channel
        self.connected_by_wire: Counter[int] = Counter()
        self.backlogged: set[ClientSession] = set()  # sessions whose transport paused writing
        self._fanout_started: list[float] = []  # when each publication of this loop iteration arrived
        self._schedule: Any = None
        self._pace_timer: asyncio.Handle | None = None  # delivers the paced broadcasts' slots as they come due
        self.metrics: Any = None  # relay.ops.metrics.Exporter, made by the app

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        delay = self.cfg.client_write_delay
        # The hub schedules one flush per batch of queued writes: at the end of this loop
        # iteration, or after client_write_delay to let more messages share a frame.
        schedule = loop.call_soon if delay <= 0 else functools.partial(loop.call_later, delay)
        self._schedule = schedule
        self.hub = Hub(schedule, self._on_slow, self.cfg.hub_shards, self._on_drop)
        self.streams.bind(self.hub)
        self.outages.bind(self.hub)
        await self.broker.start(self)
        self._ping_task = loop.create_task(self.pings.run())
        self.backpressure.start()
        if self.broker.lossy_delivery:
            self._position_task = loop.create_task(self.streams.check_loop(self.cfg.position_check_interval))
        if self.presence.refresh_interval:
            self._presence_task = loop.create_task(self._presence_loop(self.presence.refresh_interval))

    async def drain(self, window: float, hurry: asyncio.Event | None = None) -> None:
        """Disconnect every client with 3001 'shutdown' (the SDKs reconnect, to another node) at a
        random moment within ``window`` seconds, so they do not all come back at once. Each one gets
        its queued messages first, and the publications that arrive meanwhile while it is still here.
        Then wait (at most 4 s, so the process ends within window + 5 s) for the sockets to close."""
        self.draining = True
        loop = asyncio.get_running_loop()
        start = loop.time()
        due = sorted((start + random.uniform(0, window), i, s) for i, s in enumerate(self.open_sessions))
        tick = min(0.05, window / 20) if window > 0 else 0
        k = 0
        while k < len(due):
            now = loop.time()
            if hurry is not None and hurry.is_set():
                now = float("inf")
            while k < len(due) and due[k][0] <= now:
                due[k][2].disconnect(DISCONNECTS.SHUTDOWN)
                k += 1
            if k < len(due):
                try:
                    await asyncio.wait_for(hurry.wait(), tick) if hurry is not None else await asyncio.sleep(tick)
                except TimeoutError:
                    pass
        for s in list(self.open_sessions):  # connected during the drain
            s.disconnect(DISCONNECTS.SHUTDOWN)
        deadline = loop.time() + min(self.cfg.shutdown_timeout, 4.0)
        while self.admission.num_connections > 0 and loop.time() < deadline:
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        for task in (self._ping_task, self._presence_task, self._position_task):
            if task is not None:
                task.cancel()
        self.outages.close()
        self.draining = True
        self.recovery.close()
        await self.backpressure.stop()
        if self._pace_timer is not None:
            self._pace_timer.cancel()
        for s in list(self.open_sessions):
            s.disconnect(DISCONNECTS.SHUTDOWN)
        if self._background:
            await asyncio.wait(self._background, timeout=min(self.cfg.shutdown_timeout, 1.0))
        if self.proxy is not None:
            await self.proxy.close()
        await self.broker.close()

    @property
    def max_connections(self) -> int:
        return self.admission.max_connections

    @property
    def num_channels(self) -> int:
        """Channels this node has broker interest in (subscribed or subscribing)."""
        return len(self._interest)

    def spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- sessions --------------------------------------------------------------------------------

    def new_session(self, transport: Any, raw_transport: asyncio.Transport, wire: int,
                    remote: str = "") -> ClientSession:
        s = ClientSession(self, transport, raw_transport, wire, remote)
        self.open_sessions.add(s)
        self.stats.accepted[wire] += 1
        return s

    def register(self, s: ClientSession) -> None:
        self.sessions[s.client_id] = s
        self.pings.add(s)
        self.users.setdefault(s.user, set()).add(s)
        self.connected_by_wire[s.conn.wire] += 1

    def unregister(self, s: ClientSession) -> None:
        self.open_sessions.discard(s)
        self.pings.discard(s)
        self.backlogged.discard(s)
        if self.sessions.pop(s.client_id, None) is not None:
            self.connected_by_wire[s.conn.wire] -= 1
            users = self.users.get(s.user)
            if users is not None:
                users.discard(s)
                if not users:
                    del self.users[s.user]

    def tune_socket(self, transport: Any) -> None:
        """A new client socket: cap the kernel's send buffer (client_send_buffer), so a client that does
        not read shows up in relay's own queue (lanes, 3008, backpressure) instead of hiding in the
        kernel."""
        size = self.cfg.client_send_buffer
        if size:
            try:
                transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
            except (OSError, AttributeError):
                pass

    def backlog_bytes(self) -> int:
        """Bytes queued for clients whose transport paused writing (relay's queue, the transport's and the
        kernel's send queue)."""
        total = 0
        for s in list(self.backlogged):
            total += s.conn.queued + s.transport_buffered()
        return total

    def _on_slow(self, conn) -> None:
        session = conn.session
        if session is not None:
            session.disconnect(DISCONNECTS.SLOW)

    def _on_drop(self, conn, channel: str) -> None:
        """A publication (or join/leave push) of an update or bulk lane did not fit the connection's queue:
        no silent gap, the client gets 2500 for that channel, resubscribes and recovers what it missed."""
        session = conn.session
        if session is not None:
            if channel.startswith(JOIN_LEAVE_PREFIX):
                channel = channel[len(JOIN_LEAVE_PREFIX):]
            session.lane_dropped(channel)

    def lane(self, channel: str, lane: int | None = None) -> int:
        """The priority lane a publication of ``channel`` travels in: ``lane`` (a server API publish's own
        class) or its namespace's; always chat with lanes off."""
        if not self.cfg.lanes or lane is not None:
            return self.lane_of(None, lane)
        return self.lane_of(self.cfg.channel_options(channel))

    def lane_of(self, opts: ChannelOptions | None, lane: int | None = None) -> int:
        """``lane`` for a channel whose namespace options the caller has at hand (None: no namespace)."""
        if not self.cfg.lanes:
            return LANE_CHAT
        if lane is not None:
            return lane
        return LANES[opts.lane] if opts is not None else LANE_CHAT

    async def _presence_loop(self, interval: float) -> None:
        """Keep live connections' presence from expiring (brokers whose entries expire)."""
        while True:
            await asyncio.sleep(interval)
            for s in list(self.sessions.values()):
                for channel in list(s.subs):
                    opts = self.cfg.channel_options(channel)
                    if opts is not None and opts.presence and not s.closed:
                        try:
                            await self.presence.add_presence(channel, s.client_id, s.client_info())
                        except BrokerUnavailable:
                            break

    # --- channels --------------------------------------------------------------------------------

    def redactor(self, opts: ChannelOptions) -> Redactor | None:
        """The redaction a namespace asks for (None: none), built once per namespace."""
        key = id(opts)
        if key not in self._redactors:
            r = Redactor(opts.redact_cards, opts.redact_patterns, opts.redact_replacement)
            self._redactors[key] = r if r else None
        return self._redactors[key]

    def valid_channel(self, channel: str) -> bool:
        if not channel or len(channel.encode("utf-8")) > self.cfg.max_channel_length:
            return False
        return _CONTROL_CHAR(channel) is None

    def check_subscribe(self, s: ClientSession, channel: str, opts: ChannelOptions) -> None:
        """Refuse (103) a subscribe without a subscription token that ``opts`` does not allow."""
        mode = opts.subscribe_access
        if mode == "token" or (mode == "authenticated" and not s.user) or not _user_listed(s, channel):
            raise ERRORS.PERMISSION_DENIED

    @staticmethod
    def check_access(s: ClientSession, channel: str, mode: str) -> None:
        """Refuse (103) a publish, history or presence call that ``mode`` (an ACCESS_MODES value) does not
        allow this client on ``channel``."""
        if mode == "subscribers":
            ok = channel in s.subs
        elif mode == "token":
            ok = channel in s.subs and s.token_granted(channel)
        elif mode == "authenticated":
            ok = bool(s.user) and _user_listed(s, channel)
        elif mode == "anonymous":
            ok = _user_listed(s, channel)
        else:  # "none"
            ok = False
        if not ok:
            raise ERRORS.PERMISSION_DENIED

    async def acquire(self, channel: str) -> None:
        """Make sure this node receives ``channel``'s publications (before reading its history). The first
        subscriber makes the broker subscription; the others wait until it is confirmed (or failed)."""
        n = self._interest.get(channel, 0)
        self._interest[channel] = n + 1
        try:
            if n == 0:
                done = self._subscribing[channel] = asyncio.get_running_loop().create_future()
                ok = False
                try:
                    await self.broker.subscribe(channel)
                    ok = True
                finally:
                    if self._subscribing.get(channel) is done:
                        del self._subscribing[channel]
                    done.set_result(ok)
            else:
                pending = self._subscribing.get(channel)
                if pending is not None and not await asyncio.shield(pending):
                    raise BrokerUnavailable("the broker subscription failed")
        except BaseException as e:
            self.release(channel)
            if isinstance(e, BrokerUnavailable):
                raise ERRORS.INTERNAL from None
            raise

    def release(self, channel: str) -> None:
        n = self._interest.get(channel, 0) - 1
        if n > 0:
            self._interest[channel] = n
            return
        self._interest.pop(channel, None)
        self._cids.pop(channel, None)
        self.deltas.forget(channel)
        self.streams.forget(channel)
        self.spawn(self._broker_unsubscribe(channel))

    async def _broker_unsubscribe(self, channel: str) -> None:
        try:
            await self.broker.unsubscribe(channel)
        except BrokerUnavailable:
            pass

    def channel_id(self, channel: str) -> int:
        """``channel``'s numeric id in compacted pushes (Centrifugo's channel compaction, subscribe flag bit 1):
        the same for every subscriber here while the node has interest in it, a new one after that (ids are
        never reused, so a client can never confuse two channels)."""
        cid = self._cids.get(channel)
        if cid is None:
            self._last_cid += 1
            cid = self._cids[channel] = self._last_cid
        return cid

    def collect(self, channel: str) -> list[dict]:
        """Start keeping the publications of ``channel`` that arrive from now on."""
        box: list[dict] = []
        self._collectors.setdefault(channel, []).append(box)
        return box

    def stop_collecting(self, channel: str, box: list[dict]) -> None:
        boxes = self._collectors.get(channel)
        if boxes is not None:
            # by identity: the boxes are lists, and two empty ones are equal
            for i, b in enumerate(boxes):
                if b is box:
                    del boxes[i]
                    break
            if not boxes:
                del self._collectors[channel]

    async def add_subscription(self, s: ClientSession, channel: str, join_leave: bool,
                               opts: ChannelOptions, after: int = 0) -> None:
        """``after``: the client has the stream up to this offset, which the node's delivery has not reached
        yet; it joins the hub when it does (Streams.track's 'wait')."""
        variant, cid = s.hub_args(channel)
        if variant & DELTA_FIRST:
            self._delta_subs[channel] += 1
        if after:
            self.streams.wait_to_join(channel, s, after)
        else:
            self.hub.subscribe(channel, s.conn, variant, cid)
        if join_leave:  # join and leave pushes: compacted like the publications, never deltas
            self.hub.subscribe(join_leave_channel(channel), s.conn, variant & COMPACT, cid)
            self.join_leave_subs += 1
        if opts.presence:
            info = s.client_info()
            try:
                await self.presence.add_presence(channel, s.client_id, info)
                if s.closed or channel not in s.subs:
                    # the client left while we were adding it (a broker that really awaits): undo
                    await self.presence.remove_presence(channel, s.client_id)
                    return
                if opts.join_leave:
                    await self.broker.publish_join(channel, info)
            except BrokerUnavailable:
                # subscribed all the same (the reply is out): the presence refresh adds the entry once the
                # broker answers, and an entry left behind expires (presence_ttl)
                pass

    def drop_subscription(self, s: ClientSession, channel: str, join_leave: bool) -> None:
        if join_leave:
            self.hub.unsubscribe(join_leave_channel(channel), s.conn)
            self.join_leave_subs -= 1
        if not self.hub.unsubscribe(channel, s.conn):
            self.streams.drop_pending(channel, s)
        if s.hub_args(channel)[0] & DELTA_FIRST:
            self._delta_subs[channel] -= 1
            if self._delta_subs[channel] <= 0:
                del self._delta_subs[channel]
        s.forget_variant(channel)
        self.release(channel)
        opts = self.cfg.channel_options(channel)
        if opts is not None and opts.presence:
            self.spawn(self._leave(channel, s.client_id, s.client_info(), opts.join_leave))

    async def _leave(self, channel: str, client_id: str, info: dict, announce: bool) -> None:
        try:
            await self.presence.remove_presence(channel, client_id)
            if announce:
                await self.broker.publish_leave(channel, info)
        except BrokerUnavailable:
            pass  # the entry expires by itself (presence_ttl)

    # --- broker events (BrokerEventHandler) ------------------------------------------------------

    def handle_publication(self, channel: str, pub: dict, epoch: str = "", lane: int | None = None,
                           pace_ms: int | None = None) -> None:
        boxes = self._collectors.get(channel)
        if boxes is not None:
            for box in boxes:
                box.append(pub)
        offset = pub.get("offset")
        streams = self.streams
        if streams.waiters:
            streams.offset_arrived(channel, offset or 0)
        if offset and epoch and not streams.arrived(channel, offset, epoch):
            return  # delivered already, or after a gap: its subscribers recover from history instead
        opts = self.cfg.channel_options(channel)  # once per publication: pacing and lane
        if pace_ms is None:
            pace_ms = opts.pace_ms if opts is not None else 0
        lane = self.lane_of(opts, lane)
        paced = pace_ms and self.hub.num_subscribers(channel) >= self.cfg.pace_min_subscribers
        delta = None
        if opts is not None and opts.delta_publish:  # the delta from the previous publication (deltas.py)
            delta = self.deltas.next(channel, pub, epoch, not paced and channel in self._delta_subs)
        if paced:
            self._paced(channel, pub, lane, pace_ms)
        else:
            t0 = time.perf_counter()
            if self.hub.broadcast(channel, {"channel": channel, "pub": pub}, lane, delta):
                started = self._fanout_started
                if not started:
                    # after the hub's flush, which this broadcast scheduled (or an earlier one did)
                    self._schedule(self._fanout_done)
                started.append(t0)
        if offset and streams.pending:
            streams.join_pending(channel, pub, offset)

    def _paced(self, channel: str, pub: dict, lane: int, pace_ms: int) -> None:
        """Spread a publication's fan-out over pace_ms (docs/pacing.md): the hub delivers each subscriber's
        slot as its moment comes, driven by one timer for every channel pacing on this node."""
        loop = asyncio.get_running_loop()
        self.hub.broadcast_paced(channel, {"channel": channel, "pub": pub}, lane, pace_ms / 1000, loop.time())
        if self._pace_timer is None:
            self._pace_timer = loop.call_soon(self._pace_tick)

    def _pace_tick(self) -> None:
        loop = asyncio.get_running_loop()
        nxt = self.hub.pace_tick(loop.time())
        self._pace_timer = loop.call_at(nxt, self._pace_tick) if nxt >= 0 else None

    def _fanout_done(self) -> None:
        """The write pass of the publications fanned out since the last call is over: observe each one's
        fan-out latency."""
        end = time.perf_counter()
        started, self._fanout_started = self._fanout_started, []
        hist = self.stats.fanout
        for t0 in started:
            hist.observe(end - t0)

    def handle_join(self, channel: str, info: dict) -> None:
        self.hub.broadcast(join_leave_channel(channel), {"channel": channel, "join": {"info": info}},
                           self.lane(channel))

    def handle_leave(self, channel: str, info: dict) -> None:
        self.hub.broadcast(join_leave_channel(channel), {"channel": channel, "leave": {"info": info}},
                           self.lane(channel))

    def handle_control(self, data: bytes) -> None:
        """A server API operation on users' connections, from whichever node took the call: serverops.py."""
        self.server_ops.apply(data)

    def handle_domain(self, domain: str, up: bool) -> None:
        """A broker shard went down or came back (the broker's liveness checks): relay/node/outages.py."""
        self.outages.changed(domain, up)

    # --- operations (client commands and the server API) -----------------------------------------

    async def publish_many(self, items: list[tuple[str, Any]], *, source: str = "api", **kw: Any) -> list:
        """See relay.node.publishing.Publisher.publish_many."""
        return await self.publisher.publish_many(items, source=source, **kw)

    async def publish(self, channel: str, data: Any, *, source: str = "api", **kw: Any) -> StreamPosition:
        """Publish through the broker (kw: info, tags, skip_history, idempotency_key, lane, pace_ms); ``source``
        is 'client' or 'api' (a metric label). See relay.node.publishing.Publisher.publish."""
        return await self.publisher.publish(channel, data, source=source, **kw)

    async def history(self, channel: str, p: dict) -> dict:
        return await self.publisher.history(channel, p)

    def channels(self, pattern: str = "") -> dict[str, dict]:
        out = {}
        for ch in self.hub.channels():
            if ch.startswith("\x00"):
                continue
            if pattern and not fnmatch.fnmatchcase(ch, pattern):
                continue
            out[ch] = {"num_clients": self.hub.num_subscribers(ch)}
        return out

    def info(self) -> dict:
        return {
            "uid": self.name,
            "name": self.name,
            "version": __version__,
            "num_clients": len(self.sessions),
            "num_users": len(self.users),
            "num_channels": sum(1 for ch in self.hub.channels() if not ch.startswith("\x00")),
            "num_subs": sum(len(s.subs) for s in self.sessions.values()),
            "uptime": int(time.time() - self.started_at),
        }
