# cython: language_level=3
"""The fan-out core, compiled: Hub, Conn, FrameReader and frame encoders.

Same API and behaviour as relay/core/_core_py.py (read that file first: it is the
readable version). Directives live in setup.py.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_Next, PyDict_Size
from cpython.list cimport PyList_GET_SIZE, PyList_GET_ITEM
from cpython.object cimport PyObject
from cpython.tuple cimport PyTuple_GET_ITEM
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy

import random

import msgpack
import orjson

from relay.protocol.errors import ProtocolError
from relay.protocol.protobuf import encode_reply as _pb_reply
from relay.protocol.variants import COMPACT, DELTA_FIRST, DELTA_READY, VARIANTS, variant_push

__all__ = [
    "IMPLEMENTATION", "WIRE_WS", "WIRE_TCP", "WIRE_WS_PB", "Conn", "Hub", "FrameReader",
    "ws_frame", "tcp_frame", "fnv1a32",
    "LANE_CHAT", "LANE_UPDATE", "LANE_BULK", "QUEUED", "DROPPED", "OVER_CAP", "PACE_TICK", "WRITE_MAX",
    "FRAGMENTS_MAX",
]

IMPLEMENTATION = "cython"

cdef enum:
    _WIRE_WS = 0
    _WIRE_TCP = 1
    _WIRE_WS_PB = 2
    OP_CONT = 0x0
    OP_TEXT = 0x1
    OP_BINARY = 0x2
    OP_PONG = 0xA
    _LANE_CHAT = 0
    _LANE_UPDATE = 1
    _LANE_BULK = 2
    _QUEUED = 1
    _DROPPED = -1
    _OVER_CAP = 0

WIRE_WS = _WIRE_WS
WIRE_TCP = _WIRE_TCP
WIRE_WS_PB = _WIRE_WS_PB  # WebSocket, protobuf Replies (uvarint length + message) batched into binary frames
LANE_CHAT = _LANE_CHAT
LANE_UPDATE = _LANE_UPDATE
LANE_BULK = _LANE_BULK
QUEUED = _QUEUED
DROPPED = _DROPPED
OVER_CAP = _OVER_CAP
cdef double _PACE_TICK = 0.01
PACE_TICK = _PACE_TICK
#: at most this many bytes of one connection's queue go into one write; the rest stays queued (its items
#: shared with every other subscriber) for the next loop iteration, or for resume_writing once paused
cdef Py_ssize_t _WRITE_MAX = 256 * 1024
WRITE_MAX = _WRITE_MAX
#: the most frames one WebSocket message may come in (FrameReader's default; config max_ws_fragments)
FRAGMENTS_MAX = 128


cdef object _packb = msgpack.Packer(use_bin_type=True).pack
cdef object _dumps = orjson.dumps


cdef inline uint32_t _fnv1a32(str s):
    cdef bytes b = s.encode("utf-8")
    cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(b)
    cdef Py_ssize_t i, n = PyBytes_GET_SIZE(b)
    cdef uint32_t h = 0x811C9DC5u
    for i in range(n):
        h = (h ^ p[i]) * 0x01000193u
    return h


def fnv1a32(str s):
    """FNV-1a 32-bit hash of the UTF-8 bytes of ``s`` (channel sharding)."""
    return _fnv1a32(s)


cdef inline bytes _frame_join(int opcode, list items, Py_ssize_t sep):
    """RFC 6455 5.2 server frame whose payload is ``items`` joined by b"\\n" (sep=1) or nothing."""
    cdef Py_ssize_t n = PyList_GET_SIZE(items), i, plen = 0, hlen, ilen
    cdef object it
    for i in range(n):
        plen += PyBytes_GET_SIZE(<bytes>PyList_GET_ITEM(items, i))
    if n > 1:
        plen += sep * (n - 1)
    if plen < 126:
        hlen = 2
    elif plen < 65536:
        hlen = 4
    else:
        hlen = 10
    cdef bytes out = PyBytes_FromStringAndSize(NULL, hlen + plen)
    cdef uint8_t* o = <uint8_t*>PyBytes_AS_STRING(out)
    o[0] = 0x80 | opcode
    if hlen == 2:
        o[1] = <uint8_t>plen
    elif hlen == 4:
        o[1] = 126
        o[2] = (plen >> 8) & 0xFF
        o[3] = plen & 0xFF
    else:
        o[1] = 127
        for i in range(8):
            o[2 + i] = (<uint64_t>plen >> (8 * (7 - i))) & 0xFF
    o += hlen
    for i in range(n):
        if i and sep:
            o[0] = 10  # b"\n"
            o += 1
        it = <object>PyList_GET_ITEM(items, i)
        ilen = PyBytes_GET_SIZE(it)
        memcpy(o, PyBytes_AS_STRING(it), ilen)
        o += ilen
    return out


cdef inline bytes _concat(list items):
    cdef Py_ssize_t n = PyList_GET_SIZE(items), i, total = 0, ilen
    cdef object it
    if n == 1:
        return <bytes>PyList_GET_ITEM(items, 0)
    for i in range(n):
        total += PyBytes_GET_SIZE(<bytes>PyList_GET_ITEM(items, i))
    cdef bytes out = PyBytes_FromStringAndSize(NULL, total)
    cdef char* o = PyBytes_AS_STRING(out)
    for i in range(n):
        it = <object>PyList_GET_ITEM(items, i)
        ilen = PyBytes_GET_SIZE(it)
        memcpy(o, PyBytes_AS_STRING(it), ilen)
        o += ilen
    return out


cdef inline bytes _build(int wire, list items):
    if wire == _WIRE_WS:
        return _frame_join(OP_TEXT, items, 1)
    if wire == _WIRE_WS_PB:
        return _frame_join(OP_BINARY, items, 0)
    return _concat(items)


def ws_frame(bytes payload, int opcode=OP_TEXT):
    """One unmasked, final server frame (RFC 6455 5.2: servers never mask)."""
    return _frame_join(opcode, [payload], 0)


def tcp_frame(bytes body):
    """A raw-TCP frame: 4-byte big-endian length, then the msgpack body."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(body)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, 4 + n)
    cdef uint8_t* o = <uint8_t*>PyBytes_AS_STRING(out)
    o[0] = (n >> 24) & 0xFF
    o[1] = (n >> 16) & 0xFF
    o[2] = (n >> 8) & 0xFF
    o[3] = n & 0xFF
    memcpy(o + 4, PyBytes_AS_STRING(body), n)
    return out


