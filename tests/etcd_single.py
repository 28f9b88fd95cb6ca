"""A real single-node etcd (/usr/bin/etcd) on free loopback ports, for the
client and kvctl tests that run against both kvstore and etcd. Killed by PID."""
from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request

from tests.procs import free_ports

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


def available() -> bool:
    return os.path.exists(ETCD)


class Etcd:
    def __init__(self, extra_args: list[str] | None = None) -> None:
        self.root = tempfile.mkdtemp(prefix="kvstore-etcd-")
        self.client_port, self.peer_port = free_ports(2)
        self.extra_args = list(extra_args or [])
        self.proc: subprocess.Popen[bytes] | None = None
        atexit.register(self.close)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def endpoints(self) -> list[str]:
        return [self.endpoint]

    def start(self, timeout: float = 20.0) -> Etcd:
        scheme = "https" if any(a.startswith("--cert-file") for a in self.extra_args) else "http"
        client = f"{scheme}://127.0.0.1:{self.client_port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        log = open(os.path.join(self.root, "etcd.log"), "ab")
        self.proc = subprocess.Popen(
            [ETCD, "--name", "e1", "--data-dir", os.path.join(self.root, "data"),
             "--listen-client-urls", client, "--advertise-client-urls", client,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"e1={peer}", "--logger", "zap", "--log-outputs", "stderr",
             *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited: {self.log_tail()}")
            if scheme == "http":
                try:
                    with urllib.request.urlopen(f"{client}/health", timeout=1) as r:
                        if b"true" in r.read():
                            return self
                except OSError:
                    pass
            else:
                import socket

                with socket.socket() as s:
                    s.settimeout(0.5)
                    if s.connect_ex(("127.0.0.1", self.client_port)) == 0:
                        time.sleep(0.5)
                        return self
            if time.monotonic() > deadline:
                raise TimeoutError(f"etcd not healthy: {self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self, n: int = 20) -> str:
        try:
            with open(os.path.join(self.root, "etcd.log"), "rb") as f:
                return b"".join(f.readlines()[-n:]).decode(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)
