"""Dockerfile and docker-compose.yml checked statically (no Docker engine here)."""
from __future__ import annotations

import os

import yaml

from kvstore.config import _FLAGS, env_var, parse
from tests.procs import REPO

KNOWN_FLAGS = {f for f, _, _ in _FLAGS}
KNOWN_ENV = {env_var(f) for f in KNOWN_FLAGS}


def _compose() -> dict:
    with open(os.path.join(REPO, "docker-compose.yml")) as f:
        return yaml.safe_load(f)


def test_compose_services_have_volume_healthcheck_and_valid_flags() -> None:
    services = _compose()["services"]
    assert set(services) == {"n1", "n2", "n3", "prometheus"}
    prom = services.pop("prometheus")
    assert prom["profiles"] == ["monitoring"] and prom.get("volumes") and prom.get("healthcheck")
    with open(os.path.join(REPO, "deploy", "prometheus.yml")) as f:
        targets = yaml.safe_load(f)["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == [f"{n}:2378" for n in ("n1", "n2", "n3")]
    for name, svc in services.items():
        assert svc.get("volumes"), f"{name} has no volume"
        assert svc.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        assert "/health" in " ".join(svc["healthcheck"]["test"])
        cmd = svc["command"]
        flags = [a[2:] for a in cmd if a.startswith("--")]
        assert set(flags) <= KNOWN_FLAGS, set(flags) - KNOWN_FLAGS
        env = svc["environment"]
        assert set(env) <= KNOWN_ENV, set(env) - KNOWN_ENV
        # The service's own flags plus the image's env parse as a valid config.
        image_env = _dockerfile_env()
        cfg = parse(cmd, environ={**image_env, **{k: str(v) for k, v in env.items()}})
        assert cfg.name == name
        assert cfg.initial_cluster[name] == [f"http://{name}:2380"]
        published = {p.split(":")[1] for p in svc["ports"]}
        assert published == {"2379", "2378"}
        assert cfg.listen_client_urls == ["http://0.0.0.0:2379"]


def _dockerfile_env() -> dict[str, str]:
    with open(os.path.join(REPO, "Dockerfile")) as f:
        text = f.read().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            for item in line[4:].split():
                k, v = item.split("=", 1)
                env[k] = v
    return env


def test_dockerfile_runs_as_non_root_with_volume_and_healthcheck() -> None:
    with open(os.path.join(REPO, "Dockerfile")) as f:
        text = f.read()
    assert "\nUSER kvstore" in text
    assert "VOLUME" in text and "HEALTHCHECK" in text and "/health" in text
    assert set(_dockerfile_env()) <= KNOWN_ENV
    assert 'ENTRYPOINT ["kvstore"]' in text


def test_kubernetes_statefulset_example() -> None:
    with open(os.path.join(REPO, "deploy", "kubernetes", "kvstore.yaml")) as f:
        docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(f)}
    headless = docs[("Service", "kvstore")]
    assert headless["spec"]["clusterIP"] == "None"
    sts = docs[("StatefulSet", "kvstore")]
    assert sts["spec"]["serviceName"] == "kvstore" and sts["spec"]["replicas"] == 3
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    c = sts["spec"]["template"]["spec"]["containers"][0]
    assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {m["name"] for m in c["volumeMounts"]} == {"data"}
    env = {e["name"] for e in c["env"]}
    assert {e for e in env if e.startswith("KVSTORE_")} <= KNOWN_ENV
    script = c["args"][0]
    flags = {w[2:] for w in script.split() if w.startswith("--")}
    assert flags <= KNOWN_FLAGS, flags - KNOWN_FLAGS
    # --initial-cluster is built from the pod names the StatefulSet creates.
    assert "kvstore-$i=http://kvstore-$i.kvstore" in script
    ports = {p["containerPort"] for p in c["ports"]}
    assert ports == {2379, 2380, 2378}
