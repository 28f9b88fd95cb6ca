"""kvctl's etcdctl-style commands: key-value, txn, watch, lease, member,
endpoint, maintenance, snapshot, lock/elect without a command."""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from .. import __version__
from ..client import Client, ClientError, KeyValue, Unavailable
from ..client.model import DeleteResult, Header, PutResult, RangeResult, TxnResult
from . import output as O
from .__main__ import CliError, hex_id

DEFAULT_ENDPOINT = "127.0.0.1:2379"


# -- shared -------------------------------------------------------------------------------------


def endpoints_of(args: argparse.Namespace) -> str:
    return (args.endpoints or os.environ.get("KVCTL_ENDPOINTS") or os.environ.get("ETCDCTL_ENDPOINTS")
            or DEFAULT_ENDPOINT)


def client_options(args: argparse.Namespace) -> dict[str, Any]:
    return dict(timeout=args.command_timeout, dial_timeout=args.dial_timeout, user=args.user,
                password=args.password, ca_cert=args.cacert, cert=args.cert, key=args.tls_key)


def make_client(args: argparse.Namespace, endpoints: str | list[str] | None = None) -> Client:
    try:
        return Client(endpoints or endpoints_of(args), **client_options(args))
    except (ValueError, OSError) as e:
        raise CliError(str(e)) from None


def fmt(args: argparse.Namespace, default: str = "simple") -> str:
    return args.write_out or default


def header_json(h: Header) -> dict[str, int]:
    return {"cluster_id": h.cluster_id, "member_id": h.member_id, "revision": h.revision, "raft_term": h.raft_term}


def kv_json(kv: KeyValue) -> dict[str, Any]:
    return {"key": O.jbytes(kv.key), "value": O.jbytes(kv.value), "create_revision": kv.create_revision,
            "mod_revision": kv.mod_revision, "version": kv.version, "lease": kv.lease}


def print_kv(kv: KeyValue, keys_only: bool = False, value_only: bool = False) -> None:
    if not value_only:
        print(O.text(kv.key))
    if not keys_only:
        print(O.text(kv.value))


