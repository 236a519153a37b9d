"""Smoke runs of the capacity-planning scenarios (bench/chats.py, connrate.py, latency.py).

Each runs with ``--quick`` (well under a minute) so the scripts cannot silently rot; the
figures themselves come from full runs on a quiet machine.
"""

import json
import os
import subprocess
import sys

import pytest

from relay.testing import ROOT

pytestmark = pytest.mark.skipif(os.environ.get("RELAY_PUREPYTHON") == "1",
                                reason="benchmarks measure the compiled core; smoke-tested in the compiled pass")


def run(script, *args, timeout=150):
    r = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--quick", *args], capture_output=True,
                       text=True, timeout=timeout, cwd=str(ROOT))
    assert r.returncode == 0, r.stdout + r.stderr
    path = r.stdout.strip().splitlines()[-1].split("results: ", 1)[1]
    with open(path) as f:
        return json.load(f), r.stdout


def test_chats_quick():
    data, out = run("chats.py", "--chats", "100", "--duration", "1.5")
    assert data["machine"]["relay_core"] == "cython"
    rows = [r for r in data["results"] if "skipped" not in r]
    assert len(rows) == 2, out
    for r in rows:
        assert r["connections"] == 200 and r["lost_connections"] == 0, out
        assert r["loss"] == 0 and r["echo_loss"] == 0 and r["drain"]["complete"], out
        assert r["published_in_window"] > 0 and r["delivered_in_window"] == r["published_in_window"], out
        assert r["deliveries_per_s"] > 0 and r["server_cpu_us_per_delivery"] > 0, out
        assert r["publish_errors"] == 0 and r["publish_replies"] >= r["published_in_window"], out
        lat = r["latency_ms"]
        assert 0 < lat["p50"] <= lat["p99"] <= lat["p99_9"] <= lat["max"], out
        assert r["generator_cpu_pct"] > 0
    assert data["summary"]["server_cpu_us_per_message"] is None or data["summary"]["server_cpu_us_per_message"] > 0
    assert "summary:" in out


def test_connrate_quick():
    data, out = run("connrate.py")
    rows = [r for r in data["results"] if "skipped" not in r]
    assert {r["server"] for r in rows} == {"relay", "picows"}, out
    for r in rows:
        assert r["failed_in_window"] == 0 and r["server_alive"], out
        assert r["accepted_in_window"] == r["attempts_in_window"] > 0, out
        assert r["accepted_per_s"] > 0 and r["server_cpu_us_per_connection"] > 0, out
        c = r["connect_ms"]
        assert 0 < c["p50"] <= c["p99"] <= c["max"], out
        assert r["closed"] >= r["accepted_in_window"], out
    assert set(data["summary"]["servers"]) == {"relay", "picows"}
    assert "picows does less" in out


def test_latency_quick():
    data, out = run("latency.py", "--subscribers", "100", "--max-steps", "2")
    assert data["machine"]["relay_core"] == "cython"
    rows = data["results"]
    assert {r["server"] for r in rows} == {"relay", "picows"}, out
    assert {r["phase"] for r in rows} == {"ramp", "at_80pct"}
    relay = [r for r in rows if r["server"] == "relay"]
    for r in relay:
        assert r["loss"] == 0 and r["server_alive"] and r["lost_connections"] == 0, out
        assert r["deliveries_per_s"] > 0 and r["server_cpu_us_per_delivery"] > 0, out
        lat = r["latency_ms"]
        assert 0 < lat["p50"] <= lat["p99"] <= lat["p99_9"] <= lat["max"], out
    by = {s["server"]: s for s in data["summary"]}
    assert set(by) == {"relay", "picows"}
    for s in by.values():
        assert s["saturation_deliveries_per_s"] > 0 and s["at_80pct"]["p99_ms"] is not None, out


def test_latency_skips_unknown_server():
    data, out = run("latency.py", "--servers", "no-such-server", timeout=60)
    assert "no-such-server" in data["skipped_servers"] and data["results"] == [], out
    assert "SKIPPED" in out
