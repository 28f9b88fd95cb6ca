"""Fault-injection cluster harness: one network namespace per node.

Layout of one run (names carry the harness PID and a random tag, so
concurrent runs never collide)::

    kvf-<pid>-<tag>-hub   bridge br0 (10.A.B.1/24) + one veth end per node
    kvf-<pid>-<tag>-n1    eth0 10.A.B.11/24, the node process, iptables chain KVFAULT
    kvf-<pid>-<tag>-n2    eth0 10.A.B.12/24 ...

Nothing is created in the host namespace.  Clients stay in the host
namespace and reach each node through a small TCP forwarder listening on
127.0.0.1: its outgoing socket is opened from a thread that entered the hub
namespace with setns(2).  Partitions are iptables DROP rules between node
addresses only, inside the node namespaces, so the hub (and thus every
client) always reaches every node's client port.

Processes are killed by PID and namespaces deleted in ``close()``, which also
runs from a weakref finalizer at interpreter exit.
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import weakref
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ETCD = "/usr/bin/etcd"
CLIENT_PORT, PEER_PORT, HTTP_PORT = 2379, 2380, 2381
NS_PREFIX = "kvf-"

# The system under test by default.  Switch to "kvstore" once the server runs;
# KVSTORE_FAULT_SYSTEM overrides it for one run.
DEFAULT_SYSTEM = "kvstore"


def default_system() -> str:
    """The system to test: $KVSTORE_FAULT_SYSTEM or DEFAULT_SYSTEM."""
    return os.environ.get("KVSTORE_FAULT_SYSTEM", DEFAULT_SYSTEM)


# --------------------------------------------------------------------------- #
# Systems under test


@dataclass(frozen=True)
class System:
    """How to start one node of a system, and where it answers GET /health."""

    name: str
    argv: Callable[["Node", str, str], list[str]]  # node, initial cluster, state
    health_port: int
    cwd: str = REPO
    # Environment variable that arms server failpoints (raft/failpoints.py),
    # or None if the system has none (Debian's etcd is not built with gofail).
    failpoints_env: str | None = None

    def available(self) -> str | None:
        """None if the system can run here, else the reason it can't."""
        if self.name == "etcd" and not os.path.exists(ETCD):
            return f"{ETCD} not installed (apt-get install etcd-server)"
        if self.name == "kvstore" and not os.path.exists(os.path.join(REPO, "kvstore", "__main__.py")):
            return "kvstore/__main__.py missing"
        return None


def _common_flags(node: "Node", initial_cluster: str, state: str) -> list[str]:
    return [
        "--name", node.name,
        "--data-dir", node.data_dir,
        "--listen-client-urls", node.client_url,
        "--advertise-client-urls", node.client_url,
        "--listen-peer-urls", node.peer_url,
        "--initial-advertise-peer-urls", node.peer_url,
        "--initial-cluster", initial_cluster,
        "--initial-cluster-state", state,
        "--heartbeat-interval", "100",
        "--election-timeout", "1000",
    ]


SYSTEMS: dict[str, System] = {
    "etcd": System(
        "etcd",
        lambda n, c, s: [ETCD, *_common_flags(n, c, s), "--initial-cluster-token", "kvf"],
        CLIENT_PORT,
    ),
    "kvstore": System(
        "kvstore",
        lambda n, c, s: [sys.executable, "-m", "kvstore", *_common_flags(n, c, s),
                         "--listen-client-http-urls", f"http://{n.ip}:{HTTP_PORT}"],
        HTTP_PORT,
        failpoints_env="KVSTORE_FAILPOINTS",
    ),
}


# --------------------------------------------------------------------------- #
# Namespaces


def _run(*argv: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


def netns_unavailable() -> str | None:
    """None if network namespaces can be used here, else why not."""
    if os.geteuid() != 0:
        return "needs root for ip netns"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt-get install iproute2 iptables)"
    probe = f"{NS_PREFIX}{os.getpid()}-probe{random.randrange(1 << 30):x}"
    try:
        _run("ip", "netns", "add", probe)
        try:
            _run("ip", "netns", "exec", probe, "iptables", "-L", "-n")
        finally:
            _run("ip", "netns", "del", probe, check=False)
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        return f"ip netns/iptables unusable: {e}"
    return None


