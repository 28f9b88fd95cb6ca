"""Python load generator over the etcd v3 gRPC API (grpc.aio), run in several processes.

The fallback for workloads etcd's Go tool runs, and the generator for those it lacks
(txn compare-and-set, lease grant, watch fan-out latency on a prefix, mixed).

Worker protocol (``python -m bench.pyload '<json spec>'``): the worker connects, sets
up, prints ``READY``; then reads commands on stdin: ``GO`` starts the load, ``MARK``
starts the measured window, ``STOP`` (or EOF) ends it. It then writes a JSON document to
the spec's ``result_path``: operations and errors in the window, window length, its own CPU seconds (getrusage) in the window,
and latency samples in microseconds. Values written carry the writer's CLOCK_MONOTONIC
time (ns) in their first 8 bytes, so watchers in other processes measure put-to-event
latency.

The protobuf modules (``kvstore.pb`` by default) are imported lazily, in the worker.
"""

from __future__ import annotations

import asyncio
import json
import random
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO_ROOT = Path(__file__).resolve().parent.parent
MAX_SAMPLES = 200_000
_TS = struct.Struct(">q")


# --------------------------------------------------------------------------- worker


def _stamp(size: int) -> bytes:
    """A value of ``size`` bytes (at least 8) starting with the monotonic time in ns."""
    return _TS.pack(time.monotonic_ns()) + b"x" * max(0, size - 8)


