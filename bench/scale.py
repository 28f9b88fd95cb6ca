"""Scale scenarios of issue 7 ("Also measured"): memory per node with N keys, restart
(recovery) time with N keys, snapshot transfer to a new member.

Each system gets its own clusters here (not the ones the throughput workloads share):

- ``mem-N``: a fresh cluster (default flags) is loaded with N keys of 100 B values by
  batched txns (up to 128 puts each, several in flight, round-robin over the members),
  then every member's VmRSS (/proc/<pid>/status) is read once all of them have applied
  the last write.
- ``restart-N``: on a cluster holding N keys (the same one as ``mem-N`` when both run), a
  follower is stopped with SIGTERM, restarted with the same flags and data dir, and timed
  from its start until it answers /health and until a linearizable read on it returns
  the last key written; then the same after SIGKILL.
- ``snapshot-N``: a cluster started with a small ``--snapshot-count`` holds N keys and
  enough Raft entries that its log is compacted; a member is added (MemberAdd, then
  started with ``--initial-cluster-state existing``) and timed from its start until a
  serializable read on it returns the last key written. Its log says whether a snapshot
  came (it must: the entries it would need are gone). It is removed afterwards, so a
  larger snapshot-N can reuse the cluster.

Clusters of one system are kept between scenarios and loaded incrementally (mem-100k,
then mem-1m adds 900k keys to the same cluster); they are stopped before the other
system runs, so the two never hold their data at the same time.
"""

from __future__ import annotations

import asyncio
import importlib
import re
import resource
import shutil
import signal
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from bench.cluster import Cluster, Member, dir_bytes, health_ok, loadavg, proc_status_kib
from bench.report import Result

KINDS = ("mem", "restart", "snapshot")
KEY_PREFIX = b"bench/scale/"
LAST_KEY = b"bench/scale-last"  # written after every load: "serves the data" = reads this
PAD_PREFIX = b"bench/scale-pad/"
SNAPSHOT_COUNT = 1000
# A Raft index past which both systems have compacted their logs with --snapshot-count
# 1000: etcd 3.4 keeps 5,000 entries behind each snapshot, kvstore min(5000, count).
COMPACTED_INDEX = 7500
SNAPSHOT_LOG_RE = re.compile(
    r"restored state from snapshot|received and saved database snapshot|"
    r"applied snapshot|applied incoming snapshot|saved database snapshot",
    re.I,
)

# Set by the CLI's SIGTERM/SIGHUP handler: the waiting loops below give up at once (a
# SystemExit raised inside a blocking gRPC call can surface as an RpcError and be retried).
STOP = threading.Event()

_NAME_RE = re.compile(r"^(mem|restart|snapshot)-(\d+(?:\.\d+)?)([km]?)$", re.I)


def parse_count(text: str) -> int:
    """``"100k"`` -> 100000, ``"1m"`` -> 1000000, ``"2500"`` -> 2500."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([km]?)", text.strip().lower())
    if not m:
        raise ValueError(f"not a key count: {text!r}")
    n = float(m.group(1)) * {"": 1, "k": 1_000, "m": 1_000_000}[m.group(2)]
    if n < 1 or n != int(n):
        raise ValueError(f"not a key count: {text!r}")
    return int(n)


def count_label(n: int) -> str:
    """1000000 -> "1m", 100000 -> "100k", 2500 -> "2500" (the inverse of parse_count)."""
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}m"
    if n % 1_000 == 0:
        return f"{n // 1_000}k"
    return str(n)


@dataclass(frozen=True)
class Scenario:
    """One scale scenario: ``kind`` (mem, restart, snapshot) with ``keys`` keys."""

    kind: str
    keys: int

    @property
    def name(self) -> str:
        return f"{self.kind}-{count_label(self.keys)}"

    @property
    def description(self) -> str:
        n = f"{self.keys:,}"
        return {
            "mem": f"RSS per member after loading {n} keys of 100 B (batched txns)",
            "restart": f"restart of a follower holding {n} keys after SIGTERM and after "
            "SIGKILL: time to /health and to a linearizable read",
            "snapshot": f"add a member to a cluster holding {n} keys with its log compacted "
            f"(--snapshot-count {SNAPSHOT_COUNT}): time until it serves the last key",
        }[self.kind]


def parse_scenario(name: str) -> Scenario | None:
    """``mem-100k`` -> Scenario("mem", 100000); None if ``name`` is not a scale scenario."""
    m = _NAME_RE.match(name.strip())
    if not m:
        return None
    return Scenario(m.group(1).lower(), parse_count(m.group(2) + m.group(3).lower()))


def order_scenarios(scenarios: list[Scenario]) -> list[Scenario]:
    """Run order: the mem/restart ones by key count (mem before restart at each count, so
    memory is read on a freshly loaded cluster), then the snapshot ones by key count."""
    seen: list[Scenario] = []
    for s in scenarios:
        if s not in seen:
            seen.append(s)
    return sorted(seen, key=lambda s: (s.kind == "snapshot", s.keys, KINDS.index(s.kind)))


def _fatal_line(c: Cluster, m: Member) -> str:
    """": <first line of a crash report>" from a member's log, or ""."""
    try:
        text = m.log_path.read_text(errors="replace")
    except OSError:
        return ""
    for marker in ("Fatal Python error", "Traceback (most recent call last)", "panic:"):
        i = text.rfind(marker)
        if i >= 0:
            lines = [ln.strip() for ln in text[i:].splitlines() if ln.strip()]
            where = next((ln for ln in lines[1:] if ln.startswith("File ")), "")
            return f": {lines[0]}" + (f" ({where})" if where else "")
    return ""


