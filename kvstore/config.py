"""Server configuration: etcd's flag names, each also read from ``KVSTORE_<FLAG>``.

A flag on the command line beats the environment variable; both beat the
default. Validation errors are ``ConfigError`` with a one-line message that
``__main__`` prints without a traceback.
"""
from __future__ import annotations

import argparse
import hashlib
import os
from dataclasses import dataclass, field
from typing import Sequence
from urllib.parse import urlsplit

from .client.backoff import parse_duration

DEFAULT_CLIENT_URL = "http://127.0.0.1:2379"
DEFAULT_PEER_URL = "http://127.0.0.1:2380"
DEFAULT_HTTP_URL = "http://127.0.0.1:2378"  # friendly HTTP API, health, gateway
LEASE_CLOCK_DRIFT = 0.1  # --experimental-lease-read's clock assumption (raft Config.max_clock_drift)


class ConfigError(Exception):
    pass


@dataclass
class ServerConfig:
    name: str = "default"
    data_dir: str = ""
    listen_client_urls: list[str] = field(default_factory=lambda: [DEFAULT_CLIENT_URL])
    advertise_client_urls: list[str] = field(default_factory=list)
    listen_peer_urls: list[str] = field(default_factory=lambda: [DEFAULT_PEER_URL])
    initial_advertise_peer_urls: list[str] = field(default_factory=list)
    initial_cluster: dict[str, list[str]] = field(default_factory=dict)
    initial_cluster_state: str = "new"
    initial_cluster_token: str = "kvstore-cluster"
    listen_client_http_urls: list[str] = field(default_factory=lambda: [DEFAULT_HTTP_URL])
    listen_metrics_urls: list[str] = field(default_factory=list)
    heartbeat_interval: int = 100  # ms
    election_timeout: int = 1000  # ms
    snapshot_count: int = 100_000
    quota_backend_bytes: int = 2 << 30
    max_request_bytes: int = 1_572_864
    max_txn_ops: int = 128
    log_level: str = "info"
    log_format: str = "text"
    # Client TLS (gRPC and HTTP listeners), as etcd's flags.
    cert_file: str = ""
    key_file: str = ""
    trusted_ca_file: str = ""
    client_cert_auth: bool = False
    force_new_cluster: bool = False
    auto_tls: bool = False
    # Peer TLS.
    peer_cert_file: str = ""
    peer_key_file: str = ""
    peer_trusted_ca_file: str = ""
    peer_client_cert_auth: bool = False
    peer_auto_tls: bool = False
    peer_cert_allowed_cn: str = ""
    self_signed_cert_validity: int = 1  # years, for --auto-tls / --peer-auto-tls
    # Resource limits.
    max_watches_per_stream: int = 10_000
    max_leases: int = 1_000_000
    # Linearizable reads on the leader's lease instead of a heartbeat round.
    experimental_lease_read: bool = False
    auto_compaction_mode: str = "periodic"
    auto_compaction_retention: str = "0"  # as given; see compaction_retention()

    @property
    def compaction_retention(self) -> float:
        """Seconds (periodic mode) or revisions (revision mode); 0 = off.
        As etcd: a bare number means hours in periodic mode."""
        t = self.auto_compaction_retention.strip()
        if t.isdigit():
            return int(t) * 3600.0 if self.auto_compaction_mode == "periodic" else float(int(t))
        if self.auto_compaction_mode == "revision":
            raise ConfigError(f"--auto-compaction-retention: a number of revisions expected, got {t!r}")
        try:
            seconds = parse_duration(t)
        except ValueError as e:
            raise ConfigError(f"--auto-compaction-retention: {e}") from None
        if 0 < seconds < 1:  # the compactor samples every tenth of it
            raise ConfigError(f"--auto-compaction-retention: at least 1s (or 0 to turn it off), got {t!r}")
        return seconds

    @property
    def election_ticks(self) -> int:
        return max(2, self.election_timeout // self.heartbeat_interval)

    @property
    def cluster_id(self) -> int:
        return _hash64(b"cluster\n" + self.initial_cluster_token.encode())

    def member_id(self, peer_urls: Sequence[str]) -> int:
        return member_id(peer_urls, self.initial_cluster_token)


def _hash64(data: bytes) -> int:
    v = int.from_bytes(hashlib.sha1(data).digest()[:8], "big")
    return v or 1


def member_id(peer_urls: Sequence[str], token: str) -> int:
    """Deterministic, like etcd's: every initial member computes the same IDs."""
    return _hash64("\n".join(sorted(peer_urls)).encode() + b"\n" + token.encode())


# name, type, help. Types: str, int, bool, urls, choice:<a|b>, cluster
_FLAGS: list[tuple[str, str, str]] = [
    ("name", "str", "human-readable name for this member"),
    ("data-dir", "str", "path to the data directory (default: ./<name>.kvstore)"),
    ("listen-client-urls", "urls", "URLs to serve the gRPC client API on"),
    ("advertise-client-urls", "urls", "client URLs to advertise to the cluster"),
    ("listen-peer-urls", "urls", "URLs to listen on for peer traffic"),
    ("initial-advertise-peer-urls", "urls", "peer URLs to advertise to the cluster"),
    ("initial-cluster", "cluster", "initial cluster: name=peerURL,name=peerURL,..."),
    ("initial-cluster-state", "choice:new|existing", "new cluster or join an existing one"),
    ("initial-cluster-token", "str", "initial cluster token, unique per cluster"),
    ("force-new-cluster", "bool", "recover from a lost majority: restart as a one-member cluster with this member's data"),
    ("listen-client-http-urls", "urls", f"URLs for the HTTP API and /health (default {DEFAULT_HTTP_URL})"),
    ("listen-metrics-urls", "urls", "extra URLs serving /metrics and /health"),
    ("heartbeat-interval", "int", "time (ms) of a heartbeat interval"),
    ("election-timeout", "int", "time (ms) for an election to timeout"),
    ("snapshot-count", "int", "applied entries between Raft log compactions"),
    ("quota-backend-bytes", "int", "raise an alarm when the backend exceeds this size (0 = default 2 GiB)"),
    ("max-request-bytes", "int", "maximum client request size in bytes"),
    ("max-txn-ops", "int", "maximum number of operations per transaction"),
    ("log-level", "choice:debug|info|warn|error", "log level"),
    ("log-format", "choice:text|json", "log line format"),
    ("cert-file", "str", "client server TLS certificate file (PEM)"),
    ("key-file", "str", "client server TLS key file (PEM, unencrypted)"),
    ("trusted-ca-file", "str", "CA bundle that client certificates must be signed by"),
    ("client-cert-auth", "bool", "require a client certificate signed by --trusted-ca-file"),
    ("auto-tls", "bool", "client TLS with a generated self-signed certificate (development only)"),
    ("peer-cert-file", "str", "peer server/client TLS certificate file (PEM)"),
    ("peer-key-file", "str", "peer server/client TLS key file (PEM, unencrypted)"),
    ("peer-trusted-ca-file", "str", "CA bundle for peer certificates"),
    ("peer-client-cert-auth", "bool", "require a peer client certificate signed by --peer-trusted-ca-file"),
    ("peer-auto-tls", "bool", "peer TLS with generated certificates (development only)"),
    ("peer-cert-allowed-cn", "str", "refuse peers whose client certificate common name differs"),
    ("self-signed-cert-validity", "int", "validity in years of --auto-tls/--peer-auto-tls certificates"),
    ("max-watches-per-stream", "int", "maximum number of watches on one Watch stream (0 = no limit)"),
    ("max-leases", "int", "maximum number of leases granted at once (0 = no limit)"),
    ("auto-compaction-mode", "choice:periodic|revision",
     "interpret --auto-compaction-retention as a duration (periodic, default) or a number of revisions"),
    ("auto-compaction-retention", "str",
     "history to keep: e.g. 1h, 30m, 72 (hours) in periodic mode, 1000 in revision mode; 0 (default) = never compact"),
    (
        "experimental-lease-read",
        "bool",
        # "%%": argparse %-formats help texts.
        "serve linearizable reads on the leader's lease (no heartbeat round per read); set it on every "
        "member with the same --heartbeat-interval/--election-timeout; safe only if the members' clock "
        f"rates differ by at most {int(LEASE_CLOCK_DRIFT * 100)}%% (a late tick, e.g. a stalled or "
        "paused process, is detected and ends the lease; a suspended VM is not)",
    ),
]

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def env_var(flag: str) -> str:
    return "KVSTORE_" + flag.upper().replace("-", "_")


def _parse_urls(flag: str, value: str) -> list[str]:
    urls = [u.strip() for u in value.split(",") if u.strip()]
    if not urls:
        raise ConfigError(f"--{flag}: expected at least one URL")
    for u in urls:
        check_url(flag, u)
    return urls


def check_url(flag: str, url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https", "unix", "unixs"):
        raise ConfigError(f"--{flag}: URL scheme must be http or https: {url!r}")
    if parts.scheme.startswith("unix"):
        return parts.path, 0
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"--{flag}: invalid port in {url!r}") from None
    if not parts.hostname or port is None:
        raise ConfigError(f"--{flag}: URL must have a host and a port: {url!r}")
    if parts.path not in ("", "/"):
        raise ConfigError(f"--{flag}: URL must not have a path: {url!r}")
    return parts.hostname, port


def grpc_target(url: str) -> str:
    """host:port (or unix:path) for gRPC from a client or peer URL."""
    parts = urlsplit(url)
    if parts.scheme.startswith("unix"):
        return f"unix:{parts.path or parts.netloc}"
    host = parts.hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{parts.port or 2379}"


def _parse_cluster(value: str) -> dict[str, list[str]]:
    cluster: dict[str, list[str]] = {}
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        if "=" not in item:
            raise ConfigError(f"--initial-cluster: expected name=URL, got {item!r}")
        name, url = item.split("=", 1)
        check_url("initial-cluster", url)
        cluster.setdefault(name, []).append(url)
    if not cluster:
        raise ConfigError("--initial-cluster: empty")
    return cluster


def _convert(flag: str, kind: str, value: str) -> object:
    if kind == "str":
        return value
    if kind == "int":
        try:
            v = int(value)
        except ValueError:
            raise ConfigError(f"--{flag}: expected an integer, got {value!r}") from None
        if v < 0:
            raise ConfigError(f"--{flag}: must not be negative")
        return v
    if kind == "bool":
        v = value.strip().lower()
        if v in _TRUE:
            return True
        if v in _FALSE:
            return False
        raise ConfigError(f"--{flag}: expected true or false, got {value!r}")
    if kind == "urls":
        return _parse_urls(flag, value)
    if kind == "cluster":
        return _parse_cluster(value)
    choices = kind.split(":", 1)[1].split("|")
    if value not in choices:
        raise ConfigError(f"--{flag}: must be one of {', '.join(choices)}, got {value!r}")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="kvstore",
        description="kvstore: a distributed key-value configuration store (etcd v3 API). "
        "Every flag can also be set with KVSTORE_<FLAG> (e.g. KVSTORE_NAME).",
    )
    for flag, kind, help_ in _FLAGS:
        if kind == "bool":  # etcd's form: --flag, --flag=true, --flag=false
            p.add_argument(
                f"--{flag}", dest=flag.replace("-", "_"), default=None, nargs="?", const="true", help=help_
            )
        else:
            p.add_argument(f"--{flag}", dest=flag.replace("-", "_"), default=None, help=help_)
    p.add_argument("--version", action="store_true", help="print the version and exit")
    return p