class Recorder:
    """Counts operations and latency samples inside the measured window."""

    def __init__(self) -> None:
        self.marked = False
        self.stopped = False
        self.ops = 0
        self.errors = 0
        self.lat_us: list[int] = []
        self.counts: dict[str, int] = {}
        self.error_kinds: dict[str, int] = {}

    def ok(self, start_ns: int, kind: str | None = None) -> None:
        if not self.marked or self.stopped:
            return
        self.ops += 1
        if kind:
            self.counts[kind] = self.counts.get(kind, 0) + 1
        self._sample((time.monotonic_ns() - start_ns) // 1000)

    def sample(self, lat_us: int) -> None:
        if self.marked and not self.stopped:
            self.ops += 1
            self._sample(lat_us)

    def _sample(self, us: int) -> None:
        if len(self.lat_us) < MAX_SAMPLES:
            self.lat_us.append(us)
        else:  # reservoir sampling keeps the distribution fair
            j = random.randrange(self.ops)
            if j < MAX_SAMPLES:
                self.lat_us[j] = us

    def err(self, exc: BaseException) -> None:
        if not self.marked or self.stopped:
            return
        self.errors += 1
        key = type(exc).__name__
        code = getattr(exc, "code", None)
        if callable(code):
            try:
                key = str(code())
            except Exception:  # pragma: no cover - defensive
                pass
        self.error_kinds[key] = self.error_kinds.get(key, 0) + 1


class Worker:
    """One load-generating process: ``spec`` says what to do (see ``worker_spec``)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        import importlib

        import grpc  # noqa: F401 - fail early, before READY

        pkg = spec.get("pb", "kvstore.pb")
        self.pb = importlib.import_module(f"{pkg}.rpc_pb2")
        self.pbg = importlib.import_module(f"{pkg}.rpc_pb2_grpc")
        self.spec = spec
        self.rec = Recorder()
        self.go = asyncio.Event()
        self.stop = asyncio.Event()
        self.channels: list[Any] = []
        self.extra: dict[str, Any] = {}

    # -- plumbing
    async def connect(self) -> None:
        import grpc

        eps: list[str] = self.spec["endpoints"]
        base = int(self.spec.get("index", 0)) * int(self.spec["conns"])
        for i in range(int(self.spec["conns"])):
            target = eps[(base + i) % len(eps)]
            ch = grpc.aio.insecure_channel(
                target,
                options=[
                    ("grpc.use_local_subchannel_pool", 1),  # one TCP connection per channel
                    ("bench.channel", base + i),
                    ("grpc.max_receive_message_length", 64 << 20),
                ],
            )
            await asyncio.wait_for(ch.channel_ready(), 15)
            self.channels.append(ch)

    def channel(self, i: int) -> Any:
        return self.channels[i % len(self.channels)]

    async def commands(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while True:
            line = (await reader.readline()).decode().strip()
            if not line or line == "STOP":  # STOP, or EOF: the coordinator went away
                self.stop_t = time.monotonic()
                self.stop_cpu = _cpu()
                self.rec.stopped = True
                self.stop.set()
                self.go.set()
                return
            if line == "GO":
                self.go.set()
            elif line == "MARK":
                self.mark_t = time.monotonic()
                self.mark_cpu = _cpu()
                self.rec.marked = True

    async def run(self) -> dict[str, Any]:
        await self.connect()
        mode = self.spec["mode"]
        setup = getattr(self, f"setup_{mode.replace('-', '_')}", None)
        if setup is not None:
            await setup()
        cmd_task = asyncio.create_task(self.commands())
        print("READY", flush=True)
        await self.go.wait()
        body = getattr(self, f"run_{mode.replace('-', '_')}")
        tasks = [asyncio.create_task(self._guard(body(i))) for i in range(self.n_tasks())]
        await self.stop.wait()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await cmd_task
        teardown = getattr(self, f"teardown_{mode.replace('-', '_')}", None)
        if teardown is not None:
            try:
                await asyncio.wait_for(teardown(), 10)
            except Exception as exc:  # noqa: BLE001 - teardown is best effort
                self.extra["teardown_error"] = repr(exc)
        for ch in self.channels:
            await ch.close()
        mark_t = getattr(self, "mark_t", None)
        elapsed = (self.stop_t - mark_t) if mark_t is not None else 0.0
        cpu = (self.stop_cpu - self.mark_cpu) if mark_t is not None else 0.0
        return {
            "mode": mode,
            "ops": self.rec.ops,
            "errors": self.rec.errors,
            "error_kinds": self.rec.error_kinds,
            "elapsed": elapsed,
            "cpu": cpu,
            "counts": self.rec.counts,
            "lat_us": self.rec.lat_us,
            "extra": self.extra,
        }

    async def _guard(self, coro: Any) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a dead client is reported, not fatal
            self.extra.setdefault("task_errors", []).append(repr(exc)[:300])

    def n_tasks(self) -> int:
        if self.spec["mode"] == "watch":
            return int(self.spec.get("streams", 1))
        if self.spec.get("rate"):
            return 1
        return int(self.spec["clients"])

    def prefix(self) -> bytes:
        return str(self.spec.get("prefix", "bench/")).encode()

    # -- put (optionally rate limited: one task sending at `rate` puts/s)
    async def run_put(self, i: int) -> None:
        kv = self.pbg.KVStub(self.channel(i))
        pb = self.pb
        size = int(self.spec.get("val_size", 100))
        space = int(self.spec.get("key_space", 1000))
        base = self.prefix() + f"{self.spec.get('index', 0)}-{i}/".encode()
        rate = float(self.spec.get("rate") or 0)
        n = 0
        next_t = time.monotonic()
        while True:
            if rate:
                next_t += 1.0 / rate
                delay = next_t - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            key = base + str(n % space).encode()
            n += 1
            t0 = time.monotonic_ns()
            try:
                await kv.Put(pb.PutRequest(key=key, value=_stamp(size)))
                self.rec.ok(t0)
            except Exception as exc:  # noqa: BLE001
                self.rec.err(exc)
                await asyncio.sleep(0.01)

    # -- range on one key
    async def run_range(self, i: int) -> None:
        kv = self.pbg.KVStub(self.channel(i))
        req = self.pb.RangeRequest(
            key=str(self.spec.get("key", "bench/range-key")).encode(),
            serializable=bool(self.spec.get("serializable", False)),
        )
        while True:
            t0 = time.monotonic_ns()
            try:
                await kv.Range(req)
                self.rec.ok(t0)
            except Exception as exc:  # noqa: BLE001
                self.rec.err(exc)
                await asyncio.sleep(0.01)

    # -- txn compare-and-set: If(mod_revision(k) == last) Then(put k) Else(get k)
    async def run_cas(self, i: int) -> None:
        kv = self.pbg.KVStub(self.channel(i))
        pb = self.pb
        key = self.prefix() + f"cas/{self.spec.get('index', 0)}-{i}".encode()
        size = int(self.spec.get("val_size", 100))
        resp = await kv.Put(pb.PutRequest(key=key, value=_stamp(size)))
        rev = resp.header.revision
        while True:
            req = pb.TxnRequest(
                compare=[
                    pb.Compare(
                        result=pb.Compare.EQUAL, target=pb.Compare.MOD, key=key, mod_revision=rev
                    )
                ],
                success=[pb.RequestOp(request_put=pb.PutRequest(key=key, value=_stamp(size)))],
                failure=[pb.RequestOp(request_range=pb.RangeRequest(key=key))],
            )
            t0 = time.monotonic_ns()
            try:
                r = await kv.Txn(req)
            except Exception as exc:  # noqa: BLE001
                self.rec.err(exc)
                await asyncio.sleep(0.01)
                continue
            if r.succeeded:
                rev = r.header.revision
                self.rec.ok(t0, "swapped")
            else:
                kvs = r.responses[0].response_range.kvs
                rev = kvs[0].mod_revision if kvs else 0
                self.rec.ok(t0, "conflict")

    # -- lease grant (leases revoked after the window)
    async def setup_lease_grant(self) -> None:
        self.granted: list[int] = []

    async def run_lease_grant(self, i: int) -> None:
        lease = self.pbg.LeaseStub(self.channel(i))
        req = self.pb.LeaseGrantRequest(TTL=int(self.spec.get("ttl", 60)))
        while True:
            t0 = time.monotonic_ns()
            try:
                r = await lease.LeaseGrant(req)
                self.granted.append(r.ID)
                self.rec.ok(t0)
            except Exception as exc:  # noqa: BLE001
                self.rec.err(exc)
                await asyncio.sleep(0.01)

    async def teardown_lease_grant(self) -> None:
        stubs = [self.pbg.LeaseStub(ch) for ch in self.channels]
        sem = asyncio.Semaphore(64)

        async def revoke(j: int, lid: int) -> None:
            async with sem:
                try:
                    await stubs[j % len(stubs)].LeaseRevoke(self.pb.LeaseRevokeRequest(ID=lid))
                except Exception:  # noqa: BLE001 - already expired, or server busy
                    pass

        await asyncio.gather(*(revoke(j, lid) for j, lid in enumerate(self.granted)))
        self.extra["revoked"] = len(self.granted)

    # -- lease keep-alive: one lease and one keep-alive stream per client
    async def setup_lease_keepalive(self) -> None:
        self.lease_ids: list[int] = []
        for i in range(int(self.spec["clients"])):
            r = await self.pbg.LeaseStub(self.channel(i)).LeaseGrant(
                self.pb.LeaseGrantRequest(TTL=100)
            )
            self.lease_ids.append(r.ID)

    async def run_lease_keepalive(self, i: int) -> None:
        stream = self.pbg.LeaseStub(self.channel(i)).LeaseKeepAlive()
        req = self.pb.LeaseKeepAliveRequest(ID=self.lease_ids[i])
        try:
            while True:
                t0 = time.monotonic_ns()
                await stream.write(req)
                resp = await stream.read()
                if resp is None:  # stream closed by the server
                    raise RuntimeError("keep-alive stream closed")
                self.rec.ok(t0)
        finally:
            stream.cancel()

    async def teardown_lease_keepalive(self) -> None:
        stub = self.pbg.LeaseStub(self.channel(0))
        for lid in self.lease_ids:
            try:
                await stub.LeaseRevoke(self.pb.LeaseRevokeRequest(ID=lid))
            except Exception:  # noqa: BLE001
                pass

    # -- mixed config-store load: `read_pct` % linearizable single-key reads, rest puts;
    #    with `shards`, key k is "<prefix><k % shards>/<k>"
    async def run_mixed(self, i: int) -> None:
        kv = self.pbg.KVStub(self.channel(i))
        pb = self.pb
        space = int(self.spec.get("key_space", 1000))
        size = int(self.spec.get("val_size", 100))
        read_pct = float(self.spec.get("read_pct", 95))
        rnd = random.Random(i * 7919 + int(self.spec.get("index", 0)))
        prefix = self.prefix()
        shards = int(self.spec.get("shards", 0))
        while True:
            k = rnd.randrange(space)
            key = prefix + (f"{k % shards}/{k}" if shards else str(k)).encode()
            t0 = time.monotonic_ns()
            try:
                if rnd.random() * 100 < read_pct:
                    await kv.Range(pb.RangeRequest(key=key))
                    self.rec.ok(t0, "reads")
                else:
                    await kv.Put(pb.PutRequest(key=key, value=_stamp(size)))
                    self.rec.ok(t0, "writes")
            except Exception as exc:  # noqa: BLE001
                self.rec.err(exc)
                await asyncio.sleep(0.01)

    # -- watchers on a prefix: `watchers` spread over `streams` streams; each event is
    #    one op, its latency = receive time - the writer's timestamp in the value.
    async def setup_watch(self) -> None:
        pb = self.pb
        base = self.prefix()
        shards = int(self.spec.get("shards", 0))
        n_streams = int(self.spec.get("streams", 1))
        watchers = int(self.spec["watchers"])
        first = int(self.spec.get("index", 0)) * watchers  # global number of our first watcher
        self.streams: list[Any] = []
        self.created = 0
        j = 0
        for s in range(n_streams):
            n = watchers // n_streams + (1 if s < watchers % n_streams else 0)
            call = self.pbg.WatchStub(self.channel(s)).Watch()
            for _ in range(n):
                # With shards, watcher j watches the sub-prefix "<prefix><j % shards>/".
                prefix = base + f"{(first + j) % shards}/".encode() if shards else base
                j += 1
                await call.write(
                    pb.WatchRequest(
                        create_request=pb.WatchCreateRequest(
                            key=prefix, range_end=_prefix_end(prefix)
                        )
                    )
                )
            got = 0
            while got < n:
                resp = await asyncio.wait_for(call.read(), 15)
                if resp is None:
                    raise RuntimeError("watch stream closed during setup")
                if resp.created:
                    got += 1
            self.created += got
            self.streams.append(call)
        self.extra["watchers"] = self.created

    async def run_watch(self, i: int) -> None:
        call = self.streams[i]
        rec = self.rec
        unpack = _TS.unpack_from
        try:
            while True:
                resp = await call.read()
                if resp is None:
                    raise RuntimeError("watch stream closed")
                if not resp.events:
                    continue
                now = time.monotonic_ns()
                for ev in resp.events:
                    v = ev.kv.value
                    lat = (now - unpack(v)[0]) // 1000 if len(v) >= 8 else 0
                    rec.sample(lat)
        finally:
            call.cancel()


def _prefix_end(prefix: bytes) -> bytes:
    """etcd's range_end for "every key with this prefix"."""
    b = bytearray(prefix)
    for i in range(len(b) - 1, -1, -1):
        if b[i] < 0xFF:
            b[i] += 1
            return bytes(b[: i + 1])
    return b"\x00"


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def worker_main(spec_json: str) -> None:
    """Entry point of one worker process."""
    spec = json.loads(spec_json)
    try:
        import uvloop  # type: ignore[import-not-found]

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(Worker(spec).run())
    # The result goes to a file: after uvloop, a large write to the stdout pipe can be cut
    # short (the pipe is left non-blocking), losing data.
    Path(spec["result_path"]).write_text(json.dumps(result))


# --------------------------------------------------------------------------- coordinator


@dataclass
class Group:
    """``procs`` worker processes sharing ``clients``/``conns``/``watchers`` of one mode."""

    mode: str
    procs: int = 1
    clients: int = 1
    conns: int = 1
    measured: bool = True
    params: dict[str, Any] = field(default_factory=dict)

    def specs(self, endpoints: list[str], pb: str) -> list[dict[str, Any]]:
        procs = max(1, self.procs if self.mode == "watch" else min(self.procs, self.clients))
        out = []
        for p in range(procs):
            share = lambda n: n // procs + (1 if p < n % procs else 0)  # noqa: E731
            spec = {
                "mode": self.mode,
                "endpoints": endpoints,
                "pb": pb,
                "index": p,
                "clients": max(1, share(self.clients)),
                "conns": max(1, share(self.conns)),
                **self.params,
            }
            if "watchers" in self.params:
                spec["watchers"] = share(int(self.params["watchers"]))
                spec["streams"] = max(1, share(int(self.params.get("streams", 1))))
                spec["conns"] = max(1, min(spec["conns"], spec["streams"]))
            out.append(spec)
        return out


@dataclass
class PyResult:
    """Merged result of the measured groups (and the watchers' figures, if any)."""

    ops: int
    errors: int
    ops_per_s: float
    lat_us: list[int]
    cpu_s: float
    elapsed: float
    procs: int
    counts: dict[str, int]
    error_kinds: dict[str, int]
    extra: dict[str, Any]


class PyLoadError(RuntimeError):
    """The Python load generator failed."""


def run_groups(
    endpoints: list[str],
    groups: list[Group],
    duration: float,
    warmup: float = 0.5,
    pb: str = "kvstore.pb",
    python: str = sys.executable,
    ready_timeout: float = 60.0,
    on_mark: Callable[[], None] | None = None,
    on_stop: Callable[[], None] | None = None,
) -> dict[str, PyResult]:
    """Run every group's workers together; return one merged result per group mode.

    ``on_mark``/``on_stop`` are called as the measured window opens and closes.
    """
    procs: list[tuple[Group, subprocess.Popen[str], Path, Path]] = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-pyload-"))
    try:
        for g in groups:
            for spec in g.specs(endpoints, pb):
                n = len(procs)
                result_path, err_path = tmp / f"w{n}.json", tmp / f"w{n}.err"
                spec["result_path"] = str(result_path)
                with open(err_path, "w") as err_file:
                    p = subprocess.Popen(
                        [python, "-m", "bench.pyload", json.dumps(spec)],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=err_file,
                        text=True,
                        cwd=str(REPO_ROOT),
                    )
                procs.append((g, p, result_path, err_path))
        deadline = time.monotonic() + ready_timeout
        for g, p, _, err_path in procs:
            line = _readline(p, deadline)
            if line.strip() != "READY":
                if p.poll() is None:
                    p.kill()
                    p.wait()
                raise PyLoadError(
                    f"pyload {g.mode} worker not ready: {line.strip()!r}\n{_tail(err_path)}"
                )

        def send(cmd: str) -> None:
            for _, p, _, _ in procs:
                assert p.stdin is not None
                try:
                    p.stdin.write(cmd + "\n")
                    p.stdin.flush()
                except BrokenPipeError:
                    pass

        # Every worker finished its setup (connections, watchers) before READY.
        send("GO")
        time.sleep(warmup)
        if on_mark:
            on_mark()
        send("MARK")
        time.sleep(duration)
        send("STOP")
        if on_stop:
            on_stop()
        raw: dict[str, list[dict[str, Any]]] = {}
        for g, p, result_path, err_path in procs:
            assert p.stdin is not None
            p.stdin.close()
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if p.returncode != 0 or not result_path.exists():
                raise PyLoadError(
                    f"pyload {g.mode} worker failed (rc={p.returncode}):\n{_tail(err_path)}"
                )
            raw.setdefault(g.mode, []).append(json.loads(result_path.read_text()))
        return {mode: merge(rs) for mode, rs in raw.items()}
    finally:
        for _, p, _, _ in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            if p.stdout is not None:
                p.stdout.close()
            if p.stdin is not None and not p.stdin.closed:
                try:
                    p.stdin.close()
                except BrokenPipeError:
                    pass
        shutil.rmtree(tmp, ignore_errors=True)


def _tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def _readline(p: subprocess.Popen[str], deadline: float) -> str:
    import select

    assert p.stdout is not None
    while time.monotonic() < deadline:
        r, _, _ = select.select([p.stdout], [], [], 0.2)
        if r:
            return p.stdout.readline()
        if p.poll() is not None:
            return p.stdout.readline()
    return ""


def merge(results: list[dict[str, Any]]) -> PyResult:
    """Merge the JSON results of the workers of one group."""
    lat: list[int] = []
    counts: dict[str, int] = {}
    kinds: dict[str, int] = {}
    extra: dict[str, Any] = {}
    for r in results:
        lat.extend(r["lat_us"])
        for k, v in r["counts"].items():
            counts[k] = counts.get(k, 0) + v
        for k, v in r["error_kinds"].items():
            kinds[k] = kinds.get(k, 0) + v
        for k, v in r["extra"].items():
            if isinstance(v, (int, float)) and isinstance(extra.get(k, 0), (int, float)):
                extra[k] = extra.get(k, 0) + v
            elif isinstance(v, list):
                extra.setdefault(k, []).extend(v)
            else:
                extra[k] = v
    rate = sum(r["ops"] / r["elapsed"] for r in results if r["elapsed"] > 0)
    lat.sort()
    return PyResult(
        ops=sum(r["ops"] for r in results),
        errors=sum(r["errors"] for r in results),
        ops_per_s=rate,
        lat_us=lat,
        cpu_s=sum(r["cpu"] for r in results),
        elapsed=max((r["elapsed"] for r in results), default=0.0),
        procs=len(results),
        counts=counts,
        error_kinds=kinds,
        extra=extra,
    )


if __name__ == "__main__":
    worker_main(sys.argv[1])
