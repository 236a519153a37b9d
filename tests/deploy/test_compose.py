"""docker-compose.yml (issue 5): three relay nodes, Redis, Prometheus scraping the nodes and Grafana with
its provisioning; drain timing, ports and mounts agree with relay's config and with the files.
"""

from __future__ import annotations

from tests.deploy.deployfiles import DEPLOY, ROOT, compose, prod_config, seconds, yaml_docs


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
