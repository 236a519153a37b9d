"""relay capacity: plans from measured figures (synthetic results files with round numbers)."""

import json
import os
import subprocess
import sys
import time

import pytest

from relay.ops.capacity import MissingFigure, Traffic, load_profile, plan
from relay.testing import ROOT

MACHINE = {"relay_core": "cython", "cores": 2}


def write(d, kind, results, stamp, **extra):
    path = d / f"{kind}-2026112{stamp}.json"
    path.write_text(json.dumps({"machine": MACHINE, "args": {"quick": False}, "results": results, **extra}))
    t = time.time() - 100 + int(stamp)
    os.utime(path, (t, t))
    return path


def fanout_step(msgs, subs, us, p99, **kw):
    return {"case": "a", "server": "relay", "msgs_per_s": msgs, "subscribers": subs, "batch": 1,
            "deliveries_per_s": msgs * subs, "server_cpu_us_per_delivery": us, "latency_ms": {"p99": p99},
            "loss": 0.0, "saturated": False, "generator_limited": False, "server_alive": True, **kw}


@pytest.fixture
def results(tmp_path):
    write(tmp_path, "fanout", [
        fanout_step(50, 1000, 10.0, 5.0),
        fanout_step(100, 1000, 8.0, 20.0),  # the busiest clean step: 8 us per delivery
        fanout_step(200, 1000, 5.0, 900.0, saturated=True),  # saturated: never used
        {**fanout_step(100, 1000, 3.0, 1.0), "server": "picows"},  # a peer: never used
    ], 1)
    write(tmp_path, "idle", [{"server": "relay", "connections": 10000, "rss_per_connection_bytes": 4096,
                              "rss_before_bytes": 64 * 1024 * 1024}], 2)
    write(tmp_path, "redis", [{"case": "ingest", "publications_per_s": 10000, "redis_cpu_us_per_publication": 4.0,
                               "redis_receivers_per_publication": 1.0}], 3)
    return tmp_path


def test_profile_reads_the_busiest_clean_relay_step(results):
    p = load_profile(str(results))
    assert p.us_per_broadcast_delivery.value == 8.0
    assert "100 msg/s to 1000 subscribers" in p.us_per_broadcast_delivery.source
    # no chats run: a chat message is assumed to cost 3 deliveries (command + reply, two pushes)
    assert p.us_per_chat_message.value == 24.0 and "assumed" in p.us_per_chat_message.source
    assert p.rss_per_connection.value == 4096
    assert p.at_p99(50).value == 100_000  # measured with p99 20 ms
    assert p.at_p99(10).value == 50_000
    assert p.us_per_connect.value == 0 and "not measured" in p.us_per_connect.source
    assert (p.redis_us_per_publication.value, p.redis_us_per_receiver.value) == (2.0, 2.0)


def test_plan_arithmetic(results):
    p = load_profile(str(results))
    # 50,000 chat messages/s at 24 us = 1.2 cores; pings: 1e6 conns / 25 s x 2 x 8 us = 0.64 cores
    t = Traffic(peak_connections=1_000_000, chat_messages_per_s=50_000, chat_members=2, headroom=0.5,
                cores_per_node=2, memory_per_node_gib=4.0)
    d = plan(t, p)
    assert d.cores_needed["deliveries"] == pytest.approx(1.2)
    assert d.cores_needed["pings"] == pytest.approx(0.64)
    # memory: 1e6 x 4 KiB = 3.81 GiB, + 64 MiB per worker (2 per node), at 50 % of 4 GiB nodes:
    # 2 nodes would need 4.06 GiB / 2 GiB = 2.03 nodes, 3 nodes 4.19 / 2 = 2.1: 3 nodes, + 1 spare
    # latency: 100,000 deliveries/s per core under 50 ms -> 1 core at 100 %, 2 at 50 %: 1 node
    assert d.first_limit == "memory"
    assert d.nodes == 3 + 1
    assert d.utilization["memory"] <= 0.5 + 1e-9
    assert d.redis_instances == 1
    assert any("spare" in a for a in d.assumptions)


def test_broadcast_burst_needs_workers(results):
    p = load_profile(str(results))
    # one broadcast to 200,000 at 8 us = 1.6 s on one process; to reach the last within 400 ms at 50 %
    # headroom: 8 processes = 2 nodes of 4
    t = Traffic(peak_connections=200_000, broadcasts=[(0.05, 200_000)], broadcast_p99_ms=400, headroom=0.5,
                cores_per_node=4, memory_per_node_gib=64)
    d = plan(t, p)
    assert d.first_limit == "broadcast burst"
    assert d.nodes == 2 + 1 and d.workers_per_node == 4


def test_measured_chats_and_connections_are_used(results):
    write(results, "chats", [{"server": "relay", "msgs_per_s": 5000, "deliveries_per_s": 5000,
                              "server_cpu_us_per_delivery": 12.0, "latency_ms": {"p99": 3}, "loss": 0}], 4,
          summary={"server_cpu_us_per_message": 11.0, "server_cpu_incl_softirq_us_per_message": 12.0,
                   "highest_clean_msgs_per_s": 5000})
    write(results, "connrate", [{"server": "relay", "offered_per_s": 500, "accepted_per_s": 500,
                                 "server_cpu_us_per_connection": 400.0}], 5)
    p = load_profile(str(results))
    assert p.us_per_chat_message.value == 12.0 and p.us_per_connect.value == 400.0
    # 20,000 arrivals in 10 minutes = 33.3/s x 400 us = 0.013 cores
    d = plan(Traffic(peak_connections=20_000, arrivals=20_000, ramp_minutes=10), p)
    assert d.cores_needed["connection ramp"] == pytest.approx(20_000 / 600 * 400e-6)
    # 1 node + the spare share the peak; the drained one's 10,000 clients come back in 20 s to the other
    # node: 500/s x 400 us = 0.2 cores of its 4
    assert d.nodes == 2 and d.utilization["reconnect storm"] == pytest.approx(0.05)


def test_missing_results_name_the_benchmark(tmp_path):
    with pytest.raises(MissingFigure, match="relay bench --only fanout"):
        load_profile(str(tmp_path))
    write(tmp_path, "fanout", [fanout_step(50, 1000, 10.0, 5.0)], 1)
    with pytest.raises(MissingFigure, match="relay bench --only idle"):
        load_profile(str(tmp_path))


def test_cli(results):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "relay", "capacity", "--results", str(results), *args],
                              capture_output=True, text=True, cwd=str(ROOT), timeout=60)

    r = run("--connections", "1820", "--arrivals", "19000", "--ramp-minutes", "30", "--chat-rate", "9",
            "--broadcast", "0.1:1820")
    assert r.returncode == 0, r.stderr
    assert "relay nodes" in r.stdout and "runs out first" in r.stdout and "Assumptions" in r.stdout
    assert "fanout-20261121.json" in r.stdout  # every figure names its source
    r = run("--connections", "1820", "--json")
    assert json.loads(r.stdout)["deployment"]["nodes"] >= 2
    r = run("--connections", "10", "--broadcast", "lots")
    assert r.returncode == 2 and "expected RATE:SUBSCRIBERS" in r.stderr
