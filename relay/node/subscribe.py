"""Subscribing, the part of a client session that joins it to channels: permission (config, subscription
tokens, the backend's subscribe hook), the broker interest and the stream read with recovery, the catch-up with
what this node has delivered, joining the hub at the reply's position, and each subscription's lifetime (token
expiry, sub_refresh). ``Subscriptions`` is a part of relay.node.session.ClientSession and shares its state."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from relay.auth import TokenExpired, TokenInvalid
from relay.brokers.base import BrokerUnavailable, StreamPosition
from relay.codes import DISCONNECTS, ERRORS, ClientError
from relay.config import DELTA_TYPES
from relay.core import LANE_BULK, WIRE_TCP
from relay.protocol.variants import COMPACT, DELTA_FIRST, variant_push
from relay.node.host import SessionState

__all__ = ["Subscriptions", "join_leave_channel", "JOIN_LEAVE_PREFIX", "INSUFFICIENT_STATE", "CATCH_UP_WAIT",
           "check_position"]

FLAG_CHANNEL_COMPACTION = 1  # subscribe "flag" bit: pushes name the channel by a numeric id (reply "id")
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


def check_position(p: dict) -> None:
    """The stream fields of a subscribe (or of one connect.subs entry): ``flag`` and ``offset`` integers,
    ``epoch`` a string. Refused with 107 before any work, instead of failing halfway through it."""
    _uint(p, "flag")
    _uint(p, "offset")
    if p.get("epoch") is not None and not isinstance(p["epoch"], str):
        raise ERRORS.BAD_REQUEST


JOIN_LEAVE_PREFIX = "\x00jl\x00"


def join_leave_channel(channel: str) -> str:
    """The hub channel whose subscribers receive join/leave pushes for ``channel``."""
    return JOIN_LEAVE_PREFIX + channel


class Subscriptions(SessionState):
    """A session's subscriptions (mixed into relay.node.session.ClientSession, whose state it uses)."""

    __slots__ = ()

    async def _cmd_subscribe(self, p: dict, cmd_id: int) -> None:
        node = self.node
        channel = self._channel(p)
        check_position(p)
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
        delta = self._delta_asked(p, opts)
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
        # channel compaction, on the JSON protocol only: the published centrifuge-js protobuf build (5.8) decodes
        # the int64 id as a Long object and compares it by identity, so it would drop every push by id
        if _uint(p, "flag") & FLAG_CHANNEL_COMPACTION and self.codec.name == "json":
            cid = prepared[0]["id"] = self.node.channel_id(channel)
            if self._cids is None:
                self._cids = {}
            self._cids[channel] = cid
        if delta and prepared[0].get("positioned"):  # deltas need the stream's order: positioned only
            prepared[0]["delta"] = True
            if self._deltas is None:
                self._deltas = set()
            self._deltas.add(channel)
            if prepared[0].get("publications"):
                prepared[0]["publications"] = [self.delta_mode(pub) for pub in prepared[0]["publications"]]
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
            self.send(self.pub_push(channel, pub))
        self.subs[channel] = join_leave
        after = 0
        if "epoch" in result:
            last = max(result["offset"], extra[-1].get("offset", 0) if extra else 0)
            verdict = self.node.streams.track(channel, StreamPosition(last, result["epoch"]))
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

    async def server_subscribe(self, channel: str, opts, data: Any = None,
                               since: StreamPosition | None = None) -> bool:
        """The server API's subscribe: join ``channel`` as a server-side subscription (the client cannot
        unsubscribe it; a resync reconnects it, 3010) and tell the client with Centrifugo's subscribe push
        (position, ``data``). With ``since``, what the stream holds after it follows as publications.
        False when nothing was done (already subscribed, at the channel limit, or gone)."""
        if self.closed or not self.connected or channel in self.subs:
            return False
        if len(self.subs) >= self.node.cfg.max_channels_per_connection:
            return False
        p: dict = {"recoverable": True}
        if since is not None:
            p.update(recover=True, offset=since.offset, epoch=since.epoch)
        prepared = await self._prepare(channel, p, opts)
        if prepared is None:
            return False
        result, extra = prepared
        push = {k: result[k] for k in ("recoverable", "epoch", "offset", "positioned") if k in result}
        if data is not None:
            push["data"] = data
        self._server_subs = self._server_subs | {channel}
        self.send({"push": {"channel": channel, "subscribe": push}})
        await self._join(channel, result, result.pop("publications", []) + extra,
                         opts.join_leave and opts.force_push_join_leave, opts)
        return True

    def server_unsubscribe(self, channel: str) -> bool:
        """The server API's unsubscribe (Centrifugo's unsubscribe push, code 2000)."""
        if channel not in self.subs:
            return False
        jl = self.subs.pop(channel)
        self._server_subs = self._server_subs - {channel}
        self.node.drop_subscription(self, channel, jl)
        if self._sub_timers:
            self._expire_sub_at(channel, None)
        self.send({"push": {"channel": channel, "unsubscribe": {"code": 2000, "reason": "server unsubscribe"}}})
        return True

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
        the hub only once the node's delivery reaches ``pos`` (relay.node.streams.Streams.track)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CATCH_UP_WAIT
        while True:
            seen = self.node.streams.delivered_offset(channel, pos.epoch)
            if box:
                seen = max(seen, box[-1].get("offset", 0))
            left = deadline - loop.time()
            if seen == 0 or seen >= pos.offset or left <= 0:
                return  # nothing known to be in flight, caught up, or given up
            await self.node.streams.offset_reached(channel, pos.offset, left)

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

    def hub_args(self, channel: str) -> tuple[int, int]:
        """(variant, channel id) of this connection's subscription to ``channel``, for the hub
        (relay/protocol/variants.py: channel compaction, fossil deltas)."""
        cid = self._cids.get(channel, 0) if self._cids else 0
        delta = DELTA_FIRST if self._deltas and channel in self._deltas else 0
        return (COMPACT if cid else 0) | delta, cid

    def forget_variant(self, channel: str) -> None:
        if self._cids:
            self._cids.pop(channel, None)
        if self._deltas:
            self._deltas.discard(channel)

    def _delta_asked(self, p: dict, opts) -> bool:
        """Whether this subscribe asks for a delta compression it may have (Centrifugo's subscribe ``delta``):
        one the namespace allows, on WebSocket (JSON or protobuf). An unknown kind is a bad request (107)."""
        kind = p.get("delta")
        if not kind:
            return False
        if not isinstance(kind, str) or kind not in DELTA_TYPES:
            raise ClientError(107, f"bad request: delta must be one of {', '.join(DELTA_TYPES)}")
        return kind in opts.allowed_delta_types and self.conn.wire != WIRE_TCP

    def delta_mode(self, pub: dict) -> dict:
        """A publication for a delta subscription, whole: on the JSON protocol its data is the JSON as a string
        (what the SDK keeps as the base of the next delta); protobuf data is bytes already."""
        return variant_push({"pub": pub}, DELTA_FIRST, 0, None, self.codec.binary)["pub"]

    def pub_push(self, channel: str, pub: dict) -> dict:
        """The push of a publication sent to this connection outside the hub (caught up after its subscribe
        reply): whole, in delta mode for a delta subscription."""
        if self._deltas and channel in self._deltas:
            pub = self.delta_mode(pub)
        return {"push": {"channel": channel, "pub": pub}}

    def token_granted(self, channel: str) -> bool:
        """Whether the subscription to ``channel`` came from a signed token (connect or subscription)."""
        return channel in self._server_subs or (self._token_subs is not None and channel in self._token_subs)

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
