"""The alert rules and the Grafana dashboard under deploy/ (issue 5): they cover the issue, use only
metrics a live relay exports (the contract below), and promtool checks the Prometheus files and every
dashboard query when it is installed.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import urllib.error
import urllib.request
import uuid

import pytest
import yaml

from tests.deploy.deployfiles import DEPLOY, DOCS, yaml_docs
from tests.rawclients import RawTCP, RawWS, ws_connected
from tests.relayproc import API_KEY, RelayProcess


# relay's /metrics (the contract of issue 5): name -> type; counters without their _total suffix
CONTRACT = {
    "relay_build_info": "gauge",
    "relay_core_info": "gauge",
    "relay_connections": "gauge",
    "relay_connections_max": "gauge",
    "relay_connections_accepted": "counter",
    "relay_subscriptions": "gauge",
    "relay_channels": "gauge",
    "relay_client_commands": "counter",
    "relay_publications": "counter",
    "relay_deliveries": "counter",
    "relay_socket_writes": "counter",
    "relay_fanout_latency_seconds": "histogram",
    "relay_broker_publish_latency_seconds": "histogram",
    "relay_outbound_queue_bytes": "gauge",
    "relay_slow_consumer_disconnects": "counter",
    "relay_disconnects": "counter",
    "relay_handshake_failures": "counter",
    "relay_auth_failures": "counter",
    "relay_broker_errors": "counter",
    "relay_broker_reconnects": "counter",
    "relay_broker_up": "gauge",
    # issue 19, broker liveness per shard (docs/operations.md)
    "relay_broker_shard_up": "gauge",
    "relay_broker_outage_resyncs": "counter",
    "relay_resyncs": "counter",
    "relay_api_requests": "counter",
    "relay_worker_restarts": "counter",
    "relay_ready": "gauge",
    # issue 11, first-response time of support chats (docs/support.md)
    "relay_first_response_seconds": "histogram",
    "relay_support_chats_waiting": "gauge",
    "relay_support_escalations": "counter",
    "relay_support_errors": "counter",
    # issue 11, priority lanes, publisher backpressure, paced broadcasts (docs/lanes.md, backpressure.md, pacing.md)
    "relay_lane_drops": "counter",
    "relay_lane_resyncs": "counter",
    "relay_backpressure_active": "gauge",
    "relay_publications_refused": "counter",
    "relay_paced_publications": "counter",
    "relay_pacing_channels": "gauge",
    "relay_history_reads": "counter",
    "relay_recoveries_coalesced": "counter",
}
# the suffixes a sample of each metric type may carry in a query
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
            "gauge": ("",)}
METRIC_RE = re.compile(r"\brelay_[a-z_]+")


def alert_rules() -> list[dict]:
    doc = yaml_docs(DEPLOY / "prometheus" / "alerts.yml")[0]
    return [r for g in doc["groups"] for r in g["rules"]]


def dashboard() -> dict:
    return json.loads((DEPLOY / "grafana" / "dashboards" / "relay.json").read_text())


def dashboard_panels() -> list[dict]:
    out = []
    for p in dashboard()["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # collapsed rows keep their panels inside
    return [p for p in out if p.get("type") != "row"]


def dashboard_exprs() -> list[str]:
    exprs = [t["expr"] for p in dashboard_panels() for t in p.get("targets", [])]
    for v in dashboard()["templating"]["list"]:
        q = v.get("query")
        if v.get("type") == "query":
            exprs.append(q["query"] if isinstance(q, dict) else q)
    return exprs


def metric_names(exprs: list[str]) -> set[str]:
    return {m for e in exprs for m in METRIC_RE.findall(e)}


def resolve(name: str, families: dict[str, str]) -> str | None:
    """The metric family a name in a query belongs to (``relay_x_total`` -> ``relay_x``), checking that the
    suffix fits the family's type; None if it names nothing ``families`` has."""
    for fam, kind in families.items():
        for suffix in SUFFIXES.get(kind, ("",)):
            if name == fam + suffix:
                return fam
    return None



def test_alert_rules_cover_the_issue():
    rules = alert_rules()
    names = {r["alert"] for r in rules}
    assert {"RelayNodeDown", "RelayNotReady", "RelayWorkerRestarting", "RelayBrokerErrors", "RelayConnectionsNearCap",
            "RelayFanoutLatencyHigh", "RelaySlowConsumerDisconnects", "RelayRefusingPublications"} <= names
    docs = DOCS.read_text()
    for r in rules:
        assert r["labels"]["severity"] in ("critical", "warning"), r["alert"]
        assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]
        anchor = r["annotations"]["runbook"].split("#", 1)[1]
        assert anchor == r["alert"].lower() and f"### {r['alert']}" in docs, f"docs/deploy.md: {r['alert']}"
    exprs = {r["alert"]: r["expr"] for r in rules}
    assert "up{" in exprs["RelayNodeDown"] and "== 0" in exprs["RelayNodeDown"]
    assert "histogram_quantile(0.99" in exprs["RelayFanoutLatencyHigh"]