cdef class FrameReader:
    """Incremental RFC 6455 parser for client frames (see relay/core/_core_py.py)."""

    def __init__(self, Py_ssize_t max_message, Py_ssize_t max_fragments=FRAGMENTS_MAX):
        self.max_message = max_message
        self.max_fragments = max_fragments
        self._buf = bytearray()
        self._frag_op = -1
        self._frag = bytearray()
        self._frag_count = 0
        self.error = None

    def buffered(self):
        """Bytes held for messages not complete yet: a partial frame, and the fragments of a message."""
        return len(self._buf) + len(self._frag)

    def feed(self, data):
        """Complete messages so far (see relay/core/_core_py.py: valid messages before a violation first)."""
        if self.error is not None:
            raise self.error
        cdef list out = []
        try:
            self._parse(data, out)
        except ProtocolError as e:
            if not out:
                raise
            self.error = e
        return out

    cdef _parse(self, data, list out):
        cdef bytearray buf = self._buf
        buf += data
        cdef Py_ssize_t pos = 0, end = len(buf), hlen, total, i, start
        cdef uint64_t length
        cdef const uint8_t* p
        cdef const uint8_t* src
        cdef uint8_t b0, b1, fin
        cdef int opcode, op
        cdef uint8_t mask[4]
        cdef uint32_t mask32
        cdef uint64_t mask64, word
        cdef bytes payload
        cdef uint8_t* q
        cdef bint fragment
        while end - pos >= 2:
            p = <const uint8_t*>(<char*>buf) + pos
            b0 = p[0]
            b1 = p[1]
            fin = b0 & 0x80
            opcode = b0 & 0x0F
            if b0 & 0x70:
                raise ProtocolError(1002, "reserved bits set")
            if not b1 & 0x80:
                raise ProtocolError(1002, "client frame not masked")
            length = b1 & 0x7F
            hlen = 2
            if length == 126:
                if end - pos < 4:
                    break
                length = (<uint64_t>p[2] << 8) | p[3]
                hlen = 4
            elif length == 127:
                if end - pos < 10:
                    break
                length = 0
                for i in range(8):
                    length = (length << 8) | p[2 + i]
                if length >> 63:
                    raise ProtocolError(1002, "invalid frame length")
                hlen = 10
            if opcode >= 8:
                if opcode > OP_PONG:
                    raise ProtocolError(1002, "unknown opcode")
                if not fin or length > 125:
                    raise ProtocolError(1002, "invalid control frame")
            elif opcode == OP_CONT:
                if self._frag_op < 0:
                    raise ProtocolError(1002, "unexpected continuation frame")
                if <uint64_t>PyByteArray_GET_SIZE(self._frag) + length > <uint64_t>self.max_message:
                    raise ProtocolError(1009, "message too big")
                if self._frag_count >= self.max_fragments:
                    raise ProtocolError(1009, "message too big: too many fragments")
            elif opcode == OP_TEXT or opcode == OP_BINARY:
                if self._frag_op >= 0:
                    raise ProtocolError(1002, "expected continuation frame")
                if length > <uint64_t>self.max_message:
                    raise ProtocolError(1009, "message too big")
            else:
                raise ProtocolError(1002, "unknown opcode")
            total = hlen + 4 + <Py_ssize_t>length
            if end - pos < total:
                break
            memcpy(mask, p + hlen, 4)
            src = p + hlen + 4
            # A fragment is unmasked straight onto the message being reassembled (one buffer, no object
            # per fragment); a whole message or a control frame into a fresh bytes object (NULL source,
            # never a shared one: CPython caches 1-byte bytes objects, and unmasking such a singleton in
            # place would corrupt it process-wide).
            fragment = opcode < 8 and (not fin or opcode == OP_CONT)
            if fragment:
                start = PyByteArray_GET_SIZE(self._frag)
                if PyByteArray_Resize(self._frag, start + <Py_ssize_t>length) < 0:
                    raise MemoryError()
                q = <uint8_t*>PyByteArray_AS_STRING(self._frag) + start
                self._frag_count += 1
            else:
                payload = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>length)
                q = <uint8_t*>PyBytes_AS_STRING(payload)
            memcpy(&mask32, mask, 4)
            mask64 = (<uint64_t>mask32 << 32) | mask32
            i = 0
            while i + 8 <= <Py_ssize_t>length:
                memcpy(&word, src + i, 8)
                word ^= mask64
                memcpy(q + i, &word, 8)
                i += 8
            while i < <Py_ssize_t>length:
                q[i] = src[i] ^ mask[i & 3]
                i += 1
            pos += total
            if opcode >= 8:
                out.append((opcode, payload))
                continue
            if opcode != OP_CONT:
                self._frag_op = opcode
            if not fin:
                continue
            if fragment:  # the last fragment: the message is whole
                payload = PyBytes_FromStringAndSize(PyByteArray_AS_STRING(self._frag),
                                                    PyByteArray_GET_SIZE(self._frag))
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


