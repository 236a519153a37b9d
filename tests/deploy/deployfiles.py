"""The deployment files under deploy/ (issue 5), checked without Docker or Kubernetes.

They parse; they agree with each other (drain timing, ports, names, secrets) and with relay's own config
and CLI; the alert rules and the dashboard use only metrics a live relay exports; promtool checks the
Prometheus files when it is installed. One test module a topic: ``test_files`` (every file, the docs,
the production config), ``test_compose``, ``test_k8s``, ``test_dockerfile``, ``test_systemd`` and
``test_monitoring`` (alert rules, dashboard, the metrics contract, promtool).

This module is what they share: where the files are, how they are read (YAML documents, the Kubernetes
objects, the compose file, relay's production config) and the checks several of them make (durations of
compose and systemd, relay's own CLI accepting a ``serve`` command line).
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from relay.cli import build_parser
from relay.config import load

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
PROD_TOML = DEPLOY / "relay.prod.toml"
DOCS = ROOT / "docs" / "deploy.md"
SECRETS_ENV = {"RELAY_TOKEN_HMAC_SECRET": "deploy-test-secret-0123456789abcdef", "RELAY_API_KEY": "deploy-test-key"}


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
