# The compiled core's contract. Python code sees the cpdef/def methods and the
# readonly attributes; Cython code may cimport the rest. relay/_core_py.py is
# the same API in plain Python, and tests/core runs against both.

cdef class Hub

cdef class Conn:
    cdef readonly Hub hub
    cdef readonly object transport
    cdef readonly int wire
    cdef public Py_ssize_t cap
    cdef public list pending
    cdef readonly Py_ssize_t queued
    cdef readonly bint paused
    cdef public bint dirty
    cdef readonly bint closed
    cdef public object session
    cdef object __weakref__

    cdef inline bint _enqueue(self, bytes item)
    cpdef bint send(self, bytes item)
    cpdef bytes take(self)


cdef class _Channel:
    cdef dict subs
    cdef Py_ssize_t n_tcp


cdef class Hub:
    cdef object _call_soon
    cdef object _on_slow
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

    cdef inline dict _shard(self, str channel)
    cdef inline void _mark_dirty(self, Conn conn)
    cdef Py_ssize_t _fanout(self, _Channel ch, object ws_item, object tcp_item)
    cpdef bint subscribe(self, str channel, Conn conn)
    cpdef bint unsubscribe(self, str channel, Conn conn)
    cpdef Py_ssize_t broadcast(self, str channel, dict push)
    cpdef Py_ssize_t broadcast_encoded(self, str channel, object ws_item, object tcp_item)


cdef class FrameReader:
    cdef readonly Py_ssize_t max_message
    cdef bytearray _buf
    cdef int _frag_op
    cdef list _frags
    cdef Py_ssize_t _frag_size
    cdef public object error

    cdef _parse(self, data, list out)