cdef class Conn:
    """A connection's outbound queue (see relay/core/_core_py.py)."""

    def __init__(self, Hub hub, transport, int wire, Py_ssize_t cap, session=None):
        self.hub = hub
        self.transport = transport
        self.wire = wire
        self.cap = cap
        self.update_limit = cap
        self.bulk_limit = cap
        self.pending = []
        self.queued = 0
        self.paused = False
        self.dirty = False
        self.closed = False
        self.session = session
        self.phase = random.random()

    cdef inline int _offer(self, bytes item, int lane):
        if self.closed:
            return _QUEUED
        cdef Py_ssize_t n = PyBytes_GET_SIZE(item)
        if lane and self.paused and self.queued + n > (self.bulk_limit if lane == _LANE_BULK else self.update_limit):
            return _DROPPED
        if self.queued + n > self.cap and self.queued:  # one item always fits an empty queue
            return _OVER_CAP
        self.pending.append(item)
        self.queued += n
        if not self.dirty:
            self.dirty = True
            self.hub._mark_dirty(self)
        return _QUEUED

    cpdef bint send(self, bytes item):
        """Queue ``item`` (a reply, a push of the chat lane); False means the cap was hit and it was dropped."""
        return self._offer(item, _LANE_CHAT) == _QUEUED

    cpdef int offer(self, bytes item, int lane):
        """Queue ``item`` of priority ``lane``: QUEUED, DROPPED or OVER_CAP (see relay/core/_core_py.py)."""
        return self._offer(item, lane)

    def pause_writing(self):
        self.paused = True

    def resume_writing(self):
        self.paused = False
        if self.pending and not self.dirty:
            self.dirty = True
            self.hub._mark_dirty(self)

    cpdef bytes take(self):
        """Remove and return everything queued, encoded for the wire (maybe b"")."""
        cdef list items = self.pending
        if not items:
            return b""
        self.pending = []
        self.queued = 0
        return _build(self.wire, items)

    def close(self, bytes tail=b"", bint flush=True):
        """Stop queueing; write what is queued (unless ``flush`` is False), then ``tail``."""
        if self.closed:
            return
        cdef bytes data = self.take() if flush else b""
        self.pending = []
        self.queued = 0
        self.closed = True
        if data or tail:
            try:
                self.transport.write(data + tail if data else tail)
            except Exception:
                pass


