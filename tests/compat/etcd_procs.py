"""Real etcd (Debian ``etcd-server``, /usr/bin/etcd) processes on loopback,
with the same interface as ``tests.procs.Cluster`` / ``Node``.

Used as the oracle of the differential tests, and to check the expectations
of the client tests against etcd itself (``KVSTORE_COMPAT_TARGET=etcd``).
Every process is killed by PID and every data directory removed on close.
"""
from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from tests.procs import free_ports

ETCD = shutil.which("etcd") or ("/usr/bin/etcd" if os.path.exists("/usr/bin/etcd") else None)


@dataclass
class EtcdNode:
    name: str
    client_port: int
    peer_port: int
    data_dir: str
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    log_path: str = ""

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def start(self, initial_cluster: str, state: str = "new") -> None:
        assert ETCD is not None, "etcd is not installed"
        self.log_path = os.path.join(os.path.dirname(self.data_dir), f"{self.name}.log")
        logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [
                ETCD,
                "--name", self.name,
                "--data-dir", self.data_dir,
                "--listen-client-urls", self.http_url,
                "--advertise-client-urls", self.http_url,
                "--listen-peer-urls", self.peer_url,
                "--initial-advertise-peer-urls", self.peer_url,
                "--initial-cluster", initial_cluster,
                "--initial-cluster-state", state,
                "--heartbeat-interval", "50",
                "--election-timeout", "500",
                "--logger", "zap",
                *self.extra_args,
            ],
            stdout=logf, stderr=subprocess.STDOUT,
        )
        logf.close()
        self._cluster = initial_cluster

    def restart(self, state: str = "new") -> None:
        self.start(self._cluster, state)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def health(self) -> bool:
        try:
            with urllib.request.urlopen(self.http_url + "/health", timeout=1) as r:
                return b'"true"' in r.read()
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def log_tail(self, n: int = 40) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return b"".join(f.readlines()[-n:]).decode(errors="replace")
        except OSError:
            return ""


class EtcdCluster:
    def __init__(self, size: int, extra_args: list[str] | None = None) -> None:
        self.root = tempfile.mkdtemp(prefix="etcd-test-")
        self.extra_args = list(extra_args or [])
        self.nodes: list[EtcdNode] = [self._new_node(f"n{i + 1}") for i in range(size)]
        atexit.register(self.close)

    def _new_node(self, name: str) -> EtcdNode:
        c, p = free_ports(2)
        return EtcdNode(name, c, p, os.path.join(self.root, name), list(self.extra_args))

    @property
    def initial_cluster(self) -> str:
        return ",".join(f"{n.name}={n.peer_url}" for n in self.nodes)

    @property
    def endpoints(self) -> list[str]:
        return [n.endpoint for n in self.nodes]

    def start(self, timeout: float = 30.0) -> "EtcdCluster":
        ic = self.initial_cluster
        for n in self.nodes:
            n.start(ic)
        self.wait_healthy(timeout)
        return self

    def add_node(self, name: str) -> EtcdNode:
        n = self._new_node(name)
        self.nodes.append(n)
        return n

    def wait_healthy(self, timeout: float = 30.0, nodes: list[EtcdNode] | None = None) -> None:
        deadline = time.monotonic() + timeout
        for n in nodes or [n for n in self.nodes if n.alive]:
            while not n.health():
                if not n.alive:
                    raise RuntimeError(f"{n.name} exited:\n{n.log_tail()}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{n.name} not healthy:\n{n.log_tail()}")
                time.sleep(0.05)

    def close(self) -> None:
        for n in self.nodes:
            n.kill()
        shutil.rmtree(self.root, ignore_errors=True)
