"""Flags, environment variables and one-line errors of the server process."""
from __future__ import annotations

import subprocess
import sys

import pytest

from kvstore.config import LEASE_CLOCK_DRIFT, ConfigError, build_parser, member_id, parse
from raft.core import Config as RaftConfig
from raft.core import ReadOnlyOption
from tests.procs import REPO


def test_defaults_match_etcd_conventions() -> None:
    cfg = parse([], environ={})
    assert cfg.name == "default"
    assert cfg.data_dir == "default.kvstore"
    assert cfg.listen_client_urls == ["http://127.0.0.1:2379"]
    assert cfg.listen_peer_urls == ["http://127.0.0.1:2380"]
    assert cfg.initial_cluster == {"default": ["http://127.0.0.1:2380"]}
    assert cfg.max_request_bytes == 1572864 and cfg.max_txn_ops == 128
    assert cfg.election_ticks == 10


def test_flag_beats_environment_variable() -> None:
    env = {"KVSTORE_NAME": "fromenv", "KVSTORE_SNAPSHOT_COUNT": "77"}
    cfg = parse(["--name", "fromflag", "--initial-cluster", "fromflag=http://127.0.0.1:2380"], environ=env)
    assert cfg.name == "fromflag"
    assert cfg.snapshot_count == 77
    cfg = parse([], environ={"KVSTORE_NAME": "n9", "KVSTORE_INITIAL_CLUSTER": "n9=http://127.0.0.1:2380"})
    assert cfg.name == "n9" and cfg.data_dir == "n9.kvstore"


def test_experimental_lease_read_flag() -> None:
    assert parse([], environ={}).experimental_lease_read is False
    assert parse(["--experimental-lease-read"], environ={}).experimental_lease_read is True
    assert parse([], environ={"KVSTORE_EXPERIMENTAL_LEASE_READ": "true"}).experimental_lease_read is True
    assert "10%" in build_parser().format_help().replace("\n", " ")
    # The shortest election timeout the flags allow still leaves a lease.
    cfg = parse(["--heartbeat-interval", "100", "--election-timeout", "500"], environ={})
    rc = RaftConfig(
        1, election_tick=cfg.election_ticks, read_only=ReadOnlyOption.LEASE_BASED, max_clock_drift=LEASE_CLOCK_DRIFT
    )
    rc.validate()
    assert rc.lease_ticks == 3


def test_member_ids_are_deterministic_and_distinct() -> None:
    a = member_id(["http://127.0.0.1:1"], "t")
    assert a == member_id(["http://127.0.0.1:1"], "t")
    assert a != member_id(["http://127.0.0.1:2"], "t")
    assert a != member_id(["http://127.0.0.1:1"], "other-token")


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--heartbeat-interval", "abc"], "expected an integer"),
        (["--listen-client-urls", "ftp://x:1"], "scheme"),
        (["--listen-peer-urls", "http://127.0.0.1"], "host and a port"),
        (["--initial-cluster", "other=http://127.0.0.1:2380"], "no entry for this member"),
        (["--initial-cluster-state", "maybe"], "must be one of"),
        (["--election-timeout", "100"], "at least 5 times"),
        (["--no-such-flag"], "unrecognized arguments"),
    ],
)
def test_bad_flags_raise_config_error(argv: list[str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        parse(argv, environ={})


def test_cli_bad_flag_is_one_line_error() -> None:
    p = subprocess.run(
        [sys.executable, "-m", "kvstore", "--heartbeat-interval", "x"], capture_output=True, cwd=REPO, timeout=60
    )
    assert p.returncode == 2
    err = p.stderr.decode().strip()
    assert err.startswith("kvstore: error:") and "\n" not in err and "Traceback" not in err


def test_cli_unusable_data_dir_is_one_line_error(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    p = subprocess.run(
        [sys.executable, "-m", "kvstore", "--data-dir", str(blocker / "sub"), "--listen-client-urls",
         "http://127.0.0.1:0", "--listen-peer-urls", "http://127.0.0.1:0"],
        capture_output=True, cwd=REPO, timeout=60,
    )
    assert p.returncode != 0
    err = p.stderr.decode().strip().splitlines()
    assert err and err[-1].startswith("kvstore: error:") and "Traceback" not in p.stderr.decode()
