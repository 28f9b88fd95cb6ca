"""Templates for ``kvctl render``: Python's ``string.Template`` plus one loop.

Variables: ``$NAME`` or ``${NAME}``, where NAME is a key's environment name
(see ``kvstore.cli.envmap``: ``/config/app/db-host`` under ``--prefix
/config/app/`` is ``$DB_HOST``). ``$$`` is a literal ``$``. A name with no key
is an error (the file is not written) unless ``--missing empty`` is given.

Loop over the keys under a sub-prefix (relative to ``--prefix``), in key order:

    {% for servers/ %}server $value;   # $key
    {% end %}

Inside the loop body ``$key`` is the key with the loop prefix stripped,
``$fullkey`` the whole key, ``$value`` its value and ``$name`` its
environment name; the outer ``$NAME`` variables stay visible. ``{% for %}``
(no sub-prefix) loops over every key. Loops nest.
"""
from __future__ import annotations

import re
import string
from dataclasses import dataclass, field

from .envmap import build_env, decode, env_name

_TAG = re.compile(r"\{%\s*(for(?:\s+(\S+))?|end)\s*%\}")


class TemplateError(Exception):
    pass


@dataclass
class _Loop:
    prefix: str
    body: list[str | _Loop] = field(default_factory=list)


def parse(text: str) -> list[str | _Loop]:
    root: list[str | _Loop] = []
    stack: list[list[str | _Loop]] = [root]
    pos = 0
    for m in _TAG.finditer(text):
        if m.start() > pos:
            stack[-1].append(text[pos:m.start()])
        pos = m.end()
        if m.group(1) == "end":
            if len(stack) == 1:
                raise TemplateError(f"line {text.count(chr(10), 0, m.start()) + 1}: {{% end %}} without {{% for %}}")
            stack.pop()
        else:
            loop = _Loop(m.group(2) or "")
            stack[-1].append(loop)
            stack.append(loop.body)
    if len(stack) != 1:
        raise TemplateError("unclosed {% for %} (missing {% end %})")
    if pos < len(text):
        root.append(text[pos:])
    return root


def _subst(chunk: str, variables: dict[str, str], missing: str) -> str:
    t = string.Template(chunk)
    if missing == "empty":
        names = {m.group("named") or m.group("braced") for m in t.pattern.finditer(chunk)} - {None}
        variables = {**{n: "" for n in names}, **variables}
    try:
        return t.substitute(variables)
    except KeyError as e:
        raise TemplateError(f"no key for ${e.args[0]}") from None
    except ValueError as e:
        raise TemplateError(f"bad placeholder: {e}") from None


def render(text: str, kvs: dict[bytes, bytes] | list[tuple[bytes, bytes]], prefix: str, *,
           missing: str = "error", env_prefix: str = "") -> str:
    """Render ``text`` with the keys under ``prefix`` (``kvs``: key → value)."""
    items = sorted(kvs.items() if isinstance(kvs, dict) else kvs)
    env, _warnings = build_env(items, prefix, env_prefix)
    out: list[str] = []

    def walk(nodes: list[str | _Loop], variables: dict[str, str]) -> None:
        for node in nodes:
            if isinstance(node, str):
                out.append(_subst(node, variables, missing))
                continue
            lp = prefix + node.prefix
            for k, v in items:
                key = decode(k)
                if not key.startswith(lp) or key == lp:
                    continue
                inner = dict(variables)
                inner.update(key=key[len(lp):], fullkey=key, value=decode(v),
                             name=env_name(key, prefix, env_prefix) or "")
                walk(node.body, inner)

    walk(parse(text), env)
    return "".join(out)
