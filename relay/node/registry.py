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
import math
import random
import re
import socket
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from relay import __version__
from relay.auth import TokenVerifier
from relay.rules.backpressure import Backpressure
from relay.brokers.base import (Broker, BrokerUnavailable, PresenceManager, PublishOptions, StreamPosition,
                                UnrecoverablePosition)
from relay.codes import DISCONNECTS, ERRORS, Disconnect
from relay.config import ChannelOptions, Config
from relay.core import IMPLEMENTATION, LANE_CHAT, LANES, Hub
from relay.node.recovery import RecoveryCoalescer
from relay.rules.redact import Redactor
from relay.node.session import ClientSession
from relay.node.subscribe import JOIN_LEAVE_PREFIX, join_leave_channel
from relay.ops.stats import Stats

if TYPE_CHECKING:  # pragma: no cover
    from relay.integrations.proxy import EventProxy
    from relay.rules.support import SupportDesk

__all__ = ["Node", "Stats"]  # Stats: relay/stats.py, kept importable from here

log = logging.getLogger("relay.node")


def connection_cap() -> int:
    """90 % of the open-file limit (after raising the soft limit to the hard one), so sockets never
    exhaust the descriptors relay needs for Redis, logs and its listeners."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return max(1, int(soft * 0.9) - 64)


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
        self.sessions: dict[str, ClientSession] = {}
        self.users: dict[str, set[ClientSession]] = {}
        self.open_sessions: set[ClientSession] = set()
        # sockets accepted and not yet closed (handshaking ones included), in all and per IP
        self.num_connections = 0
        self.per_ip: Counter[str] = Counter()
        # WebSocket sockets still in their handshake, per IP, oldest first: their own small cap, apart from
        # established connections, so half-open sockets cannot lock an address's real clients out
        self.handshaking: dict[str, dict[Any, None]] = {}
        self.max_connections = cfg.max_connections or connection_cap()
        self._ping_task: asyncio.Task | None = None
        # the ping timing wheel: slots of at most 0.1 s over ping_interval, each connected session in one
        self._ping_wheel: list[set[ClientSession]] = [set() for _ in range(max(1, math.ceil(cfg.ping_interval / 0.1)))]
        self._ping_slot: dict[ClientSession, int] = {}
        # pings awaiting their pong, in the slot of the ping loop's tick that is due to check them: a wheel
        # of its own, one slot more than pong_timeout spans, so a check never lands before its deadline
        self._ping_tick = cfg.ping_interval / len(self._ping_wheel)
        self._pong_wheel: list[set[ClientSession]] = [
            set() for _ in range(math.ceil(cfg.pong_timeout / self._ping_tick) + 2)]
        self._ticks = 0  # ticks of the ping loop so far
        self._presence_task: asyncio.Task | None = None
        self._background: set[asyncio.Task] = set()
        # sessions subscribed or subscribing per channel: the node's interest in the broker
        self._interest: dict[str, int] = {}
        # publications received while a subscribe is between its broker subscription and the hub
        self._collectors: dict[str, list[list[dict]]] = {}
        # subscribes waiting for this node's delivery of a channel to reach an offset (Session._catch_up)
        self._offset_waiters: dict[str, list[tuple[int, asyncio.Future]]] = {}
        # channels whose broker subscription is on its way: later subscribers wait for it
        self._subscribing: dict[str, asyncio.Future] = {}
        # the stream position this node has delivered, per recoverable channel with local subscribers
        self._positions: dict[str, StreamPosition] = {}
        self._behind: dict[str, int] = {}  # channel -> stream top seen ahead of us at the last check
        # subscribers whose reply is ahead of what this node has delivered of the channel: (session, offset of
        # the reply); each joins the hub when the node's delivery reaches that offset (Node.track_position)
        self._pending: dict[str, list[tuple[ClientSession, int]]] = {}
        self._position_task: asyncio.Task | None = None
        # broker failure domains (shards, Cluster masters) that are down: the timer that tells the subscribers
        # of their channels once broker_down_grace is over (it stays here, fired, until the domain is back)
        self._domain_timers: dict[str, asyncio.TimerHandle] = {}
        # per domain that went down for longer than the grace: the sessions told (2500) and the channels each lost
        self._told: dict[str, dict[ClientSession, set[str]]] = {}
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
        await self.broker.start(self)
        self._ping_task = loop.create_task(self._ping_loop())
        self.backpressure.start()
        if self.broker.lossy_delivery:
            self._position_task = loop.create_task(self._position_loop(self.cfg.position_check_interval))
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
        while self.num_connections > 0 and loop.time() < deadline:
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        for task in (self._ping_task, self._presence_task, self._position_task):
            if task is not None:
                task.cancel()
        for timer in self._domain_timers.values():
            timer.cancel()
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

    def spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- admission ---

    def admit(self, ip: str) -> str | None:
        """Count a new socket; the reason it must be refused ("full" or "ip"), or None."""
        if self.num_connections >= self.max_connections:
            self.stats.handshake_failure("server_full")
            return "full"
        limit = self.cfg.max_connections_per_ip
        if limit and self.per_ip[ip] >= limit:
            self.stats.handshake_failure("ip_limit")
            return "ip"
        self.num_connections += 1
        self.per_ip[ip] += 1
        return None

    def release_connection(self, ip: str) -> None:
        self.num_connections -= 1
        n = self.per_ip[ip] - 1
        if n > 0:
            self.per_ip[ip] = n
        else:
            del self.per_ip[ip]

    def admit_handshake(self, ip: str, proto: Any) -> str | None:
        """Count a new WebSocket socket that has not finished its handshake: the process-wide cap applies,
        the per-IP cap of established connections does not (yet). Past max_handshakes_per_ip pending from
        one address, its oldest pending handshake is closed to make room: a real client finishes within a
        round trip, so half-open sockets from a shared address (a NAT, an office) cannot keep it out.
        The reason to refuse ("full"), or None."""
        if self.num_connections >= self.max_connections:
            self.stats.handshake_failure("server_full")
            return "full"
        pending = self.handshaking.setdefault(ip, {})
        limit = self.cfg.max_handshakes_per_ip
        while limit and len(pending) >= limit:
            oldest = next(iter(pending))
            del pending[oldest]
            self.num_connections -= 1
            self.stats.handshake_failure("evicted")
            oldest.evict()
        pending[proto] = None
        self.num_connections += 1
        return None

    def handshake_done(self, ip: str, proto: Any, established: bool) -> str | None:
        """A pending handshake ended: completed (``established``: it now counts as a connection of its IP,
        unless the per-IP cap refuses it: "ip") or abandoned (the socket is released). "gone": it had
        been evicted."""
        pending = self.handshaking.get(ip)
        if pending is None or proto not in pending:
            return "gone"  # evicted meanwhile, and released then
        del pending[proto]
        if not pending:
            del self.handshaking[ip]
        if not established:
            self.num_connections -= 1
            return None
        limit = self.cfg.max_connections_per_ip
        if limit and self.per_ip[ip] >= limit:
            self.stats.handshake_failure("ip_limit")
            self.num_connections -= 1
            return "ip"
        self.per_ip[ip] += 1
        return None

    # --- sessions --------------------------------------------------------------------------------

    def new_session(self, transport: Any, raw_transport: asyncio.Transport, wire: int,
                    remote: str = "") -> ClientSession:
        s = ClientSession(self, transport, raw_transport, wire, remote)
        self.open_sessions.add(s)
        self.stats.accepted[wire] += 1
        return s

    def register(self, s: ClientSession) -> None:
        self.sessions[s.client_id] = s
        slot = random.randrange(len(self._ping_wheel))
        self._ping_slot[s] = slot
        self._ping_wheel[slot].add(s)
        self.users.setdefault(s.user, set()).add(s)
        self.connected_by_wire[s.conn.wire] += 1

    def unregister(self, s: ClientSession) -> None:
        self.open_sessions.discard(s)
        slot = self._ping_slot.pop(s, None)
        if slot is not None:
            self._ping_wheel[slot].discard(s)
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

    async def _ping_loop(self) -> None:
        """Ping each connected client every ``ping_interval``. Clients sit on a timing wheel, each in a
        random slot of the interval: a tick pings one slot, so clients that connected together (a
        reconnect storm) are not pinged, and do not answer, together, and no tick walks every session."""
        wheel, pongs, tick = self._ping_wheel, self._pong_wheel, self._ping_tick
        while True:
            await asyncio.sleep(tick)
            self._ticks += 1
            now = time.monotonic()
            for s in list(wheel[self._ticks % len(wheel)]):
                s.ping(now)
            j = self._ticks % len(pongs)
            due = pongs[j]
            if due:
                pongs[j] = set()
                for s in due:
                    s.pong_due(now)

    def await_pong(self, s: ClientSession) -> None:
        """``s`` just pinged and waits for its pong: check it at the first tick after pong_timeout (the
        ping wheel itself comes back only after ping_interval)."""
        pongs = self._pong_wheel
        pongs[(self._ticks + len(pongs) - 1) % len(pongs)].add(s)

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
        self._positions.pop(channel, None)
        self._behind.pop(channel, None)
        self.spawn(self._broker_unsubscribe(channel))

    async def _broker_unsubscribe(self, channel: str) -> None:
        try:
            await self.broker.unsubscribe(channel)
        except BrokerUnavailable:
            pass

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
        yet; it joins the hub when it does (track_position's 'wait')."""
        if after:
            self._pending.setdefault(channel, []).append((s, after))
        else:
            self.hub.subscribe(channel, s.conn)
        if join_leave:
            self.hub.subscribe(join_leave_channel(channel), s.conn)
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
        if not self.hub.unsubscribe(channel, s.conn) and channel in self._pending:
            self._pending[channel] = [(p, a) for p, a in self._pending[channel] if p is not s]
            if not self._pending[channel]:
                del self._pending[channel]
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
        if self._offset_waiters:
            self._offset_arrived(channel, offset or 0)
        if offset and epoch:
            known = self._positions.get(channel)
            if known is not None:
                if offset <= known.offset and epoch == known.epoch:
                    return  # delivered already
                if epoch != known.epoch or offset > known.offset + 1:
                    # a gap (or a lost stream): subscribers recover from history instead
                    self._positions[channel] = StreamPosition(offset, epoch)
                    self.resync(channel)
                    return
                self._positions[channel] = StreamPosition(offset, epoch)
        opts = self.cfg.channel_options(channel)  # once per publication: pacing and lane
        if pace_ms is None:
            pace_ms = opts.pace_ms if opts is not None else 0
        lane = self.lane_of(opts, lane)
        if pace_ms and self.hub.num_subscribers(channel) >= self.cfg.pace_min_subscribers:
            self._paced(channel, pub, lane, pace_ms)
        else:
            t0 = time.perf_counter()
            if self.hub.broadcast(channel, {"channel": channel, "pub": pub}, lane):
                started = self._fanout_started
                if not started:
                    # after the hub's flush, which this broadcast scheduled (or an earlier one did)
                    self._schedule(self._fanout_done)
                started.append(t0)
        if offset and self._pending:
            pending = self._pending.get(channel)
            if pending is not None:
                self._join_pending(channel, pending, pub, offset)

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

    def delivered_offset(self, channel: str, epoch: str) -> int:
        """The offset this node has delivered up to in ``channel``'s stream ``epoch`` (0: not tracked)."""
        known = self._positions.get(channel)
        return known.offset if known is not None and known.epoch == epoch else 0

    async def offset_reached(self, channel: str, offset: int, timeout: float) -> None:
        """Return once a publication of ``channel`` with ``offset`` or a later one arrives here (or one of
        another stream: the caller checks again), or after ``timeout`` seconds."""
        fut = asyncio.get_running_loop().create_future()
        entry = (offset, fut)
        waiters = self._offset_waiters.setdefault(channel, [])
        waiters.append(entry)
        try:
            async with asyncio.timeout(timeout):
                await fut
        except TimeoutError:
            pass
        finally:
            waiters = self._offset_waiters.get(channel)
            if waiters is not None and entry in waiters:
                waiters.remove(entry)
                if not waiters:
                    del self._offset_waiters[channel]

    def _offset_arrived(self, channel: str, offset: int) -> None:
        waiters = self._offset_waiters.get(channel)
        if not waiters:
            return
        keep = []
        for want, fut in waiters:
            if offset >= want or offset == 0:  # reached, or no offset to compare: let it look again
                if not fut.done():
                    fut.set_result(None)
            else:
                keep.append((want, fut))
        if keep:
            self._offset_waiters[channel] = keep
        else:
            del self._offset_waiters[channel]

    def track_position(self, channel: str, pos: StreamPosition) -> str:
        """Check ``channel``'s stream against what this node delivers. Called with the position a subscribe
        reply gave its client (the last offset it has), right before that client joins: 'join' (the hub
        carries on exactly from there), 'wait' (join later: add_subscription's ``after``), or 'behind'
        (the node is past that position: the client would miss a stretch, so it gets 2500 instead).

        When the node's delivery is behind ``pos``, what is still to arrive up to ``pos`` is old to the new
        subscriber: pub/sub messages slower than the history read, or a backlog that Redis buffered for this
        node during a network cut. So the client waits outside the hub and joins once the node's delivery
        reaches ``pos``; the earlier subscribers meanwhile get the stream in order, as it comes. Another
        epoch: the stream this node was delivering is gone; it moves to ``pos`` and its earlier subscribers
        get 2500 (they recover from their own positions)."""
        if not pos.epoch:
            return "join"
        known = self._positions.get(channel)
        if known is None:
            self._positions[channel] = pos
        elif known.epoch != pos.epoch:
            self._positions[channel] = pos
            self._behind.pop(channel, None)
            if self.hub.num_subscribers(channel) or channel in self._pending:
                self.resync(channel)
        elif known.offset < pos.offset:
            return "wait"
        elif known.offset > pos.offset:
            return "behind"
        return "join"

    def _join_pending(self, channel: str, pending: list[tuple[ClientSession, int]], pub: dict, offset: int) -> None:
        """A publication the hub has just delivered: the waiting subscribers it brings up to their position
        join the hub (one whose position it passed gets it first, as the hub went past it)."""
        keep = []
        for s, after in pending:
            if s.closed or channel not in s.subs:
                continue
            if offset < after:
                keep.append((s, after))
                continue
            if offset > after:
                s.send({"push": {"channel": channel, "pub": pub}})
            self.hub.subscribe(channel, s.conn)
        if keep:
            self._pending[channel] = keep
        else:
            self._pending.pop(channel, None)

    def resync(self, channel: str) -> None:
        """Publications of ``channel`` may have been missed here: every local subscriber gets Centrifugo's
        'insufficient state' unsubscribe (2500) and its SDK resubscribes, recovering from history."""
        self.stats.resyncs += 1
        log.warning("gap detected in a channel's stream: resyncing its subscribers",
                    extra={"event": "resync", "channel": channel, "subscribers": self.hub.num_subscribers(channel)})
        for conn in self.hub.subscribers(channel):
            if conn.session is not None:
                conn.session.resync(channel)
        for s, _ in self._pending.pop(channel, ()):
            s.resync(channel)

    async def _position_loop(self, interval: float) -> None:
        """Find publications this node never received (a dropped pub/sub link, a paused or restarted
        Redis) by comparing each tracked channel with its stream, twice before acting."""
        while True:
            await asyncio.sleep(interval)
            for channel, _known in list(self._positions.items()):
                try:
                    hr = await asyncio.wait_for(
                        self.broker.history(channel, since=None, limit=0, reverse=False,
                                            meta_ttl=self.cfg.history_meta_ttl), interval)
                except (TimeoutError, BrokerUnavailable):
                    continue
                mine = self._positions.get(channel)
                if mine is None:
                    continue
                top = hr.position
                if top.epoch != mine.epoch:
                    self._positions[channel] = top
                    self.resync(channel)
                elif top.offset > mine.offset:
                    seen_before = self._behind.get(channel)
                    if seen_before is not None and mine.offset < seen_before:
                        # what was published by the previous check never reached this node
                        self._positions[channel] = top
                        self._behind.pop(channel, None)
                        self.resync(channel)
                    else:
                        self._behind[channel] = top.offset
                else:
                    self._behind.pop(channel, None)

    def handle_join(self, channel: str, info: dict) -> None:
        self.hub.broadcast(join_leave_channel(channel), {"channel": channel, "join": {"info": info}},
                           self.lane(channel))

    def handle_leave(self, channel: str, info: dict) -> None:
        self.hub.broadcast(join_leave_channel(channel), {"channel": channel, "leave": {"info": info}},
                           self.lane(channel))

    def handle_domain(self, domain: str, up: bool) -> None:
        """A broker shard went down or came back (the broker's liveness checks, relay/brokers/health.py).

        Down for longer than broker_down_grace: every local subscriber of its channels gets 2500, so its SDK
        shows the subscription as 'subscribing' (an app can say "reconnecting...") and retries; a retry
        fails at once with 100 while the shard stays down, and no connection is dropped, so an outage of
        the whole broker causes no reconnect churn. Back: the clients told that have not resubscribed by
        themselves (an SDK's retry backoff grows to 20 s) get 3011, spread over broker_heal_reconnect_window,
        and resubscribe (recovering) as they reconnect."""
        loop = asyncio.get_running_loop()
        if not up:
            if domain not in self._domain_timers:
                self._domain_timers[domain] = loop.call_later(self.cfg.broker_down_grace, self._domain_lost, domain)
            return
        timer = self._domain_timers.pop(domain, None)
        if timer is not None:
            timer.cancel()
        told = self._told.pop(domain, None)
        if told:
            window = self.cfg.broker_heal_reconnect_window
            log.info("broker %s is back: %d clients told of it get 3011 within %.1f s unless they resubscribe "
                     "first", domain, len(told), window,
                     extra={"event": "broker_heal_reconnect", "shard": domain, "clients": len(told)})
            for s, channels in told.items():
                loop.call_later(random.uniform(0, window), self._heal_reconnect, s, channels, domain)

    def _domain_lost(self, domain: str) -> None:
        told = self._told.setdefault(domain, {})
        channels = [ch for ch in list(self._interest) if self.broker.domain(ch) == domain]
        n = 0
        for ch in channels:
            for conn in self.hub.subscribers(ch):
                s = conn.session
                if s is not None:
                    told.setdefault(s, set()).add(ch)
                    s.resync(ch)
                    n += 1
        self.stats.outage_resyncs += n
        log.warning("broker %s down for %.1f s: %d subscriptions of %d channels get 2500", domain,
                    self.cfg.broker_down_grace, n, len(channels),
                    extra={"event": "broker_down_resync", "shard": domain, "subscriptions": n,
                           "channels": len(channels)})

    def _heal_reconnect(self, s: ClientSession, channels: set[str], domain: str) -> None:
        if s.closed or domain in self._domain_timers:
            return  # gone, or the shard is down again (the next heal nudges it)
        if all(ch in s.subs for ch in channels):
            return  # its SDK resubscribed by itself
        s.disconnect(DISCONNECTS.FORCE_RECONNECT)

    # --- operations (client commands and the server API) -----------------------------------------

    def _publish_options(self, channel: str, *, info: dict | None = None, tags: dict[str, str] | None = None,
                         skip_history: bool = False, idempotency_key: str | None = None,
                         lane: int | None = None, pace_ms: int | None = None) -> PublishOptions:
        opts = self.cfg.channel_options(channel)
        if opts is None:
            raise ERRORS.UNKNOWN_CHANNEL
        return PublishOptions(
            history_size=0 if skip_history else opts.history_size,
            history_ttl=opts.history_ttl,
            history_meta_ttl=self.cfg.history_meta_ttl,
            info=info, tags=tags or None, idempotency_key=idempotency_key or None,
            idempotency_window=self.cfg.idempotency_window, lane=lane, pace_ms=pace_ms,
        )

    async def publish_many(self, items: list[tuple[str, Any]], *, source: str = "api", **kw: Any) -> list:
        """Publish several (channel, data) in order with one broker round trip per shard; per item
        the StreamPosition or the ClientError to answer. ``kw`` as for ``publish``."""
        bp = self.backpressure
        broker = self.broker
        out: list = [None] * len(items)
        groups: dict[str, list[int]] = {}  # per broker failure domain: its own latency and refusals
        for i, (ch, _) in enumerate(items):
            groups.setdefault(broker.domain(ch), []).append(i)
        batches = []
        for domain, idx in groups.items():
            if bp.refuse(source, domain):  # it cannot deliver what it has: refuse, never buffer
                for i in idx:
                    out[i] = ERRORS.OVERLOADED
            else:
                batches.append((domain, idx, [(items[i][0], items[i][1], self._publish_options(items[i][0], **kw))
                                               for i in idx]))

        async def run(domain: str, idx: list[int], batch: list) -> None:
            t0 = time.perf_counter()
            bp.publish_started(len(batch), domain)
            try:
                results = await broker.publish_many(batch)
            finally:
                dt = time.perf_counter() - t0
                bp.publish_done(dt, len(batch), domain)
                self.stats.broker_publish.observe(dt)
            for i, r in zip(idx, results, strict=True):
                out[i] = ERRORS.INTERNAL if isinstance(r, Exception) else r

        await asyncio.gather(*(run(*b) for b in batches))
        self.stats.publications[source] += sum(1 for r in out if isinstance(r, StreamPosition))
        if self.support is not None:  # support chat namespaces: first-response time (relay/rules/support.py)
            await self.support.published_many(items, out, kw.get("info"))
        return out

    async def publish(self, channel: str, data: Any, *, source: str = "api", **kw: Any) -> StreamPosition:
        """Publish through the broker (kw: info, tags, skip_history, idempotency_key, lane); ``source`` is
        'client' or 'api' (a metric label)."""
        bp = self.backpressure
        domain = self.broker.domain(channel)  # a failing shard refuses its own channels only
        if bp.refuse(source, domain):  # it cannot deliver what it has: refuse, never buffer (rules/backpressure.py)
            raise ERRORS.OVERLOADED
        popts = self._publish_options(channel, **kw)
        t0 = time.perf_counter()
        bp.publish_started(1, domain)
        try:
            pos = await self.broker.publish(channel, data, popts)
        except BrokerUnavailable:
            raise ERRORS.INTERNAL from None  # never a false OK: the client retries
        finally:
            dt = time.perf_counter() - t0
            bp.publish_done(dt, 1, domain)
            self.stats.broker_publish.observe(dt)
        self.stats.publications[source] += 1
        if self.support is not None:  # support chat namespaces: first-response time (relay/rules/support.py)
            await self.support.published(channel, data, kw.get("info"))
        return pos

    async def history(self, channel: str, p: dict) -> dict:
        limit = p.get("limit", 0)
        reverse = p.get("reverse", False)
        since = p.get("since")
        if type(limit) is not int or not isinstance(reverse, bool):
            raise ERRORS.BAD_REQUEST
        pos = None
        if since is not None:
            if not isinstance(since, dict):
                raise ERRORS.BAD_REQUEST
            try:
                pos = StreamPosition(int(since.get("offset") or 0), str(since.get("epoch") or ""))
            except (TypeError, ValueError):
                raise ERRORS.BAD_REQUEST from None
        self.stats.history_reads["history"] += 1
        try:
            hr = await self.broker.history(channel, since=pos, limit=limit, reverse=reverse,
                                           meta_ttl=self.cfg.history_meta_ttl)
        except UnrecoverablePosition:
            raise ERRORS.UNRECOVERABLE_POSITION from None
        except BrokerUnavailable:
            raise ERRORS.INTERNAL from None
        return {"publications": hr.publications, "epoch": hr.position.epoch, "offset": hr.position.offset}

    def disconnect_user(self, user: str, d: Disconnect, client: str = "",
                        keep: frozenset[str] = frozenset()) -> int:
        targets = list(self.users.get(user, ()))
        n = 0
        for s in targets:
            if (client and s.client_id != client) or s.client_id in keep:
                continue
            s.disconnect(d)
            n += 1
        return n

    def unsubscribe_user(self, user: str, channel: str, client: str = "") -> int:
        n = 0
        for s in list(self.users.get(user, ())):
            if (client and s.client_id != client) or channel not in s.subs:
                continue
            jl = s.subs.pop(channel)
            self.drop_subscription(s, channel, jl)
            s.send({"push": {"channel": channel, "unsubscribe": {"code": 2000, "reason": "server unsubscribe"}}})
            n += 1
        return n

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
