"""relay driven by the published Centrifugo JavaScript SDK (npm ``centrifuge`` 5.x) under Node.

The checks live in ``tests/e2e/js/sdk_test.mjs``; each scenario runs as one Node process that
prints a JSON line per check. Here we start relay (and, for recovery, ``tests/tcpproxy.py`` in
front of it), run the scenario and assert on those lines. On a failure the message carries the
WebSocket frames the SDK sent and received and relay's log.

Every test runs over both of the SDK's protocols (the ``protocol`` fixture, ``RELAY_PROTOCOL`` for
the script): JSON, and protobuf (the SDK's ``centrifuge/build/protobuf``, binary frames; payloads
are bytes holding JSON, which the script encodes and decodes so the checks compare the same values).
The evidence of a failure shows each binary frame's protobuf messages decoded.

Needs ``node`` and ``npm`` and ``cd tests/e2e/js && npm ci``: without them the tests are skipped,
or fail when ``CI=true``.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import jwt
import pytest
from centrifuge.codecs import _varint_decode
from centrifuge.protocol.client_pb2 import Command, Reply
from google.protobuf.json_format import MessageToDict

from tests.tcpproxy import TcpProxy

pytestmark = pytest.mark.node

JS_DIR = Path(__file__).resolve().parent / "js"
SCRIPT = JS_DIR / "sdk_test.mjs"
NODE_TIMEOUT = 60  # seconds, per Node process
PROTOCOLS = ("json", "protobuf")


def _node_missing() -> str | None:
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not (JS_DIR / "node_modules" / "centrifuge").is_dir() or not (JS_DIR / "node_modules" / "ws").is_dir():
        return f"{JS_DIR}/node_modules is missing: run `cd tests/e2e/js && npm ci`"
    return None


@pytest.fixture(scope="module", autouse=True)
def _require_node():
    reason = _node_missing()
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"JS SDK e2e tests cannot run on CI: {reason}")
        pytest.skip(f"JS SDK e2e tests skipped: {reason}")


@pytest.fixture(scope="module", params=PROTOCOLS)
def protocol(request) -> str:
    """The SDK build and wire protocol of the scenario: every test runs once per protocol."""
    return request.param


# -------------------------------------------------------------------------------------------------

def _pb_messages(payload: bytes, cls) -> list[dict]:
    """A protobuf frame's ``uvarint(length) || message`` run, as dicts (``bytes`` fields in base64)."""
    out, pos = [], 0
    while pos < len(payload):
        n, pos = _varint_decode(payload, pos)
        out.append(MessageToDict(cls.FromString(payload[pos:pos + n]), preserving_proto_field_name=True))
        pos += n
    return out


def _decode_frames(stderr: str) -> str:
    """The script's stderr with each binary frame's messages (Reply in, Command out) decoded."""
    lines = []
    for raw in stderr.splitlines():
        try:
            ln = json.loads(raw)
        except ValueError:
            ln = None
        if isinstance(ln, dict) and ln.get("binary") and ln.get("frame") in ("in", "out"):
            try:
                ln["decoded"] = _pb_messages(bytes.fromhex(ln["data"]), Reply if ln["frame"] == "in" else Command)
            except Exception as e:  # noqa: BLE001 - a frame that does not decode is evidence too
                ln["decode_error"] = repr(e)
            raw = json.dumps(ln)
        lines.append(raw)
    return "\n".join(lines)


@dataclass
class NodeRun:
    scenario: str
    protocol: str
    lines: list[dict] = field(default_factory=list)
    stderr: str = ""
    returncode: int | None = None
    relay_log: str = ""

    @property
    def checks(self) -> dict[str, dict]:
        return {ln["check"]: ln for ln in self.lines if "check" in ln}

    @property
    def done(self) -> dict | None:
        return next((ln for ln in self.lines if ln.get("done")), None)

    def evidence(self, limit: int = 20000) -> str:
        failed = [ln for ln in self.lines if ln.get("check") and not ln.get("ok")]
        out = [f"scenario {self.scenario} ({self.protocol}): exit {self.returncode}",
               "failed checks:\n" + "\n".join(json.dumps(f) for f in failed),
               "all output:\n" + "\n".join(json.dumps(ln) for ln in self.lines),
               "node stderr (WebSocket frames):\n" + _decode_frames(self.stderr)[-limit:],
               "relay log:\n" + self.relay_log[-limit:]]
        return "\n\n".join(out)

    def assert_check(self, name: str) -> dict:
        c = self.checks.get(name)
        assert c is not None, f"check {name!r} did not run\n\n{self.evidence()}"
        assert c["ok"], f"check {name!r} failed: {c.get('error')}\n\n{self.evidence()}"
        return c

    def assert_all_ok(self) -> None:
        assert self.done is not None, f"the scenario did not finish\n\n{self.evidence()}"
        assert self.done["failures"] == 0 and self.returncode == 0, self.evidence()


