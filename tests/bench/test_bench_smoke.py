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
                    "--servers", "relay,picows")
    rows = [r for r in data["results"] if "skipped" not in r]
    assert {r["server"] for r in rows} == {"relay", "picows"}
    relay = [r for r in rows if r["server"] == "relay"]
    assert all(r["loss"] == 0 and r["server_alive"] for r in relay), out
    assert all(r["server_cpu_us_per_delivery"] > 0 for r in relay)
    assert data["machine"]["relay_core"] == "cython"
    assert "ratios (same run)" in out


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
    import loadgen

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