def sweep_stale() -> list[str]:
    """Delete namespaces left behind by harness processes that no longer exist.

    Only names ``kvf-<pid>-...`` whose PID is dead are touched; processes still
    inside them are killed by PID first.
    """
    removed = []
    listing = _run("ip", "netns", "list", check=False).stdout
    for line in listing.splitlines():
        name = line.split()[0] if line.strip() else ""
        m = re.match(rf"{NS_PREFIX}(\d+)-", name)
        if not m or _pid_alive(int(m.group(1))):
            continue
        pids = _run("ip", "netns", "pids", name, check=False).stdout.split()
        for pid in pids:
            _kill_pid(int(pid))
        _run("ip", "netns", "del", name, check=False)
        removed.append(name)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _kill_pid(pid: int) -> None:
    for sig in (signal.SIGCONT, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return


_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET = 0x40000000


def enter_netns(name: str) -> None:
    """Move the calling thread (only) into network namespace ``name``."""
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


class Forwarder:
    """TCP forwarder: 127.0.0.1:<port> in this namespace -> ip:port inside ``netns``."""

    def __init__(self, netns: str, ip: str, port: int) -> None:
        self.netns, self.target = netns, (ip, port)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._closed = threading.Event()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True, name=f"fwd-{ip}:{port}").start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._pump, args=(conn,), daemon=True).start()

    def _pump(self, conn: socket.socket) -> None:
        try:
            enter_netns(self.netns)  # this thread only
            upstream = socket.create_connection(self.target, timeout=2)
        except OSError:
            conn.close()
            return
        upstream.settimeout(None)
        with self._lock:
            if self._closed.is_set():
                conn.close()
                upstream.close()
                return
            self._conns |= {conn, upstream}
        sel = selectors.DefaultSelector()
        peers = {conn: upstream, upstream: conn}
        for s in peers:
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
        try:
            while True:
                for key, _ in sel.select():
                    src = key.fileobj
                    data = src.recv(65536)  # type: ignore[union-attr]
                    if not data:
                        return
                    peers[src].setblocking(True)  # type: ignore[index]
                    peers[src].sendall(data)  # type: ignore[index]
                    peers[src].setblocking(False)  # type: ignore[index]
        except OSError:
            pass
        finally:
            sel.close()
            with self._lock:
                self._conns -= {conn, upstream}
            for s in (conn, upstream):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def reset_all(self) -> None:
        """Drop every open connection (both sides see a reset)."""
        with self._lock:
            conns = list(self._conns)
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self._closed.set()
        self.sock.close()
        self.reset_all()


# --------------------------------------------------------------------------- #
# Nodes and the cluster


@dataclass
class Node:
    """One member: its namespace, address, data dir, process and forwarders."""

    index: int
    name: str
    ns: str
    ip: str
    data_dir: str
    log_path: str
    proc: subprocess.Popen[bytes] | None = None
    client: Forwarder | None = None
    http: Forwarder | None = None
    paused: bool = False
    member: bool = True
    generation: int = 0
    initial_cluster: str = ""
    state: str = "new"
    failpoints: str = ""  # armed at the next (re)start, e.g. "raftAfterSave=5%panic"

    @property
    def client_url(self) -> str:
        return f"http://{self.ip}:{CLIENT_PORT}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.ip}:{PEER_PORT}"

    @property
    def endpoint(self) -> str:
        """Where clients in this (host) namespace reach the node's gRPC port."""
        assert self.client is not None
        return self.client.address

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.alive else None  # type: ignore[union-attr]