def _env(relay, protocol: str, **extra: str) -> dict:
    env = dict(os.environ)
    env.update({
        "RELAY_PROTOCOL": protocol,
        "RELAY_WS_URL": relay.ws_url,
        "RELAY_API_URL": relay.api_url,
        "RELAY_API_KEY": relay.api_key,
        "TOKEN_ALICE": relay.token("alice"),
        "TOKEN_BOB": relay.token("bob"),
        "CHANNEL_SUFFIX": uuid.uuid4().hex[:10],
        "SCENARIO_TIMEOUT_MS": str((NODE_TIMEOUT - 5) * 1000),
    })
    env.update(extra)
    return env


def _parse(stdout: str) -> list[dict]:
    lines = []
    for raw in stdout.splitlines():
        raw = raw.strip()
        if not raw:
            continue
        try:
            lines.append(json.loads(raw))
        except ValueError:
            lines.append({"raw": raw})
    return lines


def run_scenario(relay, protocol: str, scenario: str, **extra_env: str) -> NodeRun:
    """Run a non-interactive scenario to completion."""
    run = NodeRun(scenario, protocol)
    try:
        proc = subprocess.run(["node", str(SCRIPT), scenario], cwd=JS_DIR, env=_env(relay, protocol, **extra_env),
                              capture_output=True, text=True, timeout=NODE_TIMEOUT, stdin=subprocess.DEVNULL)
        run.lines, run.stderr, run.returncode = _parse(proc.stdout), proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        run.lines = _parse((e.stdout or b"").decode() if isinstance(e.stdout, bytes) else e.stdout or "")
        run.stderr = (e.stderr or b"").decode() if isinstance(e.stderr, bytes) else e.stderr or ""
        run.relay_log = relay.log()
        pytest.fail(f"node timed out after {NODE_TIMEOUT}s\n\n{run.evidence()}")
    run.relay_log = relay.log()
    return run


