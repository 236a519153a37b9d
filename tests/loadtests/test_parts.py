"""The load tests' pure parts: loss accounting of a recoverable stream, thresholds, durations and
ramps, and the runner's drift arithmetic (no Locust, no gevent monkey-patching in this process)."""

from __future__ import annotations

import pytest

from loadtests import thresholds
from loadtests.clients import Disconnected, Stream
from loadtests.params import SCENARIOS, parse_duration, ramp_seconds
from loadtests.run import bucket_quantile, drift, metrics_from


def test_stream_counts_gaps_and_duplicates():
    s = Stream("orders:a#a", "orders")
    pubs, lost, unrecovered = s.apply({"recoverable": True, "positioned": True, "offset": 5, "epoch": "e1"})
    assert (pubs, lost, unrecovered) == ([], 0, False) and s.params() == {"recover": True, "offset": 5, "epoch": "e1"}
    assert s.accept({"offset": 6}) == 0
    assert s.accept({"offset": 6}) == -1  # a duplicate
    assert s.accept({"offset": 9}) == 2   # 7 and 8 never arrived
    assert s.offset == 9


def test_stream_recovery():
    s = Stream("chat:x", "chat")
    s.apply({"recoverable": True, "offset": 3, "epoch": "e"})
    # recovered: the missed publications come in the reply and move the position
    pubs, lost, unrecovered = s.apply({"recoverable": True, "was_recovering": True, "recovered": True,
                                       "offset": 5, "epoch": "e", "publications": [{"offset": 4}, {"offset": 5}]})
    assert [p["offset"] for p in pubs] == [4, 5] and lost == 0 and not unrecovered and s.offset == 5
    # not recovered, same epoch: how many were skipped is known
    pubs, lost, unrecovered = s.apply({"recoverable": True, "was_recovering": True, "recovered": False,
                                       "offset": 9, "epoch": "e"})
    assert (pubs, lost, unrecovered) == ([], 4, True) and s.offset == 9
    # a new epoch (history gone): unrecovered, the count unknown; the new position is taken
    pubs, lost, unrecovered = s.apply({"recoverable": True, "was_recovering": True, "recovered": False,
                                       "offset": 1, "epoch": "f"})
    assert (lost, unrecovered, s.offset, s.epoch) == (0, True, 1, "f")


def test_stream_without_history_is_not_tracked():
    s = Stream("support:agents", "support")
    s.apply({})
    assert s.params() == {} and s.accept({"data": {}}) == 0


@pytest.mark.parametrize(("code", "back"), [(0, True), (3001, True), (3012, True), (3500, False), (3501, False),
                                            (1001, True), (1009, False)])
def test_which_closes_a_client_comes_back_from(code, back):
    assert Disconnected(code).reconnect is back


def test_thresholds_max_min_and_overrides():
    res = {r.metric: r for r in thresholds.check("reconnect_storm", {"error_ratio": 0.01, "reconnects": 0},
                                                 {"deliver_p95_ms": 0.001})}
    assert res["error_ratio"].passed and not res["reconnects"].passed  # a minimum
    assert res["deliver_p95_ms"].limit == 0.001 and not res["deliver_p95_ms"].passed  # not measured
    assert res["relay_errors"].passed  # optional: not measured is fine (external relay)
    assert "MISSED reconnects" in res["reconnects"].line()
    with pytest.raises(ValueError, match="deliver_p95_ms"):
        thresholds.parse_overrides(["nonsense=1"])
    assert thresholds.parse_overrides(["lost_messages=3"]) == {"lost_messages": 3.0}
    for scenario in SCENARIOS:  # every limit names a known metric
        assert set(thresholds.THRESHOLDS[scenario]) <= set(thresholds.METRICS)


def test_durations_and_ramps():
    assert parse_duration("90") == 90 and parse_duration("2m") == 120 and parse_duration("1h30m") == 5400
    with pytest.raises(ValueError):
        parse_duration("soon")
    assert ramp_seconds("flash_sale", 900) == 600  # 20,000 over 10 minutes in a 15-minute sale
    assert ramp_seconds("flash_sale", 60) == 40 and ramp_seconds("flash_sale", 60, 5) == 5
    assert ramp_seconds("soak", 4 * 3600) == 300


def test_drift_compares_the_ends_of_the_steady_part():
    samples = [{"time": 100 + i, "rss_kb": 1000 + (100 if i >= 6 else 0), "fanout_p99_ms": 1.0} for i in range(8)]
    p99 = [(100 + i, 5.0 + (10 if i >= 6 else 0)) for i in range(8)]
    d = drift(samples, p99, steady_from=100)
    assert d["rss_growth_pct"] == 10.0 and d["deliver_p99_drift_ms"] == 10.0
    assert drift([], [], 0)["rss_growth_pct"] is None


def test_bucket_quantile_between_scrapes():
    prev = {0.001: 10, 0.01: 20, float("inf"): 20}
    cur = {0.001: 10, 0.01: 119, float("inf"): 120}  # 100 new: 99 under 10 ms, one above
    assert bucket_quantile(prev, cur, 0.99) == 10.0
    assert bucket_quantile(cur, cur, 0.99) is None


def test_metrics_from_summary():
    summary = {"total": {"requests": 200, "failures": 2}, "counters": {"lost_messages": 1, "deliveries": 50},
               "latency": {"DELIVER": {"count": 50, "p95": 3.5, "p99": 4.0}}}
    m = metrics_from(summary, {"rss_growth_pct": 1.5})
    assert m["error_ratio"] == 0.01 and m["deliver_p95_ms"] == 3.5 and m["lost_messages"] == 1
    assert m["connect_p95_ms"] is None and m["rss_growth_pct"] == 1.5


def test_log_histogram_percentiles_within_one_percent():
    from loadtests.histogram import LogHistogram

    h = LogHistogram()
    for i in range(1, 1001):
        h.add(i / 10)  # 0.1 .. 100 ms
    assert h.count == 1000
    assert h.percentile(0.5) == pytest.approx(50.0, rel=0.01)
    assert h.percentile(0.95) == pytest.approx(95.0, rel=0.01)
    assert h.percentile(1.0) == pytest.approx(100.0, rel=0.01)
    other = LogHistogram()
    other.merge({str(k): v for k, v in h.buckets.items()})  # as it arrives from a worker (JSON keys)
    assert other.summary()["p95"] == h.summary()["p95"]
    assert LogHistogram().percentile(0.95) == 0.0