def parse(argv: Sequence[str], environ: dict[str, str] | None = None) -> ServerConfig:
    environ = dict(os.environ) if environ is None else environ
    ns = build_parser().parse_args(list(argv))
    cfg = ServerConfig()
    given: set[str] = set()
    for flag, kind, _ in _FLAGS:
        attr = flag.replace("-", "_")
        raw = getattr(ns, attr)
        if raw is None:
            raw = environ.get(env_var(flag))
        if raw is None:
            continue
        given.add(flag)
        setattr(cfg, attr, _convert(flag, kind, raw))
    # etcd's derived defaults.
    if "data-dir" not in given:
        cfg.data_dir = f"{cfg.name}.kvstore"
    if not cfg.advertise_client_urls:
        cfg.advertise_client_urls = list(cfg.listen_client_urls)
    if not cfg.initial_advertise_peer_urls:
        cfg.initial_advertise_peer_urls = list(cfg.listen_peer_urls)
    if not cfg.initial_cluster:
        cfg.initial_cluster = {cfg.name: list(cfg.initial_advertise_peer_urls)}
    if cfg.quota_backend_bytes == 0:
        cfg.quota_backend_bytes = 2 << 30
    validate(cfg)
    return cfg


def validate(cfg: ServerConfig) -> None:
    if not cfg.name:
        raise ConfigError("--name must not be empty")
    if cfg.name not in cfg.initial_cluster:
        raise ConfigError(
            f"--initial-cluster has no entry for this member's --name {cfg.name!r}"
        )
    mine = sorted(cfg.initial_cluster[cfg.name])
    if mine != sorted(cfg.initial_advertise_peer_urls):
        raise ConfigError(
            f"--initial-cluster entry for {cfg.name!r} ({','.join(mine)}) does not match "
            f"--initial-advertise-peer-urls ({','.join(cfg.initial_advertise_peer_urls)})"
        )
    ids = [member_id(u, cfg.initial_cluster_token) for u in cfg.initial_cluster.values()]
    if len(set(ids)) != len(ids):
        raise ConfigError("--initial-cluster: two members share the same peer URLs")
    if cfg.heartbeat_interval <= 0:
        raise ConfigError("--heartbeat-interval must be positive")
    if cfg.election_timeout < 5 * cfg.heartbeat_interval:
        raise ConfigError("--election-timeout must be at least 5 times --heartbeat-interval")
    if cfg.max_request_bytes <= 0:
        raise ConfigError("--max-request-bytes must be positive")
    if cfg.max_txn_ops <= 0:
        raise ConfigError("--max-txn-ops must be positive")
    if cfg.snapshot_count <= 0:
        raise ConfigError("--snapshot-count must be positive")
    _ = cfg.compaction_retention  # a bad retention fails at start, with the flag's name
    _validate_tls(cfg)


