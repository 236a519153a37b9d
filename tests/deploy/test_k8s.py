"""deploy/k8s (issue 5): the Deployment, its drain timing, security and secrets, Service, HPA, PDB, Redis
and the kustomization, agreeing with each other and with relay's config and CLI.
"""

from __future__ import annotations

import tomllib

from tests.deploy.deployfiles import K8S, k8s, k8s_objects, relay_container, serve_args_ok, yaml_docs


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
