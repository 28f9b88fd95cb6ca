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
    assert set(services) == {"n1", "n2", "n3"}
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