def _validate_tls(cfg: ServerConfig) -> None:
    """Flag combinations only; the files themselves are read by kvstore.tls."""
    for prefix in ("", "peer-"):
        attr = prefix.replace("-", "_")
        cert, key = getattr(cfg, attr + "cert_file"), getattr(cfg, attr + "key_file")
        if bool(cert) != bool(key):
            raise ConfigError(f"--{prefix}cert-file and --{prefix}key-file must be given together")
        if getattr(cfg, attr + "client_cert_auth") and not getattr(cfg, attr + "trusted_ca_file"):
            if not (prefix and cfg.peer_auto_tls and not cert):
                raise ConfigError(f"--{prefix}client-cert-auth needs --{prefix}trusted-ca-file")
    if cfg.peer_cert_allowed_cn and not cfg.peer_client_cert_auth:
        raise ConfigError("--peer-cert-allowed-cn needs --peer-client-cert-auth (peers must present a certificate)")
    if cfg.self_signed_cert_validity <= 0:
        raise ConfigError("--self-signed-cert-validity must be positive")
    client_tls = bool(cfg.cert_file) or cfg.auto_tls
    for flag, urls in (
        ("listen-client-urls", cfg.listen_client_urls),
        ("listen-client-http-urls", cfg.listen_client_http_urls),
        ("listen-metrics-urls", cfg.listen_metrics_urls),
    ):
        for u in urls:
            if urlsplit(u).scheme in ("https", "unixs") and not client_tls:
                raise ConfigError(f"--{flag}: {u} needs --cert-file/--key-file or --auto-tls")
    peer_tls = bool(cfg.peer_cert_file) or cfg.peer_auto_tls
    for u in cfg.listen_peer_urls:
        if urlsplit(u).scheme == "https" and not peer_tls:
            raise ConfigError(f"--listen-peer-urls: {u} needs --peer-cert-file/--peer-key-file or --peer-auto-tls")
    if not peer_tls:
        for name, urls in cfg.initial_cluster.items():
            for u in urls:
                if urlsplit(u).scheme == "https":
                    raise ConfigError(
                        f"--initial-cluster: {name}={u} is https: give --peer-cert-file/--peer-key-file "
                        "(and --peer-trusted-ca-file) or --peer-auto-tls"
                    )
