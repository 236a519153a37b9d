"""bench/report.py on small synthetic result files, and the `relay bench` CLI (no benchmark is run)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"
MACHINE = {"cpu_model": "Test CPU", "cpus": 2, "kernel": "6.1.0-test", "python": "3.11.7", "picows": "2.3.1",
           "uvloop": "0.23.0", "orjson": "3.13.0", "websockets": "17.4", "node": "v20.20.2", "node_ws": "8.23.0",
           "nats_server": "nats-server: v2.9.10", "relay": "0.1.0", "relay_core": "cython", "server_cpu": 0,
           "generator_cpu": 1, "nofile_limit": 20000}


def _load_report():
    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "bench" / "report.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_report"] = mod
    spec.loader.exec_module(mod)
    return mod


report = _load_report()


# ------------------------------------------------------------------------------------------------
# synthetic results, shaped like the files the benchmark scripts write
# ------------------------------------------------------------------------------------------------

def _lat(p50, p99, p999=None):
    return {"p50": p50, "p90": p50 * 1.5, "p99": p99, "p99_9": p999 if p999 is not None else p99 * 1.2,
            "max": p99 * 1.5, "p50_first_half": p50, "p50_second_half": p50}


def fanout_row(case, server, rate, cpu, batch=1, subs=1000, p99=5.0, saturated=False, gen=False, **kw):
    dps = rate * subs
    return {"case": case, "server": server, "subscribers": subs, "msgs_per_s": rate, "frames_per_s": rate / batch,
            "batch": batch, "deliveries_per_s": dps, "loss": 0.0,
            "drain": {"complete": True, "timed_out": False, "drain_s": 0.0}, "latency_ms": _lat(1.0, p99),
            "server_cpu_us_per_delivery": cpu, "server_cpu_incl_softirq_us_per_delivery": cpu * 1.2,
            "noisy": False, "generator_limited": gen, "saturated": saturated, "lost_connections": 0,
            "close_codes": {}, "publish_errors": 0, "server_alive": True, **kw}


def fanout_data(picows_cpu=6.0, websockets_cpu=14.0):
    rows = []
    for case, rate, batch, relay_cpu in (("a", 50, 1, 2.0), ("a", 200, 1, 1.5), ("c", 1000, 20, 0.4)):
        for server, cpu in (("relay", relay_cpu), ("picows", picows_cpu), ("websockets", websockets_cpu),
                            ("node-ws", 13.0), ("nats", 12.0)):
            rows.append(fanout_row(case, server, rate, cpu, batch=batch))
    rows.append({"case": "c", "server": "websockets", "msgs_per_s": 2000, "batch": 20,
                 "skipped": "saturated at a lighter step"})
    return {"machine": MACHINE, "args": {"cases": ["a", "c"], "servers": ["relay", "picows", "websockets",
                                                                          "node-ws", "nats"],
                                         "duration": 10.0, "warmup": 2.0, "drain_timeout": 15.0, "quick": False},
            "results": rows, "cases": {"a": {"key": "a", "title": "1 msg per tick", "subscribers": 1000},
                                       "c": {"key": "c", "title": "hot channel", "subscribers": 1000}},
            "printed": []}


def latency_data(relay_sat=2_000_000, nats_sat=800_000, relay_p99_at_80=20.0, summary=True):
    """Shaped like latency.py's file: ramp rows, one at_80pct row per server and a summary list.

    relay saturates at ``relay_sat`` deliveries/s, nats at ``nats_sat``; the other peers near 100 k/s.
    """
    subs = 1000
    rows, summaries = [], []
    for server, sat in (("relay", relay_sat), ("picows", 150_000), ("websockets", 92_000), ("node-ws", 97_000),
                        ("nats", nats_sat)):
        ramp = []
        for offered in (50_000, 100_000, 200_000, 400_000, 800_000, 1_600_000, 3_200_000):
            over = offered > sat
            p99 = (relay_p99_at_80 if server == "relay" else 8.0) if not over else 900.0
            ramp.append({"case": "latency", "server": server, "subscribers": subs, "msgs_per_s": offered / subs,
                         "batch": 1, "deliveries_per_s": min(offered, sat), "latency_ms": _lat(2.0, p99),
                         "server_cpu_us_per_delivery": 1.0 if server == "relay" else 5.0,
                         "saturated": False, "generator_limited": False, "noisy": False, "server_alive": True,
                         "loss": 0.0, "drain": {"complete": True, "timed_out": False},
                         "phase": "ramp", "offered_deliveries_per_s": offered, "at_saturation": over,
                         "saturation_reasons": [f"p99 {p99:.0f} ms > 200 ms"] if over else []})
            if over:
                ramp[-1]["ramp_end"] = "saturated"
                break
        else:
            ramp[-1]["ramp_end"] = "max-steps"
        best = max(r["deliveries_per_s"] for r in ramp)
        at80 = {**ramp[0], "phase": "at_80pct", "msgs_per_s": 0.8 * best / subs, "deliveries_per_s": 0.8 * best,
                "offered_deliveries_per_s": 0.8 * best, "at_saturation": False, "saturation_reasons": [],
                "latency_ms": _lat(2.0, relay_p99_at_80 if server == "relay" else 8.0)}
        rows += ramp + [at80]
        lat = at80["latency_ms"]
        summaries.append({"server": server, "saturation_reached": ramp[-1]["ramp_end"] == "saturated",
                          "ramp_end": ramp[-1]["ramp_end"], "saturation_reasons": ramp[-1]["saturation_reasons"],
                          "saturation_deliveries_per_s": best, "saturation_generator_limited": False,
                          "at_80pct": {"msgs_per_s": at80["msgs_per_s"], "deliveries_per_s": at80["deliveries_per_s"],
                                       "p50_ms": lat["p50"], "p99_ms": lat["p99"], "p99_9_ms": lat["p99_9"],
                                       "generator_limited": False, "at_saturation": False}})
    data = {"machine": MACHINE, "args": {"servers": ["relay", "picows", "websockets", "node-ws", "nats"],
                                         "subscribers": subs, "quick": False, "duration": 10.0},
            "scenario": "latency", "server_versions": {"nats": "nats-server: v2.9.10"}, "skipped_servers": {},
            "definitions": {"saturated_step": "p99 > 200 ms, loss > 0"}, "results": rows, "summary": summaries}
    if not summary:
        del data["summary"]
    return data


def chats_data():
    rows = [{"server": "relay", "chats": 2000, "offered_msgs_per_s": r, "msgs_per_s": r, "deliveries_per_s": r,
             "latency_ms": _lat(0.3, 3.0), "server_cpu_us_per_delivery": 20.0,
             "server_cpu_incl_softirq_us_per_delivery": 25.0, "loss": 0.0, "saturated": False,
             "generator_limited": False, "noisy": False, "server_alive": True, "marks": ["UNDER-OFFERED"]}
            for r in (1000, 2000)]
    rows.append({"server": "relay", "offered_msgs_per_s": 5000, "skipped": "saturated at a lighter step"})
    return {"machine": MACHINE, "args": {"chats": 2000, "steps": [1000, 2000, 5000], "quick": False},
            "scenario": "chats", "results": rows,
            "summary": {"highest_clean_msgs_per_s": 2000.0, "saturated_at_offered_msgs_per_s": None}}


def connrate_data():
    rows = [{"server": s, "offered_per_s": r, "accepted_per_s": r * 0.99, "connect_ms": _lat(1.0, 9.0),
             "server_cpu_us_per_connection": 150.0, "failed_in_window": 3 if r == 500 else 0,
             "failures": {"timeout": 3} if r == 500 else {}, "generator_limited": False, "noisy": False,
             "server_alive": True, "marks": ["FAILURES=timeout:3"] if r == 500 else []}
            for s in ("relay", "picows") for r in (100, 500)]
    return {"machine": MACHINE, "args": {"servers": ["relay", "picows"], "steps": [100.0, 500.0], "quick": True},
            "scenario": "connrate", "results": rows,
            "definitions": {"connection": {"relay": "TCP + WebSocket + connect", "picows": "TCP + WebSocket"}},
            "summary": {"servers": {"relay": {"highest_clean_offered_per_s": 100.0, "stop_reason": "FAILURES"}},
                        "ratios": [{"offered_per_s": 100.0, "relay_over_picows_cpu_per_connection": 1.0}]}}


def idle_data():
    return {"machine": MACHINE, "args": {"connections": 10000, "quick": False},
            "results": [{"server": s, "connections": 10000, "requested": 10000, "channel": "bench:idle-{n}",
                         "rss_before_bytes": 1, "rss_after_bytes": 2, "rss_per_connection_bytes": b,
                         "lost_connections": 0, "server_alive": True}
                        for s, b in (("relay", 4096), ("picows", 28672), ("node-ws", 8500), ("nats", 25600))]}


def redis_data():
    rows = [{"case": "hot", "server": s, "workers": w, "msgs_per_s": 200, "deliveries_per_s": 200_000,
             "latency_ms": _lat(2.0, 3.0), "relay_cpu_us_per_delivery": c, "redis_cpu_us_per_publication": rc,
             "saturated": False, "generator_limited": False, "noisy": False, "server_alive": True}
            for s, w, c, rc in (("memory", 1, 0.36, None), ("redis-w1", 1, 0.44, 15.0), ("redis-w2", 2, 0.48, 16.0))]
    return {"machine": {**MACHINE, "redis_server": "Redis server v=7.0.15", "layout": "one-core"},
            "args": {"cases": ["hot"], "quick": False}, "results": rows}


def latency_quota_data(relay_sat=1_150_000, nats_sat=102_000):
    """latency.py --cpu-quota 0.25: the same shape, every server capped at a quarter of a core."""
    data = latency_data(relay_sat=relay_sat, nats_sat=nats_sat)
    data["args"]["cpu_quota"] = 0.25
    return data


def recovery_data():
    rows = [{"server": "relay", "mode": m, "recovery_coalesce": c, "clients": 10000, "channels": 10,
             "history_reads": {"recover": n, "position": 0, "history": 0}, "history_reads_per_client": n / 10000,
             "all_recovered_s": t, "recovery_ms": _lat(900.0, 2000.0), "server_cpu_us_per_recovery": cpu,
             "recovered_ok": 10000, "not_recovered": 0, "wrong": 0, "failed": 0}
            for m, c, n, t, cpu in (("coalesced", True, 50, 7.5, 540.0), ("baseline", False, 10000, 11.6, 925.0))]
    return {"machine": MACHINE, "args": {"clients": 10000, "channels": 10, "quick": False}, "scenario": "recovery",
            "results": rows, "summary": {"goal_reads_per_client": 0.01, "goal_met": True}}


def lanes_data():
    def cls(n, p99, lost, rec, c3008, u2500):
        return {"clients": n, "chats_published_in_window": 40 * n, "chats_delivered": 40 * n - lost,
                "chats_lost": lost, "chats_recovered": rec, "chat_latency_ms": _lat(3.0, p99),
                "recovered_chat_latency_ms": _lat(9000.0, 15000.0) if rec else {"p50": None, "p99": None, "max": None},
                "closes_3008": c3008, "unsub_2500": u2500, "err_111": u2500 // 2, "bulk_per_client_per_s": 50.0}

    rows = [{"mode": f"lanes {m}", "lanes": m == "on", "server": "relay", "fast": cls(950, fp99, 0, 0, 0, 0),
             "slow": cls(50, 9000.0, 0, rec, c3008, u2500), "server_cpu_us_per_delivery": 3.5,
             "relay_metrics": {"run": {"relay_lane_drops_total": u2500, "relay_slow_consumer_disconnects_total": c3008},
                               "outbound_queue_bytes_max": 2e6},
             "marks": []}
            for m, fp99, rec, c3008, u2500 in (("on", 12.0, 0, 0, 120), ("off", 30.0, 700, 90, 0))]
    return {"machine": MACHINE, "args": {"clients": 1000, "slow_fraction": 0.05, "slow_rate": 8192.0,
                                         "bulk_rate": 50.0, "bulk_size": 400, "chat_rate": 1.0,
                                         "queue_max": 262144, "bulk_limit": 32768, "quick": False},
            "scenario": "lanes", "results": rows, "summary": {"goal_slow_chat_loss_zero_with_lanes": True}}


def backpressure_data():
    def row(mode, peak, refused):
        return {"mode": mode, "case": "5x", "factor": 5.0, "stall": False, "offered_per_s": 2500.0,
                "accepted_per_s": 400.0, "refused_per_s": refused, "rss_peak_bytes": peak,
                "ceiling_bytes": 160 << 20 if mode == "on" else None, "under_ceiling": peak < 160 << 20 if mode == "on"
                else None, "kernel_send_queue_peak_bytes": 1 << 28, "deliveries": 1000, "missing": 0,
                "duplicates": 0, "unexpected": 0, "drain_s": 1.5, "slow_disconnects_3008": 0,
                "relay_cpu_pct_flood": 97.0, "generator_cpu_pct": 80.0}
    return {"machine": MACHINE, "kind": "backpressure",
            "args": {"subscribers": 1000, "channels": 4, "conns": 32, "method": "broadcast", "payload": 512},
            "results": [row("on", 80 << 20, 50.0), row("off", 900 << 20, 0.0)],
            "summary": {"capacity_per_s": 500.0, "ceiling_bytes": 160 << 20, "queue_limit_bytes": 32 << 20}}


def pacing_data():
    def row(mode, pace, bins, p99):
        return {"mode": mode, "pace_ms": pace, "subscribers": 1000, "bin_ms": 100.0, "bins": bins,
                "peak_per_bin": max(bins), "arrival_ms": {"p1": 5.0, "p50": 50.0 + pace / 2, "p99": 90.0 + pace,
                                                          "max": 95.0 + pace},
                "chat_ms": {w: _lat(1.0, p99 if w == "during" else 3.0) for w in ("before", "during", "after")},
                "received_once": 1000, "every_subscriber_once": True, "relay_deliveries_broadcast": 1000,
                "relay_cpu_during_s": 0.2, "relay_gc": {w: {"count": 0, "max_ms": 0.0, "long": []}
                                                        for w in ("before", "during", "after")}, "marks": []}
    return {"machine": MACHINE, "kind": "pacing", "args": {"chats": 40, "chat_rate": 50.0, "quiet": 5.0},
            "results": [row("unpaced", 0, [1000], 120.0), row("paced", 1000, [100] * 10, 2.0)],
            "summary": {"paced_spread_over_half_window": True, "every_subscriber_once": True}}


ALL = {"fanout": fanout_data, "latency": latency_data, "latency-quota": latency_quota_data, "chats": chats_data,
       "connrate": connrate_data, "idle": idle_data, "redis": redis_data, "recovery": recovery_data,
       "lanes": lanes_data, "backpressure": backpressure_data, "pacing": pacing_data}


def write(results: Path, kind: str, data, stamp: str = "20261126-120000") -> Path:
    results.mkdir(parents=True, exist_ok=True)
    p = results / f"{kind}-{stamp}.json"
    p.write_text(data if isinstance(data, str) else json.dumps(data))
    return p


def run_report(tmp_path: Path, *files: Path) -> tuple[str, Path]:
    out = tmp_path / "docs" / "benchmarks.md"
    argv = [*map(str, files), "--results-dir", str(tmp_path / "results"), "--out", str(out)]
    assert report.main(argv) == 0
    return out.read_text(), out


def goals_of(md: str) -> dict[str, str]:
    """{goal text: verdict} from the Goals table."""
    section = md.split("## Goals (issue 6)", 1)[1].split("\n## ", 1)[0]
    out = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[1].startswith("**"):
            out[cells[0]] = cells[1].strip("*")
    return out


# ------------------------------------------------------------------------------------------------
# the report
# ------------------------------------------------------------------------------------------------

def test_every_section_and_plot(tmp_path):
    for kind, make in ALL.items():
        write(tmp_path / "results", kind, make())
    # the newest usable file of a kind wins: an older one, and a newer one without figures, are passed over
    write(tmp_path / "results", "fanout", {"results": "old"}, stamp="20250101-000000")
    write(tmp_path / "results", "latency", {"results": [], "skipped_servers": {"x": "y"}}, stamp="20270101-000000")
    md, out = run_report(tmp_path)

    for heading in ("# relay benchmarks", "## Machine", "## How to reproduce", "## Goals (issue 6)",
                    "## Ratios (same run)", *(f"## {t}" for t in report.TITLES.values())):
        assert heading in md, heading
    assert report.NOT_MEASURED not in md
    # the machine description and exact commands
    assert "Test CPU" in md and "6.1.0-test" in md and "core `cython`" in md and "nats-server: v2.9.10" in md
    assert "make bench" in md and "python -m relay bench" in md
    assert ".venv/bin/python bench/fanout.py --cases a,c --servers relay,picows,websockets,node-ws,nats" in md
    assert "bench/chats.py --chats 2000 --steps 1000,2000,5000" in md
    # relay and every peer side by side
    assert "| step | relay | picows | websockets | node-ws | nats |" in md
    assert "| offered | relay | picows | websockets | node-ws | nats |" in md
    assert "skipped (saturated at a lighter step)" in md
    assert "UNDER-OFFERED" in md  # a mark the benchmark printed itself is kept
    assert "| 500 conn/s | 495/s · 1.00 / 9.00 ms · 150 µs · 3 failed |" in md
    assert "servers › relay: highest clean offered per s 100; stop reason FAILURES" in md
    # ratios from the same run, with the step they come from
    assert "relay ÷ picows" in md and "a: 50 msg/s, 1/frame | 0.33×" in md
    assert "c: 1.0k msg/s, 20/frame | 0.07×" in md
    assert "relay ÷ nats" in md and "2.50×" in md  # 2 M vs 800 k deliveries/s at saturation
    assert "Idle RSS per connection:** relay ÷ picows 0.14×" in md
    assert "| coalesced | 10,000 / 10 | 50 | 0.0050 | 7.50 s |" in md
    assert "with coalescing: **PASS** (0.0050; 1.0000 without, 200× more, in the same run)" in md
    assert "| slow clients: disconnected (relay's 3008 slow) | 0 (0) | 90 (90) |" in md
    assert "slow clients lose no chat with lanes on: **PASS**" in md
    # plots written as PNGs and linked relative to the report
    for name in report.PLOT_NAMES:
        png = out.parent / "benchmarks" / f"{name}.png"
        assert png.read_bytes()[:8] == PNG, name
        assert f"](benchmarks/{name}.png)" in md


def test_goals_pass(tmp_path):
    for kind in ("fanout", "latency"):
        write(tmp_path / "results", kind, ALL[kind]())
    md, _ = run_report(tmp_path)
    verdicts = list(goals_of(md).values())
    # picows: 2.0/6, 1.5/6, 0.4/6 <= 0.5; websockets: 2.0/14 ... <= 0.3; 2 M > 800 k; p99 20 ms < 50 ms
    assert verdicts == ["PASS"] * 4, goals_of(md)
    assert "holds at 3 of 3 steps" in md and "Worst: case a (1 msg per tick), 50 msg/s, 1/frame: 0.33×" in md


def test_a_newer_quick_smoke_run_does_not_hide_the_last_full_run(tmp_path):
    write(tmp_path / "results", "fanout", {**fanout_data(), "args": {"quick": False}}, stamp="20261126-120000")
    quick = {**fanout_data(picows_cpu=3.0, websockets_cpu=5.0), "args": {"quick": True}}
    write(tmp_path / "results", "fanout", quick, stamp="20261126-130000")  # the test suite's smoke run
    md, _ = run_report(tmp_path)
    assert "fanout-20261126-120000.json" in md and "fanout-20261126-130000.json" not in md
    (tmp_path / "results" / "fanout-20261126-120000.json").unlink()
    md, _ = run_report(tmp_path)  # only a quick run: it is what there is
    assert "fanout-20261126-130000.json" in md


def test_goals_fail(tmp_path):
    write(tmp_path / "results", "fanout", fanout_data(picows_cpu=3.0, websockets_cpu=5.0))
    write(tmp_path / "results", "latency", latency_data(relay_sat=400_000, nats_sat=800_000, relay_p99_at_80=70.0))
    md, _ = run_report(tmp_path)
    assert list(goals_of(md).values()) == ["FAIL"] * 4, goals_of(md)
    # 2.0 / 3.0 = 0.67 fails at case a 50 msg/s; 1.5 / 3.0 = 0.5 and 0.4 / 3.0 = 0.13 pass: all are said
    assert "holds at 2 of 3 steps" in md and "Worst: case a (1 msg per tick), 50 msg/s, 1/frame: 0.67×" in md
    assert "Passes at: case a (1 msg per tick), 200 msg/s, 1/frame; case c (hot channel), 1.0k msg/s, 20/frame." in md
    assert "p99 70.0 ms at step" in md


def test_goals_not_measured_when_the_peer_did_not_run_or_saturate(tmp_path):
    fan = fanout_data()
    fan["results"] = [r for r in fan["results"] if r["server"] != "websockets"]
    lat = latency_data(nats_sat=10_000_000, summary=False)  # nats never saturates: its ceiling is unknown
    lat["results"] = [r for r in lat["results"] if r["server"] != "nats" or r["offered_deliveries_per_s"] <= 400_000]
    write(tmp_path / "results", "fanout", fan)
    write(tmp_path / "results", "latency", lat)
    md, _ = run_report(tmp_path)
    assert list(goals_of(md).values()) == ["PASS", "NOT MEASURED", "NOT MEASURED", "PASS"], goals_of(md)
    assert "no fan-out step ran both relay and websockets" in md
    assert "nats did not saturate" in md


def test_goal_functions_directly():
    lat = report.extract_latency(latency_data())
    assert report.goal_saturation(lat).verdict == report.PASS
    assert report.goal_p99(lat).verdict == report.PASS
    assert "20.0 ms" in report.goal_p99(lat).detail
    lat = report.extract_latency(latency_data(relay_sat=600_000, nats_sat=800_000))
    assert report.goal_saturation(lat).verdict == report.FAIL
    assert report.goal_saturation(None).verdict == report.NOT_MEASURED_V
    assert report.goal_p99(None).verdict == report.NOT_MEASURED_V
    assert report.goal_cpu(None, "picows", 0.5).verdict == report.NOT_MEASURED_V
    # the benchmark's own summary is preferred: its at_80pct step ran on a fresh server
    data = latency_data()
    data["summary"][0]["saturation_deliveries_per_s"] = 3e6
    data["summary"][0]["at_80pct"]["p99_ms"] = 60.0
    lat = report.extract_latency(data)
    assert lat["saturation"]["relay"]["deliveries_per_s"] == 3e6
    assert report.goal_p99(lat).verdict == report.FAIL
    assert "p99 60.0 ms at step 1.60M deliv/s (1.6k msg/s), a fresh server" in report.goal_p99(lat).detail
    # without a summary the figures are computed from the ramp: the heaviest clean step at or below 80 %
    lat = report.extract_latency(latency_data(summary=False))
    relay = lat["saturation"]["relay"]
    assert relay["deliveries_per_s"] == 2e6 and relay["reached"]
    assert relay["p99_at_80"] == 20.0 and relay["p99_at_80_step"] == "1.60M deliv/s offered"
    assert report.goal_saturation(lat).verdict == report.PASS
    # relay never saturated: 80 % of the highest rate run is not 80 % of its saturation
    lat = report.extract_latency(latency_data(relay_sat=10_000_000))
    assert not lat["saturation"]["relay"]["reached"]
    g = report.goal_p99(lat)
    assert g.verdict == report.NOT_MEASURED_V and "relay did not saturate (max-steps)" in g.detail
    assert report.goal_saturation(lat).verdict == report.PASS  # 3.2 M (a lower bound) > nats's 800 k
    # a peer the run skipped is named
    data = latency_data()
    data["results"] = [r for r in data["results"] if r["server"] != "nats"]
    data["summary"] = [x for x in data["summary"] if x["server"] != "nats"]
    data["skipped_servers"] = {"nats": "nats-server not installed"}
    g = report.goal_saturation(report.extract_latency(data))
    assert g.verdict == report.NOT_MEASURED_V and "nats skipped: nats-server not installed" in g.detail


def test_saturation_goal_reads_the_cpu_quota_run_first(tmp_path):
    figures = {"latency": report.extract_latency(latency_data(relay_sat=600_000, nats_sat=800_000)),
               "latency-quota": report.extract_latency(latency_quota_data())}
    goals = {g.name: g for g in report.check_goals(figures)}
    sat = next(g for name, g in goals.items() if "saturation above" in name)
    assert sat.verdict == report.PASS and "capped at 0.25 of one core" in sat.detail
    p99 = next(g for name, g in goals.items() if "p99" in name)
    assert "20.0 ms" in p99.detail  # latency at load comes from the full-core run
    write(tmp_path / "results", "latency-quota", latency_quota_data())
    md, _ = run_report(tmp_path)
    assert "Saturation on the same CPU budget" in md and "capped at **0.25 of one core**" in md


def test_missing_and_odd_kinds_do_not_crash(tmp_path):
    write(tmp_path / "results", "idle", idle_data())
    write(tmp_path / "results", "fanout", "{not json")
    write(tmp_path / "results", "chats", {"results": [{"unexpected": True}], "machine": "odd"})
    write(tmp_path / "results", "connrate", {"results": "a string", "summary": 3})
    write(tmp_path / "results", "latency", {"results": [{"server": "relay", "latency_ms": "x", "offered_per_s": "y",
                                                         "deliveries_per_s": 5.0}]})
    md, out = run_report(tmp_path)
    for kind in ("fanout", "chats", "connrate", "redis"):
        section = md.split(f"## {report.TITLES[kind]}", 1)[1].split("\n## ", 1)[0]
        assert "Not measured in this run" in section, kind
    assert "fanout-20261126-120000.json` unreadable" in md
    assert "no `redis-*.json` result file" in md
    assert "| relay | 10,000 | 4.00 |" in md
    assert set(goals_of(md).values()) <= {"NOT MEASURED", "FAIL", "PASS"}
    assert goals_of(md)[next(iter(goals_of(md)))] == "NOT MEASURED"  # no fan-out figures
    assert (out.parent / "benchmarks" / "idle-memory-per-connection.png").read_bytes()[:8] == PNG
    assert not (out.parent / "benchmarks" / "fanout-cpu-per-delivery.png").exists()


def test_no_results_at_all(tmp_path):
    md, _ = run_report(tmp_path)
    assert md.count("Not measured in this run (no `") == len(report.KINDS)
    assert "no scenario ran relay and a peer" in md
    assert set(goals_of(md).values()) == {"NOT MEASURED"}


def test_files_on_the_command_line(tmp_path):
    f = write(tmp_path / "elsewhere", "idle", idle_data())
    write(tmp_path / "results", "fanout", fanout_data())
    md, _ = run_report(tmp_path, f)
    assert "idle-20261126-120000.json" in md
    assert "no `fanout-*.json` result file" in md  # only the files given are read


# ------------------------------------------------------------------------------------------------
# the CLI
# ------------------------------------------------------------------------------------------------

def relay(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "relay", *args], capture_output=True, text=True, env=env,
                          cwd=str(ROOT), timeout=60)


def test_bench_help():
    r = relay("bench", "--help")
    assert r.returncode == 0, r.stderr
    assert "--only" in r.stdout and "--quick" in r.stdout and "--no-report" in r.stdout


def test_bench_only_unknown_fails_clearly():
    r = relay("bench", "--only", "nonexistent")
    assert r.returncode == 2
    assert "unknown benchmark(s) nonexistent" in r.stderr and "fanout" in r.stderr
    assert r.stdout == ""  # nothing was run


def test_bench_needs_a_source_checkout(tmp_path, monkeypatch, capsys):
    from relay import cli

    monkeypatch.setattr(cli, "__file__", str(tmp_path / "site-packages" / "relay" / "cli.py"))
    assert cli.main(["bench", "--quick"]) == 2
    assert "need a source checkout" in capsys.readouterr().err


def test_bench_runs_the_scripts_and_the_report(tmp_path, monkeypatch, capfd):
    """A fake checkout whose scripts only print: the runner streams them, passes --quick, reports."""
    from relay import cli

    (tmp_path / "relay").mkdir()
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "common.py").write_text("")
    (bench / "fanout.py").write_text("import sys\nprint('fanout args', sys.argv[1:])\n"
                                     "print('results: bench/results/fanout-1.json')\n")
    (bench / "idle.py").write_text("import sys\nsys.exit(3)\n")
    (bench / "report.py").write_text("print('report ran')\n")
    monkeypatch.setattr(cli, "__file__", str(tmp_path / "relay" / "cli.py"))
    assert cli.main(["bench", "--quick", "--only", "fanout"]) == 0
    out = capfd.readouterr().out
    assert "fanout args ['--quick']" in out and "report ran" in out
    assert "results: bench/results/fanout-1.json" in out.split("relay bench: done", 1)[1]
    assert "docs/benchmarks.md" in out

    assert cli.main(["bench", "--no-report"]) == 1  # every script present (fanout, idle); idle fails
    cap = capfd.readouterr()
    assert "report ran" not in cap.out and "idle (exit 3)" in cap.err
    assert cli.main(["bench", "--only", "latency"]) == 2  # known, but not in this checkout
    assert "not in this checkout" in capfd.readouterr().err


@pytest.mark.parametrize("kind", sorted(report.EXTRACT))
def test_each_extractor_reads_its_shape(kind):
    f = report.EXTRACT[kind](ALL[kind]())
    assert f is not None
    assert report.EXTRACT[kind]({"results": []}) is None


def test_without_matplotlib_the_report_says_so(tmp_path, monkeypatch):
    write(tmp_path / "results", "idle", idle_data())
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    md, out = run_report(tmp_path)
    assert "Plots skipped: matplotlib is not installed" in md
    assert not (out.parent / "benchmarks").exists()
