"""Smoke runs of the benchmarks so they cannot silently rot (figures come from `make bench`)."""

import json
import os
import shutil
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
    data, out = run("fanout.py", "--quick", "--cases", "c", "--duration", "1", "--warmup", "0.5",
                    "--servers", "relay,relay-pb,picows")
    rows = [r for r in data["results"] if "skipped" not in r]
    assert {r["server"] for r in rows} == {"relay", "relay-pb", "picows"}
    # the same relay, its subscribers on the protobuf protocol: nothing lost, fewer bytes per delivery
    pb = [r for r in rows if r["server"] == "relay-pb"]
    assert all(r["loss"] == 0 and r["bytes_per_delivery"] for r in pb), out
    assert "protobuf/JSON bytes per delivery" in out
    relay = [r for r in rows if r["server"] == "relay"]
    assert all(r["loss"] == 0 and r["server_alive"] for r in relay), out
    assert all(r["server_cpu_us_per_delivery"] > 0 for r in relay)
    assert data["machine"]["relay_core"] == "cython"
    assert "ratios (same run)" in out


def test_delta_quick():
    """Delta compression on the stock widget: every subscriber got every publication, and the delta ones far
    fewer bytes (one sale changes a few bytes of the 2 KB state)."""
    data, out = run("delta.py", "--quick")
    assert all(r["publications"] == data["publications"] for r in data["rows"]), out
    assert data["delta_over_full"]["json"] < 0.25 and data["delta_over_full"]["protobuf"] < 0.25, out


NEW_PEERS = ("websockets", "node-ws", "nats")


def _may_skip(peer: str) -> bool:
    """A peer may be skipped only off CI, and only when its tool is really missing."""
    if os.environ.get("CI", "").lower() == "true":
        return False
    if peer == "node-ws":
        return shutil.which("npm") is None or shutil.which("node") is None
    if peer == "nats":
        return shutil.which("nats-server") is None
    return False


def test_fanout_peers_quick():
    """The websockets, Node ws and nats-server peers run next to relay in one run, with zero loss."""
    data, out = run("fanout.py", "--quick", "--cases", "c", "--duration", "1", "--warmup", "0.5",
                    "--servers", "relay," + ",".join(NEW_PEERS))
    skipped = data["skipped_servers"]
    for peer in NEW_PEERS:
        if peer in skipped:
            assert skipped[peer] and _may_skip(peer), f"{peer} skipped: {skipped[peer]!r}\n{out}"
            assert f"{peer}: SKIPPED ({skipped[peer]})" in out
            assert any(r["server"] == peer and r.get("skipped") == skipped[peer] for r in data["results"])
            continue
        rows = [r for r in data["results"] if r["server"] == peer and "skipped" not in r]
        assert rows, out
        assert all(r["peer"] == peer and r["server_alive"] and not r["lost_connections"] for r in rows), out
        assert all(r["delivered_in_window"] > 0 and r["server_cpu_us_per_delivery"] for r in rows), out
        # zero loss; a backlog still draining at the (short) drain timeout is not loss
        assert all(r["loss"] == 0 or r["drain"]["timed_out"] for r in rows), out
        assert rows[0]["loss"] == 0, out
        assert f"relay/{peer} CPU per delivery" in out
    relay = [r for r in data["results"] if r["server"] == "relay" and "skipped" not in r]
    assert relay and all(r["loss"] == 0 for r in relay), out
    if skipped:
        pytest.skip("peers skipped by the benchmark: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))


class _Frame:
    def __init__(self, data: bytes, binary: bool = True) -> None:
        from picows import WSMsgType

        self.msg_type = WSMsgType.BINARY if binary else WSMsgType.TEXT
        self.data = data

    def get_payload_as_bytes(self) -> bytes:
        return self.data


class _Transport:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, opcode, data: bytes) -> None:
        self.sent.append(bytes(data))


