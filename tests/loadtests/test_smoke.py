"""Smoke runs of the Locust load tests, so that they can never silently rot.

Each scenario runs through ``loadtests/run.py --smoke`` (its own relay, a few dozen users, a few
seconds, fast intervals) and must pass its thresholds, write Locust's CSV and HTML reports, and show
CONNECT, SUBSCRIBE, PUBLISH and DELIVER entries without a failure. One more run with an impossible
threshold must fail, naming it. Locust (gevent) only ever runs in child processes: importing it here
would monkey-patch this pytest process.

The runs take ~40 s together, so they run once, in the compiled-core pass of ``make test`` (the
relay they start is the same code either way; the pure-Python core has its own tests).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from relay.testing import ROOT

RUNNER = ROOT / "loadtests" / "run.py"
SCENARIOS = ("flash_sale", "reconnect_storm", "soak")
MUST_HAVE = ("CONNECT", "SUBSCRIBE", "PUBLISH", "DELIVER")

pytestmark = pytest.mark.skipif(os.environ.get("RELAY_PUREPYTHON") == "1",
                                reason="load-test smoke runs once, in the compiled-core pass")


def need(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{module} is not installed (pip install -e '.[test]')")
        pytest.skip(f"{module} is not installed")


def need_redis() -> None:
    if shutil.which("redis-server") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is not installed (required under CI=true)")
        pytest.skip("redis-server is not installed")


def run(scenario: str, out: Path, *extra: str, timeout: float = 120) -> subprocess.CompletedProcess:
    need("locust")
    need("websocket")
    if scenario == "reconnect_storm":
        need_redis()
    return subprocess.run([sys.executable, str(RUNNER), scenario, "--smoke", "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=timeout, cwd=str(ROOT))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """Each scenario's smoke run, once per module: (completed process, report directory)."""
    done: dict[str, tuple[subprocess.CompletedProcess, Path]] = {}

    def get(scenario: str):
        if scenario not in done:
            out = tmp_path_factory.mktemp(scenario)
            done[scenario] = (run(scenario, out), out)
        return done[scenario]

    return get


def stats_rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario_smoke_passes(smoke, scenario):
    proc, out = smoke(scenario)
    output = proc.stdout + proc.stderr
    verdict = output[output.find("=== relay load test"):] if "=== relay load test" in output else output[-6000:]
    assert proc.returncode == 0, verdict  # the runner's verdict names each threshold missed
    assert "PASSED" in proc.stdout
    prefix = out / scenario
    for suffix in ("_stats.csv", "_stats_history.csv", "_failures.csv", ".html", "_summary.json", "_result.json"):
        assert Path(f"{prefix}{suffix}").stat().st_size > 0, suffix
    assert "<html" in Path(f"{prefix}.html").read_text()[:2000].lower()

    rows = stats_rows(Path(f"{prefix}_stats.csv"))
    summary = json.loads(Path(f"{prefix}_summary.json").read_text())
    for kind in MUST_HAVE:
        mine = [r for r in rows if r["Type"] == kind]
        assert mine and sum(int(r["Request Count"]) for r in mine) > 0, f"no {kind} entry in the CSV report"
        failures = [f for f in summary["failures"] if f["type"] == kind]
        assert not failures, f"{kind} failures (named by relay's error or close code): {failures}\n{verdict}"
        assert all(int(r["Failure Count"]) == 0 for r in mine), [r for r in mine if int(r["Failure Count"])]
        assert summary["by_type"][kind]["requests"] > 0 and summary["by_type"][kind]["failures"] == 0
    assert summary["counters"].get("lost_messages", 0) == 0
    assert summary["counters"].get("deliveries", 0) > 0
    result = json.loads(Path(f"{prefix}_result.json").read_text())
    assert result["passed"] and all(t["passed"] for t in result["thresholds"])


def test_storm_restarts_relay_and_clients_recover(smoke):
    proc, out = smoke("reconnect_storm")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    result = json.loads((out / "reconnect_storm_result.json").read_text())
    assert len(result["restarts"]) == 1
    summary = json.loads((out / "reconnect_storm_summary.json").read_text())
    counters = summary["counters"]
    assert counters.get("disconnects:3001 shutdown", 0) > 0  # relay drained its clients
    assert counters.get("reconnects", 0) > 0 and counters.get("recoveries", 0) > 0
    assert counters.get("unrecovered", 0) == 0 and counters.get("lost_messages", 0) == 0
    assert summary["latency"]["RECONNECT"]["count"] > 0


def test_soak_reports_drift(smoke):
    proc, out = smoke("soak")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    result = json.loads((out / "soak_result.json").read_text())
    assert result["drift"]["rss_start_mb"] and result["drift"]["rss_growth_pct"] is not None
    assert (out / "soak_samples.csv").read_text().startswith("t,time,rss_kb")
    assert json.loads((out / "soak_summary.json").read_text())["counters"].get("churn", 0) > 0


def test_impossible_threshold_fails_the_run(tmp_path):
    proc = run("flash_sale", tmp_path, "-u", "12", "-t", "4", "--threshold", "deliver_p95_ms=0.001")
    assert proc.returncode == 1, (proc.stdout + proc.stderr)[-6000:]
    assert "MISSED deliver_p95_ms" in proc.stdout
    assert "FAILED: missed deliver_p95_ms" in proc.stdout
    # the same reports checked again: the default thresholds hold, the impossible one does not
    again = subprocess.run([sys.executable, str(RUNNER), "flash_sale", "--check-only", "--out", str(tmp_path)],
                           capture_output=True, text=True, timeout=60, cwd=str(ROOT))
    assert again.returncode == 0, again.stdout + again.stderr
    again = subprocess.run([sys.executable, str(RUNNER), "flash_sale", "--check-only", "--out", str(tmp_path),
                            "--threshold", "connect_p95_ms=0.001"], capture_output=True, text=True, timeout=60,
                           cwd=str(ROOT))
    assert again.returncode == 1 and "MISSED connect_p95_ms" in again.stdout
