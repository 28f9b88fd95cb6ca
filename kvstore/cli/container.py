"""Configuration and coordination for containers and services:

``kvctl exec --prefix P [--on-change restart|signal:HUP] [--debounce 1s] [--timeout 30s|--wait] -- CMD ARGS``
    Run CMD with the keys under P as environment variables (mapping in
    ``kvstore.cli.envmap``: /config/app/db-host → DB_HOST), on top of kvctl's
    own environment. When a key under P changes (debounced), restart CMD
    (SIGTERM, then SIGKILL after --grace) or send it a signal. SIGTERM, SIGINT,
    SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 are forwarded to CMD (run in its own
    process group); kvctl exits with CMD's exit status (128+N if killed by
    signal N) as soon as CMD exits on its own.

``kvctl render TEMPLATE OUTPUT --prefix P [--on-change CMD] [--once]``
    Render TEMPLATE (``kvstore.cli.template``) from the keys under P and write
    OUTPUT atomically (temporary file in the same directory, fsync, rename);
    then re-render after every change and run CMD (``/bin/sh -c``) each time
    OUTPUT's content changed.

``kvctl elect NAME [--ttl 10] [--grace 10s] -- CMD ARGS``
    Campaign (v3election with a lease kept alive); run CMD while leader. When
    leadership is lost (the lease expired or could not be renewed within its
    TTL, or the election shows another leader) stop CMD (SIGTERM, then SIGKILL
    after --grace) and campaign again. CMD gets KVCTL_ELECTION_KEY and
    KVCTL_ELECTION_REV (the fencing token), KVCTL_LEASE_ID.

``kvctl lock NAME [--ttl 10] [--timeout T] -- CMD ARGS``
    Acquire the lock, run CMD, release the lock when CMD exits and exit with
    its status. CMD gets KVCTL_LOCK_KEY and KVCTL_LOCK_REV (fencing token). If
    the lock is lost while CMD runs, CMD is stopped and kvctl exits with 1.

On Linux a command never outlives kvctl: if kvctl dies (even by SIGKILL) the
kernel sends CMD SIGTERM (exec) or SIGKILL (elect, lock: exclusion matters).

Until the store is reachable at start, exec and render retry with back-off
and give up after --timeout (default 30s), or never with --wait.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ..client import AsyncClient, ClientError, Unavailable, WatchCompacted, WatchError
from ..client.backoff import Backoff, Deadline
from ..client.model import Event, RangeResult
from . import OWN_ENV
from . import template as T
from .__main__ import CliError, duration
from .commands import client_options, endpoints_of
from .envmap import build_env

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
STOPPING = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)

R = TypeVar("R")


def logger(cmd: str) -> Callable[[str], None]:
    def log(msg: str) -> None:
        print(f"kvctl {cmd}: {msg}", file=sys.stderr, flush=True)

    return log


def parse_signal(text: str) -> signal.Signals:
    t = text.strip().upper()
    if t.isdigit():
        try:
            return signal.Signals(int(t))
        except ValueError:
            pass
    else:
        name = t if t.startswith("SIG") else "SIG" + t
        if hasattr(signal.Signals, name):
            return signal.Signals[name]
    raise CliError(f"unknown signal {text!r}", 2)


def parse_on_change(text: str) -> signal.Signals | None:
    """'restart' → None; 'signal:HUP' → SIGHUP."""
    if text == "restart":
        return None
    if text.startswith("signal:"):
        return parse_signal(text.split(":", 1)[1])
    raise CliError(f"--on-change must be 'restart' or 'signal:NAME', got {text!r}", 2)


def exit_status(rc: int | None) -> int:
    if rc is None:
        return 1
    return 128 - rc if rc < 0 else rc


# Run CMD through a tiny exec wrapper that asks Linux to signal it when kvctl
# dies (PR_SET_PDEATHSIG survives execve), so a command never outlives kvctl.
# A wrapper rather than a preexec_fn: forking a process that runs gRPC
# threads and then running Python code in the child is not safe.
_DEATH_WRAPPER = """
import ctypes, os, sys
sig, ppid, argv = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, sig, 0, 0, 0)
except (OSError, AttributeError):
    pass