def test_nats_subscriber_framing():
    """MSG records cut between frames are counted once, PINGs answered, the PONG makes it ready."""
    import asyncio

    sys.path.insert(0, str(ROOT / "bench"))
    import loadgen_workers as loadgen

    st = loadgen._WorkerState()
    st.reset(0, 1 << 62)
    target = loadgen.Target("nats", "nats", "ws://x/", "ws://x/", channel="bench.fanout")
    loop = asyncio.new_event_loop()
    try:
        ready = loop.create_future()
        sub = loadgen._subscriber_class("nats")(st, target, ready)
        tr = _Transport()
        sub.on_ws_connected(tr)
        assert tr.sent[0].startswith(loadgen.NATS_CONNECT) and b"SUB bench.fanout 1\r\n" in tr.sent[0]
        sub.on_ws_frame(tr, _Frame(b'INFO {"server_id":"x"}\r\n'))
        assert not ready.done()
        sub.on_ws_frame(tr, _Frame(b"PONG\r\n", binary=False))
        assert ready.done()

        def msg(stamp: int) -> bytes:
            p = loadgen.make_payload(stamp)
            return b"MSG bench.fanout 1 %d\r\n%s\r\n" % (len(p), p)

        stream = b"".join(msg(10**18 + i) for i in range(7))
        stream = stream[:300] + b"PING\r\n" + stream[300:]  # between records 2 and 3
        # cut inside a MSG header (3), inside a stamp (160), between \r and \n (251),
        # inside the PING (303), right after it (306), inside a payload (420)
        cuts = [0, 3, 160, 251, 303, 306, 420, len(stream)]
        assert stream[158:162].isdigit() and stream[250:252] == b"\r\n" and stream[300:306] == b"PING\r\n"
        pieces = [stream[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]
        for piece in pieces:
            sub.on_ws_frame(tr, _Frame(piece))
        assert st.total == 7 and st.in_window == 7 and sub.carry == b""
        assert tr.sent[-1] == b"PONG\r\n" and st.pings == 1
        n = st.total
        for i in range(3):  # the hot path: whole records
            sub.on_ws_frame(tr, _Frame(msg(2 * 10**18 + i) * 2))
        assert st.total == n + 6
    finally:
        loop.close()
    assert loadgen.nats_pub_frame("bench.fanout", [b"T=1;x"]) == b"PUB bench.fanout 5\r\nT=1;x\r\n"


def test_idle_quick():
    data, out = run("idle.py", "--quick", "--servers", "relay,picows")
    relay = next(r for r in data["results"] if r["server"] == "relay")
    assert relay["lost_connections"] == 0 and relay["rss_per_connection_bytes"] > 0, out


def test_redis_scaling_quick():
    from tests.conftest import need_redis_server

    need_redis_server()
    data, out = run("redis_scaling.py", "--quick", "--cases", "ingest", "--servers", "redis-w1")
    rows = [r for r in data["results"] if r.get("deliveries_per_s")]
    assert rows and all(r["loss"] == 0 for r in rows), out


def test_recovery_quick():
    """The reconnect storm: every client recovers exactly what it missed in both modes; coalescing reads the
    broker far less often than once per client, the baseline exactly once per client."""
    from tests.conftest import need_redis_server

    need_redis_server()
    data, out = run("recovery.py", "--quick", "--clients", "300", "--channels", "3", "--workers", "1")
    co, base = data["results"]
    assert (co["mode"], base["mode"]) == ("coalesced", "baseline")
    for r in (co, base):
        assert r["recovered_ok"] == 300 and r["wrong"] == r["not_recovered"] == r["failed"] == 0, out
        assert r["all_recovered_s"] > 0 and r["server_alive"]
    assert base["history_reads_per_client"] == 1.0
    assert co["history_reads_per_client"] <= 0.1 and co["coalesced"] >= 300 - 30, out
    assert data["machine"]["relay_core"] == "cython"
    assert "same run: coalescing makes" in out


def test_lanes_quick():
    """Priority lanes under a bulk flood, lanes on and off in one run: the figures are there, relay saw a
    backlog, and with lanes on the slow clients lost no chat (the feature's claim; timings are not asserted)."""
    data, out = run("lanes.py", "--quick", "--clients", "60", "--duration", "6", "--warmup", "2", "--bulk-rate", "80",
                    "--drain-timeout", "45")
    on, off = data["results"]
    assert (on["mode"], off["mode"]) == ("lanes on", "lanes off")
    assert data["machine"]["relay_core"] == "cython" and on["relay_core"] == off["relay_core"] == "cython"
    for r in (on, off):
        assert r["server_alive"] and r["slow_clients"] == 3, out
        assert r["slow"]["chats_published_in_window"] > 0, out
        assert r["fast"]["chats_published_in_window"] > 0 and r["fast"]["chat_latency_ms"]["samples"] > 0, out
        assert r["fast"]["chats_lost"] == 0 and r["fast"]["bulk_delivery_ratio"] == 1.0, out
        assert r["server_cpu_us_per_delivery"] > 0
        # the proxy made relay's writes pause (else nothing here would be about lanes)
        assert r["backlog_seen"], out
    assert on["slow"]["chats_lost"] == 0 and on["slow"]["closes_3008"] == 0, out
    assert on["slow"]["chats_delivered"] == on["slow"]["chats_published_in_window"], out
    assert data["summary"]["goal_slow_chat_loss_zero_with_lanes"] is True
    assert "lanes on vs off (same run):" in out



def test_backpressure_quick():
    """A publish flood while the subscribers stall, backpressure on and off in one run: the figures are there,
    with backpressure on some publications were refused with 429 and no accepted one went missing (the
    feature's claim; timings and RSS are not asserted)."""
    data, out = run("backpressure.py", "--quick", "--subscribers", "100", "--steps", "2", "--step-duration", "1",
                    "--duration", "2", "--payload", "4096", "--queue-limit", "8")
    on, off = data["results"]
    assert (on["mode"], off["mode"]) == ("on", "off") and on["stall"] and off["stall"]
    assert data["machine"]["relay_core"] == "cython"
    for r in (on, off):
        assert r["server_alive"] and r["subscribers"] == 100 and r["accepted"] > 0, out
        assert r["duplicates"] == 0 and r["unexpected"] == 0 and r["rss_peak_bytes"] > 0, out
    # on: refused with 429, and everything accepted reached every subscriber of its channel, once
    assert on["refused"] > 0 and on["metrics_end"]["refused_api"] == on["refused"], out
    assert on["missing"] == 0 and on["deliveries"] == on["expected_deliveries"] > 0 and on["drained"], out
    assert on["slow_disconnects_3008"] == 0 and on["lost_connections"] == 0, out
    # off (the baseline) accepts everything; its backlog may outlive the drain timeout (not asserted)
    assert off["refused"] == 0 and off["errors"] == 0, out
    assert "comparison (on vs off, same flood):" in out


def test_pacing_quick():
    """A broadcast to 300 subscribers at once, then paced over 1 s, with 1:1 chats beside it: the figures are
    there, every subscriber got each broadcast exactly once, and the paced arrivals spread over more than half
    the window (the feature's claim; latencies are not asserted)."""
    data, out = run("pacing.py", "--quick", "--subscribers", "300", "--pace-ms", "1000", "--workers", "1",
                    "--chats", "5", "--quiet", "1")
    un, pa = data["results"]
    assert (un["mode"], pa["mode"]) == ("unpaced", "paced") and (un["pace_ms"], pa["pace_ms"]) == (0, 1000)
    assert data["machine"]["relay_core"] == "cython" and un["relay_core"] == pa["relay_core"] == "cython"
    for r in (un, pa):
        assert r["server_alive"] and r["subscribers"] == 300, out
        assert r["received_once"] == 300 and r["never"] == r["received_more"] == r["duplicates"] == 0, out
        assert r["every_subscriber_once"] and r["count"] == 300 and sum(r["bins"]) == 300, out
        assert r["peak_per_bin"] > 0 and r["arrival_ms"]["p99"] is not None, out
        for w in ("before", "during", "after"):
            assert r["chat_ms"][w]["samples"] > 0 and r["chat_ms"][w]["p99"] is not None, out
        assert r["relay_cpu_during_s"] > 0 and "relay_gc" in r
    assert pa["relay_metrics"]["paced"] == 1 and un["relay_metrics"]["paced"] == 0, out
    assert pa["spread_p1_p99_ms"] > 500 and data["summary"]["paced_spread_over_half_window"] is True, out
    assert data["summary"]["every_subscriber_once"] is True
    assert "paced vs unpaced (same run, same connections):" in out
    assert data["relay_workers"] == 1 and data["broker"] == "memory"


def test_pacing_relay_workers_quick():
    """The same with relay as one node of 2 worker processes over Redis (the 100,000-subscriber mode): every
    subscriber got each broadcast once, each worker paced its own, and the deliveries sum both workers."""
    from tests.conftest import need_redis_server

    need_redis_server()
    data, out = run("pacing.py", "--quick", "--subscribers", "300", "--pace-ms", "1000", "--workers", "1",
                    "--relay-workers", "2", "--chats", "5", "--quiet", "1")
    un, pa = data["results"]
    assert data["relay_workers"] == 2 and data["broker"] == "redis" and len(data["setup"]["relay_worker_fds"]) == 2
    for r in (un, pa):
        assert r["server_alive"] and r["every_subscriber_once"] and r["received_once"] == 300, out
        assert abs(r["relay_deliveries_broadcast"] - 300) <= r["relay_deliveries_tolerance"], out
    assert pa["relay_metrics"]["paced"] == 2 and un["relay_metrics"]["paced"] == 0, out
    assert data["summary"]["paced_spread_over_half_window"] is True, out
    assert "one node with 2 worker processes on one core" in out
