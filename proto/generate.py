#!/usr/bin/env python3
"""Regenerate kvstore's Python protobuf/gRPC code from the .proto sources.

Usage (from the repository root, with the dev virtualenv's Python):

    python proto/generate.py

That is the one command to run after editing any .proto file; commit the
.proto change and the regenerated files together. tests/test_proto_drift.py
fails when the committed generated code differs from what this script writes.

What it compiles (each "group" is compiled on its own):

  proto/etcd/**/*.proto   -> kvstore/pb/   (Python package kvstore.pb)
      Our own declaration of etcd 3.4's public API (etcdserverpb, mvccpb,
      authpb, v3lockpb, v3electionpb). Imports between these files are written
      relative to proto/etcd/, e.g. ``import "mvccpb/kv.proto";``.
  proto/raftpb/**/*.proto -> raft/pb/      (Python package raft.pb)
      The internal peer protocol. Skipped while that directory holds no .proto
      file. Imports are relative to proto/raftpb/.

For every .proto it writes <name>_pb2.py and <name>_pb2.pyi, plus
<name>_pb2_grpc.py when the file declares at least one service. Output is
flat: a source in a subdirectory (proto/etcd/mvccpb/kv.proto) still lands
directly in the package (kvstore/pb/kv_pb2.py), so base names must be unique
within a group. protoc emits imports such as ``from mvccpb import kv_pb2``;
those are rewritten to the absolute package path (``from kvstore.pb import
kv_pb2``). Generated files that no longer have a source are deleted. The
package's __init__.py is created if missing and otherwise left alone.

The output is deterministic: inputs are compiled in sorted order and the
result depends only on the .proto sources and the grpcio-tools version (its
bundled protoc stamps its version into the files, so regenerate after
upgrading grpcio-tools).

Option (used by the drift test):

    python proto/generate.py --out-root DIR

writes DIR/kvstore/pb/... and DIR/raft/pb/... instead of into the repository.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "proto"

# Suffixes of the files this script owns inside an output package.
GENERATED_SUFFIXES = ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")

INIT_TEXT = '"""Generated protobuf/gRPC modules; regenerate with `python proto/generate.py`."""\n'


@dataclass(frozen=True)
class Group:
    """A set of .proto files compiled together into one Python package."""

    source_dir: Path  # include root and search root for *.proto (recursive)
    package: str  # dotted Python package receiving the generated modules

    @property
    def package_path(self) -> Path:
        return Path(*self.package.split("."))

    def protos(self) -> list[Path]:
        if not self.source_dir.is_dir():
            return []
        return sorted(self.source_dir.rglob("*.proto"))


GROUPS = (
    Group(PROTO_ROOT / "etcd", "kvstore.pb"),
    Group(PROTO_ROOT / "raftpb", "raft.pb"),
)


def generated_files(directory: Path) -> list[Path]:
    """Files in `directory` that this script generates (not __init__.py)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_file() and p.name.endswith(GENERATED_SUFFIXES))


def _run_protoc(group: Group, protos: list[Path], out_dir: Path) -> None:
    try:
        from grpc_tools import protoc
    except ImportError:  # pragma: no cover - environment problem
        sys.exit("grpcio-tools is not installed; run this with the dev virtualenv's python (/work/venv/bin/python)")
    from importlib import resources

    well_known = resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"--proto_path={group.source_dir}",
        f"--proto_path={well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(p) for p in protos),  # protoc maps them onto the first --proto_path
    ]
    rc = protoc.main(args)
    if rc != 0:
        sys.exit(f"protoc failed for {group.source_dir.relative_to(REPO_ROOT)} (exit {rc})")


_IMPORT_RE = re.compile(
    r"^(?P<indent>[ \t]*)(?:from (?P<parent>[\w.]+) import (?P<mod1>\w+)|import (?P<mod2>\w+))"
    r"(?P<alias> as \w+)?[ \t]*$",
    re.MULTILINE,
)


def _rewrite_imports(text: str, local_modules: dict[str, str], package: str) -> str:
    """Point imports of sibling generated modules at `package`.

    `local_modules` maps protoc's dotted module path (e.g. "mvccpb.kv_pb2")
    to the flat module name ("kv_pb2").
    """

    def repl(m: re.Match[str]) -> str:
        if m.group("mod1"):
            dotted = f"{m.group('parent')}.{m.group('mod1')}"
        else:
            dotted = m.group("mod2")
        flat = local_modules.get(dotted)
        if flat is None:
            return m.group(0)  # google.protobuf, grpc, warnings, ...
        return f"{m.group('indent')}from {package} import {flat}{m.group('alias') or ''}"

    return _IMPORT_RE.sub(repl, text)


def _has_service(grpc_text: str) -> bool:
    return re.search(r"^class \w+Stub\b", grpc_text, re.MULTILINE) is not None


def generate_group(group: Group, out_root: Path) -> list[Path]:
    """Compile one group into out_root/<package path>; return written paths."""
    protos = group.protos()
    if not protos:
        return []

    # Map protoc's module paths to flat names; refuse ambiguous flattening.
    local_modules: dict[str, str] = {}
    seen: dict[str, Path] = {}
    for proto in protos:
        rel = proto.relative_to(group.source_dir).with_suffix("")
        flat = f"{rel.name}_pb2"
        if flat in seen:
            sys.exit(f"{proto} and {seen[flat]} would both generate {flat}.py; rename one")
        seen[flat] = proto
        local_modules[".".join(rel.parts) + "_pb2"] = flat

    target = out_root / group.package_path
    produced: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="kvstore-protoc-") as tmp:
        tmp_dir = Path(tmp)
        _run_protoc(group, protos, tmp_dir)
        for proto in protos:
            rel = proto.relative_to(group.source_dir).with_suffix("")
            for suffix in GENERATED_SUFFIXES:
                src = tmp_dir / rel.parent / f"{rel.name}{suffix}"
                if not src.exists():
                    continue
                text = src.read_text(encoding="utf-8")
                if suffix == "_pb2_grpc.py" and not _has_service(text):
                    continue  # no service: the module would be an empty shell
                text = _rewrite_imports(text, local_modules, group.package)
                produced[f"{rel.name}{suffix}"] = text.encode("utf-8")

    target.mkdir(parents=True, exist_ok=True)
    init = target / "__init__.py"
    if not init.exists():
        init.write_text(INIT_TEXT, encoding="utf-8")
    for stale in generated_files(target):
        if stale.name not in produced:
            stale.unlink()
    written = []
    for name in sorted(produced):
        path = target / name
        data = produced[name]
        if not path.exists() or path.read_bytes() != data:
            path.write_bytes(data)  # leave unchanged files (and mtimes) alone
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out-root",
        type=Path,
        default=REPO_ROOT,
        help="directory that receives kvstore/pb and raft/pb (default: the repository root)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    args = parser.parse_args(argv)
    out_root = args.out_root.resolve()
    for group in GROUPS:
        written = generate_group(group, out_root)
        if not args.quiet:
            src = group.source_dir.relative_to(REPO_ROOT)
            if written:
                print(f"{src}: {len(written)} files -> {group.package_path}/")
            else:
                print(f"{src}: no .proto files, skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
