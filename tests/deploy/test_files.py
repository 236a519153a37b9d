"""The deployment files under deploy/ (issue 5), checked without Docker or Kubernetes: every file is there
and parses, docs/deploy.md describes each, and relay's production config is valid and the one the
ConfigMap carries.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib

import pytest

from tests.deploy.deployfiles import (DEPLOY, DOCS, PROD_TOML, ROOT, SECRETS_ENV, compose, k8s, prod_config, rel,
                                      yaml_docs)


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