def _add(sub: Any, g: argparse.ArgumentParser, name: str, help_: str, func: Callable[[argparse.Namespace], Any],
         **kw: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(name, parents=[g], help=help_, description=help_, **kw)
    p.set_defaults(func=func)
    return p


@contextlib.contextmanager
def signals_stop(stop: threading.Event) -> Iterator[None]:
    """Inside: SIGINT/SIGTERM set ``stop`` (a clean exit) instead of
    interrupting. Enter it before printing anything a script may react to
    with a signal (main thread)."""
    def handler(signum: int, frame: Any) -> None:
        stop.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def wait_stop(stop: threading.Event) -> None:
    # A bounded wait: the main thread runs signal handlers between waits.
    while not stop.wait(0.2):
        pass


# -- key-value ------------------------------------------------------------------------------------


def cmd_put(args: argparse.Namespace) -> int:
    value = args.value
    if value is None:
        if args.ignore_value:
            value = ""
        else:
            value = sys.stdin.read()
    with make_client(args) as c:
        r: PutResult = c.put(args.key, value, lease=args.lease, prev_kv=args.prev_kv,
                             ignore_value=args.ignore_value, ignore_lease=args.ignore_lease)
    if fmt(args) == "json":
        O.dump_json({"header": header_json(r.header), "prev_kv": kv_json(r.prev_kv) if r.prev_kv else None})
    else:
        print("OK")
        if r.prev_kv is not None:
            print_kv(r.prev_kv)
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    with make_client(args) as c:
        r: RangeResult = c.range(args.key, args.range_end, prefix=args.prefix, from_key=args.from_key,
                                 revision=args.rev, limit=args.limit, keys_only=args.keys_only,
                                 count_only=args.count_only, serializable=args.consistency == "s",
                                 sort_order=args.order.lower(), sort_target=args.sort_by.lower())
    f = fmt(args)
    if f == "json":
        O.dump_json({"header": header_json(r.header), "count": r.count, "more": r.more,
                     "kvs": [kv_json(kv) for kv in r.kvs]})
    elif f == "table":
        if args.count_only:
            O.table(["count", "revision"], [[r.count, r.revision]])
        else:
            O.table(["key", "value", "create rev", "mod rev", "version", "lease"],
                    [[O.text(kv.key), O.text(kv.value), kv.create_revision, kv.mod_revision, kv.version,
                      f"{kv.lease:x}" if kv.lease else ""] for kv in r.kvs])
    else:
        if args.count_only:
            print(r.count)
        for kv in r.kvs:
            print_kv(kv, keys_only=args.keys_only, value_only=args.print_value_only)
    return 0


def cmd_del(args: argparse.Namespace) -> int:
    with make_client(args) as c:
        r: DeleteResult = c.delete(args.key, args.range_end, prefix=args.prefix, from_key=args.from_key,
                                   prev_kv=args.prev_kv)
    if fmt(args) == "json":
        O.dump_json({"header": header_json(r.header), "deleted": r.deleted,
                     "prev_kvs": [kv_json(kv) for kv in r.prev_kvs]})
    else:
        print(r.deleted)
        for kv in r.prev_kvs:
            print_kv(kv)
    return 0


def cmd_compaction(args: argparse.Namespace) -> int:
    with make_client(args) as c:
        c.compact(args.revision, physical=args.physical)
    if fmt(args) == "json":
        O.dump_json({"compacted": args.revision})
    else:
        print(f"compacted revision {args.revision}")
    return 0


# -- txn -----------------------------------------------------------------------------------------


def _read_section(prompt: str, interactive: bool, stream: Any) -> list[str]:
    if interactive:
        print(prompt, file=sys.stderr)
    lines: list[str] = []
    while True:
        line = stream.readline()
        if not line or not line.strip():
            return lines
        lines.append(line)


def print_txn(r: TxnResult) -> None:
    print("SUCCESS" if r.succeeded else "FAILURE")
    for resp in r.responses:
        print()
        if isinstance(resp, PutResult):
            print("OK")
        elif isinstance(resp, DeleteResult):
            print(resp.deleted)
        elif isinstance(resp, RangeResult):
            for kv in resp.kvs:
                print_kv(kv)
        elif isinstance(resp, TxnResult):
            print_txn(resp)


def txn_json(r: TxnResult) -> dict[str, Any]:
    out: list[Any] = []
    for resp in r.responses:
        if isinstance(resp, PutResult):
            out.append({"put": {"prev_kv": kv_json(resp.prev_kv) if resp.prev_kv else None}})
        elif isinstance(resp, DeleteResult):
            out.append({"delete": {"deleted": resp.deleted, "prev_kvs": [kv_json(k) for k in resp.prev_kvs]}})
        elif isinstance(resp, RangeResult):
            out.append({"range": {"count": resp.count, "more": resp.more, "kvs": [kv_json(k) for k in resp.kvs]}})
        elif isinstance(resp, TxnResult):
            out.append({"txn": txn_json(resp)})
    return {"header": header_json(r.header), "succeeded": r.succeeded, "responses": out}


def cmd_txn(args: argparse.Namespace) -> int:
    from .txnparse import TxnSyntaxError, parse_compare, parse_request

    stream = open(args.file) if args.file and args.file != "-" else sys.stdin
    try:
        try:
            cmps = [parse_compare(x) for x in _read_section("compares:", args.interactive, stream)]
            ok = [parse_request(x) for x in _read_section("success requests (get, put, del):", args.interactive,
                                                          stream)]
            bad = [parse_request(x) for x in _read_section("failure requests (get, put, del):", args.interactive,
                                                           stream)]
        except TxnSyntaxError as e:
            raise CliError(f"txn: {e}") from None
    finally:
        if stream is not sys.stdin:
            stream.close()
    with make_client(args) as c:
        r = c.txn().if_(*cmps).then(*ok).else_(*bad).commit()
    if fmt(args) == "json":
        O.dump_json(txn_json(r))
    else:
        print_txn(r)
    return 0


# -- watch ---------------------------------------------------------------------------------------


def cmd_watch(args: argparse.Namespace) -> int:
    import subprocess

    c = make_client(args)
    stop = threading.Event()
    try:
        w = c.watch(args.key, args.range_end, prefix=args.prefix, start_revision=args.rev, prev_kv=args.prev_kv)
        as_json = fmt(args) == "json"

        def pump() -> None:
            try:
                for ev in w:
                    if as_json:
                        d = {"type": ev.type, "revision": ev.revision, "kv": kv_json(ev.kv)}
                        if ev.prev_kv is not None:
                            d["prev_kv"] = kv_json(ev.prev_kv)
                        O.dump_json(d)
                    else:
                        print(ev.type)
                        if ev.prev_kv is not None:
                            print_kv(ev.prev_kv)
                        print_kv(ev.kv, keys_only=ev.type == "DELETE")
                        sys.stdout.flush()
                    if args.child_argv:
                        env = dict(os.environ, KVCTL_WATCH_EVENT_TYPE=ev.type, KVCTL_WATCH_KEY=O.text(ev.key),
                                   KVCTL_WATCH_VALUE=O.text(ev.value), KVCTL_WATCH_REVISION=str(ev.revision))
                        subprocess.run(args.child_argv, env=env)
            except ClientError as e:
                pump.error = e  # type: ignore[attr-defined]
            finally:
                stop.set()

        t = threading.Thread(target=pump, daemon=True)
        with signals_stop(stop):
            t.start()
            wait_stop(stop)
        w.close()
        err = getattr(pump, "error", None)
        if err is not None:
            raise err
    finally:
        c.close()
    return 0


# -- lease -----------------------------------------------------------------------------------------


def cmd_lease_grant(args: argparse.Namespace) -> int:
    with make_client(args) as c:
        g = c.grant(args.ttl)
    if fmt(args) == "json":
        O.dump_json({"id": g.id, "id_hex": f"{g.id:x}", "ttl": g.ttl, "header": header_json(g.header)})
    else:
        print(f"lease {g.id:x} granted with TTL({g.ttl}s)")
    return 0


def cmd_lease_revoke(args: argparse.Namespace) -> int:
    with make_client(args) as c:
        c.revoke(args.id)
    if fmt(args) == "json":
        O.dump_json({"id": args.id, "id_hex": f"{args.id:x}", "revoked": True})
    else:
        print(f"lease {args.id:x} revoked")
    return 0


def cmd_lease_ttl(args: argparse.Namespace) -> int:
    with make_client(args) as c:
        t = c.time_to_live(args.id, keys=args.keys)
    if fmt(args) == "json":
        O.dump_json({"id": t.id, "id_hex": f"{t.id:x}", "ttl": t.ttl, "granted_ttl": t.granted_ttl,
                     "keys": [O.jbytes(k) for k in t.keys]})
    elif t.ttl == -1:
        print(f"lease {args.id:x} already expired")
    else:
        line = f"lease {t.id:x} granted with TTL({t.granted_ttl}s), remaining({t.ttl}s)"
        if args.keys:
            line += f", attached keys([{' '.join(O.text(k) for k in t.keys)}])"
        print(line)
    return 0


def cmd_lease_list(args: argparse.Namespace) -> int:
    with make_client(args) as c:
        ids = c.leases()
        rows = []
        for lid in ids:
            t = c.time_to_live(lid)
            rows.append((lid, t.granted_ttl, t.ttl))
    f = fmt(args, "table")
    if f == "json":
        O.dump_json({"leases": [{"id": i, "id_hex": f"{i:x}", "granted_ttl": g, "ttl": t} for i, g, t in rows]})
    elif f == "table":
        O.table(["id", "granted ttl", "remaining ttl"], [[f"{i:x}", g, t] for i, g, t in rows])
    else:
        print(f"found {len(rows)} leases")
        for i, _, _ in rows:
            print(f"{i:x}")
    return 0


def cmd_lease_keepalive(args: argparse.Namespace) -> int:
    c = make_client(args)
    stop = threading.Event()
    result: dict[str, Any] = {}
    as_json = fmt(args) == "json"

    def loop() -> None:
        try:
            while not stop.is_set():
                ttl = c.keep_alive_once(args.id)
                if ttl <= 0:
                    result["error"] = CliError(f"lease {args.id:x} expired or revoked")
                    return
                if as_json:
                    O.dump_json({"id": args.id, "id_hex": f"{args.id:x}", "ttl": ttl})
                else:
                    print(f"lease {args.id:x} keepalived with TTL({ttl})", flush=True)
                if args.once:
                    return
                stop.wait(max(0.5, ttl / 3))
        except ClientError as e:
            result["error"] = e
        finally:
            stop.set()

    try:
        t = threading.Thread(target=loop, daemon=True)
        with signals_stop(stop):
            t.start()
            wait_stop(stop)
        t.join(1.0)
    finally:
        c.close()
    if "error" in result:
        raise result["error"]
    return 0


# -- member ----------------------------------------------------------------------------------------


def _member_rows(members: list) -> list[list[Any]]:
    return [[f"{m.id:x}", "started" if m.name else "unstarted", m.name, ",".join(m.peer_urls),
             ",".join(m.client_urls), str(m.is_learner).lower()] for m in members]


def _members_json(members: list) -> list[dict[str, Any]]:
    return [{"id": m.id, "id_hex": f"{m.id:x}", "name": m.name, "peer_urls": m.peer_urls,
             "client_urls": m.client_urls, "is_learner": m.is_learner} for m in members]


def cmd_member_list(args: argparse.Namespace) -> int:
    with make_client(args) as c:
        ms = c.member_list()
    f = fmt(args, "table")
    if f == "json":
        O.dump_json({"members": _members_json(ms)})
    elif f == "table":
        O.table(["id", "status", "name", "peer addrs", "client addrs", "is learner"], _member_rows(ms))
    else:
        for r in _member_rows(ms):
            print(", ".join(r))
    return 0


def cmd_member_add(args: argparse.Namespace) -> int:
    urls = [u.strip() for u in args.peer_urls.split(",") if u.strip()]
    if not urls:
        raise CliError("member add: --peer-urls is required")
    with make_client(args) as c:
        new, ms = c.member_add(urls, learner=args.learner)
        cid = c.status().header.cluster_id if fmt(args) != "json" else 0
    if fmt(args) == "json":
        O.dump_json({"member": _members_json([new])[0], "members": _members_json(ms)})
        return 0
    kind = "Member" if not args.learner else "Learner member"
    print(f"{kind} {new.id:x} added to cluster {cid:x}")
    parts = []
    for m in ms:
        name = args.name if m.id == new.id else m.name
        if name:
            parts.extend(f"{name}={u}" for u in m.peer_urls)
    print()
    print(f'KVSTORE_NAME="{args.name}"')
    print(f'KVSTORE_INITIAL_CLUSTER="{",".join(parts)}"')
    print(f'KVSTORE_INITIAL_ADVERTISE_PEER_URLS="{",".join(urls)}"')
    print('KVSTORE_INITIAL_CLUSTER_STATE="existing"')
    return 0


def cmd_member_remove(args: argparse.Namespace) -> int:
    with make_client(args) as c:
        c.member_remove(args.id)
        cid = c.status().header.cluster_id
    if fmt(args) == "json":
        O.dump_json({"removed": args.id, "id_hex": f"{args.id:x}"})
    else:
        print(f"Member {args.id:x} removed from cluster {cid:x}")
    return 0


def cmd_member_promote(args: argparse.Namespace) -> int:
    with make_client(args) as c:
        c.member_promote(args.id)
        cid = c.status().header.cluster_id
    if fmt(args) == "json":
        O.dump_json({"promoted": args.id, "id_hex": f"{args.id:x}"})
    else:
        print(f"Member {args.id:x} promoted in cluster {cid:x}")
    return 0


def cmd_member_update(args: argparse.Namespace) -> int:
    urls = [u.strip() for u in args.peer_urls.split(",") if u.strip()]
    with make_client(args) as c:
        c.member_update(args.id, urls)
        cid = c.status().header.cluster_id
    if fmt(args) == "json":
        O.dump_json({"updated": args.id, "id_hex": f"{args.id:x}", "peer_urls": urls})
    else:
        print(f"Member {args.id:x} updated in cluster {cid:x}")
    return 0


# -- endpoint ----------------------------------------------------------------------------------------


def _target_endpoints(args: argparse.Namespace, c: Client) -> list[str]:
    if not args.cluster:
        return c.endpoints
    eps: list[str] = []
    for m in c.member_list():
        for u in m.client_urls:
            if u not in eps:
                eps.append(u)
    if not eps:
        raise CliError("no member has published client URLs yet")
    return eps


def _target(url: str) -> str:
    from ..client.core import Endpoint

    return Endpoint.parse(url).target


def cmd_endpoint_status(args: argparse.Namespace) -> int:
    with make_client(args) as c:
        eps = _target_endpoints(args, c)
    rows, failed = [], []
    with make_client(args, eps) as c:
        for ep in eps:
            try:
                rows.append((ep, c.status(_target(ep))))
            except ClientError as e:
                failed.append(f"{ep}: {e.message}")
    f = fmt(args, "table")
    if f == "json":
        O.dump_json([{"endpoint": ep, "member_id": s.member_id, "member_id_hex": f"{s.member_id:x}",
                      "version": s.version, "db_size": s.db_size, "db_size_in_use": s.db_size_in_use,
                      "leader": s.leader, "is_leader": s.is_leader, "is_learner": s.is_learner,
                      "raft_term": s.raft_term, "raft_index": s.raft_index,
                      "raft_applied_index": s.raft_applied_index, "errors": s.errors} for ep, s in rows])
    elif f == "table":
        O.table(["endpoint", "id", "version", "db size", "is leader", "is learner", "raft term", "raft index",
                 "raft applied index", "errors"],
                [[ep, f"{s.member_id:x}", s.version, O.human_size(s.db_size), str(s.is_leader).lower(),
                  str(s.is_learner).lower(), s.raft_term, s.raft_index, s.raft_applied_index, ", ".join(s.errors)]
                 for ep, s in rows])
    else:
        for ep, s in rows:
            print(", ".join([ep, f"{s.member_id:x}", s.version, O.human_size(s.db_size), str(s.is_leader).lower(),
                             str(s.is_learner).lower(), str(s.raft_term), str(s.raft_index),
                             str(s.raft_applied_index), ", ".join(s.errors)]))
    for line in failed:
        print(f"Failed to get the status of endpoint {line}", file=sys.stderr)
    return 1 if failed else 0


def cmd_endpoint_health(args: argparse.Namespace) -> int:
    with make_client(args) as c:
        eps = _target_endpoints(args, c)
    rows = []
    with make_client(args, eps) as c:
        for ep in eps:
            start = time.monotonic()
            err = ""
            try:
                # etcdctl's check: a linearizable read succeeds (permission denied still proves health).
                c._run(_health_call(_target(ep), args.command_timeout))
            except ClientError as e:
                if "permission denied" not in e.message:
                    err = e.message
            rows.append((ep, not err, time.monotonic() - start, err))
    f = fmt(args, "table")
    if f == "json":
        O.dump_json([{"endpoint": ep, "health": ok, "took": f"{took * 1000:.3f}ms", "error": err}
                     for ep, ok, took, err in rows])
    elif f == "table":
        O.table(["endpoint", "health", "took", "error"],
                [[ep, str(ok).lower(), f"{took * 1000:.3f}ms", err] for ep, ok, took, err in rows])
    else:
        for ep, ok, took, err in rows:
            if ok:
                print(f"{ep} is healthy: successfully committed proposal: took = {took * 1000:.3f}ms")
            else:
                print(f"{ep} is unhealthy: failed to commit proposal: {err}", file=sys.stderr)
    return 0 if all(ok for _, ok, _, _ in rows) else 1


def _health_call(endpoint: str, timeout: float) -> Any:
    from ..client.core import Call
    from ..client.model import range_request

    return Call("KV", "Range", range_request("health"), lambda r: r, True, f"health {endpoint}", timeout,
                endpoint=endpoint)


# -- maintenance ---------------------------------------------------------------------------------------


def cmd_alarm_list(args: argparse.Namespace) -> int:
    with make_client(args) as c:
        alarms = c.alarms()
    f = fmt(args)
    if f == "json":
        O.dump_json({"alarms": [{"member_id": a.member_id, "member_id_hex": f"{a.member_id:x}", "alarm": a.alarm}
                                for a in alarms]})
    elif f == "table":
        O.table(["member id", "alarm"], [[f"{a.member_id:x}", a.alarm] for a in alarms])
    else:
        for a in alarms:
            print(f"memberID:{a.member_id} alarm:{a.alarm} ")
    return 0


def cmd_alarm_disarm(args: argparse.Namespace) -> int:
    with make_client(args) as c:
        alarms = c.alarm_disarm()
    if fmt(args) == "json":
        O.dump_json({"disarmed": [{"member_id": a.member_id, "alarm": a.alarm} for a in alarms]})
    else:
        for a in alarms:
            print(f"memberID:{a.member_id} alarm:{a.alarm} ")
    return 0


def cmd_defrag(args: argparse.Namespace) -> int:
    with make_client(args) as c:
        eps = _target_endpoints(args, c)
    failed = 0
    prog = O.Progress("defrag")
    with make_client(args, eps) as c:
        for i, ep in enumerate(eps):
            done = threading.Event()
            box: dict[str, Any] = {}

            def work(target: str = _target(ep)) -> None:
                try:
                    c.defragment(target, timeout=max(args.command_timeout, 60.0))
                except ClientError as e:
                    box["error"] = e
                finally:
                    done.set()

            threading.Thread(target=work, daemon=True).start()
            while not done.wait(0.1):
                prog.label = f"defrag {ep} ({i + 1}/{len(eps)})"
                prog.update(0, 0)
            if prog._drawn:
                prog.finish()
                prog._drawn = False
            if "error" in box:
                failed += 1
                print(f"Failed to defragment etcd member[{ep}] ({box['error'].message})", file=sys.stderr)
            elif fmt(args) == "json":
                O.dump_json({"endpoint": ep, "defragmented": True})
            else:
                print(f"Finished defragmenting etcd member[{ep}]")
    return 1 if failed else 0


def cmd_version(args: argparse.Namespace) -> int:
    if fmt(args) == "json":
        O.dump_json({"kvctl": __version__, "api": "3.4"})
    else:
        print(f"kvctl version: {__version__}\nAPI version: 3.4")
    return 0


# -- snapshot ---------------------------------------------------------------------------------------------


def cmd_snapshot_save(args: argparse.Namespace) -> int:
    path = args.file
    part = path + ".part"
    prog = O.Progress("snapshot")
    eps = endpoints_of(args).split(",")
    # etcdctl: a snapshot comes from one member (the first endpoint).
    with make_client(args, eps[:1] if len(eps) > 1 and not args.any_endpoint else eps) as c:
        try:
            with open(part, "wb") as f:
                info = c.snapshot(f, progress=prog.update, timeout=None)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            try:
                os.unlink(part)
            except OSError:
                pass
            raise
        finally:
            prog.finish()
    os.replace(part, path)
    dirfd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)
    if fmt(args) == "json":
        O.dump_json({"path": path, "size": info.size, "sha256": info.sha256.hex(), "endpoint": info.endpoint,
                     "revision": info.revision})
    else:
        print(f"Snapshot saved at {path}")
    return 0


