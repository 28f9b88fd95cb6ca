"""Simple tokens (etcd's ``--auth-token simple``) and the brute-force brake.

A token is ``<secret>.<raft index>``. The secret is random (192 bits); only
its SHA-256 goes through Raft, so every member learns the token when it
applies the Authenticate entry (as etcd's members all learn its simple
tokens) but no log, snapshot or WAL holds a usable token. The index is an
applied index of the issuing member: another member that does not know the
token yet waits until it has applied that far (etcd's indexWaiter) instead
of refusing a token issued a moment ago.

Each member keeps its tokens in memory only, with a TTL (default 300 s, as
etcd) that each use on that member renews; a restart forgets them (clients
authenticate again on "invalid auth token", as with etcd). Deleting a user,
changing its password, or disabling auth drops its tokens on every member.
"""
from __future__ import annotations

import hashlib
import secrets
import time
from typing import Callable, Optional

DEFAULT_TTL = 300.0
SWEEP_INTERVAL = 1.0


def new_secret() -> str:
    return secrets.token_urlsafe(24)


def secret_hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def split_token(token: str) -> tuple[str, int] | None:
    """(secret, index) of a well-formed token, else None."""
    secret, sep, idx = token.rpartition(".")
    if not sep or not secret or not idx.isdigit() or len(idx) > 20:
        return None
    return secret, int(idx)


class TokenTable:
    """token hash → (user, expiry) on this member."""

    def __init__(self, ttl: float = DEFAULT_TTL, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.clock = clock
        self._tokens: dict[bytes, list] = {}  # hash -> [user, expires_at]
        self._last_sweep = 0.0

    def __len__(self) -> int:
        return len(self._tokens)

    def add(self, token_hash: bytes, user: str) -> None:
        now = self.clock()
        self._tokens[token_hash] = [user, now + self.ttl]
        if now - self._last_sweep >= SWEEP_INTERVAL:
            self.sweep(now)

    def lookup(self, secret: str) -> Optional[str]:
        """The user of a live token (its TTL renewed), else None."""
        h = secret_hash(secret)
        ent = self._tokens.get(h)
        if ent is None:
            return None
        now = self.clock()
        if now >= ent[1]:
            del self._tokens[h]
            return None
        ent[1] = now + self.ttl
        return ent[0]

    def sweep(self, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        self._last_sweep = now
        dead = [h for h, (_, exp) in self._tokens.items() if now >= exp]
        for h in dead:
            del self._tokens[h]

    def drop_user(self, user: str) -> None:
        for h in [h for h, (u, _) in self._tokens.items() if u == user]:
            del self._tokens[h]

    def keep_users(self, users: set[str]) -> None:
        for h in [h for h, (u, _) in self._tokens.items() if u not in users]:
            del self._tokens[h]

    def clear(self) -> None:
        self._tokens.clear()


class Throttle:
    """Slows down password guessing on this member.

    Failures are counted per user name and in total over a sliding window.
    After ``free`` failures of a name, each further attempt on that name waits
    ``base * 2**k`` seconds (capped at ``cap``) before it is checked; many
    failures across names (spraying) add a shared delay. A success clears the
    name's count. Waiting callers hold no CPU; only ``max_concurrent`` password
    hashes are computed at a time by the caller (see Auth.authenticate).
    """

    def __init__(
        self,
        free: int = 3,
        base: float = 0.25,
        cap: float = 10.0,
        window: float = 60.0,
        global_free: int = 30,
        global_delay: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free = free
        self.base = base
        self.cap = cap
        self.window = window
        self.global_free = global_free
        self.global_delay = global_delay
        self.clock = clock
        self._fails: dict[str, tuple[int, float]] = {}  # name -> (count, last failure)
        self._recent: list[float] = []  # failure times within the window

    def _prune(self, now: float) -> None:
        cut = now - self.window
        if self._recent and self._recent[0] < cut:
            self._recent = [t for t in self._recent if t >= cut]
        if len(self._fails) > 10_000:
            self._fails = {n: v for n, v in self._fails.items() if v[1] >= cut}

    def delay(self, name: str) -> float:
        """Seconds the next attempt on ``name`` must wait."""
        now = self.clock()
        self._prune(now)
        d = 0.0
        count, last = self._fails.get(name, (0, 0.0))
        if count and now - last > self.window:
            count = 0
        if count >= self.free:
            d = min(self.cap, self.base * (2 ** (count - self.free)))
        if len(self._recent) >= self.global_free:
            d = max(d, self.global_delay)
        return d

    def failed(self, name: str) -> None:
        now = self.clock()
        count, last = self._fails.get(name, (0, 0.0))
        if now - last > self.window:
            count = 0
        self._fails[name] = (count + 1, now)
        self._recent.append(now)

    def succeeded(self, name: str) -> None:
        self._fails.pop(name, None)