#: A publication is encoded at most once per (wire, variant) some subscriber uses: encoding ``wire + WIRES *
#: variant`` (relay/protocol/variants.py: channel compaction, fossil delta state).
cdef enum:
    WIRES = 3
    N_VARIANTS = 6
    V_COMPACT = 1
    V_DELTA_FIRST = 2
    V_DELTA_READY = 4
    V_DELTA_STATE = 6

assert (V_COMPACT, V_DELTA_FIRST, V_DELTA_READY, N_VARIANTS) == (COMPACT, DELTA_FIRST, DELTA_READY, VARIANTS)

cdef inline object _encode_wire(int wire, dict envelope):
    if wire == _WIRE_TCP:
        return tcp_frame(_packb(envelope))
    if wire == _WIRE_WS_PB:
        return _pb_reply(envelope)
    return _dumps(envelope)


cdef void _promote(_Channel ch, Conn conn):
    """A DELTA_FIRST subscriber has had its full publication: from now on it gets deltas."""
    cdef int variant = ch.subs[conn]
    ch.subs[conn] = variant + V_DELTA_FIRST
    ch.counts[conn.wire + WIRES * variant] -= 1
    ch.counts[conn.wire + WIRES * (variant + V_DELTA_FIRST)] += 1


cdef class _Channel:
    def __init__(self):
        self.subs = {}  # subscriber -> its variant
        cdef int i
        for i in range(WIRES * N_VARIANTS):
            self.counts[i] = 0  # subscribers per encoding (wire + WIRES * variant)
        self.cid = 0  # the channel's numeric id in compacted pushes


cdef class _Round:
    """A paced broadcast in progress on one channel (see relay/core/_core_py.py)."""

    def __init__(self, _Channel ch, double start, double window):
        cdef Py_ssize_t slots = max(1, <Py_ssize_t>round(window / _PACE_TICK)), k
        cdef Conn conn
        self.items = []
        self.buckets = [[] for _ in range(slots)]
        self.members = {}
        for conn in ch.subs:
            k = <Py_ssize_t>(conn.phase * slots)
            if k >= slots:
                k = slots - 1
            (<list>PyList_GET_ITEM(self.buckets, k)).append(conn)
            self.members[conn] = k
        self.start = start
        self.window = window
        self.slot_len = window / slots
        self.next = 0


cdef inline bint _same(list a, list b):
    cdef Py_ssize_t n = PyList_GET_SIZE(a), i
    if n != PyList_GET_SIZE(b):
        return False
    for i in range(n):
        if PyList_GET_ITEM(a, i) != PyList_GET_ITEM(b, i):
            return False
    return True


