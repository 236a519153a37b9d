# The compiled core's contract. Python code sees the cpdef/def methods and the
# readonly attributes; Cython code may cimport the rest. relay/core/_core_py.py is
# the same API in plain Python, and tests/core runs against both.

cdef class Hub

cdef class Conn:
    cdef readonly Hub hub
    cdef readonly object transport
    cdef readonly int wire
    cdef public Py_ssize_t cap
    cdef public Py_ssize_t update_limit
    cdef public Py_ssize_t bulk_limit
    cdef public list pending
    cdef readonly Py_ssize_t queued
    cdef readonly bint paused
    cdef public bint dirty
    cdef readonly bint closed
    cdef public object session
    cdef public double phase
    cdef object __weakref__

    cdef inline int _offer(self, bytes item, int lane)
    cpdef bint send(self, bytes item)
    cpdef int offer(self, bytes item, int lane)
    cpdef bytes take(self)


cdef class _Channel:
    cdef dict subs
    cdef Py_ssize_t counts[18]
    cdef long long cid


cdef class _Round:
    cdef list items
    cdef list buckets
    cdef dict members
    cdef double start
    cdef double window
    cdef double slot_len
    cdef Py_ssize_t next


cdef class Hub:
    cdef object _call_soon
    cdef object _on_slow
    cdef object _on_drop
    cdef readonly Py_ssize_t num_shards
    cdef list _shards
    cdef list _dirty
    cdef bint _scheduled
    cdef readonly Py_ssize_t num_channels
    cdef readonly Py_ssize_t num_subscriptions
    cdef readonly unsigned long long deliveries
    cdef readonly unsigned long long deliveries_tcp
    cdef readonly unsigned long long publications
    cdef readonly unsigned long long writes
    cdef readonly unsigned long long drops_update
    cdef readonly unsigned long long drops_bulk
    cdef readonly unsigned long long paced
    cdef dict _pacing

    cdef inline dict _shard(self, str channel)
    cdef inline void _mark_dirty(self, Conn conn)
    cdef tuple _encode(self, _Channel ch, dict push, object delta)
    cdef Py_ssize_t _fanout(self, _Channel ch, str channel, tuple items, int lane)
    cdef Py_ssize_t _deliver(self, _Channel ch, object conns, str channel, tuple items, int lane,
                             bint publication)
    cdef Py_ssize_t _join_round(self, _Channel ch, str channel, tuple items, int lane)
    cdef Py_ssize_t _settle(self, str channel, int lane, Py_ssize_t n, Py_ssize_t n_tcp, list dropped, list slow)
    cpdef bint subscribe(self, str channel, Conn conn, int variant=*, long long cid=*)
    cpdef bint unsubscribe(self, str channel, Conn conn)
    cpdef Py_ssize_t broadcast(self, str channel, dict push, int lane=*, object delta=*)
    cpdef Py_ssize_t broadcast_encoded(self, str channel, object ws_item, object tcp_item, int lane=*,
                                       object pb_item=*)
    cpdef Py_ssize_t broadcast_paced(self, str channel, dict push, int lane, double window, double now)
    cpdef double pace_tick(self, double now)


cdef class FrameReader:
    cdef readonly Py_ssize_t max_message
    cdef readonly Py_ssize_t max_fragments
    cdef bytearray _buf
    cdef int _frag_op
    cdef bytearray _frag
    cdef Py_ssize_t _frag_count
    cdef public object error

    cdef _parse(self, data, list out)
