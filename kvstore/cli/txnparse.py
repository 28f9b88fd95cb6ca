"""etcdctl's ``txn`` input syntax: three sections separated by blank lines.

    mod("key1") > "0"
    value("key2") = "x"

    put key1 "overwrote-key1"
    get key2

    put key1 "created-key1"
    del key3 --prefix

Compares: ``TARGET("KEY") OP "VALUE"`` with TARGET one of value/val,
version/ver, create/c, mod/m, lease (a hex lease ID) and OP one of
``=``, ``!=``, ``<``, ``>``. Requests: ``put KEY VALUE [--lease ID]
[--prev-kv]``, ``get KEY [RANGE_END] [--prefix] [--limit N] [--rev N]
[--keys-only] [--count-only] [--from-key]``, ``del KEY [RANGE_END]
[--prefix] [--prev-kv] [--from-key]``; words may be quoted as in a shell.
"""
from __future__ import annotations

import argparse
import re
import shlex
from collections.abc import Iterable

from ..client.txn import Compare, Op, compare, delete, get, put

_CMP = re.compile(r'^\s*(\w+)\(\s*"((?:[^"\\]|\\.)*)"\s*\)\s*(=|==|!=|<|>)\s*"((?:[^"\\]|\\.)*)"\s*$')
_TARGETS = {"value": "value", "val": "value", "version": "version", "ver": "version", "create": "create",
            "c": "create", "mod": "mod", "m": "mod", "lease": "lease"}


class TxnSyntaxError(ValueError):
    pass


_ESC = {"n": "\n", "t": "\t", "r": "\r", "0": "\0"}


def _unquote(s: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESC.get(m.group(1), m.group(1)), s)


def parse_compare(line: str) -> Compare:
    m = _CMP.match(line)
    if not m:
        raise TxnSyntaxError(f'bad compare {line.strip()!r} (expected e.g. value("key") = "v")')
    target, key, op, val = m.group(1), _unquote(m.group(2)), m.group(3), _unquote(m.group(4))
    t = _TARGETS.get(target)
    if t is None:
        raise TxnSyntaxError(f"bad compare target {target!r} (value, version, create, mod, lease)")
    op = "==" if op in ("=", "==") else op
    if t == "value":
        return compare(key, "value", op, val)
    try:
        n = int(val, 16) if t == "lease" else int(val)
    except ValueError:
        raise TxnSyntaxError(f"bad compare {line.strip()!r}: {t} needs an integer") from None
    return compare(key, t, op, n)


class _ArgParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise TxnSyntaxError(message)


def _parsers() -> dict[str, argparse.ArgumentParser]:
    p_put = _ArgParser(prog="put", add_help=False)
    p_put.add_argument("key")
    p_put.add_argument("value")
    p_put.add_argument("--lease", default="0")
    p_put.add_argument("--prev-kv", action="store_true")
    p_get = _ArgParser(prog="get", add_help=False)
    p_get.add_argument("key")
    p_get.add_argument("range_end", nargs="?")
    for flag in ("--prefix", "--from-key", "--keys-only", "--count-only"):
        p_get.add_argument(flag, action="store_true")
    p_get.add_argument("--limit", type=int, default=0)
    p_get.add_argument("--rev", type=int, default=0)
    p_del = _ArgParser(prog="del", add_help=False)
    p_del.add_argument("key")
    p_del.add_argument("range_end", nargs="?")
    for flag in ("--prefix", "--from-key", "--prev-kv"):
        p_del.add_argument(flag, action="store_true")
    return {"put": p_put, "get": p_get, "del": p_del, "delete": p_del}


def parse_request(line: str) -> Op:
    try:
        words = shlex.split(line)
    except ValueError as e:
        raise TxnSyntaxError(f"bad request {line.strip()!r}: {e}") from None
    if not words:
        raise TxnSyntaxError("empty request")
    parser = _parsers().get(words[0].lower())
    if parser is None:
        raise TxnSyntaxError(f"bad request {line.strip()!r} (expected put, get or del)")
    a = parser.parse_args(words[1:])
    cmd = words[0].lower()
    if cmd == "put":
        try:
            lease_id = int(a.lease, 16)
        except ValueError:
            raise TxnSyntaxError(f"bad lease ID {a.lease!r} (hex)") from None
        return put(a.key, a.value, lease=lease_id, prev_kv=a.prev_kv)
    if cmd == "get":
        return get(a.key, a.range_end, prefix=a.prefix, from_key=a.from_key, keys_only=a.keys_only,
                   count_only=a.count_only, limit=a.limit, revision=a.rev)
    if a.from_key:
        return delete(a.key, "\0" if not a.range_end else a.range_end)
    return delete(a.key, a.range_end, prefix=a.prefix, prev_kv=a.prev_kv)


def parse_sections(lines: Iterable[str]) -> tuple[list[Compare], list[Op], list[Op]]:
    """Parse a whole txn text (three blank-line separated sections)."""
    sections: list[list[str]] = [[], [], []]
    idx = 0
    for raw in lines:
        line = raw.rstrip("\n")
        if not line.strip():
            idx += 1
            if idx > 2:
                break
            continue
        sections[idx].append(line)
    return ([parse_compare(x) for x in sections[0]], [parse_request(x) for x in sections[1]],
            [parse_request(x) for x in sections[2]])