def key_of(i: int) -> bytes:
    return KEY_PREFIX + b"%09d" % i


def _prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


# --------------------------------------------------------------------------- loading


@dataclass
class LoadStats:
    keys: int
    txns: int
    seconds: float
    retries: int
    cpu_s: float = 0.0  # the loader's own CPU (this process, every thread)

    @property
    def keys_per_s(self) -> float:
        return self.keys / self.seconds if self.seconds > 0 else 0.0


async def _load(
    endpoints: list[str],
    start: int,
    stop: int,
    value_size: int,
    batch: int,
    clients: int,
    pb: str,
    progress: Callable[[str], None] | None,
) -> LoadStats:
    import grpc

    rpc = importlib.import_module(f"{pb}.rpc_pb2")
    rpcg = importlib.import_module(f"{pb}.rpc_pb2_grpc")
    value = (b"0123456789abcdef" * (value_size // 16 + 1))[:value_size]
    chans = [
        grpc.aio.insecure_channel(ep, options=[("grpc.use_local_subchannel_pool", 1)])
        for ep in endpoints
    ]
    stubs = [rpcg.KVStub(ch) for ch in chans]
    batches = [(b, min(stop, b + batch)) for b in range(start, stop, batch)]
    nxt = 0
    done_keys = 0
    retries = 0
    t0 = time.monotonic()
    cpu0 = _self_cpu()
    last_report = t0

    async def client(c: int) -> None:
        nonlocal nxt, done_keys, retries, last_report
        kv = stubs[c % len(stubs)]
        while nxt < len(batches):
            lo, hi = batches[nxt]
            nxt += 1
            req = rpc.TxnRequest(
                success=[
                    rpc.RequestOp(request_put=rpc.PutRequest(key=key_of(i), value=value))
                    for i in range(lo, hi)
                ]
            )
            for attempt in range(60):
                try:
                    await kv.Txn(req, timeout=30)
                    break
                except grpc.aio.AioRpcError as exc:
                    if attempt == 59 or exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                        raise
                    retries += 1
                    await asyncio.sleep(0.5)
            done_keys += hi - lo
            now = time.monotonic()
            if progress and now - last_report >= 15:
                last_report = now
                rate = done_keys / (now - t0)
                progress(
                    f"    loaded {start + done_keys:,}/{stop:,} keys ({rate:,.0f} keys/s, "
                    f"~{(stop - start - done_keys) / max(rate, 1):.0f}s left)"
                )

    try:
        await asyncio.gather(*(client(c) for c in range(clients)))
    finally:
        for ch in chans:
            await ch.close()
    return LoadStats(
        stop - start, len(batches), time.monotonic() - t0, retries, _self_cpu() - cpu0
    )


def _self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def _pad(endpoints: list[str], count: int, clients: int, pb: str) -> None:
    """``count`` single puts of small keys: Raft entries, so the log gets compacted. Each
    goes to its own key: a key with a few hundred revisions crashes kvstore's snapshot copy
    (LMDB's compacting copy of a DUPSORT|DUPFIXED database with a multi-page duplicate
    set segfaults), which is not what this scenario measures."""
    import grpc

    rpc = importlib.import_module(f"{pb}.rpc_pb2")
    rpcg = importlib.import_module(f"{pb}.rpc_pb2_grpc")
    chans = [grpc.aio.insecure_channel(ep) for ep in endpoints]
    left = count

    async def client(c: int) -> None:
        nonlocal left
        kv = rpcg.KVStub(chans[c % len(chans)])
        while left > 0:
            left -= 1
            key = PAD_PREFIX + b"%06d" % left
            for attempt in range(60):
                try:
                    await kv.Put(rpc.PutRequest(key=key, value=b"p" * 16), timeout=30)
                    break
                except grpc.aio.AioRpcError:
                    if attempt == 59:
                        raise
                    await asyncio.sleep(0.5)

    try:
        await asyncio.gather(*(client(c) for c in range(clients)))
    finally:
        for ch in chans:
            await ch.close()


# --------------------------------------------------------------------------- runner


class ScaleError(RuntimeError):
    """A scenario could not complete."""


def _check_stop() -> None:
    if STOP.is_set():
        raise SystemExit("bench: stopping")


def exit_reason(returncode: int | None) -> str:
    """"exited with code 1", "killed by SIGSEGV", "running"."""
    if returncode is None:
        return "running"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with code {returncode}"


class ScaleRunner:
    """Runs the scale scenarios for one system; keeps its loaded clusters between them."""

    def __init__(
        self,
        system: str,
        command: list[str],
        nodes: int,
        pb: str = "kvstore.pb",
        *,
        value_size: int = 100,
        batch: int = 128,
        clients: int = 16,
        snapshot_count: int = SNAPSHOT_COUNT,
        timeout: float = 600.0,
        repeat: int = 1,
        log: Callable[[str], None] = print,
    ) -> None:
        self.system = system
        self.command = command
        self.nodes = nodes
        self.pb = pb
        self.value_size = value_size
        self.batch = batch
        self.clients = clients
        self.snapshot_count = snapshot_count
        self.timeout = timeout
        self.repeat = max(1, repeat)  # restart/snapshot measurements per scenario (medians)
        self.log = log
        self.clusters: dict[str, Cluster] = {}  # "plain" (default flags) / "snap"
        self.loaded: dict[str, int] = {}
        self.load_stats: dict[str, list[LoadStats]] = {}
        self.empty_rss_kib: dict[str, list[int]] = {}
        self._rpc: Any = None
        self._rpcg: Any = None
        self._added = 0

    # -- plumbing
    def _pb(self) -> tuple[Any, Any]:
        if self._rpc is None:
            self._rpc = importlib.import_module(f"{self.pb}.rpc_pb2")
            self._rpcg = importlib.import_module(f"{self.pb}.rpc_pb2_grpc")
        return self._rpc, self._rpcg

    def _call(self, endpoint: str, service: str, method: str, req: Any, timeout: float = 5.0) -> Any:
        import grpc

        _, rpcg = self._pb()
        with grpc.insecure_channel(endpoint) as ch:
            stub = getattr(rpcg, f"{service}Stub")(ch)
            return getattr(stub, method)(req, timeout=timeout)

    def _retry(self, what: str, fn: Callable[[], Any], timeout: float = 60.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            _check_stop()
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 - retried until the deadline
                _check_stop()
                if time.monotonic() > deadline:
                    raise ScaleError(f"{what}: {exc}") from exc
                time.sleep(0.2)

    def _read_last(self, m: Member, serializable: bool, timeout: float = 2.0) -> bytes | None:
        """The value of LAST_KEY read on ``m`` (None if missing)."""
        rpc, _ = self._pb()
        resp = self._call(
            m.endpoint,
            "KV",
            "Range",
            rpc.RangeRequest(key=LAST_KEY, serializable=serializable),
            timeout=timeout,
        )
        return resp.kvs[0].value if resp.kvs else None

    def _count_keys(self, m: Member) -> int:
        rpc, _ = self._pb()
        resp = self._call(
            m.endpoint,
            "KV",
            "Range",
            rpc.RangeRequest(
                key=KEY_PREFIX, range_end=_prefix_end(KEY_PREFIX), count_only=True, serializable=True
            ),
            timeout=60,
        )
        return int(resp.count)

    def _status(self, m: Member) -> Any:
        rpc, _ = self._pb()
        return self._call(m.endpoint, "Maintenance", "Status", rpc.StatusRequest())

    def _cluster(self, profile: str) -> Cluster:
        c = self.clusters.get(profile)
        if c is not None:
            return c
        extra = ["--snapshot-count", str(self.snapshot_count)] if profile == "snap" else []
        c = Cluster(self.system, self.nodes, self.command, extra_args=extra)
        self.log(f"  starting {self.nodes}-node {self.system} cluster ({profile}) {' '.join(extra)}")
        c.start(timeout=60)
        self.clusters[profile] = c
        self.loaded[profile] = 0
        self.load_stats[profile] = []
        time.sleep(1.0)
        self.empty_rss_kib[profile] = [
            proc_status_kib(m.proc.pid).get("VmRSS", 0) for m in c.members if m.proc
        ]
        return c

    def _wait_all_have_last(self, c: Cluster, expected: bytes) -> None:
        for m in c.members:
            self._retry(
                f"{m.name} reading {LAST_KEY!r}",
                lambda m=m: self._expect(self._read_last(m, serializable=True), expected),
                timeout=self.timeout,
            )

    @staticmethod
    def _expect(got: bytes | None, expected: bytes) -> bytes:
        if got != expected:
            raise ScaleError(f"got {got!r}, want {expected!r}")
        return got

    def ensure_keys(self, profile: str, keys: int) -> Cluster:
        """The profile's cluster holding at least ``keys`` keys (loading the missing ones);
        LAST_KEY then holds the key count, on every member."""
        c = self._cluster(profile)
        have = self.loaded[profile]
        if have < keys:
            self.log(
                f"  loading keys {have:,}..{keys:,} into {self.system} ({self.batch} puts/txn, "
                f"{self.clients} in flight, {self.value_size} B values)"
            )
            stats = asyncio.run(
                _load(
                    c.endpoints,
                    have,
                    keys,
                    self.value_size,
                    self.batch,
                    self.clients,
                    self.pb,
                    self.log,
                )
            )
            self.load_stats[profile].append(stats)
            self.loaded[profile] = keys
            self.log(
                f"  loaded {stats.keys:,} keys in {stats.seconds:.1f}s "
                f"({stats.keys_per_s:,.0f} keys/s, {stats.retries} retries)"
            )
        rpc, _ = self._pb()
        expected = str(keys).encode()
        self._retry(
            "writing the last key",
            lambda: self._call(
                c.endpoints[0], "KV", "Put", rpc.PutRequest(key=LAST_KEY, value=expected), 30
            ),
        )
        self._wait_all_have_last(c, expected)
        return c

    def close(self) -> None:
        for c in self.clusters.values():
            c.stop()
        self.clusters.clear()

    # -- scenarios
    def run(self, sc: Scenario) -> Result:
        res = Result(workload=sc.name, system=self.system, tool="-", unit="")
        res.extra["kind"] = sc.kind
        res.extra["keys"] = sc.keys
        res.extra["loadavg_start"] = loadavg()
        t0 = time.monotonic()
        try:
            getattr(self, f"_run_{sc.kind}")(sc, res)
        except (ScaleError, OSError) as exc:
            res.status = "failed"
            res.note = str(exc).splitlines()[0][:300]
        except Exception as exc:  # noqa: BLE001 - grpc errors etc.: report, go on
            res.status = "failed"
            res.note = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        res.elapsed_s = time.monotonic() - t0
        res.extra["loadavg_end"] = loadavg()
        for profile, c in list(self.clusters.items()):
            if not c.alive():  # a member died: later scenarios start a fresh cluster
                dead = [f"{m.name} {exit_reason(m.proc.returncode)}" for m in c.members if m.proc]
                res.extra.setdefault("dead_members", []).extend(
                    d for d in dead if not d.endswith("running")
                )
                c.stop()
                del self.clusters[profile]
        return res

    def _load_metrics(self, profile: str, res: Result) -> None:
        stats = self.load_stats.get(profile, [])
        secs = sum(s.seconds for s in stats)
        keys = sum(s.keys for s in stats)
        if secs > 0:
            res.metrics["load_keys_per_sec"] = keys / secs
        if keys:
            res.metrics["loader_cpu_us_per_key"] = sum(s.cpu_s for s in stats) / keys * 1e6
        res.extra["load"] = [
            {
                "keys": s.keys,
                "txns": s.txns,
                "seconds": round(s.seconds, 2),
                "retries": s.retries,
                "cpu_s": round(s.cpu_s, 2),
            }
            for s in stats
        ]

    def _run_mem(self, sc: Scenario, res: Result) -> None:
        c = self.ensure_keys("plain", sc.keys)
        time.sleep(2.0)
        status = [proc_status_kib(m.proc.pid) for m in c.members if m.proc]
        rss = [s.get("VmRSS", 0) / 1024 for s in status]
        if not rss or not all(rss):
            raise ScaleError("a member is not running")
        res.metrics["rss_max_mib"] = max(rss)
        res.metrics["rss_mean_mib"] = sum(rss) / len(rss)
        res.metrics["rss_anon_max_mib"] = max(s.get("RssAnon", 0) for s in status) / 1024
        res.metrics["rss_empty_mib"] = max(self.empty_rss_kib["plain"]) / 1024
        res.metrics["data_dir_mib"] = max(dir_bytes(m.data_dir) for m in c.members) / 2**20
        self._load_metrics("plain", res)
        res.extra["members"] = {m.name: s for m, s in zip(c.members, status)}
        res.note = "RSS MiB per member: " + " / ".join(f"{r:,.0f}" for r in rss)

    def _follower(self, c: Cluster) -> Member:
        if len(c.members) == 1:
            return c.members[0]
        leader = 0
        for m in c.members:
            try:
                st = self._status(m)
                leader = st.leader
                break
            except Exception:  # noqa: BLE001 - ask the next one
                continue
        for m in reversed(c.members):
            try:
                if self._status(m).header.member_id != leader:
                    return m
            except Exception:  # noqa: BLE001
                continue
        return c.members[-1]

    def _time_start(self, c: Cluster, m: Member, expected: bytes, serializable: bool) -> tuple[float, float]:
        """Start ``m``; seconds from its start until /health answers true, and until a read of
        LAST_KEY on it returns ``expected``."""
        t0 = time.monotonic()
        c.spawn(m)
        assert m.proc is not None
        health_s = read_s = None
        deadline = t0 + self.timeout
        while read_s is None:
            _check_stop()
            for x in c.members:
                if x.proc is not None and x.proc.poll() is not None:
                    raise ScaleError(
                        f"{x.name} {exit_reason(x.proc.returncode)} while {m.name} was starting"
                        + _fatal_line(c, x)
                    )
            if time.monotonic() > deadline:
                raise ScaleError(
                    f"{m.name}: no {'health' if health_s is None else 'read'} after {self.timeout:.0f}s"
                )
            if health_s is None:
                if health_ok(m.health_url, timeout=0.5):
                    health_s = time.monotonic() - t0
                    continue
            else:
                try:
                    if self._read_last(m, serializable=serializable, timeout=1.0) == expected:
                        read_s = time.monotonic() - t0
                        continue
                except Exception:  # noqa: BLE001 - not ready yet
                    pass
            time.sleep(0.05)
        return health_s, read_s

    def _aggregate(self, res: Result, runs: list[dict[str, float]]) -> None:
        """Median of each metric over ``runs`` into res.metrics; every run in extra["runs"]."""
        keys: list[str] = []
        for r in runs:
            keys += [k for k in r if k not in keys]
        for k in keys:
            vals = [r[k] for r in runs if r.get(k) is not None]
            res.metrics[k] = statistics.median(vals) if vals else None
        if len(runs) > 1:
            res.extra["runs"] = [{k: round(v, 3) for k, v in r.items()} for r in runs]

    def _run_restart(self, sc: Scenario, res: Result) -> None:
        c = self.ensure_keys("plain", sc.keys)
        expected = str(sc.keys).encode()
        m = self._follower(c)
        res.extra["member"] = m.name
        runs: list[dict[str, float]] = []
        for i in range(self.repeat):
            run: dict[str, float] = {}
            for tag, sig in (("term", signal.SIGTERM), ("kill", signal.SIGKILL)):
                self.log(f"  {self.system}: {tag.upper()} {m.name}, restart ({i + 1}/{self.repeat})")
                run[f"{tag}_stop_s"] = c.stop_member(m, sig)
                res.extra[f"{tag}_returncode"] = m.proc.returncode if m.proc else None
                health_s, read_s = self._time_start(c, m, expected, serializable=False)
                run[f"{tag}_health_s"] = health_s
                run[f"{tag}_read_s"] = read_s
                self.log(f"    /health after {health_s:.2f}s, linearizable read after {read_s:.2f}s")
            runs.append(run)
        time.sleep(1.0)
        if m.proc is not None:
            runs[-1]["rss_after_mib"] = proc_status_kib(m.proc.pid).get("VmRSS", 0) / 1024
        self._aggregate(res, runs)
        res.extra["raft_index"] = self._status(m).raftIndex
        res.note = (
            f"{m.name} (follower); raft index {res.extra['raft_index']:,}"
            + (
                "; SIGTERM->read runs "
                + " / ".join(f"{r['term_read_s']:.2f}" for r in runs)
                + " s, SIGKILL->read "
                + " / ".join(f"{r['kill_read_s']:.2f}" for r in runs)
                + " s (medians shown)"
                if len(runs) > 1
                else ""
            )
        )

    def _run_snapshot(self, sc: Scenario, res: Result) -> None:
        c = self.ensure_keys("snap", sc.keys)
        expected = str(sc.keys).encode()
        index = max(self._status(m).raftIndex for m in c.members)
        if index < COMPACTED_INDEX:
            n = COMPACTED_INDEX - index
            self.log(f"  {self.system}: {n:,} single puts so that the Raft log gets compacted")
            asyncio.run(_pad(c.endpoints, n, 32, self.pb))
            self.ensure_keys("snap", sc.keys)  # rewrite the last key: it is the newest again
        st = self._status(c.members[0])
        res.extra["raft_index"] = st.raftIndex
        db_mib = st.dbSize / 2**20
        runs: list[dict[str, float]] = []
        notes: list[str] = []
        for i in range(self.repeat):
            run, note = self._add_member_once(c, expected, f"({i + 1}/{self.repeat})")
            run["db_mib"] = db_mib
            runs.append(run)
            notes.append(note)
        self._aggregate(res, runs)
        res.note = f"raft index {res.extra['raft_index']:,}; " + "; ".join(sorted(set(notes)))
        if len(runs) > 1:
            res.note += "; start->last key runs " + " / ".join(
                f"{r['add_data_s']:.2f}" for r in runs
            ) + " s (medians shown)"

    def _add_member_once(self, c: Cluster, expected: bytes, tag: str) -> tuple[dict[str, float], str]:
        """Add a member, time it until it serves LAST_KEY, remove it again."""
        self._added += 1
        new = c.add_member(f"a{self._added}")
        rpc, _ = self._pb()
        added = self._retry(
            "MemberAdd",
            lambda: self._call(
                c.members[0].endpoint,
                "Cluster",
                "MemberAdd",
                rpc.MemberAddRequest(peerURLs=[new.peer_url]),
                10,
            ),
        )
        c.members.append(new)
        self.log(f"  {self.system}: added {new.name}, starting it {tag}")
        run: dict[str, float] = {}
        try:
            health_s, data_s = self._time_start(c, new, expected, serializable=True)
            run["add_health_s"] = health_s
            run["add_data_s"] = data_s
            self.log(f"    /health after {health_s:.2f}s, serves the last key after {data_s:.2f}s")
            keys = self._count_keys(new)
            time.sleep(1.0)
            run["new_member_data_dir_mib"] = dir_bytes(new.data_dir) / 2**20
            assert new.proc is not None
            run["new_member_rss_mib"] = proc_status_kib(new.proc.pid).get("VmRSS", 0) / 1024
            try:
                text = new.log_path.read_text(errors="replace")
            except OSError:
                text = ""
            via = SNAPSHOT_LOG_RE.search(text)
            note = f"{keys:,} keys on the new member, " + (
                "snapshot received" if via else "NO snapshot line in its log"
            )
        finally:
            self._retire(c, new, added.member.ID)
        return run, note

    def _retire(self, c: Cluster, m: Member, member_id: int) -> None:
        """Remove the added member again (MemberRemove, then stop it)."""
        rpc, _ = self._pb()
        others = [x for x in c.members if x is not m and x.proc and x.proc.poll() is None]
        try:
            if others:
                self._retry(
                    "MemberRemove",
                    lambda: self._call(
                        others[0].endpoint,
                        "Cluster",
                        "MemberRemove",
                        rpc.MemberRemoveRequest(ID=member_id),
                        10,
                    ),
                    timeout=30,
                )
        except ScaleError as exc:  # the cluster is then dropped (see run)
            self.log(f"  {self.system}: could not remove {m.name}: {exc}")
        finally:
            if m.proc is not None and m.proc.poll() is None:
                c.stop_member(m, signal.SIGTERM, timeout=10)
            c.members.remove(m)
            c.retired.append(m)
            shutil.rmtree(m.data_dir, ignore_errors=True)  # up to ~1 GB each