cdef class Hub:
    """Channels and their local subscribers, and the fan-out to them (see relay/core/_core_py.py)."""

    def __init__(self, call_soon, on_slow, Py_ssize_t num_shards=64, on_drop=None):
        if num_shards < 1:
            raise ValueError("num_shards must be >= 1")
        self._call_soon = call_soon
        self._on_slow = on_slow
        self._on_drop = on_drop
        self.num_shards = num_shards
        self._shards = [{} for _ in range(num_shards)]
        self._dirty = []
        self._scheduled = False
        self.num_channels = 0
        self.num_subscriptions = 0
        self.deliveries = 0
        self.deliveries_tcp = 0
        self.publications = 0
        self.writes = 0
        self.drops_update = 0
        self.drops_bulk = 0
        self.paced = 0
        self._pacing = {}

    cdef inline dict _shard(self, str channel):
        return <dict>PyList_GET_ITEM(self._shards, _fnv1a32(channel) % <uint32_t>self.num_shards)

    def shard_of(self, str channel):
        return _fnv1a32(channel) % <uint32_t>self.num_shards

    def conn(self, transport, int wire, Py_ssize_t cap, session=None):
        return Conn(self, transport, wire, cap, session)

    cpdef bint subscribe(self, str channel, Conn conn, int variant=0, long long cid=0):
        """Add ``conn`` to ``channel``; True when the channel is new on this hub. ``variant``: COMPACT (its
        pushes name the channel by ``cid``, one id per channel from the node: Centrifugo's channel compaction)
        and/or DELTA_FIRST (fossil deltas, after a first full publication)."""
        cdef dict shard = self._shard(channel)
        cdef _Channel ch = shard.get(channel)
        cdef bint created = ch is None
        variant &= V_COMPACT | V_DELTA_FIRST
        if created:
            ch = _Channel()
            shard[channel] = ch
            self.num_channels += 1
        if conn not in ch.subs:
            ch.subs[conn] = variant
            self.num_subscriptions += 1
            ch.counts[conn.wire + WIRES * variant] += 1
            if variant & V_COMPACT:
                ch.cid = cid
        return created

    cpdef bint unsubscribe(self, str channel, Conn conn):
        """Remove ``conn``; True when that left the channel empty (it is dropped)."""
        cdef dict shard = self._shard(channel)
        cdef _Channel ch = shard.get(channel)
        if ch is None or conn not in ch.subs:
            return False
        cdef int variant = ch.subs.pop(conn)
        ch.counts[conn.wire + WIRES * variant] -= 1
        cdef list rounds
        cdef _Round rnd
        if self._pacing:
            rounds = self._pacing.get(channel)
            if rounds is not None:
                for rnd in rounds:  # out of the round: a later subscribe does not bring it back
                    rnd.members.pop(conn, None)
        self.num_subscriptions -= 1
        if not ch.subs:
            del shard[channel]
            self.num_channels -= 1
            return True
        return False

    def num_subscribers(self, str channel):
        cdef _Channel ch = self._shard(channel).get(channel)
        return 0 if ch is None else len(ch.subs)

    def channels(self):
        return [name for shard in self._shards for name in shard]

    def subscribers(self, str channel):
        cdef _Channel ch = self._shard(channel).get(channel)
        return [] if ch is None else list(ch.subs)

    cdef tuple _encode(self, _Channel ch, dict push, object delta):
        """``{"push": push}`` in each encoding the channel's subscribers use, indexed by encoding (wire +
        WIRES * variant; None: nobody uses it); ``delta`` as in relay/core/_core_py.py."""
        cdef Py_ssize_t* c = ch.counts
        cdef list items = [None] * (WIRES * N_VARIANTS)
        cdef int variant, wire, k
        for variant in range(N_VARIANTS):
            for wire in range(WIRES):
                k = wire + WIRES * variant
                if c[k]:
                    p = push if variant == 0 else variant_push(push, variant, ch.cid, delta, wire == _WIRE_WS_PB)
                    items[k] = _encode_wire(wire, {"push": p})
        return tuple(items)

    cpdef Py_ssize_t broadcast(self, str channel, dict push, int lane=_LANE_CHAT, object delta=None):
        """Encode ``{"push": push}`` once per wire format (and variant) and queue it for every subscriber."""
        cdef _Channel ch = self._shard(channel).get(channel)
        if ch is None:
            return 0
        cdef tuple items = self._encode(ch, push, delta)
        if self._pacing and channel in self._pacing:
            return self._join_round(ch, channel, items, lane)
        return self._fanout(ch, channel, items, lane)

    cpdef Py_ssize_t broadcast_encoded(self, str channel, object ws_item, object tcp_item, int lane=_LANE_CHAT,
                                       object pb_item=None):
        """Fan out pre-encoded items (a JSON line, a TCP frame, a protobuf Reply)."""
        cdef _Channel ch = self._shard(channel).get(channel)
        if ch is None:
            return 0
        cdef tuple items = (ws_item, tcp_item, pb_item) + (None,) * (WIRES * (N_VARIANTS - 1))
        if self._pacing and channel in self._pacing:
            return self._join_round(ch, channel, items, lane)
        return self._fanout(ch, channel, items, lane)

    cpdef Py_ssize_t broadcast_paced(self, str channel, dict push, int lane, double window, double now):
        """Like ``broadcast``, spread over ``window`` seconds by each subscriber's phase (see relay/core/_core_py.py)."""
        cdef _Channel ch = self._shard(channel).get(channel)
        if ch is None:
            return 0
        cdef tuple items = self._encode(ch, push, None)
        cdef list rounds = self._pacing.get(channel)
        cdef double start = now, later
        cdef _Round last, rnd
        cdef Py_ssize_t slots
        if rounds:
            last = <_Round>rounds[len(rounds) - 1]
            slots = max(1, <Py_ssize_t>round(window / _PACE_TICK))
            later = last.start + max(0.0, last.window - window) + window / slots
            if later > start:
                start = later
        rnd = _Round(ch, start, window)
        rnd.items.append((items, lane))
        if rounds:
            rounds.append(rnd)
        else:
            self._pacing[channel] = [rnd]
        self.publications += 1
        self.paced += 1
        return len(ch.subs)

    cdef Py_ssize_t _join_round(self, _Channel ch, str channel, tuple items, int lane):
        cdef list rounds = <list>self._pacing[channel]
        cdef _Round rnd = <_Round>rounds[len(rounds) - 1]
        rnd.items.append((items, lane))
        cdef list now_subs = []
        cdef dict members = rnd.members
        cdef Py_ssize_t pos = 0
        cdef PyObject* key
        cdef PyObject* value
        cdef object k
        while PyDict_Next(ch.subs, &pos, &key, &value):
            k = members.get(<object>key, -1)
            if <Py_ssize_t>k < rnd.next:
                now_subs.append(<object>key)
        return self._deliver(ch, now_subs, channel, items, lane, True)

    cpdef double pace_tick(self, double now):
        """Deliver every paced slot due at ``now``; the time the next one is due, or -1 if none is."""
        cdef double nxt = -1.0, at
        cdef Py_ssize_t due, nslots
        cdef _Round rnd
        cdef _Channel ch
        cdef list bucket, conns, rounds
        cdef str channel
        for channel in list(self._pacing):
            rounds = <list>self._pacing[channel]
            ch = self._shard(channel).get(channel)
            for rnd in rounds:
                if now < rnd.start:
                    continue
                nslots = len(rnd.buckets)
                due = <Py_ssize_t>((now - rnd.start) / rnd.slot_len + 1e-9) + 1
                if due > nslots:
                    due = nslots
                while rnd.next < due:
                    bucket = <list>PyList_GET_ITEM(rnd.buckets, rnd.next)
                    rnd.next += 1
                    if ch is None or not bucket:
                        continue
                    conns = [conn for conn in bucket if conn in rnd.members]
                    for items, lane in rnd.items:
                        self._deliver(ch, conns, channel, items, lane, False)
                        conns = [conn for conn in conns if conn in ch.subs]
                while rnd.next < nslots and not <list>PyList_GET_ITEM(rnd.buckets, rnd.next):
                    rnd.next += 1
            rounds[:] = [r for r in rounds if (<_Round>r).next < len((<_Round>r).buckets)]
            if not rounds:
                del self._pacing[channel]
                continue
            for rnd in rounds:
                at = rnd.start + rnd.next * rnd.slot_len
                if nxt < 0 or at < nxt:
                    nxt = at
        return nxt

    def pacing(self):
        """Channels with a paced broadcast in progress."""
        return len(self._pacing)

    cdef Py_ssize_t _fanout(self, _Channel ch, str channel, tuple items, int lane):
        cdef list slow = None, dropped = None, first = None
        cdef Py_ssize_t n = 0, n_tcp = 0, pos = 0
        cdef int r, variant
        cdef object item
        cdef PyObject* key
        cdef PyObject* value
        cdef Conn conn
        while PyDict_Next(ch.subs, &pos, &key, &value):
            conn = <Conn>key
            variant = <int><object>value
            item = <object>PyTuple_GET_ITEM(items, conn.wire + WIRES * variant)
            if item is None:  # no encoding for its wire (a pre-encoded broadcast without it): skipped
                continue
            r = conn._offer(<bytes>item, lane)
            if r == _QUEUED:
                n += 1
                if variant & V_DELTA_STATE == V_DELTA_FIRST:  # it has a full payload now: deltas next
                    if first is None:
                        first = []
                    first.append(conn)
                if conn.wire == _WIRE_TCP:
                    n_tcp += 1
            elif r == _DROPPED:
                if dropped is None:
                    dropped = []
                dropped.append(conn)
            else:
                if slow is None:
                    slow = []
                slow.append(conn)
        if first is not None:  # after the walk over the subscriber dict: its values change
            for conn in first:
                _promote(ch, conn)
        self.publications += 1
        return self._settle(channel, lane, n, n_tcp, dropped, slow)

    cdef Py_ssize_t _deliver(self, _Channel ch, object conns, str channel, tuple items, int lane,
                             bint publication):
        """The fan-out to a list of connections (paced slots, a round's joined publications)."""
        cdef list slow = None, dropped = None
        cdef Py_ssize_t n = 0, n_tcp = 0
        cdef int r, variant
        cdef object item
        cdef Conn conn
        cdef dict subs = ch.subs
        for conn in <list>conns:
            variant = <int>subs.get(conn, 0)
            item = <object>PyTuple_GET_ITEM(items, conn.wire + WIRES * variant)
            if item is None:  # no encoding for its wire (a pre-encoded broadcast without it): skipped
                continue
            r = conn._offer(<bytes>item, lane)
            if r == _QUEUED:
                n += 1
                if variant & V_DELTA_STATE == V_DELTA_FIRST:  # it has a full payload now: deltas next
                    _promote(ch, conn)
                if conn.wire == _WIRE_TCP:
                    n_tcp += 1
            elif r == _DROPPED:
                if dropped is None:
                    dropped = []
                dropped.append(conn)
            else:
                if slow is None:
                    slow = []
                slow.append(conn)
        if publication:
            self.publications += 1
        return self._settle(channel, lane, n, n_tcp, dropped, slow)

    cdef Py_ssize_t _settle(self, str channel, int lane, Py_ssize_t n, Py_ssize_t n_tcp, list dropped, list slow):
        self.deliveries += n
        self.deliveries_tcp += n_tcp
        # the callbacks change subscriber sets: only after the loop over them
        cdef Conn conn
        if dropped is not None:
            if lane == _LANE_BULK:
                self.drops_bulk += len(dropped)
            else:
                self.drops_update += len(dropped)
            if self._on_drop is not None:
                for conn in dropped:
                    self._on_drop(conn, channel)
        if slow is not None:
            for conn in slow:
                self._on_slow(conn)
        return n

    cdef inline void _mark_dirty(self, Conn conn):
        self._dirty.append(conn)
        if not self._scheduled:
            self._scheduled = True
            self._call_soon(self.flush)

    def flush(self):
        """Write each dirty connection's queue with one write (end of loop iteration)."""
        self._scheduled = False
        cdef list dirty = self._dirty
        self._dirty = []
        cdef list last_items = None, items
        cdef bytes last_frame = b"", frame
        cdef int last_wire = -1
        cdef Conn conn
        cdef Py_ssize_t k, n, size
        for conn in dirty:
            conn.dirty = False
            items = conn.pending
            if conn.closed or conn.paused or not items:
                continue
            if conn.queued > _WRITE_MAX and len(items) > 1:
                # a backlog (a resumed slow client): one bounded write now, the rest on the next turn,
                # so the joined frame never copies a whole queue of shared items per connection
                k = n = 0
                while k < len(items):
                    size = PyBytes_GET_SIZE(<bytes>items[k])
                    if k and n + size > _WRITE_MAX:
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
                    last_items = items
                    last_frame = frame
                    last_wire = conn.wire
                conn.pending = []
                conn.queued = 0
            try:
                conn.transport.write(frame)
            except Exception:
                pass
            self.writes += 1