def cmd_snapshot_status(args: argparse.Namespace) -> int:
    from .snapshot import SnapshotError, status

    try:
        st = status(args.file)
    except SnapshotError as e:
        raise CliError(str(e)) from None
    f = fmt(args, "table")
    if f == "json":
        O.dump_json({"hash": st.hash, "revision": st.revision, "totalKey": st.total_keys, "totalSize": st.total_size,
                     "format": st.format})
    elif f == "table":
        O.table(["hash", "revision", "total keys", "total size"],
                [[f"{st.hash:x}", st.revision, st.total_keys, O.human_size(st.total_size)]])
    else:
        print(f"{st.hash:x}, {st.revision}, {st.total_keys}, {O.human_size(st.total_size)}")
    return 0


def cmd_snapshot_restore(args: argparse.Namespace) -> int:
    from .snapshot import SnapshotError, restore

    name = args.name
    peer = args.initial_advertise_peer_urls or "http://127.0.0.1:2380"
    argv = ["--name", name, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", args.initial_cluster or f"{name}={peer}",
            "--initial-cluster-token", args.initial_cluster_token,
            "--data-dir", args.data_dir or f"{name}.kvstore"]
    try:
        d = restore(args.file, argv, skip_hash_check=args.skip_hash_check)
    except SnapshotError as e:
        raise CliError(str(e)) from None
    if fmt(args) == "json":
        O.dump_json({"data_dir": d, "name": name})
    else:
        print(f"Restored snapshot {args.file} into {d} (member {name})")
    return 0


