"""Differential test: random operation sequences give byte-identical output on both cores."""

import importlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.core.conftest import FakeLoop, RecordingTransport

try:
    cy = importlib.import_module("relay.core._core")
except ImportError:  # pragma: no cover
    cy = None
py = importlib.import_module("relay.core._core_py")

N_CONNS = 5
CHANNELS = ["a", "b", "chat:é", "x" * 40]

op = st.one_of(
    st.tuples(st.just("sub"), st.integers(0, N_CONNS - 1), st.sampled_from(CHANNELS)),
    st.tuples(st.just("unsub"), st.integers(0, N_CONNS - 1), st.sampled_from(CHANNELS)),
    st.tuples(st.just("pub"), st.sampled_from(CHANNELS), st.text(max_size=30), st.integers(0, 2)),
    st.tuples(st.just("reply"), st.integers(0, N_CONNS - 1), st.binary(max_size=20)),
    st.tuples(st.just("pause"), st.integers(0, N_CONNS - 1)),
    st.tuples(st.just("resume"), st.integers(0, N_CONNS - 1)),
    st.tuples(st.just("close"), st.integers(0, N_CONNS - 1)),
    st.tuples(st.just("tick")),
    st.tuples(st.just("paced"), st.sampled_from(CHANNELS), st.text(max_size=10), st.integers(0, 2),
              st.sampled_from([0.005, 0.05, 0.3])),
    st.tuples(st.just("ptick"), st.sampled_from([0.0, 0.004, 0.02, 0.1])),
)


def run(impl, ops, wires, caps):
    loop = FakeLoop()
    slow = []
    dropped = []
    hub = impl.Hub(loop.call_soon, lambda c: slow.append(conns.index(c)), 4,
                   lambda c, ch: dropped.append((conns.index(c), ch)))
    transports = [RecordingTransport() for _ in range(N_CONNS)]
    conns = [hub.conn(t, w, c) for t, w, c in zip(transports, wires, caps, strict=True)]
    for i, c in enumerate(conns):  # priority lanes: bulk refused past a quarter of the cap, update past half
        c.bulk_limit, c.update_limit = c.cap // 4, c.cap // 2
        c.phase = i / N_CONNS  # paced broadcasts: the same moments on both cores
    now = 0.0
    results = []
    for o in ops:
        kind = o[0]
        if kind == "sub":
            results.append(hub.subscribe(o[2], conns[o[1]]))
        elif kind == "unsub":
            results.append(hub.unsubscribe(o[2], conns[o[1]]))
        elif kind == "pub":
            results.append(hub.broadcast(o[1], {"channel": o[1], "pub": {"data": o[2]}}, o[3]))
        elif kind == "reply":
            results.append(conns[o[1]].send(o[2]))
        elif kind == "pause":
            conns[o[1]].pause_writing()
        elif kind == "resume":
            conns[o[1]].resume_writing()
        elif kind == "paced":
            results.append(hub.broadcast_paced(o[1], {"channel": o[1], "pub": {"data": o[2]}}, o[3], o[4], now))
        elif kind == "ptick":
            now += o[1]
            results.append(round(hub.pace_tick(now), 6))
        elif kind == "close":
            conns[o[1]].close(b"CLOSE")
        else:
            loop.run()
    loop.run()
    state = (hub.num_channels, hub.num_subscriptions, hub.deliveries, hub.publications, sorted(hub.channels()),
             [c.queued for c in conns], hub.drops_bulk, hub.drops_update, hub.paced, hub.pacing())
    return results, slow, dropped, [t.writes for t in transports], state


@pytest.mark.skipif(cy is None, reason="compiled core not built")
@settings(max_examples=300, deadline=None)
@given(ops=st.lists(op, max_size=60),
       wires=st.lists(st.integers(0, 1), min_size=N_CONNS, max_size=N_CONNS),
       caps=st.lists(st.integers(0, 400), min_size=N_CONNS, max_size=N_CONNS))
def test_cores_agree(ops, wires, caps):
    assert run(cy, ops, wires, caps) == run(py, ops, wires, caps)
