"""Key names → environment variable names (``kvctl exec`` and ``kvctl render``).

The mapping, for keys under ``--prefix P``:

1. strip ``P`` from the key (the key equal to ``P`` itself is skipped);
2. replace every character that is not an ASCII letter or digit with ``_``;
3. upper-case; a name starting with a digit gets a leading ``_``;
4. prepend ``--env-prefix`` if one is given.

    /config/app/db-host     → DB_HOST
    /config/app/db/port     → DB_PORT
    /config/app/log.level   → LOG_LEVEL
    /config/app/2fa         → _2FA

Two keys that map to the same name (``db-host`` and ``db_host``) collide: the
key that sorts first (bytewise) wins, deterministically, and a warning names
both. Values are UTF-8 (undecodable bytes pass through unchanged); a value
containing a NUL byte cannot be an environment variable and is skipped with a
warning.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

_NON_ALNUM = re.compile(r"[^A-Za-z0-9]")


def env_name(key: str, prefix: str, env_prefix: str = "") -> str | None:
    if not key.startswith(prefix):
        return None
    rest = key[len(prefix):]
    if not rest:
        return None
    name = _NON_ALNUM.sub("_", rest).upper()
    if name[0].isdigit():
        name = "_" + name
    return env_prefix + name


def decode(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def build_env(
    kvs: Iterable[tuple[bytes, bytes]], prefix: str, env_prefix: str = ""
) -> tuple[dict[str, str], list[str]]:
    """(name → value, warnings) for the given (key, value) pairs."""
    env: dict[str, str] = {}
    owner: dict[str, str] = {}
    warnings: list[str] = []
    for k, v in sorted(kvs, key=lambda kv: kv[0]):
        key = decode(k)
        name = env_name(key, prefix, env_prefix)
        if name is None:
            continue
        if b"\0" in v:
            warnings.append(f"key {key} has a NUL byte in its value: not exported")
            continue
        if name in owner:
            warnings.append(f"keys {owner[name]} and {key} both map to {name}: using {owner[name]}")
            continue
        owner[name] = key
        env[name] = decode(v)
    return env, warnings
