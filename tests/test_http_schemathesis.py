"""schemathesis against the REST API's own OpenAPI document (/openapi.json)
on a real single-member kvstore: generated valid and invalid requests must
never get a 5xx, and every answer must conform to the document (status
codes, content types, headers, bodies).

Bounded: schemathesis runs with ``--max-time`` (about 40 s). Two things are
kept out of the generated traffic, both for time only: the SSE endpoint
``/watch/{prefix}`` (a stream never ends; tests/test_http_rest.py covers it)
and long blocking queries (a hook shortens any valid or missing
``timeout`` of a ``?wait`` request to 50 ms before it is sent).
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from typing import Iterator

import pytest

from tests.procs import Cluster
from tests.test_http_gateway import started

pytest.importorskip("schemathesis")

CHECKS = ",".join([
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
])

HOOKS = textwrap.dedent('''
    import re

    import schemathesis

    _DURATION = re.compile(r"^[0-9]+(\\.[0-9]+)?(ms|s|m)?$")


    @schemathesis.hook
    def before_call(context, case, kwargs):
        # Blocking queries: any valid (or missing) timeout becomes 50 ms.
        query = case.query
        if isinstance(query, dict) and "wait" in query:
            t = query.get("timeout")
            if t is None or (isinstance(t, str) and _DURATION.match(t.strip())):
                query["timeout"] = "50ms"
''')


@pytest.fixture(scope="module")
def node_url() -> Iterator[str]:
    c = started(lambda: Cluster(1))
    try:
        yield c.nodes[0].http_url
    finally:
        c.close()


def test_schemathesis_finds_no_server_error_and_answers_conform(node_url: str, tmp_path) -> None:
    (tmp_path / "kvstore_st_hooks.py").write_text(HOOKS)
    env = dict(os.environ, PYTHONPATH=str(tmp_path), SCHEMATHESIS_HOOKS="kvstore_st_hooks", NO_COLOR="1")
    cmd = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{node_url}/openapi.json",
        "--checks", CHECKS,
        "--exclude-path-regex", "^/watch/",
        "--max-time", "40",
        "--workers", "1",
        "--request-timeout", "20",
        "--seed", "4242",
        "--suppress-health-check", "all",
    ]
    proc = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "Operations:" in out and "3 selected" in out, out[-3000:]