class InteractiveNode:
    """A scenario that talks with the test: JSON lines on stdout, commands on stdin."""

    def __init__(self, relay, protocol: str, scenario: str, **extra_env: str) -> None:
        self.relay = relay
        self.run = NodeRun(scenario, protocol)
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(["node", str(SCRIPT), scenario], cwd=JS_DIR,
                                     env=_env(relay, protocol, **extra_env),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                     text=True, bufsize=1)
        self.deadline = time.monotonic() + NODE_TIMEOUT
        self._q: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            for ln in _parse(raw):
                self._q.put(ln)
        self._q.put(None)

    def expect(self, pred, what: str, timeout: float = 20) -> dict:
        """Collect lines until one matches; fail (with the evidence) on a failed check or a timeout."""
        end = min(time.monotonic() + timeout, self.deadline)
        while True:
            try:
                ln = self._q.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                self.fail(f"timed out waiting for {what}")
            if ln is None:
                self.fail(f"node exited while waiting for {what}")
            self.run.lines.append(ln)
            if ln.get("check") and not ln.get("ok"):
                self.fail(f"check {ln['check']!r} failed while waiting for {what}: {ln.get('error')}")
            if pred(ln):
                return ln

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def finish(self) -> NodeRun:
        self.expect(lambda ln: ln.get("done"), "the end of the scenario", timeout=NODE_TIMEOUT)
        try:
            self.proc.wait(max(1.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.fail("node did not exit")
        self._collect()
        return self.run

    def _collect(self) -> None:
        self.run.returncode = self.proc.poll()
        self._stderr.seek(0)
        self.run.stderr = self._stderr.read().decode(errors="replace")
        self.run.relay_log = self.relay.log()

    def fail(self, msg: str):
        self.close()
        self._collect()
        while True:  # whatever else was printed
            try:
                ln = self._q.get_nowait()
            except queue.Empty:
                break
            if ln is not None:
                self.run.lines.append(ln)
        pytest.fail(f"{msg}\n\n{self.run.evidence()}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def api_publish(relay, channel: str, data: dict) -> dict:
    req = urllib.request.Request(f"{relay.api_url}/publish", method="POST",
                                 data=json.dumps({"channel": channel, "data": data}).encode(),
                                 headers={"X-API-Key": relay.api_key, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        body = json.loads(r.read())
    assert "error" not in body, body
    return body["result"]


# -------------------------------------------------------------------------------------------------
# Scenario "basic": run once per protocol, one test per check.

BASIC_CHECKS = [
    "connect_alice", "connect_bob", "distinct_client_ids", "subscribe_bob", "subscribe_alice",
    "join_seen_by_bob", "client_publish", "publication_received_by_bob", "publication_received_by_alice",
    "presence", "presence_stats", "api_publication_received", "history", "history_limit_and_reverse",
    "leave_on_unsubscribe", "presence_after_leave", "leave_on_disconnect", "disconnect_state",
    "no_sdk_errors_bob",
]


@pytest.fixture(scope="module")
def basic_run(relay, protocol):
    return run_scenario(relay, protocol, "basic")


@pytest.mark.parametrize("name", BASIC_CHECKS)
def test_basic(basic_run, name):
    basic_run.assert_check(name)


def test_basic_completes_cleanly(basic_run):
    assert set(basic_run.checks) == set(BASIC_CHECKS), basic_run.evidence()
    basic_run.assert_all_ok()


def test_publication_carries_publisher_info(basic_run):
    c = basic_run.assert_check("publication_received_by_bob")
    assert c["info"]["user"] == "alice"
    assert c["info"]["client"] == basic_run.checks["connect_alice"]["client"]
    assert c["data"] == {"text": "hello from alice", "n": 1, "nested": {"ok": True}}


# -------------------------------------------------------------------------------------------------

def test_recovery_after_cut(relay, protocol):
    """The SDK connects through the proxy; we cut it, publish 3 while it is away, it recovers them."""
    with TcpProxy("127.0.0.1", relay.ws_port) as proxy:
        proxied = relay.ws_url.replace(f":{relay.ws_port}/", f":{proxy.port}/")
        node = InteractiveNode(relay, protocol, "recovery", PROXY_WS_URL=proxied)
        try:
            ready = node.expect(lambda ln: ln.get("ready") == "cut-me", "the client to be ready for the cut")
            channel = ready["channel"]
            proxy.pause()  # keep the client away until the publications are made
            assert proxy.cut() >= 1
            node.expect(lambda ln: ln.get("ready") == "disconnected", "the client to see the disconnect")
            accepted = proxy.accepted
            offsets = [api_publish(relay, channel, {"n": n})["offset"] for n in (1, 2, 3)]
            assert offsets == sorted(offsets) and len(set(offsets)) == 3
            # Let the SDK fail at least one reconnect attempt against the paused proxy.
            deadline = time.monotonic() + 10
            while proxy.accepted == accepted and time.monotonic() < deadline:
                time.sleep(0.02)
            assert proxy.accepted > accepted, "the SDK did not try to reconnect"
            proxy.resume()
            node.send("go")
            run = node.finish()
        finally:
            node.close()
    for name in ("connect_via_proxy", "subscribe_recoverable", "first_publication", "disconnect_observed",
                 "reconnected", "resubscribed_recovered", "missed_publications_in_order", "live_after_recovery"):
        run.assert_check(name)
    ctx = run.checks["resubscribed_recovered"]["ctx"]
    assert ctx["wasRecovering"] is True and ctx["recovered"] is True
    got = run.checks["missed_publications_in_order"]["received"]
    assert [g["offset"] for g in got] == offsets
    run.assert_all_ok()


def test_bad_token_disconnects_3500_without_reconnect(relay, protocol):
    run = run_scenario(relay, protocol, "badtoken")
    assert run.assert_check("bad_token_disconnected_3500")["ctx"]["code"] == 3500
    run.assert_check("bad_token_no_reconnect")
    run.assert_all_ok()


def test_expired_token_109_and_get_token(relay, protocol):
    expired = jwt.encode({"sub": "x", "exp": int(time.time()) - 10}, relay.config["token_hmac_secret"],
                         algorithm="HS256")
    run = run_scenario(relay, protocol, "expired", TOKEN_EXPIRED=expired)
    assert run.assert_check("expired_token_error_109")["error"]["code"] == 109
    assert run.assert_check("expired_token_getToken_then_connected")["getTokenCalls"] == 1
    run.assert_check("expired_token_without_getToken")
    run.assert_all_ok()


def test_pings_and_forbidden_subscribe(relay_factory, protocol):
    """Server pings every second with a 1 s pong timeout: the SDK answers and stays connected.
    A subscription to a namespace that forbids it ends unsubscribed with 103 permission denied."""
    relay = relay_factory({"ping_interval": 1.0, "pong_timeout": 1.0})
    run = run_scenario(relay, protocol, "misc", PING_WAIT_MS="3500")
    assert run.assert_check("forbidden_subscribe_103")["ctx"]["code"] == 103
    c = run.assert_check("pings_answered_and_connection_kept")
    assert c["pings"] >= 2
    run.assert_all_ok()