class _Resources:
    """What must be released even if the Cluster object is never closed."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.namespaces: list[str] = []
        self.forwarders: list[Forwarder] = []
        self.lock = threading.Lock()

    def release(self) -> None:
        with self.lock:
            for p in self.procs:
                if p.poll() is None:
                    _kill_pid(p.pid)
                    try:
                        p.wait(10)
                    except subprocess.TimeoutExpired:
                        pass
            self.procs.clear()
            for f in self.forwarders:
                f.close()
            self.forwarders.clear()
            for ns in reversed(self.namespaces):  # nodes first, the hub last
                _run("ip", "netns", "del", ns, check=False)
            self.namespaces.clear()


class Cluster:
    """A cluster of ``size`` nodes of ``system``, each in its own namespace."""

    def __init__(self, system: str | System = "etcd", size: int = 3,
                 run_dir: str | None = None, log: Callable[[str], None] | None = None) -> None:
        self.system = SYSTEMS[system] if isinstance(system, str) else system
        self.size = size
        tag = f"{random.randrange(1 << 24):06x}"
        self.prefix = f"{NS_PREFIX}{os.getpid()}-{tag}"
        self.hub = f"{self.prefix}-hub"
        self.subnet = f"10.{random.randrange(1, 255)}.{random.randrange(0, 255)}"
        base = os.environ.get("KVSTORE_FAULT_DIR") or os.path.join(tempfile.gettempdir(), "kvstore-faults")
        os.makedirs(base, exist_ok=True)
        self.run_dir = run_dir or tempfile.mkdtemp(prefix=f"run-{time.strftime('%Y%m%d-%H%M%S')}-{tag}-", dir=base)
        os.makedirs(os.path.join(self.run_dir, "logs"), exist_ok=True)
        self._log = log or (lambda msg: None)
        self._res = _Resources()
        self._finalizer = weakref.finalize(self, self._res.release)
        self.nodes: list[Node] = []
        self._cuts: set[frozenset[int]] = set()

    # ---- lifecycle -------------------------------------------------------

    def __enter__(self) -> "Cluster":
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(keep=exc[0] is not None)

    def log(self, msg: str) -> None:
        self._log(msg)
        with open(os.path.join(self.run_dir, "events.log"), "a") as f:
            f.write(f"{time.time():.3f} {msg}\n")

    def start(self, timeout: float = 60) -> None:
        """Create the network, start every node and wait until all are healthy."""
        sweep_stale()
        self._ns_add(self.hub)
        hub = self.hub
        _run("ip", "-n", hub, "link", "set", "lo", "up")
        _run("ip", "-n", hub, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", hub, "addr", "add", f"{self.subnet}.1/24", "dev", "br0")
        _run("ip", "-n", hub, "link", "set", "br0", "up")
        for i in range(1, self.size + 1):
            self.nodes.append(self._add_node_ns(i))
        initial = self.initial_cluster(self.nodes)
        for n in self.nodes:
            self._spawn(n, initial, "new")
        self.wait_healthy(timeout=timeout)
        self.log(f"cluster of {self.size} {self.system.name} nodes up in {self.run_dir}")

    def close(self, keep: bool = False) -> None:
        """Kill every process, delete every namespace; keep the run dir if asked."""
        self._res.release()
        self._finalizer.detach()
        if keep:
            print(f"fault run kept in {self.run_dir}", file=sys.stderr)
        else:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def _ns_add(self, name: str) -> None:
        _run("ip", "netns", "add", name)
        with self._res.lock:
            self._res.namespaces.append(name)  # released in reverse: nodes, then the hub

    def _add_node_ns(self, i: int) -> Node:
        ns = f"{self.prefix}-n{i}"
        self._ns_add(ns)
        ip = f"{self.subnet}.{10 + i}"
        veth = f"vn{i}"
        _run("ip", "-n", self.hub, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _run("ip", "-n", self.hub, "link", "set", veth, "master", "br0", "up")
        _run("ip", "-n", ns, "link", "set", "lo", "up")
        _run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        _run("ip", "-n", ns, "link", "set", "eth0", "up")
        for args in (["-N", "KVFAULT"], ["-I", "INPUT", "-j", "KVFAULT"], ["-I", "OUTPUT", "-j", "KVFAULT"]):
            _run("ip", "netns", "exec", ns, "iptables", "-w", *args)
        node = Node(i, f"n{i}", ns, ip, os.path.join(self.run_dir, "data", f"n{i}"),
                    os.path.join(self.run_dir, "logs", f"n{i}.log"))
        node.client = Forwarder(self.hub, ip, CLIENT_PORT)
        node.http = Forwarder(self.hub, ip, self.system.health_port)
        with self._res.lock:
            self._res.forwarders += [node.client, node.http]
        return node

    @staticmethod
    def initial_cluster(nodes: Iterable[Node]) -> str:
        return ",".join(f"{n.name}={n.peer_url}" for n in nodes)

    def _spawn(self, node: Node, initial: str, state: str) -> None:
        assert not node.alive
        os.makedirs(os.path.dirname(node.data_dir), exist_ok=True)
        node.initial_cluster, node.state = initial, state
        argv = ["ip", "netns", "exec", node.ns, *self.system.argv(node, initial, state)]
        env = dict(os.environ, PYTHONPATH=REPO)
        fp_env = self.system.failpoints_env
        if fp_env is not None:
            env.pop(fp_env, None)
            if node.failpoints:
                env[fp_env] = node.failpoints
        elif node.failpoints:
            raise RuntimeError(f"{self.system.name} has no failpoints")
        with open(node.log_path, "ab") as logf:
            fps = f" (failpoints {node.failpoints})" if node.failpoints else ""
            logf.write(f"\n==== {time.strftime('%H:%M:%S')} start {' '.join(argv)}{fps}\n".encode())
            logf.flush()
            # ip netns exec execs the command, so this PID is the node's own.
            node.proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, cwd=self.system.cwd,
                                         env=env, start_new_session=True)
        node.paused = False
        with self._res.lock:
            self._res.procs = [p for p in self._res.procs if p.poll() is None] + [node.proc]

    # ---- node faults -----------------------------------------------------

    def node(self, which: int | str | Node) -> Node:
        if isinstance(which, Node):
            return which
        if isinstance(which, str):
            return next(n for n in self.nodes if n.name == which)
        return self.nodes[which - 1]

    def kill(self, which: int | str | Node) -> None:
        """SIGKILL a node (it keeps its data dir)."""
        n = self.node(which)
        if n.alive:
            _kill_pid(n.proc.pid)  # type: ignore[union-attr]
            n.proc.wait(10)  # type: ignore[union-attr]
        n.paused = False
        self.log(f"killed {n.name}")

    def stop(self, which: int | str | Node, timeout: float = 10) -> None:
        """SIGTERM a node, SIGKILL if it does not exit."""
        n = self.node(which)
        if n.alive:
            if n.paused:
                self.resume(n)
            n.proc.terminate()  # type: ignore[union-attr]
            try:
                n.proc.wait(timeout)  # type: ignore[union-attr]
            except subprocess.TimeoutExpired:
                self.kill(n)
        self.log(f"stopped {n.name}")

    def restart(self, which: int | str | Node, failpoints: str | None = None) -> None:
        """Start a stopped node again on its data dir; ``failpoints`` (if
        given) replaces the node's armed failpoints ("" disarms them)."""
        n = self.node(which)
        if n.alive:
            return
        if failpoints is not None:
            n.failpoints = failpoints
        self._spawn(n, n.initial_cluster, n.state)
        self.log(f"restarted {n.name}" + (f" with failpoints {n.failpoints}" if n.failpoints else ""))

    def exit_code(self, which: int | str | Node) -> int | None:
        """The node's exit status (None while it runs or if never started)."""
        n = self.node(which)
        return None if n.proc is None else n.proc.poll()

    def move_leader(self, which: int | str | Node, timeout: float = 10.0) -> bool:
        """Ask the current leader to hand leadership to ``which`` (best effort)."""
        from tests.faults import api
        n = self.node(which)
        try:
            mid = self.member_ids()[n.name]
            lead = self.leader(timeout=5)
            if lead is None:
                return False
            if lead is n:
                return True
            api.move_leader(lead.endpoint, mid, timeout)
        except Exception as e:
            self.log(f"move leader to {n.name} failed: {e!r}")
            return False
        self.log(f"moved leader to {n.name}")
        return True

    def pause(self, which: int | str | Node) -> None:
        n = self.node(which)
        if n.alive:
            os.kill(n.proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
            n.paused = True
        self.log(f"paused {n.name}")

    def resume(self, which: int | str | Node) -> None:
        n = self.node(which)
        if n.alive:
            os.kill(n.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
        n.paused = False
        self.log(f"resumed {n.name}")

    # ---- network faults --------------------------------------------------

    def cut(self, a: int | str | Node, b: int | str | Node) -> None:
        """Drop all traffic between two node addresses (both directions)."""
        na, nb = self.node(a), self.node(b)
        if frozenset((na.index, nb.index)) in self._cuts:
            return
        for x, y in ((na, nb), (nb, na)):
            for flag in ("-s", "-d"):
                _run("ip", "netns", "exec", x.ns, "iptables", "-w", "-A", "KVFAULT", flag, y.ip, "-j", "DROP")
        self._cuts.add(frozenset((na.index, nb.index)))

    def partition(self, *groups: Sequence[int | str | Node]) -> None:
        """Cut every link between nodes of different groups (nodes in no group
        form one more group)."""
        sets = [{self.node(x).index for x in g} for g in groups]
        rest = {n.index for n in self.nodes} - set().union(*sets)
        if rest:
            sets.append(rest)
        for i, g in enumerate(sets):
            for h in sets[i + 1:]:
                for a in g:
                    for b in h:
                        self.cut(a, b)
        self.log("partition " + " | ".join(",".join(f"n{i}" for i in sorted(g)) for g in sets))

    def isolate(self, which: int | str | Node) -> None:
        n = self.node(which)
        self.partition([n])

    def heal(self) -> None:
        """Remove every cut."""
        for n in self.nodes:
            _run("ip", "netns", "exec", n.ns, "iptables", "-w", "-F", "KVFAULT")
        self._cuts.clear()
        self.log("healed network")

    # ---- health, status, membership --------------------------------------

    def healthy(self, which: int | str | Node, timeout: float = 1.0) -> bool:
        n = self.node(which)
        if not n.alive or n.paused or n.http is None:
            return False
        try:
            with urllib.request.urlopen(f"http://{n.http.address}/health", timeout=timeout) as r:
                return json.loads(r.read()).get("health") in ("true", True)
        except (OSError, ValueError):
            return False

    def wait_healthy(self, nodes: Iterable[int | str | Node] | None = None, timeout: float = 60) -> None:
        want = [self.node(x) for x in nodes] if nodes is not None else [n for n in self.nodes if n.member]
        deadline = time.monotonic() + timeout
        while True:
            bad = [n for n in want if not self.healthy(n)]
            if not bad:
                return
            dead = [n.name for n in bad if not n.alive]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"nodes not healthy: {[n.name for n in bad]} (dead: {dead}); "
                                   f"logs in {self.run_dir}/logs")
            time.sleep(0.2)

    def status(self, which: int | str | Node, timeout: float = 2.0) -> dict | None:
        """Maintenance.Status of one node, or None if it does not answer."""
        from tests.faults import api
        n = self.node(which)
        if not n.alive or n.paused:
            return None
        return api.status(n.endpoint, timeout)

    def leader(self, timeout: float = 10.0) -> Node | None:
        """The node the highest-term answering node considers leader (itself a node)."""
        deadline = time.monotonic() + timeout
        while True:
            statuses = [(n, self.status(n)) for n in self.nodes if n.member]
            best = None
            for _, st in statuses:
                if st and st["leader"] and (best is None or st["raft_term"] > best["raft_term"]):
                    best = st
            if best is not None:
                by_id = {st["member_id"]: n for n, st in statuses if st}
                lead = by_id.get(best["leader"])
                if lead is not None:
                    return lead
            if time.monotonic() > deadline:
                return None
            time.sleep(0.2)

    def member_ids(self) -> dict[str, int]:
        """Member name -> ID, from the first node that answers MemberList."""
        from tests.faults import api
        for n in self.nodes:
            if n.alive and not n.paused:
                try:
                    return {m["name"]: m["ID"] for m in api.member_list(n.endpoint)}
                except Exception:
                    continue
        raise RuntimeError("no node answers MemberList")

    def member_remove(self, which: int | str | Node) -> None:
        """Remove a member through the API, then kill it and wipe its data."""
        from tests.faults import api
        n = self.node(which)
        mid = self.member_ids()[n.name]
        # etcd refuses ("unhealthy cluster") until the leader has heard from
        # enough members recently; retry for a while.
        self._retry(lambda: api.member_remove(
            (self.leader() or next(x for x in self.nodes if x.alive and x is not n)).endpoint, mid))
        n.member = False
        self.kill(n)
        shutil.rmtree(n.data_dir, ignore_errors=True)
        self.log(f"removed member {n.name} ({mid:x})")

    def member_add(self, which: int | str | Node) -> None:
        """Add a removed node back as a new member with an empty data dir."""
        from tests.faults import api
        n = self.node(which)
        assert not n.member and not n.alive

        def add() -> None:
            via = self.leader() or next(x for x in self.nodes if x.alive)
            if any(n.peer_url in m["peerURLs"] for m in api.member_list(via.endpoint)):
                return  # an earlier attempt went through after all
            api.member_add(via.endpoint, [n.peer_url])
        self._retry(add)
        n.member, n.generation = True, n.generation + 1
        n.data_dir = os.path.join(self.run_dir, "data", f"{n.name}.{n.generation}")
        members = [x for x in self.nodes if x.member]
        self._spawn(n, self.initial_cluster(members), "existing")
        self.log(f"added member {n.name} (generation {n.generation})")

    @staticmethod
    def _retry(fn: Callable[[], object], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fn()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def endpoints(self) -> list[str]:
        return [n.endpoint for n in self.nodes]

    def describe(self) -> str:
        return ", ".join(f"{n.name}={n.ip}->{n.endpoint}{'' if n.alive else ' (down)'}" for n in self.nodes)
