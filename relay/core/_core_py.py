"""The fan-out core in plain Python: the readable twin of ``relay/core/_core.pyx``.

Both implementations expose the same names and behave identically; the test
suite runs against each (``RELAY_PUREPYTHON=1`` selects this one). Keep the two
files side by side when changing either: ``tests/core`` holds a differential
Hypothesis test that feeds both the same operations.

What lives here is what runs per message or per delivery:

* ``Hub`` - channels sharded by an FNV-1a hash, subscriber sets, and fan-out
  that encodes a push once per wire format and hands the same bytes to every
  subscriber.
* ``Conn`` - a connection's outbound queue. Everything queued during one loop
  iteration is written with one ``transport.write``; a queue over its byte cap
  makes ``send`` return False (the caller disconnects with 3008 "slow").
  Priority lanes: ``offer`` refuses a ``bulk`` item past ``bulk_limit`` and an
  ``update`` item past ``update_limit`` (dropped, the connection stays), while
  ``chat`` items and replies go up to the cap.
* ``FrameReader`` - RFC 6455 frame parsing and unmasking for client frames.
* ``ws_frame`` / ``tcp_frame`` - server frame encoders.
"""

from __future__ import annotations

import random
import struct

import msgpack
import orjson

from relay.protocol.errors import ProtocolError
from relay.protocol.protobuf import encode_reply as _pb_reply
from relay.protocol.variants import COMPACT, DELTA_FIRST, DELTA_READY, VARIANTS, variant_push

__all__ = [
    "IMPLEMENTATION",
    "WIRE_WS",
    "WIRE_TCP",
    "WIRE_WS_PB",
    "Conn",
    "Hub",
    "FrameReader",
    "ws_frame",
    "tcp_frame",
    "fnv1a32",
    "LANE_CHAT",
    "LANE_UPDATE",
    "LANE_BULK",
    "QUEUED",
    "DROPPED",
    "OVER_CAP",
    "PACE_TICK",
    "WRITE_MAX",
    "FRAGMENTS_MAX",
]

IMPLEMENTATION = "python"

WIRE_WS = 0  # WebSocket, JSON lines batched into text frames
WIRE_TCP = 1  # raw TCP, 4-byte big-endian length + msgpack body per message
WIRE_WS_PB = 2  # WebSocket, protobuf Replies (uvarint length + message) batched into binary frames

# priority lanes of a publication (docs/lanes.md): chat is never dropped, update and bulk may be
LANE_CHAT, LANE_UPDATE, LANE_BULK = 0, 1, 2
# what Conn.offer did with an item
QUEUED, DROPPED, OVER_CAP = 1, -1, 0
# paced broadcasts: the window is cut into slots of this many seconds
PACE_TICK = 0.01
#: at most this many bytes of one connection's queue go into one write; the rest stays queued (its items
#: shared with every other subscriber) for the next loop iteration, or for resume_writing once paused
WRITE_MAX = 256 * 1024
#: the most frames one WebSocket message may come in (FrameReader's default; config max_ws_fragments)
FRAGMENTS_MAX = 128

OP_CONT, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA

_packb = msgpack.Packer(use_bin_type=True).pack
_dumps = orjson.dumps
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")


def fnv1a32(s: str) -> int:
    """FNV-1a 32-bit hash of the UTF-8 bytes of ``s`` (channel sharding)."""
    h = 0x811C9DC5
    for b in s.encode("utf-8"):
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def ws_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """One unmasked, final server frame (RFC 6455 5.2: servers never mask)."""
    n = len(payload)
    b0 = 0x80 | opcode
    if n < 126:
        return bytes((b0, n)) + payload
    if n < 65536:
        return bytes((b0, 126)) + _U16.pack(n) + payload
    return bytes((b0, 127)) + _U64.pack(n) + payload


def tcp_frame(body: bytes) -> bytes:
    """A raw-TCP frame: 4-byte big-endian length, then the msgpack body."""
    return _U32.pack(len(body)) + body


def _unmask(data: bytes, mask: bytes) -> bytes:
    n = len(data)
    if n == 0:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


