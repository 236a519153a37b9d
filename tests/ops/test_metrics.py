"""relay.ops.metrics: the local histogram adds up to what prometheus-client's observe() gives."""

import random

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from relay.ops.histogram import LATENCY_BUCKETS, LocalHistogram
from relay.testing import Samples


def test_local_histogram_flush_equals_observe():
    values = [random.expovariate(200) for _ in range(5000)] + [0.00005, 5.0, 7.5, 0.0]
    direct_reg, local_reg = CollectorRegistry(), CollectorRegistry()
    direct = Histogram("h_seconds", "h", buckets=LATENCY_BUCKETS, registry=direct_reg)
    via_local = Histogram("h_seconds", "h", buckets=LATENCY_BUCKETS, registry=local_reg)
    local = LocalHistogram()
    for i, v in enumerate(values):
        direct.observe(v)
        local.observe(v)
        if i % 1000 == 0:
            local.flush(via_local)  # several flushes add up
    local.flush(via_local)
    local.flush(via_local)  # nothing new: no change
    a = Samples(generate_latest(direct_reg).decode()).values
    b = Samples(generate_latest(local_reg).decode()).values
    assert a.keys() == b.keys()
    for key, value in a.items():
        if key[0] == "h_seconds_sum":
            assert abs(b[key] - value) < 1e-9
        elif key[0].endswith(("_bucket", "_count")):
            assert b[key] == value, key
    assert local.n == 0 and local.total == 0.0