# -- lock / elect without a command ----------------------------------------------------------------------


def cmd_lock_hold(args: argparse.Namespace) -> int:
    c = make_client(args)
    try:
        lk = c.lock(args.name, ttl=args.ttl)
        lk.acquire(timeout=args.timeout)
        stop = threading.Event()
        assert lk.lease is not None
        lk.lease.on_lost(lambda _l: stop.set())
        with signals_stop(stop):
            if fmt(args) == "json":
                O.dump_json({"key": O.jbytes(lk.key), "revision": lk.revision})
            else:
                print(O.text(lk.key), flush=True)
            wait_stop(stop)
        lost = lk.lease.lost.is_set() and lk.lease.lost_reason != "revoked"
        try:
            lk.release()
        except ClientError:
            pass
        if lost:
            raise CliError(f"lock {args.name}: lost ({lk.lease.lost_reason})")
    finally:
        c.close()
    return 0


def cmd_elect_hold(args: argparse.Namespace) -> int:
    c = make_client(args)
    try:
        e = c.election(args.name)
        if args.listen:
            obs = e.observe()
            stop = threading.Event()

            def pump() -> None:
                for kv in obs:
                    if fmt(args) == "json":
                        O.dump_json(kv_json(kv))
                    else:
                        print(O.text(kv.key))
                        print(O.text(kv.value), flush=True)

            with signals_stop(stop):
                threading.Thread(target=pump, daemon=True).start()
                wait_stop(stop)
            obs.close()
            return 0
        if args.proposal is None:
            raise CliError("elect: a proposal is required (or --listen, or -- CMD)")
        ld = e.campaign(args.proposal, ttl=args.ttl)
        stop = threading.Event()
        ld.lease.on_lost(lambda _l: stop.set())
        with signals_stop(stop):
            if fmt(args) == "json":
                O.dump_json({"key": O.jbytes(ld.key), "revision": ld.revision, "value": args.proposal})
            else:
                print(O.text(ld.key))
                print(args.proposal, flush=True)
            wait_stop(stop)
        lost = ld.lease.lost.is_set()
        try:
            ld.resign()
        except ClientError:
            pass
        if lost:
            raise CliError(f"elect {args.name}: leadership lost ({ld.lease.lost_reason})")
    finally:
        c.close()
    return 0


