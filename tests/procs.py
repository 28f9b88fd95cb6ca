"""Real ``python -m kvstore`` processes on loopback, for integration tests.

Every process is killed by PID and every data directory removed on
``Cluster.close()`` (also registered with atexit, so a failing test leaves
nothing behind).
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def peer_hello(
    port: int, cluster_id: int, frm: int, to: int, *, kind: int = 1, ctx: ssl.SSLContext | None = None, then: bytes = b""
) -> list[tuple[int, str]] | None:
    """Dial a member's peer port as another member would (raft.wire) and
    return the receiver's replies as (code, reason): the answer to the hello,
    and, when ``then`` (bytes sent right after the hello) is given, every
    further reply until the receiver closes. None if the connection failed
    before any reply (e.g. a refused TLS handshake)."""
    from raft import wire

    replies: list[tuple[int, str]] = []
    data = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            sock = ctx.wrap_socket(raw, server_hostname="127.0.0.1") if ctx is not None else raw
            sock.sendall(wire.hello(wire.Kind(kind), cluster_id, frm, to) + then)
            while not replies or then:
                while len(data) < 5 or len(data) < 5 + wire.HEADER.unpack(data[:5])[0]:
                    chunk = sock.recv(4096)
                    if not chunk:
                        return replies or None
                    data += chunk
                n, ftype = wire.HEADER.unpack(data[:5])
                assert ftype == wire.Frame.REPLY, ftype
                code, reason = wire.parse_reply(data[5 : 5 + n])
                replies.append((int(code), reason))
                data = data[5 + n :]
    except OSError:  # ssl.SSLError included
        return replies or None
    return replies


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


@dataclass
class Node:
    name: str
    client_port: int
    peer_port: int
    http_port: int
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
        return f"http://127.0.0.1:{self.http_port}"

    def args(self, initial_cluster: str, state: str) -> list[str]:
        return [
            sys.executable, "-m", "kvstore",
            "--name", self.name,
            "--data-dir", self.data_dir,
            "--listen-client-urls", f"http://127.0.0.1:{self.client_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{self.client_port}",
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", initial_cluster,
            "--initial-cluster-state", state,
            "--listen-client-http-urls", self.http_url,
            "--heartbeat-interval", "50",
            "--election-timeout", "500",
            *self.extra_args,
        ]

    def start(self, initial_cluster: str, state: str = "new") -> None:
        assert self.proc is None or self.proc.poll() is not None
        self.log_path = os.path.join(os.path.dirname(self.data_dir), f"{self.name}.log")
        logf = open(self.log_path, "ab")
        env = dict(os.environ, PYTHONPATH=REPO)
        self.proc = subprocess.Popen(
            self.args(initial_cluster, state), stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=REPO
        )
        logf.close()
        self._cluster = initial_cluster

    def restart(self, state: str = "new") -> None:
        self.start(self._cluster, state)

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def terminate(self, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def health(self) -> bool:
        try:
            with urllib.request.urlopen(self.http_url + "/health", timeout=1) as r:
                return json.loads(r.read()).get("health") == "true"
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def log_tail(self, n: int = 40) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return b"".join(f.readlines()[-n:]).decode(errors="replace")
        except OSError:
            return ""


class Cluster:
    def __init__(self, size: int, extra_args: list[str] | None = None) -> None:
        self.root = tempfile.mkdtemp(prefix="kvstore-test-")
        self.nodes: list[Node] = []
        for i in range(size):
            self.nodes.append(self._new_node(f"n{i + 1}", extra_args or []))
        atexit.register(self.close)

    def _new_node(self, name: str, extra_args: list[str]) -> Node:
        c, p, h = free_ports(3)
        return Node(name, c, p, h, os.path.join(self.root, name), list(extra_args))

    @property
    def initial_cluster(self) -> str:
        return ",".join(f"{n.name}={n.peer_url}" for n in self.nodes)

    @property
    def endpoints(self) -> list[str]:
        return [n.endpoint for n in self.nodes]

    def start(self, timeout: float = 30.0) -> "Cluster":
        ic = self.initial_cluster
        for n in self.nodes:
            n.start(ic)
        self.wait_healthy(timeout)
        return self

    def add_node(self, name: str) -> Node:
        """A node object for a member about to be added (not started)."""
        n = self._new_node(name, self.nodes[0].extra_args if self.nodes else [])
        self.nodes.append(n)
        return n

    def wait_healthy(self, timeout: float = 30.0, nodes: list[Node] | None = None) -> None:
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

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
