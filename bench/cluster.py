"""Start and stop local 1- or 3-node clusters (etcd or kvstore) on loopback."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


class ClusterError(RuntimeError):
    """A cluster could not be started or did not become healthy."""


def free_ports(n: int) -> list[int]:
    """Return ``n`` distinct free TCP ports on 127.0.0.1 (sockets held until all are picked)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Member:
    """One cluster member: its ports, data dir and process."""

    name: str
    client_port: int
    peer_port: int
    http_port: int | None
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    argv: list[str] = field(default_factory=list)

    @property
    def client_url(self) -> str:
        return f"http://{HOST}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{HOST}:{self.peer_port}"

    @property
    def health_url(self) -> str:
        port = self.http_port if self.http_port is not None else self.client_port
        return f"http://{HOST}:{port}/health"

    @property
    def endpoint(self) -> str:
        """host:port form used by gRPC clients."""
        return f"{HOST}:{self.client_port}"


@dataclass
class Cluster:
    """A local cluster of ``system`` ("etcd" or "kvstore") with ``nodes`` members.

    ``command`` is the server command without flags (e.g. ``["/usr/bin/etcd"]`` or
    ``[python, "-m", "kvstore"]``); kvstore members also get ``--listen-client-http-urls``
    and are health-checked there, etcd members on their client URL. ``extra_args`` are
    appended to every member's flags (e.g. ``--snapshot-count 1000``).
    """

    system: str
    nodes: int
    command: list[str]
    members: list[Member] = field(default_factory=list)
    tmp: Path | None = None
    extra_args: list[str] = field(default_factory=list)
    token: str = ""
    retired: list[Member] = field(default_factory=list)  # removed members, still swept at stop

    def start(self, timeout: float = 30.0) -> None:
        """Start every member and wait until all answer /health with {"health": "true"}."""
        if self.nodes not in (1, 3):
            raise ValueError("nodes must be 1 or 3")
        if shutil.which(self.command[0]) is None and not Path(self.command[0]).exists():
            raise ClusterError(f"{self.system}: command not found: {self.command[0]}")
        self.tmp = Path(tempfile.mkdtemp(prefix=f"bench-{self.system}-"))
        for i in range(self.nodes):
            self.members.append(self._new_member(f"n{i + 1}"))
        initial = self.initial_cluster()
        self.token = f"bench-{self.system}-{os.getpid()}-{int(time.time())}"
        try:
            for m in self.members:
                m.argv = self._member_argv(m, initial, "new")
                self.spawn(m)
            self._wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise

    def _new_member(self, name: str) -> Member:
        assert self.tmp is not None
        with_http = self.system != "etcd"
        used = {p for m in self.members + self.retired for p in (m.client_port, m.peer_port, m.http_port)}
        while True:  # free_ports picks distinct ports within one call only
            ports = free_ports(3 if with_http else 2)
            if not used.intersection(ports):
                break
        return Member(
            name=name,
            client_port=ports[0],
            peer_port=ports[1],
            http_port=ports[2] if with_http else None,
            data_dir=self.tmp / name,
            log_path=self.tmp / f"{name}.log",
        )

    def initial_cluster(self, members: list[Member] | None = None) -> str:
        """``name=peerURL,...`` of ``members`` (default: every member)."""
        return ",".join(f"{m.name}={m.peer_url}" for m in (members or self.members))

    def _member_argv(self, m: Member, initial: str, state: str) -> list[str]:
        args = [
            *self.command,
            "--name",
            m.name,
            "--data-dir",
            str(m.data_dir),
            "--listen-client-urls",
            m.client_url,
            "--advertise-client-urls",
            m.client_url,
            "--listen-peer-urls",
            m.peer_url,
            "--initial-advertise-peer-urls",
            m.peer_url,
            "--initial-cluster",
            initial,
            "--initial-cluster-state",
            state,
            "--initial-cluster-token",
            self.token,
        ]
        if m.http_port is not None:
            args += ["--listen-client-http-urls", f"http://{HOST}:{m.http_port}"]
        return args + list(self.extra_args)

    def spawn(self, m: Member) -> None:
        """Start (or restart, with the same flags and data dir) one member; its output is
        appended to its log."""
        log = open(m.log_path, "ab")
        try:
            m.proc = subprocess.Popen(
                m.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=str(REPO_ROOT),
                start_new_session=True,
                # A Python member that crashes (SIGSEGV) leaves its stack in its log.
                env={**os.environ, "PYTHONFAULTHANDLER": "1"},
            )
        finally:
            log.close()

    def stop_member(self, m: Member, sig: int = signal.SIGTERM, timeout: float = 60.0) -> float:
        """Send ``sig`` to one member (its process group) and wait for it to exit (SIGKILL
        after ``timeout`` s); returns the seconds it took to exit."""
        assert m.proc is not None
        t0 = time.monotonic()
        _signal_group(m.proc.pid, sig)
        try:
            m.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _signal_group(m.proc.pid, signal.SIGKILL)
            m.proc.wait(timeout=10)
        elapsed = time.monotonic() - t0
        _signal_group(m.proc.pid, signal.SIGKILL)
        return elapsed

    def add_member(self, name: str) -> Member:
        """A new member (not started, not yet in ``members``) set up to join the running
        cluster: ``--initial-cluster`` lists every member and it, state ``existing``. Call
        MemberAdd with its ``peer_url`` first, then ``spawn`` it and append it to ``members``."""
        m = self._new_member(name)
        m.argv = self._member_argv(m, self.initial_cluster([*self.members, m]), "existing")
        return m

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = list(self.members)
        while pending:
            for m in list(pending):
                assert m.proc is not None
                if m.proc.poll() is not None:
                    raise ClusterError(
                        f"{self.system} member {m.name} exited with code {m.proc.returncode}:\n"
                        + self.log_tail(m)
                    )
                if health_ok(m.health_url):
                    pending.remove(m)
            if not pending:
                return
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"{self.system}: members {[m.name for m in pending]} not healthy after "
                    f"{timeout:.0f}s:\n" + self.log_tail(pending[0])
                )
            time.sleep(0.2)

    def log_tail(self, m: Member, lines: int = 15) -> str:
        """Last lines of a member's log, for error messages."""
        try:
            text = m.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join("    " + line for line in text[-lines:])

    @property
    def endpoints(self) -> list[str]:
        """host:port of every member's client (gRPC) URL."""
        return [m.endpoint for m in self.members]

    def pids(self) -> list[int]:
        """PIDs of the member processes still running."""
        return [m.proc.pid for m in self.members if m.proc is not None and m.proc.poll() is None]

    def alive(self) -> bool:
        """True while every member process runs."""
        return all(m.proc is not None and m.proc.poll() is None for m in self.members)

    def cpu_seconds(self) -> float:
        """CPU time (user+system) used so far by the members and their descendants."""
        return sum(tree_cpu_seconds(pid) for pid in self.pids())

    def rss_bytes(self) -> list[int]:
        """Resident memory of each running member (with descendants)."""
        return [tree_rss_bytes(pid) for pid in self.pids()]

    def stop(self, grace: float = 2.0) -> None:
        """Stop every member (SIGTERM to its own process group, SIGKILL after ``grace`` s); remove
        the temp dir. (An etcd leader stopped together with its followers waits ~5 s for a
        leadership transfer that cannot happen; the data is thrown away, so no need to wait.)"""
        for m in self.members + self.retired:
            if m.proc is not None and m.proc.poll() is None:
                _signal_group(m.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for m in self.members + self.retired:
            if m.proc is None:
                continue
            try:
                m.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(m.proc.pid, signal.SIGKILL)
                m.proc.wait(timeout=5)
            # The member was a session leader: sweep any children it left behind.
            _signal_group(m.proc.pid, signal.SIGKILL)
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None


def _signal_group(pid: int, sig: int) -> None:
    """Signal the process group led by ``pid`` (a member started with start_new_session)."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def health_ok(url: str, timeout: float = 1.0) -> bool:
    """True if ``url`` answers 200 with JSON {"health": "true"}."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            if resp.status != 200:
                return False
            body = json.loads(resp.read().decode() or "{}")
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException):
        return False  # HTTPException: e.g. an HTTP/2-only port answering with a GOAWAY
    return str(body.get("health")).lower() == "true"


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def _descendants(pid: int) -> list[int]:
    out, todo = [pid], [pid]
    while todo:
        kids = _children(todo.pop())
        out += kids
        todo += kids
    return out


def tree_cpu_seconds(pid: int) -> float:
    """utime+stime of ``pid`` and its live descendants, in seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in _descendants(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total / tick


def tree_rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` and its live descendants, in bytes."""
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for p in _descendants(pid):
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * page
        except (OSError, IndexError, ValueError):
            pass
    return total


def proc_status_kib(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile and RssShmem of ``pid`` from /proc/<pid>/status, in KiB
    (empty if the process is gone)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            text = f.read()
    except OSError:
        return out
    return parse_proc_status(text)


def parse_proc_status(text: str) -> dict[str, int]:
    """The memory fields (kB) of a /proc/<pid>/status text."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
            parts = rest.split()
            if parts and parts[0].isdigit():
                out[name] = int(parts[0])
    return out


def dir_bytes(path: Path) -> int:
    """Disk space used by the files under ``path`` (allocated blocks, as du; 0 if missing)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
            except OSError:
                pass
    return total


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages ([] if unreadable)."""
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return []