if os.getppid() != ppid:
    sys.exit(128 + sig)
try:
    os.execvp(argv[0], argv)
except OSError as e:
    sys.stderr.write(f"kvctl: cannot run {argv[0]}: {e.strerror}\\n")
    sys.exit(127 if isinstance(e, FileNotFoundError) else 126)
"""


def wrapped(argv: list[str], death_signal: int) -> list[str]:
    if not sys.platform.startswith("linux"):
        return list(argv)
    return [sys.executable, "-S", "-E", "-c", _DEATH_WRAPPER, str(int(death_signal)), str(os.getpid()), *argv]


def check_runnable(cmd: str) -> None:
    if os.sep in cmd:
        if not os.path.exists(cmd):
            raise CliError(f"cannot run {cmd!r}: no such file", 127)
        if not os.access(cmd, os.X_OK):
            raise CliError(f"cannot run {cmd!r}: permission denied", 126)
    elif shutil.which(cmd) is None:
        raise CliError(f"cannot run {cmd!r}: command not found", 127)


def child_environment(extra: dict[str, str]) -> dict[str, str]:
    """kvctl's environment (minus what kvctl set for itself) plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in OWN_ENV}
    env.update(extra)
    return env


class Child:
    """A command in its own process group (so signals reach all of it),
    sent ``death_signal`` by the kernel if kvctl dies."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Callable[[str], None],
                 death_signal: int = signal.SIGTERM) -> None:
        self.argv = argv
        self.env = env
        self.log = log
        self.death_signal = death_signal
        self.proc: asyncio.subprocess.Process | None = None
        self.done: asyncio.Future[int] | None = None

    async def start(self) -> None:
        check_runnable(self.argv[0])
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *wrapped(self.argv, self.death_signal), env=self.env, process_group=0)
        except OSError as e:
            raise CliError(f"cannot run {self.argv[0]!r}: {e.strerror}", 126) from None
        self.done = asyncio.ensure_future(self.proc.wait())

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def signal(self, sig: int) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass

    async def stop(self, grace: float) -> int:
        """SIGTERM, then SIGKILL after ``grace`` seconds; the exit status."""
        if self.proc is None or self.done is None:
            return 0
        if self.proc.returncode is None:
            self.signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(self.done), grace)
            except TimeoutError:
                self.log(f"{self.argv[0]} did not stop within {grace:g}s: killing it")
                self.signal(signal.SIGKILL)
        await self.done
        return exit_status(self.proc.returncode)

    @property
    def status(self) -> int:
        return exit_status(self.proc.returncode if self.proc else None)


class Signals:
    """Forwardable signals as an asyncio queue."""

    def __init__(self) -> None:
        self.q: asyncio.Queue[int] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        for s in FORWARDED:
            loop.add_signal_handler(s, self.q.put_nowait, s)

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for s in FORWARDED:
            loop.remove_signal_handler(s)


async def race(coro: Awaitable[R], sigs: Signals) -> R:
    """``coro``'s result, unless a stopping signal comes first (CliError with 128+N)."""
    task = asyncio.ensure_future(coro)
    while True:
        sig_task = asyncio.ensure_future(sigs.q.get())
        done, _ = await asyncio.wait({task, sig_task}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            sig_task.cancel()
            return task.result()
        sig = sig_task.result()
        if sig in STOPPING:
            task.cancel()
            try:
                await task
            except BaseException:
                pass
            raise CliError(f"interrupted by {signal.Signals(sig).name}", 128 + sig)


class PrefixFollower:
    """A local copy of the keys under a prefix, kept current by a watch."""

    def __init__(self, client: AsyncClient, prefix: str, log: Callable[[str], None]) -> None:
        self.c = client
        self.prefix = prefix
        self.log = log
        self.kvs: dict[bytes, bytes] = {}
        self.revision = 0
        self.watch: Any = None

    async def start(self, timeout: float | None) -> None:
        """Load and watch; until the store answers, retry with back-off for
        ``timeout`` seconds (None: forever)."""
        dl = Deadline(timeout)
        bo = Backoff(0.2, 5.0)
        while True:
            try:
                r: RangeResult = await self.c.get_prefix(self.prefix)
                self._load(r)
                self.watch = await self.c.watch_prefix(self.prefix, start_revision=r.revision + 1)
                return
            except Unavailable as e:
                if dl.expired():
                    raise CliError(f"store unreachable, gave up after {timeout:g}s: {e.message}") from None
                d = dl.cap(bo.next()) or 0.0
                self.log(f"store unreachable ({e.message}); retrying in {d:.1f}s")
                await asyncio.sleep(d)

    def _load(self, r: RangeResult) -> None:
        self.kvs = {kv.key: kv.value for kv in r.kvs}
        self.revision = r.revision

    def _apply(self, ev: Event) -> None:
        if ev.type == "DELETE":
            self.kvs.pop(ev.key, None)
        else:
            self.kvs[ev.key] = ev.value
        self.revision = max(self.revision, ev.revision)

    async def _event(self, timeout: float | None) -> bool:
        """Apply the next event (True), or False after ``timeout`` quiet seconds."""
        try:
            ev = await self.watch.get(timeout)
        except WatchCompacted as e:
            self.log(f"{e.message}: re-reading the keys")
            self.watch.close()
            await self.start(None)
            return True
        except (WatchError, ClientError) as e:
            self.log(f"watch failed ({e.message}): re-reading the keys")
            self.watch.close()
            await asyncio.sleep(0.5)
            await self.start(None)
            return True
        if ev is None:
            return False
        self._apply(ev)
        return True

    async def next_change(self, debounce: float) -> dict[bytes, bytes]:
        """Wait for a change of the keys, then for ``debounce`` quiet seconds
        (at most 10 × debounce in all); the new keys."""
        before = dict(self.kvs)
        while True:
            await self._event(None)
            loop = asyncio.get_running_loop()
            cap = loop.time() + max(debounce * 10, debounce)
            while debounce > 0 and loop.time() < cap:
                if not await self._event(min(debounce, max(0.0, cap - loop.time()))):
                    break
            if self.kvs != before:
                return dict(self.kvs)

    def close(self) -> None:
        if self.watch is not None:
            self.watch.close()


def _client(args: argparse.Namespace) -> AsyncClient:
    try:
        return AsyncClient(endpoints_of(args), **client_options(args))
    except (ValueError, OSError) as e:
        raise CliError(str(e)) from None


def write_env_file(path: str, env: dict[str, str]) -> None:
    lines = []
    for k in sorted(env):
        v = env[k].replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("$", "\\$")
        lines.append(f'{k}="{v}"\n')
    write_atomic(path, "".join(lines), 0o600)


def write_atomic(path: str, text: str, mode: int | None = None) -> None:
    """Write then rename: readers see the old file or the new one, never a part."""
    d = os.path.dirname(os.path.abspath(path))
    if mode is None:
        try:
            mode = os.stat(path).st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dfd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


# -- exec -------------------------------------------------------------------------------------------------


async def run_exec(args: argparse.Namespace) -> int:
    log = logger("exec")
    if not args.child_argv:
        raise CliError("exec: no command (usage: kvctl exec --prefix P -- CMD ARGS)", 2)
    mode = parse_on_change(args.on_change)
    sigs = Signals()
    client = _client(args)
    follower = PrefixFollower(client, args.prefix, log)
    child: Child | None = None
    try:
        await race(follower.start(None if args.wait else args.timeout), sigs)

        def environment() -> dict[str, str]:
            env, warnings = build_env(follower.kvs.items(), args.prefix, args.env_prefix)
            for w in warnings:
                log(f"warning: {w}")
            return env

        current = environment()
        if args.env_file:
            write_env_file(args.env_file, current)
        child = Child(args.child_argv, child_environment(current), log)
        await child.start()
        change = asyncio.ensure_future(follower.next_change(args.debounce))
        sig_task = asyncio.ensure_future(sigs.q.get())
        stopping = False
        while True:
            assert child.done is not None
            waits = {child.done, sig_task} | ({change} if not stopping else set())
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if child.done in done:
                return child.status
            if sig_task in done:
                sig = sig_task.result()
                child.signal(sig)
                if sig in STOPPING:
                    stopping = True
                sig_task = asyncio.ensure_future(sigs.q.get())
            if change in done:
                change.result()
                new = environment()
                change = asyncio.ensure_future(follower.next_change(args.debounce))
                if new == current:
                    continue
                changed = sorted(set(new.items()) ^ set(current.items()))
                names = sorted({k for k, _ in changed})
                current = new
                if args.env_file:
                    write_env_file(args.env_file, current)
                if mode is None:
                    log(f"configuration changed ({', '.join(names)}): restarting {args.child_argv[0]}")
                    await child.stop(args.grace)
                    child = Child(args.child_argv, child_environment(current), log)
                    await child.start()
                else:
                    log(f"configuration changed ({', '.join(names)}): sending {mode.name}")
                    child.signal(mode)
    finally:
        if child is not None and child.running:
            await child.stop(args.grace)
        follower.close()
        sigs.close()
        await client.close()


# -- render -----------------------------------------------------------------------------------------------


async def run_on_change(cmd: str, output: str, log: Callable[[str], None]) -> None:
    proc = await asyncio.create_subprocess_shell(cmd, env=child_environment({"KVCTL_RENDER_OUTPUT": output}))
    rc = await proc.wait()
    if rc != 0:
        log(f"on-change command exited with status {exit_status(rc)}")


async def run_render(args: argparse.Namespace) -> int:
    log = logger("render")

    def render_now(kvs: dict[bytes, bytes]) -> bool:
        """Render; True if OUTPUT changed. Raises T.TemplateError/OSError."""
        with open(args.template, encoding="utf-8") as f:
            text = T.render(f.read(), kvs, args.prefix, missing=args.missing, env_prefix=args.env_prefix)
        try:
            with open(args.output, encoding="utf-8", errors="surrogateescape") as f:
                if f.read() == text:
                    return False
        except FileNotFoundError:
            pass
        write_atomic(args.output, text, int(args.mode, 8) if args.mode else None)
        return True

    try:
        with open(args.template, encoding="utf-8") as f:
            T.parse(f.read())
    except OSError as e:
        raise CliError(f"render: cannot read template {args.template}: {e.strerror}") from None
    except T.TemplateError as e:
        raise CliError(f"render: {args.template}: {e}") from None
    sigs = Signals()
    client = _client(args)
    follower = PrefixFollower(client, args.prefix, log)
    try:
        await race(follower.start(None if args.wait else args.timeout), sigs)
        try:
            changed = render_now(follower.kvs)
        except (T.TemplateError, OSError) as e:
            if args.once:
                raise CliError(f"render: {e}") from None
            log(f"cannot render: {e}")
            changed = False
        if changed:
            log(f"wrote {args.output} (revision {follower.revision})")
            if args.on_change:
                await run_on_change(args.on_change, args.output, log)
        if args.once:
            return 0
        while True:
            kvs = await race(follower.next_change(args.debounce), sigs)
            try:
                changed = render_now(kvs)
            except (T.TemplateError, OSError) as e:
                log(f"cannot render (keeping the previous {args.output}): {e}")
                continue
            if changed:
                log(f"wrote {args.output} (revision {follower.revision})")
                if args.on_change:
                    await run_on_change(args.on_change, args.output, log)
    except CliError as e:
        if e.code >= 128 and not args.once:  # stopped by a signal: a normal end for a watcher
            return 0
        raise
    finally:
        follower.close()
        sigs.close()
        await client.close()


# -- elect ------------------------------------------------------------------------------------------------


async def _until_ok(make: Callable[[], Awaitable[R]], sigs: Signals, log: Callable[[str], None], what: str) -> R:
    bo = Backoff(0.2, 5.0)
    while True:
        try:
            return await race(make(), sigs)
        except Unavailable as e:
            d = bo.next()
            log(f"{what}: {e.message}; retrying in {d:.1f}s")
            await race(asyncio.sleep(d), sigs)


async def _watch_other_leader(election: Any, key: bytes, rev: int) -> str:
    async for kv in election.observe():
        if kv.key != key and kv.create_revision > rev:
            return f"the election shows another leader ({kv.key.decode(errors='replace')})"
    return "observation ended"


async def run_elect(args: argparse.Namespace) -> int:
    log = logger("elect")
    value = args.proposal or f"{socket.gethostname()}:{os.getpid()}"
    sigs = Signals()
    client = _client(args)
    election = client.election(args.name)
    try:
        while True:
            lease = await _until_ok(lambda: client.lease(args.ttl), sigs, log, "lease grant")
            try:
                leader = await _until_ok(lambda: election.campaign(value, lease=lease), sigs, log, "campaign")
            except BaseException:
                lease.close()
                try:
                    await asyncio.wait_for(client.revoke(lease.id), 2.0)
                except (TimeoutError, ClientError):
                    pass
                raise
            log(f"elected: {leader.key.decode(errors='replace')} (revision {leader.revision}); starting "
                f"{args.child_argv[0]}")
            env = child_environment(dict(
                KVCTL_ELECTION_NAME=args.name, KVCTL_ELECTION_KEY=leader.key.decode(errors="replace"),
                KVCTL_ELECTION_REV=str(leader.revision), KVCTL_LEASE_ID=f"{lease.id:x}"))
            child = Child(args.child_argv, env, log, death_signal=signal.SIGKILL)
            await child.start()
            assert child.done is not None
            lost_task = asyncio.ensure_future(lease.lost.wait())
            other_task = asyncio.ensure_future(_watch_other_leader(election, leader.key, leader.revision))
            sig_task = asyncio.ensure_future(sigs.q.get())
            stopping = False
            reason = ""
            try:
                while True:
                    waits = {child.done, sig_task} | (set() if stopping else {lost_task, other_task})
                    done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                    if child.done in done:
                        break
                    if sig_task in done:
                        sig = sig_task.result()
                        child.signal(sig)
                        stopping = stopping or sig in STOPPING
                        sig_task = asyncio.ensure_future(sigs.q.get())
                        continue
                    if lost_task in done:
                        reason = f"lease lost ({lease.lost_reason})"
                    elif other_task in done:
                        try:
                            reason = other_task.result()
                        except ClientError as e:
                            reason = f"observe failed: {e.message}"
                    break
            finally:
                for t in (lost_task, other_task, sig_task):
                    t.cancel()
            if reason:
                log(f"leadership lost: {reason}; stopping {args.child_argv[0]}")
                await child.stop(args.grace)
                lease.close()
                try:
                    await asyncio.wait_for(client.revoke(lease.id), 2.0)
                except (TimeoutError, ClientError):
                    pass
                continue  # campaign again
            status = child.status
            log(f"{args.child_argv[0]} exited with status {status}: resigning")
            try:
                await asyncio.wait_for(leader.resign(), args.command_timeout)
            except (TimeoutError, ClientError):
                lease.close()
            return status
    finally:
        sigs.close()
        await client.close()


# -- lock -------------------------------------------------------------------------------------------------


async def run_lock(args: argparse.Namespace) -> int:
    log = logger("lock")
    sigs = Signals()
    client = _client(args)
    lock = client.lock(args.name, ttl=args.ttl)
    try:
        try:
            await race(lock.acquire(timeout=args.timeout), sigs)
        except Unavailable as e:
            raise CliError(f"lock {args.name}: {e.message}") from None
        assert lock.lease is not None
        env = child_environment(dict(
            KVCTL_LOCK_NAME=args.name, KVCTL_LOCK_KEY=lock.key.decode(errors="replace"),
            KVCTL_LOCK_REV=str(lock.revision), KVCTL_LEASE_ID=f"{lock.lease.id:x}"))
        child = Child(args.child_argv, env, log, death_signal=signal.SIGKILL)
        await child.start()
        assert child.done is not None
        lost_task = asyncio.ensure_future(lock.lease.lost.wait())
        sig_task = asyncio.ensure_future(sigs.q.get())
        try:
            while True:
                done, _ = await asyncio.wait({child.done, lost_task, sig_task}, return_when=asyncio.FIRST_COMPLETED)
                if child.done in done:
                    break
                if sig_task in done:
                    child.signal(sig_task.result())
                    sig_task = asyncio.ensure_future(sigs.q.get())
                    continue
                if lost_task in done:
                    log(f"lock lost ({lock.lease.lost_reason}): stopping {args.child_argv[0]}")
                    await child.stop(args.grace)
                    raise CliError(f"lock {args.name}: lost while {args.child_argv[0]} ran")
        finally:
            lost_task.cancel()
            sig_task.cancel()
        status = child.status
        try:
            await asyncio.wait_for(lock.release(), args.command_timeout)
        except (TimeoutError, ClientError) as e:
            log(f"release failed ({e}); the lock frees itself when its lease expires")
        return status
    finally:
        sigs.close()
        await client.close()


# -- registration ---------------------------------------------------------------------------------------------


def _run(coro_fn: Callable[[argparse.Namespace], Awaitable[int]]) -> Callable[[argparse.Namespace], int]:
    def f(args: argparse.Namespace) -> int:
        return asyncio.run(coro_fn(args))

    return f


def cmd_lock(args: argparse.Namespace) -> int:
    from .commands import cmd_lock_hold

    if args.command_args:
        args.child_argv = list(args.command_args) + list(args.child_argv or [])
    if not args.child_argv:
        return cmd_lock_hold(args)
    return _run(run_lock)(args)


def cmd_elect(args: argparse.Namespace) -> int:
    from .commands import cmd_elect_hold

    if not args.child_argv:
        return cmd_elect_hold(args)
    if args.listen:
        raise CliError("elect: --listen does not take a command", 2)
    return _run(run_elect)(args)


def register(sub: Any, g: argparse.ArgumentParser) -> None:
    def add(name: str, help_: str, func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[g], help=help_, description=help_)
        p.set_defaults(func=func)
        return p

    def waiting(p: argparse.ArgumentParser) -> None:
        p.add_argument("--timeout", type=duration, default=30.0,
                       help="give up if the store is unreachable this long at start (default 30s)")
        p.add_argument("--wait", action="store_true", help="wait for the store forever at start")
        p.add_argument("--debounce", type=duration, default=1.0, help="quiet time before acting on changes")
        p.add_argument("--env-prefix", default="", help="prepend this to every variable name")

    p = add("exec", "run a command with the keys under a prefix as environment variables", _run(run_exec))
    p.add_argument("--prefix", required=True, help="key prefix, e.g. /config/app/")
    p.add_argument("--on-change", default="restart", help="restart (default) or signal:NAME (e.g. signal:HUP)")
    p.add_argument("--grace", type=duration, default=10.0, help="SIGTERM → SIGKILL delay on restart")
    p.add_argument("--env-file", help="also write the variables to this file (KEY=\"value\" lines), atomically")
    waiting(p)

    p = add("render", "render a template from the keys under a prefix; re-render on change", _run(run_render))
    p.add_argument("template")
    p.add_argument("output")
    p.add_argument("--prefix", required=True)
    p.add_argument("--on-change", help="shell command to run after OUTPUT changed")
    p.add_argument("--once", action="store_true", help="render once and exit")
    p.add_argument("--missing", choices=["error", "empty"], default="error",
                   help="a $NAME without a key: error (keep the old file) or empty string")
    p.add_argument("--mode", help="file mode of OUTPUT, octal (default: keep, or 0644)")
    waiting(p)

    p = add("elect", "campaign in an election; with -- CMD run CMD while leader", cmd_elect)
    p.add_argument("name")
    p.add_argument("proposal", nargs="?", help="the value to proclaim (default host:pid)")
    p.add_argument("-l", "--listen", action="store_true", help="observe the election and print leaders")
    p.add_argument("--ttl", type=int, default=10, help="session lease TTL in seconds (default 10)")
    p.add_argument("--grace", type=duration, default=10.0, help="SIGTERM → SIGKILL delay when leadership is lost")

    p = add("lock", "acquire a lock; with -- CMD run CMD under it", cmd_lock)
    p.add_argument("name")
    p.add_argument("command_args", nargs="*", help="command to run under the lock (use -- before it)")
    p.add_argument("--ttl", type=int, default=10, help="session lease TTL in seconds (default 10)")
    p.add_argument("--timeout", type=duration, default=None, help="give up acquiring after this long")
    p.add_argument("--grace", type=duration, default=10.0, help="SIGTERM → SIGKILL delay if the lock is lost")
