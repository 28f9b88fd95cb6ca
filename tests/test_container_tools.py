"""kvctl exec / render / elect / lock end to end: real kvctl processes against
a real 3-process kvstore cluster, including the loss of the cluster's leader
node while they run and the loss of the kvctl process that leads.

The commands kvctl runs are small Python scripts that leave evidence in
files (environment seen, signals received, begin/end markers, "I am running"
files with their PID); the tests poll that evidence with generous deadlines
and never assert durations.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from kvstore.client import Client, ClientError, OutcomeUnknown
from tests.procs import Cluster, free_ports

KVCTL = [sys.executable, "-m", "kvstore.cli"]

ENV_DUMP = """
import json, os, signal, sys, time
out = sys.argv[1]
def save(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
def hup(*_):
    with open(out + ".hup", "a") as f:
        f.write(f"HUP {os.getpid()}\\n")
def stop(*_):
    sys.exit(7)
signal.signal(signal.SIGHUP, hup)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
save(out, json.dumps({"pid": os.getpid(), **{k: v for k, v in os.environ.items() if k.startswith("APP_") or k in ("DB_HOST", "DB_PORT", "LOG_LEVEL")}}))
while True:
    time.sleep(0.05)
"""

LEADER = """
import os, signal, sys, time
d = sys.argv[1]
me = os.path.join(d, str(os.getpid()))
with open(me, "w") as f:
    f.write(f"{os.getppid()} {os.environ['KVCTL_ELECTION_REV']}")
def stop(*_):
    os.unlink(me)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
while True:
    time.sleep(0.05)
"""


def wait_until(fn, timeout=40.0, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(3).start()
    yield c
    c.close()


class Procs:
    """kvctl processes started by a test; killed by PID at the end."""

    def __init__(self, cluster: Cluster, tmp: str) -> None:
        self.env = dict(os.environ, KVCTL_ENDPOINTS=",".join(cluster.endpoints), PYTHONUNBUFFERED="1")
        self.tmp = tmp
        self.procs: list[subprocess.Popen] = []

    def start(self, *argv: str, name: str = "kvctl") -> subprocess.Popen:
        log = open(os.path.join(self.tmp, f"{name}-{len(self.procs)}.log"), "wb")
        p = subprocess.Popen(KVCTL + list(argv), stdout=log, stderr=subprocess.STDOUT, env=self.env)
        log.close()
        p.log_path = log.name  # type: ignore[attr-defined]
        self.procs.append(p)
        return p

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.fixture
def procs(cluster, tmp_path):
    ps = Procs(cluster, str(tmp_path))
    yield ps
    ps.close()


def script(tmp_path, name: str, text: str) -> str:
    path = os.path.join(str(tmp_path), name)
    with open(path, "w") as f:
        f.write(textwrap.dedent(text))
    return path


def read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def put_resolving_unknown(c: Client, key: str, value: str) -> None:
    """A put during a leader change may end "outcome unknown": read back, retry if absent."""
    while True:
        try:
            c.put(key, value)
            return
        except OutcomeUnknown:
            kv = c.get(key)
            if kv is not None and kv.value == value.encode():
                return


def leader_node(cluster: Cluster):
    with Client(cluster.endpoints, timeout=5) as c:
        for n in cluster.nodes:
            try:
                if n.alive and c.status(n.endpoint).is_leader:
                    return n
            except ClientError:
                pass
    return None


# -- exec -----------------------------------------------------------------------------------------


def test_exec_env_restart_and_exit_code(cluster, procs, tmp_path):
    p = f"/cfg-{time.monotonic_ns()}/app/"
    with Client(cluster.endpoints) as c:
        c.put(p + "db-host", "db1")
        c.put(p + "db/port", "5432")
        c.put(p + "log.level", "debug")
        out = os.path.join(str(tmp_path), "env.json")
        k = procs.start("exec", "--prefix", p, "--debounce", "200ms", "--grace", "5s", "--",
                        sys.executable, script(tmp_path, "envdump.py", ENV_DUMP), out)
        first = wait_until(lambda: read_json(out), what="the command's environment")
        assert (first["DB_HOST"], first["DB_PORT"], first["LOG_LEVEL"]) == ("db1", "5432", "debug")
        c.put(p + "db-host", "db2")
        second = wait_until(lambda: (d := read_json(out)) and d["DB_HOST"] == "db2" and d, what="a restart")
        assert second["pid"] != first["pid"] and second["DB_PORT"] == "5432"
        c.delete(p + "log.level")
        third = wait_until(lambda: (d := read_json(out)) and "LOG_LEVEL" not in d and d, what="a restart")
        assert third["pid"] != second["pid"]
        k.send_signal(signal.SIGTERM)  # forwarded; kvctl exits with the command's status
        assert k.wait(20) == 7


def test_exec_signal_mode_and_env_file(cluster, procs, tmp_path):
    p = f"/cfg-{time.monotonic_ns()}/app/"
    with Client(cluster.endpoints) as c:
        c.put(p + "db-host", "db1")
        out = os.path.join(str(tmp_path), "env.json")
        env_file = os.path.join(str(tmp_path), "app.env")
        k = procs.start("exec", "--prefix", p, "--on-change", "signal:HUP", "--debounce", "100ms",
                        "--env-prefix", "APP_", "--env-file", env_file, "--",
                        sys.executable, script(tmp_path, "envdump.py", ENV_DUMP), out)
        first = wait_until(lambda: read_json(out), what="the command's environment")
        assert first["APP_DB_HOST"] == "db1"
        c.put(p + "db-host", "db2")
        hup = wait_until(lambda: os.path.exists(out + ".hup") and open(out + ".hup").read(), what="SIGHUP")
        assert hup == f"HUP {first['pid']}\n"  # signalled, not restarted
        assert 'APP_DB_HOST="db2"' in open(env_file).read()
        k.send_signal(signal.SIGINT)
        assert k.wait(20) == 7


def test_exec_gives_up_when_the_store_is_unreachable(procs, tmp_path):
    port = free_ports(1)[0]
    k = procs.start("--endpoints", f"127.0.0.1:{port}", "--dial-timeout", "200ms", "--command-timeout", "500ms",
                    "exec", "--prefix", "/x/", "--timeout", "1s", "--", "true")
    assert k.wait(30) == 1
    log = open(k.log_path).read()  # type: ignore[attr-defined]
    assert "retrying in" in log and "Error: store unreachable, gave up after 1s" in log and "Traceback" not in log


# -- render ---------------------------------------------------------------------------------------


TEMPLATE = """\
# generated
host=$DB_HOST
{% for servers/ %}server $key $value
{% end %}END
"""


def test_render_atomic_updates_and_on_change(cluster, procs, tmp_path):
    p = f"/cfg-{time.monotonic_ns()}/web/"
    tmpl = script(tmp_path, "t.tmpl", TEMPLATE)
    out = os.path.join(str(tmp_path), "out.conf")
    changes = os.path.join(str(tmp_path), "changes.log")
    with Client(cluster.endpoints) as c:
        c.put(p + "db-host", "db1")
        c.put(p + "servers/a", "10.0.0.1")
        # --once: render and exit
        once = procs.start("render", tmpl, out + ".once", "--prefix", p, "--once")
        assert once.wait(30) == 0
        assert open(out + ".once").read() == "# generated\nhost=db1\nserver a 10.0.0.1\nEND\n"
        bad = procs.start("render", script(tmp_path, "bad.tmpl", "$NOPE\n"), out + ".bad", "--prefix", p, "--once")
        assert bad.wait(30) == 1 and not os.path.exists(out + ".bad")

        k = procs.start("render", tmpl, out, "--prefix", p, "--debounce", "100ms",
                        "--on-change", f"echo changed >> {changes}")
        wait_until(lambda: os.path.exists(changes), what="the first render")
        torn: list[str] = []
        stop = threading.Event()

        def reader() -> None:  # the file is always a whole render, never a part
            while not stop.is_set():
                try:
                    text = open(out).read()
                except FileNotFoundError:
                    continue
                if not (text.startswith("# generated\n") and text.endswith("END\n")):
                    torn.append(text)

        t = threading.Thread(target=reader)
        t.start()
        try:
            for i in range(15):
                c.put(p + f"servers/s{i:02d}", f"10.0.1.{i}")
            c.put(p + "db-host", "db2")
            want = ("# generated\nhost=db2\nserver a 10.0.0.1\n"
                    + "".join(f"server s{i:02d} 10.0.1.{i}\n" for i in range(15)) + "END\n")
            wait_until(lambda: open(out).read() == want, what="the final render")
        finally:
            stop.set()
            t.join()
        assert not torn
        # the on-change command runs after each write that changed the file
        wait_until(lambda: open(changes).read().count("changed") >= 2, what="the on-change command")
        k.send_signal(signal.SIGTERM)
        assert k.wait(20) == 0


def test_exec_and_render_follow_changes_across_a_leader_kill(cluster, procs, tmp_path):
    p = f"/cfg-{time.monotonic_ns()}/both/"
    out = os.path.join(str(tmp_path), "env.json")
    rendered = os.path.join(str(tmp_path), "r.conf")
    with Client(cluster.endpoints) as c:
        c.put(p + "db-host", "before")
    procs.start("exec", "--prefix", p, "--debounce", "100ms", "--", sys.executable,
                script(tmp_path, "envdump.py", ENV_DUMP), out)
    procs.start("render", script(tmp_path, "r.tmpl", "db=$DB_HOST\n"), rendered, "--prefix", p, "--debounce", "100ms")
    wait_until(lambda: (d := read_json(out)) and d["DB_HOST"] == "before", what="exec start")
    wait_until(lambda: os.path.exists(rendered) and open(rendered).read() == "db=before\n", what="render")
    leader = wait_until(lambda: leader_node(cluster), what="a leader")
    leader.kill()
    try:
        survivors = [n.endpoint for n in cluster.nodes if n is not leader]
        with Client(survivors, timeout=15) as c:
            put_resolving_unknown(c, p + "db-host", "after")
        wait_until(lambda: (d := read_json(out)) and d["DB_HOST"] == "after", what="exec restart after leader kill")
        wait_until(lambda: open(rendered).read() == "db=after\n", what="render after leader kill")
    finally:
        leader.restart()
        cluster.wait_healthy()


# -- elect ------------------------------------------------------------------------------------------


def running(d: str) -> dict[int, tuple[int, int]]:
    """pid → (kvctl pid, election revision) of the leader commands alive now."""
    out = {}
    for name in os.listdir(d):
        if not name.isdigit():
            continue
        pid = int(name)
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(")")[-1].split()[0] == "Z":
                    continue
            parent, rev = open(os.path.join(d, name)).read().split()
        except (OSError, ValueError):
            continue
        out[pid] = (int(parent), int(rev))
    return out


def stably_one(d: str, seconds: float = 2.0) -> dict[int, tuple[int, int]] | None:
    """Exactly one leader command, and still the same one ``seconds`` later."""
    first = running(d)
    if len(first) != 1:
        return None
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if running(d) != first:
            return None
        time.sleep(0.05)
    return first


def test_elect_runs_exactly_one_command_through_failures(cluster, procs, tmp_path):
    d = str(tmp_path / "running")
    os.mkdir(d)
    leader_py = script(tmp_path, "leader.py", LEADER)
    name = f"/elect-{time.monotonic_ns()}"
    ks = [procs.start("elect", name, f"candidate-{i}", "--ttl", "3", "--grace", "5s", "--",
                      sys.executable, leader_py, d, name=f"elect{i}") for i in range(2)]
    one = wait_until(lambda: stably_one(d), what="one elected command")
    (pid, (parent, rev)), = one.items()
    assert parent in (k.pid for k in ks)

    # the kvstore leader node dies: after recovery exactly one command runs
    node = wait_until(lambda: leader_node(cluster), what="a leader")
    node.kill()
    try:
        wait_until(lambda: stably_one(d, 3.0), what="one command after the leader node died")
    finally:
        node.restart()
        cluster.wait_healthy()
    one = wait_until(lambda: stably_one(d), what="one command after recovery")
    (pid, (parent, rev)), = one.items()

    # the kvctl that leads dies (SIGKILL): its command dies with it, the other takes over
    leading = next(k for k in ks if k.pid == parent)
    other = next(k for k in ks if k.pid != parent)
    leading.kill()
    leading.wait()
    wait_until(lambda: not os.path.exists(f"/proc/{pid}") or running(d).get(pid) is None,
               what="the orphaned command to die")
    one = wait_until(lambda: (r := stably_one(d)) and next(iter(r.values()))[0] == other.pid and r,
                     what="the other kvctl to take over")
    (_, (_, new_rev)), = one.items()
    assert new_rev > rev  # a newer fencing token
    other.send_signal(signal.SIGTERM)
    assert other.wait(20) == 0
    assert running(d) == {}


# -- lock ---------------------------------------------------------------------------------------------


def test_lock_runs_never_overlap_and_propagate_exit_code(cluster, procs, tmp_path):
    marks = os.path.join(str(tmp_path), "marks")
    name = f"/lock-{time.monotonic_ns()}"
    body = f'echo "begin $$ $KVCTL_LOCK_REV" >> {marks}; sleep 0.3; echo "end $$" >> {marks}'
    ks = [procs.start("lock", name, "--ttl", "5", "--", "sh", "-c", body, name=f"lock{i}") for i in range(3)]
    assert [k.wait(60) for k in ks] == [0, 0, 0]
    lines = [x.split() for x in open(marks).read().splitlines()]
    assert len(lines) == 6
    revs = []
    for i in range(0, 6, 2):
        begin, end = lines[i], lines[i + 1]
        assert begin[0] == "begin" and end == ["end", begin[1]], f"overlap: {lines}"
        revs.append(int(begin[2]))
    assert revs == sorted(revs) and len(set(revs)) == 3  # fencing tokens increase
    k = procs.start("lock", name, "--", "sh", "-c", "exit 5")
    assert k.wait(30) == 5
    with Client(cluster.endpoints) as c:
        assert c.get_prefix(name + "/").count == 0  # every lock released


def test_lock_and_elect_without_a_command_hold_until_interrupted(cluster, procs, tmp_path):
    name = f"/hold-{time.monotonic_ns()}"
    lk = procs.start("lock", name + "/lock", "--ttl", "5", name="holdlock")
    el = procs.start("elect", name + "/el", "me", "--ttl", "5", name="holdelect")
    with Client(cluster.endpoints) as c:
        wait_until(lambda: c.get_prefix(name + "/lock/").count == 1, what="the lock key")
        wait_until(lambda: (kv := c.leader(name + "/el")) is not None and kv.value == b"me", what="the leader")
        # As a script would: interrupt once each says what it holds (the key
        # is in the store a moment before the process knows it holds it).
        wait_until(lambda: open(lk.log_path).read().endswith("\n"), what="the lock's output")  # type: ignore[attr-defined]
        wait_until(lambda: open(el.log_path).read().endswith("me\n"), what="the leader's output")  # type: ignore[attr-defined]
        for p in (lk, el):
            p.send_signal(signal.SIGINT)
            assert p.wait(20) == 0
        assert c.get_prefix(name + "/").count == 0  # released and resigned
    assert open(lk.log_path).read().startswith(name + "/lock/")  # type: ignore[attr-defined]
