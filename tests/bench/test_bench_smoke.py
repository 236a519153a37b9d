"""Smoke runs of the benchmarks so they cannot silently rot (figures come from `make bench`)."""

import json
import os
import subprocess
import sys

import pytest

from relay.testing import ROOT

pytestmark = pytest.mark.skipif(os.environ.get("RELAY_PUREPYTHON") == "1",
                                reason="benchmarks measure the compiled core; smoke-tested in the compiled pass")


def run(script, *args):
    r = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], capture_output=True, text=True,
                       timeout=240, cwd=str(ROOT))
    assert r.returncode == 0, r.stdout + r.stderr
    path = r.stdout.strip().splitlines()[-1].split("results: ", 1)[1]
    return json.loads(open(path).read()), r.stdout


def test_fanout_quick():
    data, out = run("fanout.py", "--quick", "--cases", "c", "--duration", "1", "--warmup", "0.5")
    rows = [r for r in data["results"] if "skipped" not in r]
    assert {r["server"] for r in rows} == {"relay", "picows"}
    relay = [r for r in rows if r["server"] == "relay"]
    assert all(r["loss"] == 0 and r["server_alive"] for r in relay), out
    assert all(r["server_cpu_us_per_delivery"] > 0 for r in relay)
    assert data["machine"]["relay_core"] == "cython"
    assert "ratios (same run)" in out


def test_idle_quick():
    data, out = run("idle.py", "--quick")
    relay = next(r for r in data["results"] if r["server"] == "relay")
    assert relay["lost_connections"] == 0 and relay["rss_per_connection_bytes"] > 0, out


def test_redis_scaling_quick():
    from tests.conftest import need_redis_server

    need_redis_server()
    data, out = run("redis_scaling.py", "--quick", "--cases", "ingest", "--servers", "redis-w1")
    rows = [r for r in data["results"] if r.get("deliveries_per_s")]
    assert rows and all(r["loss"] == 0 for r in rows), out