def test_dashboard_structure():
    dash = dashboard()
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = dashboard_panels()
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in panels:
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}" and t["expr"].strip(), p["title"]
    titles = " | ".join(p["title"].lower() for p in panels)
    for words in ("connections by transport", "connections vs cap", "publications/s by source",
                  "deliveries/s by transport", "fan-out latency", "broker publish latency", "outbound queue bytes",
                  "slow-consumer", "disconnects by code", "handshake and auth failures", "broker errors",
                  "broker up", "client commands by method and result", "active core", "build info",
                  "first-response time p50 / p90", "support chats waiting", "support escalations",
                  "lane drops/s by lane", "publisher backpressure", "paced broadcasts",
                  "history reads/s by reason"):
        assert words in titles, words
    exprs = " ".join(dashboard_exprs())
    assert "histogram_quantile(0.5," in exprs and "histogram_quantile(0.99," in exprs
    # every node exports the cluster's waiting figure: a sum would count each chat once per node
    assert "max by (namespace) (relay_support_chats_waiting{" in exprs
    assert "sum(relay_support_chats_waiting" not in exprs


def test_queries_use_only_contract_metrics():
    """Static check against the contract (the live check is the next test)."""
    for where, exprs in (("alerts.yml", [r["expr"] for r in alert_rules()]), ("relay.json", dashboard_exprs())):
        for name in metric_names(exprs):
            assert resolve(name, CONTRACT), f"{where}: {name} is not a metric relay exports (or wrong suffix)"
    used = {resolve(n, CONTRACT) for n in metric_names(dashboard_exprs())}
    assert used == set(CONTRACT), f"metrics with no dashboard panel: {sorted(set(CONTRACT) - used)}"


def scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return r.read().decode()
    except urllib.error.HTTPError as e:
        pytest.fail(f"GET /metrics: HTTP {e.code}: {e.read()[:500]!r}")


def api_call(port: int, method: str, params: dict, key: str = API_KEY) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/{method}", data=json.dumps(params).encode(),
                                 headers={"X-API-Key": key, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        return {"http_error": e.code}


async def drive_traffic(r: RelayProcess) -> None:
    """A little of everything, so that labelled series exist: both transports, client and API publications,
    deliveries, an auth failure with its disconnect, a refused handshake, API calls that fail."""
    ch = f"pub:deploy-{uuid.uuid4().hex[:8]}"  # subscribers may publish; no join/leave pushes
    ws = await ws_connected(r.ws_port, r.token("alice"))
    assert "subscribe" in await ws.call("subscribe", {"channel": ch})
    tcp = await RawTCP.open(r.tcp_port)
    assert "connect" in await tcp.call("connect", {"token": r.token("bob")})
    assert "subscribe" in await tcp.call("subscribe", {"channel": ch})
    assert "publish" in await ws.call("publish", {"channel": ch, "data": {"from": "client"}})
    res = await asyncio.to_thread(api_call, r.api_port, "publish", {"channel": ch, "data": {"from": "api"}})
    assert "result" in res, res
    await asyncio.to_thread(api_call, r.api_port, "publish", {"channel": ch, "data": 1}, "wrong-key")
    await asyncio.to_thread(api_call, r.api_port, "publish", {"channel": "nowhere:x", "data": 1})
    for _ in range(2):
        assert "pub" in await ws.pub()
        assert "pub" in await tcp.push()  # publication pushes only on this namespace
    bad = await RawWS.open(r.ws_port)
    await bad.send_cmds({"id": 1, "connect": {"token": "not-a-token"}})
    try:
        await bad.expect_close()
    except (AssertionError, ConnectionError):
        pass
    reader, writer = await asyncio.open_connection("127.0.0.1", r.ws_port)
    writer.write(b"GET /connection/websocket HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # no Upgrade: refused
    await writer.drain()
    await asyncio.wait_for(reader.read(), 10)
    writer.close()
    for c in (ws, tcp, bad):
        c.close()


async def test_queries_use_only_metrics_a_live_relay_exports():
    from prometheus_client.parser import text_string_to_metric_families

    with RelayProcess() as r:
        await drive_traffic(r)
        text = await asyncio.to_thread(scrape, r.api_port)
    families = {f.name: f.type for f in text_string_to_metric_families(text) if f.name.startswith("relay_")}
    problems = []
    for where, exprs in (("alerts.yml", [r["expr"] for r in alert_rules()]), ("relay.json", dashboard_exprs())):
        for name in sorted(metric_names(exprs)):
            if resolve(name, families) is None:
                problems.append(f"{where}: {name}")
    assert not problems, "not in relay's /metrics: " + ", ".join(problems)
    missing = {n: t for n, t in CONTRACT.items() if families.get(n) != t}
    assert not missing, f"the contract's metrics missing or of another type in /metrics: {missing}"


# --- promtool -----------------------------------------------------------------------------------------------

def promtool(*args: str) -> None:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus); the YAML checks above still ran")
    r = subprocess.run([exe, *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_promtool_check_rules():
    promtool("check", "rules", str(DEPLOY / "prometheus" / "alerts.yml"))


def test_promtool_check_config():
    promtool("check", "config", str(DEPLOY / "prometheus" / "prometheus.yml"))


def test_promtool_alert_unit_tests():
    promtool("test", "rules", str(DEPLOY / "prometheus" / "alerts.test.yml"))


def test_promtool_parses_every_dashboard_query(tmp_path):
    """Each panel query, with Grafana's variables filled in, as a recording rule: promtool parses the PromQL."""
    subst = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "$instance": ".*", "$job": ".*"}
    rules = []
    for k, expr in enumerate(dashboard_exprs()):
        expr = re.sub(r"^label_values\((.+),\s*\w+\)$", r"\1", expr)  # a variable's query: its series
        for var, value in subst.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, expr
        rules.append({"record": f"dashboard:query_{k}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    promtool("check", "rules", str(path))