# -- registration ------------------------------------------------------------------------------------------


def register(sub: Any, g: argparse.ArgumentParser) -> None:
    p = _add(sub, g, "put", "put a key", cmd_put)
    p.add_argument("key")
    p.add_argument("value", nargs="?", help="the value (read from stdin if omitted)")
    p.add_argument("--lease", type=hex_id, default=0, help="attach to this lease (hex ID)")
    p.add_argument("--prev-kv", action="store_true", help="print the previous key-value")
    p.add_argument("--ignore-value", action="store_true", help="keep the current value")
    p.add_argument("--ignore-lease", action="store_true", help="keep the current lease")

    p = _add(sub, g, "get", "get a key or a range of keys", cmd_get)
    p.add_argument("key")
    p.add_argument("range_end", nargs="?")
    p.add_argument("--prefix", action="store_true", help="every key with this prefix")
    p.add_argument("--from-key", action="store_true", help="every key >= KEY")
    p.add_argument("--rev", type=int, default=0, help="read at this revision")
    p.add_argument("--limit", type=int, default=0, help="at most this many keys")
    p.add_argument("--keys-only", action="store_true", help="keys only")
    p.add_argument("--count-only", action="store_true", help="the number of keys only")
    p.add_argument("--print-value-only", action="store_true", help="values only")
    p.add_argument("--order", default="NONE", choices=["NONE", "ASCEND", "DESCEND", "none", "ascend", "descend"])
    p.add_argument("--sort-by", default="KEY",
                   choices=["KEY", "VERSION", "CREATE", "MODIFY", "VALUE", "key", "version", "create", "modify",
                            "value"])
    p.add_argument("--consistency", default="l", choices=["l", "s"], help="l: linearizable, s: serializable")

    p = _add(sub, g, "del", "delete a key or a range of keys", cmd_del)
    p.add_argument("key")
    p.add_argument("range_end", nargs="?")
    p.add_argument("--prefix", action="store_true")
    p.add_argument("--from-key", action="store_true")
    p.add_argument("--prev-kv", action="store_true", help="print the deleted key-values")

    p = _add(sub, g, "txn", "run a transaction read from stdin (etcdctl syntax) or --file", cmd_txn)
    p.add_argument("-i", "--interactive", action="store_true", help="prompt for each section")
    p.add_argument("--file", help="read the transaction from this file ('-' = stdin)")

    p = _add(sub, g, "watch", "watch a key or range; print events (-- CMD: run CMD on each event)", cmd_watch)
    p.add_argument("key")
    p.add_argument("range_end", nargs="?")
    p.add_argument("--prefix", action="store_true")
    p.add_argument("--rev", type=int, default=0, help="start at this revision")
    p.add_argument("--prev-kv", action="store_true")

    p = _add(sub, g, "compaction", "compact the history up to a revision", cmd_compaction)
    p.add_argument("revision", type=int)
    p.add_argument("--physical", action="store_true", help="wait until the space is reclaimed")

    lease = sub.add_parser("lease", help="lease commands", parents=[g])
    ls = lease.add_subparsers(dest="lease_cmd", metavar="SUBCOMMAND", parser_class=type(lease))
    p = _add(ls, g, "grant", "grant a lease", cmd_lease_grant)
    p.add_argument("ttl", type=int)
    p = _add(ls, g, "revoke", "revoke a lease (and delete its keys)", cmd_lease_revoke)
    p.add_argument("id", type=hex_id)
    p = _add(ls, g, "timetolive", "remaining TTL of a lease", cmd_lease_ttl)
    p.add_argument("id", type=hex_id)
    p.add_argument("--keys", action="store_true", help="list the attached keys")
    _add(ls, g, "list", "list leases", cmd_lease_list)
    p = _add(ls, g, "keep-alive", "keep a lease alive until interrupted", cmd_lease_keepalive)
    p.add_argument("id", type=hex_id)
    p.add_argument("--once", action="store_true", help="renew once and exit")

    member = sub.add_parser("member", help="membership commands", parents=[g])
    ms = member.add_subparsers(dest="member_cmd", metavar="SUBCOMMAND", parser_class=type(member))
    _add(ms, g, "list", "list members", cmd_member_list)
    p = _add(ms, g, "add", "add a member", cmd_member_add)
    p.add_argument("name")
    p.add_argument("--peer-urls", required=True, help="comma-separated peer URLs of the new member")
    p.add_argument("--learner", action="store_true", help="add as a learner (non-voting)")
    p = _add(ms, g, "remove", "remove a member", cmd_member_remove)
    p.add_argument("id", type=hex_id)
    p = _add(ms, g, "promote", "promote a learner to a voting member", cmd_member_promote)
    p.add_argument("id", type=hex_id)
    p = _add(ms, g, "update", "update a member's peer URLs", cmd_member_update)
    p.add_argument("id", type=hex_id)
    p.add_argument("--peer-urls", required=True)

    endpoint = sub.add_parser("endpoint", help="endpoint commands", parents=[g])
    es = endpoint.add_subparsers(dest="endpoint_cmd", metavar="SUBCOMMAND", parser_class=type(endpoint))
    p = _add(es, g, "status", "status of each endpoint", cmd_endpoint_status)
    p.add_argument("--cluster", action="store_true", help="every member's client URLs (from member list)")
    p = _add(es, g, "health", "health of each endpoint", cmd_endpoint_health)
    p.add_argument("--cluster", action="store_true", help="every member's client URLs (from member list)")

    alarm = sub.add_parser("alarm", help="alarm commands", parents=[g])
    als = alarm.add_subparsers(dest="alarm_cmd", metavar="SUBCOMMAND", parser_class=type(alarm))
    _add(als, g, "list", "list raised alarms", cmd_alarm_list)
    _add(als, g, "disarm", "disarm every alarm", cmd_alarm_disarm)

    p = _add(sub, g, "defrag", "defragment the storage of each endpoint", cmd_defrag)
    p.add_argument("--cluster", action="store_true", help="every member's client URLs (from member list)")

    snap = sub.add_parser("snapshot", help="snapshot commands", parents=[g])
    ss = snap.add_subparsers(dest="snapshot_cmd", metavar="SUBCOMMAND", parser_class=type(snap))
    p = _add(ss, g, "save", "save a snapshot of the first endpoint's store to FILE", cmd_snapshot_save)
    p.add_argument("file")
    p.add_argument("--any-endpoint", action="store_true", help="fall back to the other endpoints")
    p = _add(ss, g, "status", "hash, revision, keys and size of a snapshot file", cmd_snapshot_status)
    p.add_argument("file")
    p = _add(ss, g, "restore", "create a new member's data directory from a snapshot", cmd_snapshot_restore)
    p.add_argument("file")
    p.add_argument("--name", default="default", help="this member's name")
    p.add_argument("--data-dir", help="new data directory (default <name>.kvstore); must not exist")
    p.add_argument("--initial-cluster", help="the new cluster: name=peerURL,... (default <name>=<peer URL>)")
    p.add_argument("--initial-cluster-token", default="kvstore-cluster")
    p.add_argument("--initial-advertise-peer-urls", help="this member's peer URLs (default http://127.0.0.1:2380)")
    p.add_argument("--skip-hash-check", action="store_true", help="accept a file without (or with a bad) digest")

    _add(sub, g, "version", "print the version", cmd_version)

    for parser, name in ((lease, "lease"), (member, "member"), (endpoint, "endpoint"), (alarm, "alarm"),
                         (snap, "snapshot")):
        parser.set_defaults(func=_missing_sub(parser, name))


def _missing_sub(parser: argparse.ArgumentParser, name: str) -> Callable[[argparse.Namespace], int]:
    def f(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        raise CliError(f"{name}: a subcommand is required", 2)

    return f


__all__ = ["Unavailable", "client_options", "endpoints_of", "make_client", "register"]