class FrameReader:
    """Incremental RFC 6455 parser for frames sent by a client.

    ``feed(data)`` returns the complete messages found so far as
    ``(opcode, payload)`` pairs: data messages reassembled from fragments
    (text already checked to be UTF-8), and control frames as they come.
    Violations raise ``ProtocolError`` with the close code to send. The
    message size limit is checked from each frame header, before the payload
    is buffered. A fragmented message is reassembled in one buffer (no object
    per fragment, so 1-byte fragments cost 1 byte) of at most ``max_message``
    bytes, from at most ``max_fragments`` frames (1009 past either).
    """

    __slots__ = ("max_message", "max_fragments", "_buf", "_frag_op", "_frag", "_frag_count", "error")

    def __init__(self, max_message: int, max_fragments: int = FRAGMENTS_MAX) -> None:
        self.max_message = max_message
        self.max_fragments = max_fragments
        self._buf = bytearray()
        self._frag_op = -1
        self._frag = bytearray()  # the message being reassembled, unmasked
        self._frag_count = 0
        self.error: ProtocolError | None = None

    def buffered(self) -> int:
        """Bytes held for messages not complete yet: a partial frame, and the fragments of a message."""
        return len(self._buf) + len(self._frag)

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Complete messages so far. A violation raises ProtocolError; if valid messages came before
        it in the same data, they are returned first and the error is kept in ``error`` (the caller
        fails the connection after handling them) and raised by any later ``feed``."""
        if self.error is not None:
            raise self.error
        out: list[tuple[int, bytes]] = []
        try:
            self._parse(data, out)
        except ProtocolError as e:
            if not out:
                raise
            self.error = e
        return out

    def _parse(self, data: bytes, out: list) -> None:
        buf = self._buf
        buf += data
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            fin = b0 & 0x80
            opcode = b0 & 0x0F
            if b0 & 0x70:
                raise ProtocolError(1002, "reserved bits set")  # RFC 6455 5.2, no extension
            if not b1 & 0x80:
                raise ProtocolError(1002, "client frame not masked")  # RFC 6455 5.1
            length = b1 & 0x7F
            hlen = 2
            if length == 126:
                if end - pos < 4:
                    break
                length = _U16.unpack_from(buf, pos + 2)[0]
                hlen = 4
            elif length == 127:
                if end - pos < 10:
                    break
                length = _U64.unpack_from(buf, pos + 2)[0]
                if length >> 63:
                    raise ProtocolError(1002, "invalid frame length")
                hlen = 10
            if opcode >= 8:
                if opcode > OP_PONG:
                    raise ProtocolError(1002, "unknown opcode")
                if not fin or length > 125:
                    raise ProtocolError(1002, "invalid control frame")  # RFC 6455 5.5
            elif opcode == OP_CONT:
                if self._frag_op < 0:
                    raise ProtocolError(1002, "unexpected continuation frame")
                if len(self._frag) + length > self.max_message:
                    raise ProtocolError(1009, "message too big")
                if self._frag_count >= self.max_fragments:
                    raise ProtocolError(1009, "message too big: too many fragments")
            elif opcode in (OP_TEXT, OP_BINARY):
                if self._frag_op >= 0:
                    raise ProtocolError(1002, "expected continuation frame")
                if length > self.max_message:
                    raise ProtocolError(1009, "message too big")
            else:
                raise ProtocolError(1002, "unknown opcode")
            total = hlen + 4 + length
            if end - pos < total:
                break
            mask = bytes(buf[pos + hlen : pos + hlen + 4])
            payload = _unmask(bytes(buf[pos + hlen + 4 : pos + total]), mask)
            pos += total
            if opcode >= 8:
                out.append((opcode, payload))
                continue
            fragment = not fin or opcode == OP_CONT
            if fragment:
                self._frag += payload
                self._frag_count += 1
            if opcode != OP_CONT:
                self._frag_op = opcode
            if not fin:
                continue
            if fragment:  # the last fragment: the message is whole
                payload = bytes(self._frag)
                self._frag = bytearray()
                self._frag_count = 0
            op = self._frag_op
            self._frag_op = -1
            if op == OP_TEXT:
                try:
                    payload.decode("utf-8")
                except UnicodeDecodeError:
                    raise ProtocolError(1007, "invalid UTF-8 in text message") from None
            out.append((op, payload))
        if pos:
            del buf[:pos]


class Conn:
    """A connection's outbound queue (one per client connection).

    ``send`` queues one already-encoded item: a JSON line for WebSocket, a
    complete frame for raw TCP. The hub writes everything queued in a loop
    iteration with one ``transport.write``. While the transport is paused
    (kernel and transport buffers full), items stay queued; once the queue
    would pass ``cap`` bytes, ``send`` refuses and returns False. One item always
    fits an empty queue, whatever its size: a subscribe reply that recovers a long
    history is bounded by the history, not refused forever.
    """

    __slots__ = (
        "hub", "transport", "wire", "cap", "update_limit", "bulk_limit", "pending", "queued",
        "paused", "dirty", "closed", "session", "phase", "__weakref__",
    )

    def __init__(self, hub: "Hub", transport, wire: int, cap: int, session=None) -> None:
        self.hub = hub
        self.transport = transport
        self.wire = wire
        self.cap = cap
        # priority lanes: an item of LANE_UPDATE (LANE_BULK) is refused once the queue would pass
        # update_limit (bulk_limit); LANE_CHAT items and replies only at cap (then: slow)
        self.update_limit = cap
        self.bulk_limit = cap
        self.pending: list[bytes] = []
        self.queued = 0
        self.paused = False
        self.dirty = False
        self.closed = False
        self.session = session
        # where in a paced broadcast's window this connection's delivery falls (0..1): random, and the
        # same for every paced broadcast while the connection lives
        self.phase = random.random()

    def send(self, item: bytes) -> bool:
        """Queue ``item`` (a reply, a push of the chat lane); False means the cap was hit and the item was
        dropped."""
        return self.offer(item, LANE_CHAT) == QUEUED

    def offer(self, item: bytes, lane: int) -> int:
        """Queue ``item`` of priority ``lane``: QUEUED, DROPPED (its lane's limit: the item is dropped,
        the connection stays) or OVER_CAP (the hard cap: the connection is too slow)."""
        if self.closed:
            return QUEUED
        n = len(item)
        # lanes apply to a backlog (paused writes), not to a burst queued within one loop iteration
        if lane and self.paused and self.queued + n > (self.bulk_limit if lane == LANE_BULK else self.update_limit):
            return DROPPED
        if self.queued + n > self.cap and self.queued:  # one item always fits an empty queue
            return OVER_CAP
        self.pending.append(item)
        self.queued += n
        if not self.dirty:
            self.dirty = True
            self.hub._mark_dirty(self)
        return QUEUED

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.pending and not self.dirty:
            self.dirty = True
            self.hub._mark_dirty(self)

    def take(self) -> bytes:
        """Remove and return everything queued, encoded for the wire (maybe b"")."""
        items = self.pending
        if not items:
            return b""
        self.pending = []
        self.queued = 0
        return _build(self.wire, items)

    def close(self, tail: bytes = b"", flush: bool = True) -> None:
        """Stop queueing; write what is queued (unless ``flush`` is False), then ``tail``."""
        if self.closed:
            return
        data = self.take() if flush else b""
        self.pending = []
        self.queued = 0
        self.closed = True
        if data or tail:
            try:
                self.transport.write(data + tail if data else tail)
            except Exception:
                pass


def _build(wire: int, items: list[bytes]) -> bytes:
    if wire == WIRE_WS:
        if len(items) == 1:
            return ws_frame(items[0])
        return ws_frame(b"\n".join(items))
    if wire == WIRE_WS_PB:
        return ws_frame(b"".join(items), OP_BINARY)
    return b"".join(items)


def _same(a: list, b: list) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if x is not y:
            return False
    return True


#: A publication is encoded at most once per (wire, variant) some subscriber uses: encoding ``wire + WIRES *
#: variant`` (relay/protocol/variants.py: channel compaction, fossil delta state).
WIRES = 3


def _tcp_item(envelope: dict) -> bytes:
    return tcp_frame(_packb(envelope))


#: a push's encoder per wire (WIRE_WS, WIRE_TCP, WIRE_WS_PB)
_ENCODERS = (_dumps, _tcp_item, _pb_reply)


class _Channel:
    __slots__ = ("subs", "counts", "cid")

    def __init__(self) -> None:
        self.subs: dict[Conn, int] = {}  # subscriber -> its variant
        self.counts = [0] * (WIRES * VARIANTS)  # subscribers per encoding (wire + WIRES * variant)
        self.cid = 0  # the channel's numeric id in compacted pushes


class _Round:
    """A paced broadcast in progress on one channel: its subscribers at the start, bucketed by the slot
    of the window their phase falls in, and the items (the paced publication, then the channel's later
    ones) each of them gets, in order, when its slot comes."""

    __slots__ = ("items", "buckets", "members", "start", "window", "slot_len", "next")

    def __init__(self, ch: _Channel, start: float, window: float) -> None:
        slots = max(1, round(window / PACE_TICK))
        self.items: list[tuple] = []
        self.buckets: list[list[Conn]] = [[] for _ in range(slots)]
        self.members: dict[Conn, int] = {}
        for conn in ch.subs:
            k = min(int(conn.phase * slots), slots - 1)
            self.buckets[k].append(conn)
            self.members[conn] = k
        self.start = start
        self.window = window
        self.slot_len = window / slots
        self.next = 0  # the first slot not delivered yet


class Hub:
    """Channels and their local subscribers, and the fan-out to them.

    ``call_soon`` schedules the end-of-iteration flush (``loop.call_soon``);
    ``on_slow(conn)`` is called after a fan-out for each subscriber whose queue
    refused the item at its cap; ``on_drop(conn, channel)`` for each subscriber
    whose queue refused an update or bulk item at that lane's limit.
    """

    def __init__(self, call_soon, on_slow, num_shards: int = 64, on_drop=None) -> None:
        if num_shards < 1:
            raise ValueError("num_shards must be >= 1")
        self._call_soon = call_soon
        self._on_slow = on_slow
        self._on_drop = on_drop
        self.num_shards = num_shards
        self._shards: list[dict[str, _Channel]] = [{} for _ in range(num_shards)]
        self._dirty: list[Conn] = []
        self._scheduled = False
        self.num_channels = 0
        self.num_subscriptions = 0
        self.deliveries = 0
        self.deliveries_tcp = 0  # of deliveries, those to raw TCP clients
        self.publications = 0
        self.writes = 0
        self.drops_update = 0  # update items refused at a connection's update_limit
        self.drops_bulk = 0  # bulk items refused at a connection's bulk_limit
        self.paced = 0  # publications whose fan-out was spread over a window
        self._pacing: dict[str, list[_Round]] = {}  # channel -> its paced rounds in progress, oldest first

    def shard_of(self, channel: str) -> int:
        return fnv1a32(channel) % self.num_shards

    def conn(self, transport, wire: int, cap: int, session=None) -> Conn:
        return Conn(self, transport, wire, cap, session)

    def subscribe(self, channel: str, conn: Conn, variant: int = 0, cid: int = 0) -> bool:
        """Add ``conn`` to ``channel``; True when the channel is new on this hub. ``variant``: COMPACT (its
        pushes name the channel by ``cid``, one id per channel from the node: Centrifugo's channel compaction)
        and/or DELTA_FIRST (fossil deltas, after a first full publication)."""
        shard = self._shards[fnv1a32(channel) % self.num_shards]
        ch = shard.get(channel)
        created = ch is None
        if created:
            ch = shard[channel] = _Channel()
            self.num_channels += 1
        variant &= COMPACT | DELTA_FIRST
        if conn not in ch.subs:
            ch.subs[conn] = variant
            self.num_subscriptions += 1
            ch.counts[conn.wire + WIRES * variant] += 1
            if variant & COMPACT:
                ch.cid = cid
        return created

    def unsubscribe(self, channel: str, conn: Conn) -> bool:
        """Remove ``conn``; True when that left the channel empty (it is dropped)."""
        shard = self._shards[fnv1a32(channel) % self.num_shards]
        ch = shard.get(channel)
        if ch is None or conn not in ch.subs:
            return False
        variant = ch.subs.pop(conn)
        ch.counts[conn.wire + WIRES * variant] -= 1
        if self._pacing and channel in self._pacing:
            for rnd in self._pacing[channel]:  # out of the round: a later subscribe does not bring it back
                rnd.members.pop(conn, None)
        self.num_subscriptions -= 1
        if not ch.subs:
            del shard[channel]
            self.num_channels -= 1
            return True
        return False

    def num_subscribers(self, channel: str) -> int:
        ch = self._shards[fnv1a32(channel) % self.num_shards].get(channel)
        return 0 if ch is None else len(ch.subs)

    def channels(self) -> list[str]:
        return [name for shard in self._shards for name in shard]

    def subscribers(self, channel: str) -> list[Conn]:
        ch = self._shards[fnv1a32(channel) % self.num_shards].get(channel)
        return [] if ch is None else list(ch.subs)

    @staticmethod
    def _encode(ch: _Channel, push: dict, delta: bytes | None = None) -> tuple:
        """``{"push": push}`` in each encoding the channel's subscribers use, indexed by encoding (wire +
        WIRES * variant; None: nobody uses it). ``delta``: the publication's data as a fossil delta from the
        channel's previous one, for the subscribers ready for deltas (None: they get it full)."""
        c = ch.counts
        items: list = [None] * (WIRES * VARIANTS)
        for variant in range(VARIANTS):
            base = WIRES * variant
            for wire, encode in enumerate(_ENCODERS):
                if c[base + wire]:
                    p = push if variant == 0 else variant_push(push, variant, ch.cid, delta, wire == WIRE_WS_PB)
                    items[base + wire] = encode({"push": p})
        return tuple(items)

    def broadcast(self, channel: str, push: dict, lane: int = LANE_CHAT, delta: bytes | None = None) -> int:
        """Encode ``{"push": push}`` once per wire format (and variant) and queue it for every subscriber;
        ``delta`` as for ``_encode``."""
        ch = self._shards[fnv1a32(channel) % self.num_shards].get(channel)
        if ch is None:
            return 0
        items = self._encode(ch, push, delta)
        if self._pacing and channel in self._pacing:
            return self._join_round(ch, channel, items, lane)
        return self._fanout(ch, channel, items, lane)

    def broadcast_encoded(self, channel: str, ws_item, tcp_item, lane: int = LANE_CHAT, pb_item=None) -> int:
        """Fan out pre-encoded items (a JSON line, a TCP frame, a protobuf Reply)."""
        ch = self._shards[fnv1a32(channel) % self.num_shards].get(channel)
        if ch is None:
            return 0
        items = (ws_item, tcp_item, pb_item) + (None,) * (WIRES * (VARIANTS - 1))
        if self._pacing and channel in self._pacing:
            return self._join_round(ch, channel, items, lane)
        return self._fanout(ch, channel, items, lane)

    # --- paced broadcasts -------------------------------------------------------------------------

    def broadcast_paced(self, channel: str, push: dict, lane: int, window: float, now: float) -> int:
        """Like ``broadcast``, but each subscriber gets it at its phase of ``window`` seconds from ``now``
        (slots of PACE_TICK), so the fan-out work is spread the same way; ``pace_tick`` delivers what is
        due. While an earlier round of the channel is still on, the new round starts late enough that
        every subscriber's moment in it comes after its moment in the earlier one: a channel's
        publications reach each subscriber in order."""
        ch = self._shards[fnv1a32(channel) % self.num_shards].get(channel)
        if ch is None:
            return 0
        items = self._encode(ch, push)
        rounds = self._pacing.get(channel)
        start = now
        if rounds:
            last = rounds[-1]
            slots = max(1, round(window / PACE_TICK))
            start = max(now, last.start + max(0.0, last.window - window) + window / slots)
        rnd = _Round(ch, start, window)
        rnd.items.append((items, lane))
        if rounds:
            rounds.append(rnd)
        else:
            self._pacing[channel] = [rnd]
        self.publications += 1
        self.paced += 1
        return len(ch.subs)

    def _join_round(self, ch: _Channel, channel: str, items: tuple, lane: int) -> int:
        """A publication of a channel with paced rounds still on: at once for the subscribers the last
        round has served (or that are not in it), the others at their slot of it, after its items."""
        rnd = self._pacing[channel][-1]
        rnd.items.append((items, lane))
        now_subs = [conn for conn in ch.subs if rnd.members.get(conn, -1) < rnd.next]
        return self._deliver(ch, now_subs, channel, items, lane, True)

    def pace_tick(self, now: float) -> float:
        """Deliver every paced slot due at ``now``; the time the next one is due, or -1 if none is."""
        nxt = -1.0
        for channel in list(self._pacing):
            rounds = self._pacing[channel]
            ch = self._shards[fnv1a32(channel) % self.num_shards].get(channel)
            for rnd in rounds:  # oldest first: a subscriber due in two rounds gets the older first
                if now < rnd.start:
                    continue
                due = min(len(rnd.buckets), int((now - rnd.start) / rnd.slot_len + 1e-9) + 1)  # 0.3/0.01
                while rnd.next < due:
                    bucket = rnd.buckets[rnd.next]
                    rnd.next += 1
                    if ch is None or not bucket:
                        continue
                    members = rnd.members
                    conns = [conn for conn in bucket if conn in members]  # those still subscribed
                    for items, lane in rnd.items:
                        self._deliver(ch, conns, channel, items, lane, False)
                        conns = [c for c in conns if c in ch.subs]  # a drop may have unsubscribed one
                while rnd.next < len(rnd.buckets) and not rnd.buckets[rnd.next]:
                    rnd.next += 1  # nobody there: the next timer is for the next slot with subscribers
            rounds[:] = [rnd for rnd in rounds if rnd.next < len(rnd.buckets)]
            if not rounds:
                del self._pacing[channel]
                continue
            for rnd in rounds:
                at = rnd.start + rnd.next * rnd.slot_len
                if nxt < 0 or at < nxt:
                    nxt = at
        return nxt

    def pacing(self) -> int:
        """Channels with a paced broadcast in progress."""
        return len(self._pacing)

    def _fanout(self, ch: _Channel, channel: str, items: tuple, lane: int) -> int:
        return self._deliver(ch, ch.subs, channel, items, lane, True)

    def _deliver(self, ch: _Channel, conns, channel: str, items: tuple, lane: int, publication: bool) -> int:
        """``items``: the encoded publication per encoding (Hub._encode)."""
        slow = dropped = None
        n = n_tcp = 0
        subs, counts = ch.subs, ch.counts
        for conn in conns:
            variant = subs.get(conn, 0)
            item = items[conn.wire + WIRES * variant]
            if item is None:  # no encoding for its wire (a pre-encoded broadcast without it): skipped
                continue
            r = conn.offer(item, lane)
            if r == QUEUED:
                n += 1
                if variant & (DELTA_FIRST | DELTA_READY) == DELTA_FIRST:  # it has a full payload now: deltas next
                    subs[conn] = variant + DELTA_FIRST
                    counts[conn.wire + WIRES * variant] -= 1
                    counts[conn.wire + WIRES * (variant + DELTA_FIRST)] += 1
                if conn.wire == WIRE_TCP:
                    n_tcp += 1
            elif r == DROPPED:
                if dropped is None:
                    dropped = []
                dropped.append(conn)
            else:
                if slow is None:
                    slow = []
                slow.append(conn)
        if publication:
            self.publications += 1
        self.deliveries += n
        self.deliveries_tcp += n_tcp
        # the callbacks change subscriber sets: only after the loop over this one
        if dropped:
            if lane == LANE_BULK:
                self.drops_bulk += len(dropped)
            else:
                self.drops_update += len(dropped)
            if self._on_drop is not None:
                for conn in dropped:
                    self._on_drop(conn, channel)
        if slow:
            for conn in slow:
                self._on_slow(conn)
        return n

    def _mark_dirty(self, conn: Conn) -> None:
        self._dirty.append(conn)
        if not self._scheduled:
            self._scheduled = True
            self._call_soon(self.flush)

    def flush(self) -> None:
        """Write each dirty connection's queue with one write (end of loop iteration)."""
        self._scheduled = False
        dirty = self._dirty
        self._dirty = []
        last_items = None
        last_frame = b""
        last_wire = -1
        for conn in dirty:
            conn.dirty = False
            items = conn.pending
            if conn.closed or conn.paused or not items:
                continue
            if conn.queued > WRITE_MAX and len(items) > 1:
                # a backlog (a resumed slow client): one bounded write now, the rest on the next turn,
                # so the joined frame never copies a whole queue of shared items per connection
                k = n = 0
                while k < len(items):
                    size = len(items[k])
                    if k and n + size > WRITE_MAX:
                        break
                    n += size
                    k += 1
                frame = _build(conn.wire, items[:k])
                conn.pending = items[k:]
                conn.queued -= n
                conn.dirty = True
                self._mark_dirty(conn)
            else:
                if last_items is not None and conn.wire == last_wire and _same(items, last_items):
                    frame = last_frame
                else:
                    frame = _build(conn.wire, items)
                    last_items, last_frame, last_wire = items, frame, conn.wire
                conn.pending = []
                conn.queued = 0
            try:
                conn.transport.write(frame)
            except Exception:
                pass
            self.writes += 1
