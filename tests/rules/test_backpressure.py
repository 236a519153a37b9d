"""Backpressure's decision: each signal starts refusing past its limit, refusing stops under 80 % of
every limit, latency is probed while it refuses, and Retry-After is spread."""

import time

from relay.rules.backpressure import PROBE_INTERVAL, Backpressure, resident_bytes


def make(**kw):
    state = {"backlog": 0, "memory": 0}
    limits = dict(queue_bytes=1000, memory_bytes=0, publish_latency=0.0, max_in_flight=0, retry_after=1.0)
    limits.update(kw)
    bp = Backpressure(**limits, backlog=lambda: state["backlog"], memory=lambda: state["memory"])
    return bp, state


def test_queue_signal_with_hysteresis():
    bp, state = make()
    state["backlog"] = 1000
    bp.sample()
    assert bp.reason is None and not bp.refuse("api")
    state["backlog"] = 1001
    bp.sample()
    assert bp.reason == "queue" and bp.refuse("api") and bp.refuse("client")
    state["backlog"] = 900  # under the limit but not under 80 % of it: still refusing
    bp.sample()
    assert bp.reason == "queue"
    state["backlog"] = 800
    bp.sample()
    assert bp.reason is None and not bp.refuse("api")
    assert bp.refused == {"api": 1, "client": 1} and bp.episodes == 1


def test_memory_signal():
    bp, state = make(queue_bytes=0, memory_bytes=5000)
    state["backlog"] = 10**9  # not watched
    bp.sample()
    assert bp.reason is None
    state["memory"] = 6000
    bp.sample()
    assert bp.reason == "memory"


def test_in_flight_is_a_cap():
    bp, _ = make(queue_bytes=0, max_in_flight=3)
    for _ in range(2):
        bp.publish_started()
    assert bp.reason is None
    bp.publish_started()  # the third reaches the cap: the fourth is refused
    assert bp.reason == "in_flight" and bp.refuse("api")
    bp.publish_done(0.001)
    assert bp.reason is None  # 2 <= 80 % of 3


def test_latency_average_and_probes():
    bp, _ = make(queue_bytes=0, publish_latency=0.1)
    bp.publish_started()
    bp.publish_done(1.0)  # one very slow publish moves the average to 0.2
    assert bp.reason == "latency"
    assert bp.refuse("api")  # no probe right away
    time.sleep(PROBE_INTERVAL + 0.01)
    assert not bp.refuse("api")  # a probe goes through...
    assert bp.refuse("api")  # ...one per interval
    for _ in range(10):  # fast publishes bring the average down
        bp.publish_started()
        bp.publish_done(0.001)
    assert bp.reason is None


def test_off_when_every_limit_is_zero():
    bp, state = make(queue_bytes=0)
    assert not bp.enabled
    state["backlog"] = 10**12
    bp.sample()
    assert bp.reason is None


def test_retry_after_is_spread_whole_seconds():
    bp, _ = make(retry_after=2.0)
    seen = {bp.retry_after_header() for _ in range(200)}
    assert seen <= {"2", "3", "4"} and len(seen) >= 2


def test_resident_bytes_reads_this_process():
    assert resident_bytes() > 10 << 20


def test_a_slow_broker_shard_refuses_only_its_own_channels():
    bp, _ = make(queue_bytes=0, publish_latency=0.1, max_in_flight=3)
    bp.publish_started(domain="m1")
    bp.publish_done(2.0, domain="m1")  # a master failing over: its publishes hang
    bp.publish_started(domain="m2")
    bp.publish_done(0.001, domain="m2")
    assert bp.slow == {"m1": "latency"} and bp.reason == "latency"
    assert bp.refuse("api", "m1") and not bp.refuse("api", "m2") and not bp.refuse("api", "m3")
    for _ in range(3):  # publishes stuck on one shard fill only its own in-flight budget
        bp.publish_started(domain="m3")
    assert bp.slow["m3"] == "in_flight" and bp.refuse("client", "m3") and not bp.refuse("client", "m2")
    for _ in range(3):
        bp.publish_done(0.001, domain="m3")
    assert "m3" not in bp.slow
    time.sleep(PROBE_INTERVAL + 0.01)
    assert not bp.refuse("api", "m1")  # the slow shard's probe
    for _ in range(20):
        bp.publish_started(domain="m1")
        bp.publish_done(0.001, domain="m1")
    assert bp.slow == {} and bp.reason is None
