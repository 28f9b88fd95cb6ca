"""Transport security and safe defaults (issue 8, sections 1 and 3).

Certificates are made here with ``cryptography`` (a CA, server, client and
peer certificates, and a second, foreign CA). Servers are real
``python -m kvstore`` processes (tests/procs.py) on free loopback ports in
temporary directories, killed by PID. Waits are polls with generous
deadlines; nothing asserts how long anything took.

Covered: TLS and mutual TLS on gRPC (grpc stubs and etcdctl 3.4 with
--cacert/--cert/--key; a client without a certificate, or with one from
another CA, is refused), HTTPS /health (urllib with an SSLContext), --auto-tls,
peer TLS (a 3-member cluster over https peer URLs forms and replicates; with
--peer-auto-tls too), a member with a foreign CA's certificate cannot join,
raw peer messages from a foreign certificate or a certificate with the wrong
common name (--peer-cert-allowed-cn) are refused, certificate rotation on
disk without restart (gRPC and HTTPS), one-line start errors for bad
certificate files, the watch and lease limits, the plaintext warning, and no
key material in any log.
"""
from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import logging
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any, Iterator

import grpc
import pytest

cryptography = pytest.importorskip("cryptography")

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402

from kvstore import tls  # noqa: E402
from kvstore.config import ConfigError, parse  # noqa: E402
from kvstore.pb import rpc_pb2, rpc_pb2_grpc  # noqa: E402
from raft import wire  # noqa: E402
from tests.procs import REPO, Cluster, Node, free_ports, peer_hello  # noqa: E402

ETCDCTL = shutil.which("etcdctl")
need_etcdctl = pytest.mark.skipif(ETCDCTL is None, reason="etcdctl (Debian etcd-client) is not installed")


# ---------------------------------------------------------------- certificates
def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class CA:
    """A test certificate authority issuing P-256 certificates for loopback."""

    def __init__(self, name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(hours=1))
            .not_valid_after(_now() + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, cn: str) -> tuple[bytes, bytes]:
        """(certificate PEM, key PEM) valid for 127.0.0.1/localhost, server and client use."""
        key = ec.generate_private_key(ec.SECP256R1())
        san = x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(hours=1))
            .not_valid_after(_now() + datetime.timedelta(days=1))
            .add_extension(san, critical=False)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return cert.public_bytes(serialization.Encoding.PEM), key_pem


@dataclasses.dataclass
class Pair:
    cert: str
    key: str

    def read(self) -> tuple[bytes, bytes]:
        with open(self.cert, "rb") as c, open(self.key, "rb") as k:
            return c.read(), k.read()


class PKI:
    """Files of one test: a CA, a foreign CA and certificates on disk."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="kvstore-tls-")
        self.ca = CA("kvstore test CA")
        self.other = CA("someone else's CA")
        self.ca_file = self.write("ca.pem", self.ca.pem)
        self.other_ca_file = self.write("other-ca.pem", self.other.pem)

    def write(self, name: str, data: bytes) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def pair(self, name: str, cn: str, ca: CA | None = None) -> Pair:
        cert, key = (ca or self.ca).issue(cn)
        return Pair(self.write(f"{name}.crt", cert), self.write(f"{name}.key", key))

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def pki() -> Iterator[PKI]:
    p = PKI()
    yield p
    p.close()


# -------------------------------------------------------------------- processes
@dataclasses.dataclass
class TLSNode(Node):
    """A Node whose client and/or peer URLs are https."""

    client_tls: bool = False
    peer_tls: bool = False
    health_ctx: ssl.SSLContext | None = None

    @property
    def peer_url(self) -> str:
        return f"{'https' if self.peer_tls else 'http'}://127.0.0.1:{self.peer_port}"

    @property
    def http_url(self) -> str:
        return f"{'https' if self.client_tls else 'http'}://127.0.0.1:{self.http_port}"

    @property
    def client_url(self) -> str:
        return f"{'https' if self.client_tls else 'http'}://127.0.0.1:{self.client_port}"

    def args(self, initial_cluster: str, state: str) -> list[str]:
        # Later flags win: the https URLs replace procs.Node's http ones.
        return [
            *super().args(initial_cluster, state),
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-client-http-urls", self.http_url,
        ]

    def health(self) -> bool:
        try:
            with urllib.request.urlopen(self.http_url + "/health", timeout=2, context=self.health_ctx) as r:
                return b'"true"' in r.read()
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def log_text(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""


class TLSCluster(Cluster):
    def __init__(
        self,
        size: int,
        extra_args: list[str] | None = None,
        *,
        client_tls: bool = False,
        peer_tls: bool = False,
        health_ctx: ssl.SSLContext | None = None,
        per_node_args: dict[str, list[str]] | None = None,
    ) -> None:
        self._tls = (client_tls, peer_tls, health_ctx, per_node_args or {})
        super().__init__(size, extra_args)

    def _new_node(self, name: str, extra_args: list[str]) -> Node:
        client_tls, peer_tls, health_ctx, per_node = self._tls
        c, p, h = free_ports(3)
        return TLSNode(
            name, c, p, h, os.path.join(self.root, name), list(extra_args) + per_node.get(name, []),
            client_tls=client_tls, peer_tls=peer_tls, health_ctx=health_ctx,
        )


def wait_for(pred: Any, timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def client_ctx(pki: PKI, pair: Pair | None = None, ca_file: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca_file or pki.ca_file)
    if pair is not None:
        ctx.load_cert_chain(pair.cert, pair.key)
    return ctx


def channel_creds(pki: PKI, pair: Pair | None = None, ca_pem: bytes | None = None) -> grpc.ChannelCredentials:
    if pair is None:
        return grpc.ssl_channel_credentials(root_certificates=ca_pem or pki.ca.pem)
    cert, key = pair.read()
    return grpc.ssl_channel_credentials(root_certificates=ca_pem or pki.ca.pem, private_key=key, certificate_chain=cert)


def put_get(endpoint: str, creds: grpc.ChannelCredentials, key: bytes, value: bytes) -> bytes:
    with grpc.secure_channel(endpoint, creds) as ch:
        stub = rpc_pb2_grpc.KVStub(ch)
        stub.Put(rpc_pb2.PutRequest(key=key, value=value), timeout=10)
        r = stub.Range(rpc_pb2.RangeRequest(key=key), timeout=10)
        return r.kvs[0].value


def refused(endpoint: str, creds: grpc.ChannelCredentials) -> grpc.StatusCode:
    with grpc.secure_channel(endpoint, creds) as ch:
        with pytest.raises(grpc.RpcError) as e:
            rpc_pb2_grpc.KVStub(ch).Range(rpc_pb2.RangeRequest(key=b"k"), timeout=5)
    return e.value.code()


def server_cn(port: int, pki: PKI, client: Pair | None, alpn: str) -> str:
    """The common name of the certificate a new TLS connection is served."""
    ctx = client_ctx(pki, client)
    ctx.set_alpn_protocols([alpn])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        with ctx.wrap_socket(s, server_hostname="127.0.0.1") as t:
            cert = t.getpeercert()
    return dict(x[0] for x in cert["subject"])["commonName"]


def etcdctl(endpoint: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, ETCDCTL_API="3")
    p = subprocess.run(
        [ETCDCTL or "etcdctl", "--endpoints", endpoint, "--command-timeout=5s", "--dial-timeout=3s", *args],
        capture_output=True, text=True, timeout=60, env=env,
    )
    if check and p.returncode != 0:
        raise AssertionError(f"etcdctl {' '.join(args)} failed ({p.returncode}): {p.stdout}{p.stderr}")
    return p


def assert_no_key_material(nodes: list[Any]) -> None:
    for n in nodes:
        text = n.log_text()
        assert "PRIVATE KEY" not in text and "BEGIN CERTIFICATE" not in text, n.name


# ------------------------------------------------------------------- flags
def test_tls_flags_parse_like_etcd() -> None:
    cfg = parse(["--client-cert-auth", "--trusted-ca-file", "ca.pem", "--cert-file", "c", "--key-file", "k"], environ={})
    assert cfg.client_cert_auth is True and cfg.trusted_ca_file == "ca.pem"
    cfg = parse(["--client-cert-auth=false"], environ={})
    assert cfg.client_cert_auth is False
    cfg = parse([], environ={"KVSTORE_AUTO_TLS": "true", "KVSTORE_PEER_AUTO_TLS": "1"})
    assert cfg.auto_tls and cfg.peer_auto_tls
    assert cfg.max_watches_per_stream == 10000 and cfg.max_leases == 1000000
    assert cfg.listen_client_urls == ["http://127.0.0.1:2379"]  # loopback unless told otherwise


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--listen-client-urls", "https://127.0.0.1:2379"], "needs --cert-file/--key-file or --auto-tls"),
        (["--listen-client-http-urls", "https://127.0.0.1:2378"], "needs --cert-file/--key-file or --auto-tls"),
        (["--cert-file", "c.pem"], "must be given together"),
        (["--client-cert-auth", "--cert-file", "c", "--key-file", "k"], "needs --trusted-ca-file"),
        (["--peer-cert-allowed-cn", "x", "--peer-auto-tls"], "needs --peer-client-cert-auth"),
        (["--listen-peer-urls", "https://127.0.0.1:2380"], "needs --peer-cert-file"),
        (["--auto-tls=maybe"], "expected true or false"),
    ],
)
def test_tls_flag_errors(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(argv, environ={})


@pytest.mark.parametrize("case", ["missing", "not-pem", "mismatch", "bad-ca"])
def test_bad_certificate_files_fail_start_with_one_line(pki: PKI, case: str) -> None:
    good = pki.pair(f"bad-case-{case}", "server")
    other = pki.pair(f"bad-case-other-{case}", "server")
    cert, key, ca = good.cert, good.key, pki.ca_file
    if case == "missing":
        cert = os.path.join(pki.dir, "no-such.crt")
    elif case == "not-pem":
        key = pki.write(f"garbage-{case}.key", b"this is not a key\n")
    elif case == "mismatch":
        key = other.key
    else:
        ca = pki.write(f"garbage-{case}.pem", b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    c, p, h = free_ports(3)
    data = tempfile.mkdtemp(prefix="kvstore-tls-bad-")
    try:
        r = subprocess.run(
            [sys.executable, "-m", "kvstore", "--name", "b", "--data-dir", data,
             "--listen-client-urls", f"https://127.0.0.1:{c}", "--listen-peer-urls", f"http://127.0.0.1:{p}",
             "--listen-client-http-urls", f"http://127.0.0.1:{h}",
             "--cert-file", cert, "--key-file", key, "--trusted-ca-file", ca, "--client-cert-auth"],
            capture_output=True, text=True, timeout=60, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO),
        )
    finally:
        shutil.rmtree(data, ignore_errors=True)
    assert r.returncode == 1, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("kvstore: error:")]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    expect = {
        "missing": "--cert-file " + cert + ": No such file",
        "not-pem": "--key-file " + key + ": not a PEM private key",
        "mismatch": "does not match --cert-file",
        "bad-ca": "--trusted-ca-file " + ca + ": not a PEM",
    }[case]
    assert expect in lines[0], lines[0]
    assert "PRIVATE KEY" not in r.stderr


# ------------------------------------------------------------- helpers in-process
class _FakeContext:
    def __init__(self, auth: dict[str, list[bytes]] | None) -> None:
        self._auth = auth

    def auth_context(self) -> dict[str, list[bytes]]:
        if self._auth is None:
            raise AttributeError("no auth context")
        return self._auth


def test_peer_common_name_and_allowed_cn_check() -> None:
    ctx = _FakeContext({"x509_common_name": [b"alice"], "transport_security_type": [b"ssl"]})
    assert tls.peer_common_name(ctx) == "alice"
    assert tls.peer_common_name(_FakeContext({"transport_security_type": [b"insecure"]})) is None
    assert tls.peer_common_name(_FakeContext(None)) is None
    assert tls.peer_common_name(object()) is None
    check = tls.allowed_cn_check("peer")  # given getpeercert()'s form
    assert check({"subject": ((("countryName", "XX"),), (("commonName", "peer"),))}) is None
    assert "'alice' is not the allowed 'peer'" in (check({"subject": ((("commonName", "alice"),),)}) or "")
    assert check({}) is not None and check(None) is not None


def test_plaintext_on_non_loopback_is_warned(caplog: pytest.LogCaptureFixture) -> None:
    from kvstore.__main__ import warn_plaintext

    cfg = parse(["--listen-client-urls", "http://0.0.0.0:2379", "--listen-peer-urls", "http://10.0.0.1:2380",
                 "--initial-advertise-peer-urls", "http://10.0.0.1:2380"], environ={})
    with caplog.at_level(logging.WARNING, logger="kvstore"):
        warn_plaintext(cfg, False, False)
    text = caplog.text
    assert "non-loopback http://0.0.0.0:2379 without TLS" in text
    assert "non-loopback http://10.0.0.1:2380 without TLS" in text
    assert "127.0.0.1:2378" not in text  # the loopback HTTP default is fine
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kvstore"):
        warn_plaintext(parse([], environ={}), False, False)
    assert caplog.text == ""


# -------------------------------------------------------- client TLS, one member
@pytest.fixture(scope="module")
def mtls(pki: PKI) -> Iterator[tuple[TLSCluster, dict[str, Pair]]]:
    pairs = {
        "server": pki.pair("server", "kvstore-server"),
        "alice": pki.pair("alice", "alice"),
        "mallory": pki.pair("mallory", "alice", ca=pki.other),  # same name, wrong CA
    }
    args = ["--cert-file", pairs["server"].cert, "--key-file", pairs["server"].key,
            "--trusted-ca-file", pki.ca_file, "--client-cert-auth"]
    c = TLSCluster(1, args, client_tls=True, health_ctx=client_ctx(pki, pairs["alice"]))
    try:
        c.start()
        yield c, pairs
    finally:
        c.close()


def test_mutual_tls_grpc(pki: PKI, mtls: tuple[TLSCluster, dict[str, Pair]]) -> None:
    c, pairs = mtls
    ep = c.nodes[0].endpoint
    assert put_get(ep, channel_creds(pki, pairs["alice"]), b"mtls", b"yes") == b"yes"
    # No client certificate, or one from another CA: the handshake is refused.
    assert refused(ep, channel_creds(pki)) == grpc.StatusCode.UNAVAILABLE
    assert refused(ep, channel_creds(pki, pairs["mallory"])) == grpc.StatusCode.UNAVAILABLE
    # Plaintext to a TLS port gets nowhere either.
    with grpc.insecure_channel(ep) as ch:
        with pytest.raises(grpc.RpcError):
            rpc_pb2_grpc.KVStub(ch).Range(rpc_pb2.RangeRequest(key=b"k"), timeout=5)


def test_mutual_tls_https_health(pki: PKI, mtls: tuple[TLSCluster, dict[str, Pair]]) -> None:
    c, pairs = mtls
    url = c.nodes[0].http_url + "/health"
    with urllib.request.urlopen(url, timeout=5, context=client_ctx(pki, pairs["alice"])) as r:
        assert r.status == 200 and b'"health": "true"' in r.read()
    for ctx in (client_ctx(pki), client_ctx(pki, pairs["mallory"])):
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            urllib.request.urlopen(url, timeout=5, context=ctx).read()
    # The gateway is behind the same TLS.
    req = urllib.request.Request(c.nodes[0].http_url + "/v3/kv/range", data=b'{"key": "bXRscw=="}', method="POST")
    with urllib.request.urlopen(req, timeout=5, context=client_ctx(pki, pairs["alice"])) as r:
        assert r.status == 200


@need_etcdctl
def test_etcdctl_with_client_certificate(pki: PKI, mtls: tuple[TLSCluster, dict[str, Pair]]) -> None:
    c, pairs = mtls
    ep = c.nodes[0].client_url
    tls_args = ["--cacert", pki.ca_file, "--cert", pairs["alice"].cert, "--key", pairs["alice"].key]
    etcdctl(ep, *tls_args, "put", "from-etcdctl", "v1")
    assert etcdctl(ep, *tls_args, "get", "from-etcdctl", "--print-value-only").stdout.strip() == "v1"
    assert "is healthy" in etcdctl(ep, *tls_args, "endpoint", "health").stderr + etcdctl(
        ep, *tls_args, "endpoint", "health").stdout
    # Without a client certificate: refused.
    p = etcdctl(ep, "--cacert", pki.ca_file, "get", "from-etcdctl", check=False)
    assert p.returncode != 0
    # With a certificate from another CA: refused.
    p = etcdctl(ep, "--cacert", pki.ca_file, "--cert", pairs["mallory"].cert, "--key", pairs["mallory"].key,
                "get", "from-etcdctl", check=False)
    assert p.returncode != 0
    assert_no_key_material(c.nodes)


def test_certificate_rotation_without_restart(pki: PKI) -> None:
    first = pki.pair("rot-server", "first")
    alice = pki.pair("rot-alice", "alice")
    args = ["--cert-file", first.cert, "--key-file", first.key,
            "--trusted-ca-file", pki.ca_file, "--client-cert-auth"]
    with TLSCluster(1, args, client_tls=True, health_ctx=client_ctx(pki, alice)) as c:
        c.start()
        n = c.nodes[0]
        creds = channel_creds(pki, alice)
        assert put_get(n.endpoint, creds, b"rot", b"1") == b"1"
        assert server_cn(n.client_port, pki, alice, "h2") == "first"
        assert server_cn(n.http_port, pki, alice, "http/1.1") == "first"

        # A half-written replacement (key only) is not used: the old certificate stays.
        second_cert, second_key = pki.ca.issue("second")
        with open(first.key + ".new", "wb") as f:
            f.write(second_key)
        os.replace(first.key + ".new", first.key)
        assert server_cn(n.client_port, pki, alice, "h2") == "first"
        assert server_cn(n.http_port, pki, alice, "http/1.1") == "first"
        # Then the certificate: new connections see it, no restart.
        with open(first.cert + ".new", "wb") as f:
            f.write(second_cert)
        os.replace(first.cert + ".new", first.cert)
        wait_for(lambda: server_cn(n.client_port, pki, alice, "h2") == "second", what="gRPC cert rotation")
        wait_for(lambda: server_cn(n.http_port, pki, alice, "http/1.1") == "second", what="HTTPS cert rotation")
        assert put_get(n.endpoint, creds, b"rot", b"2") == b"2"
        assert n.health()
        assert n.alive
        text = n.log_text()
        assert "keeping the current certificate" in text and "certificate rotated" in text
        assert_no_key_material(c.nodes)


def test_auto_tls(pki: PKI) -> None:
    """--auto-tls: a self-signed certificate in <data-dir>/fixtures/client,
    server-side TLS only (no client certificate needed)."""
    with TLSCluster(1, ["--auto-tls"], client_tls=True) as c:
        n = c.nodes[0]
        n.start(c.initial_cluster)
        cert_file = os.path.join(n.data_dir, "fixtures", "client", "cert.pem")
        wait_for(lambda: "serving:" in n.log_text() or not n.alive, what="start")
        with open(cert_file, "rb") as f:
            pem = f.read()
        n.health_ctx = ssl.create_default_context(cadata=pem.decode())
        c.wait_healthy()
        assert put_get(n.endpoint, grpc.ssl_channel_credentials(root_certificates=pem), b"auto", b"tls") == b"tls"
        assert refused(n.endpoint, grpc.ssl_channel_credentials(root_certificates=pki.ca.pem)) == (
            grpc.StatusCode.UNAVAILABLE
        )
        key_mode = os.stat(os.path.join(n.data_dir, "fixtures", "client", "key.pem")).st_mode & 0o777
        assert key_mode == 0o600
        assert_no_key_material(c.nodes)


# --------------------------------------------------------------------- peer TLS
def _peer_ssl(pki: PKI, pair: Pair | None = None, ca_file: str | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(ca_file or pki.ca_file)
    if pair is not None:
        ctx.load_cert_chain(pair.cert, pair.key)
    return ctx


@pytest.fixture(scope="module")
def peer_cluster(pki: PKI) -> Iterator[tuple[TLSCluster, Pair]]:
    peer = pki.pair("peer", "kvstore-peer")
    args = ["--peer-cert-file", peer.cert, "--peer-key-file", peer.key, "--peer-trusted-ca-file", pki.ca_file,
            "--peer-client-cert-auth", "--peer-cert-allowed-cn", "kvstore-peer"]
    c = TLSCluster(3, args, peer_tls=True)
    try:
        c.start(timeout=60)
        yield c, peer
    finally:
        c.close()


def _kv(n: Node) -> rpc_pb2_grpc.KVStub:
    return rpc_pb2_grpc.KVStub(grpc.insecure_channel(n.endpoint))


def _status(n: Node) -> rpc_pb2.StatusResponse:
    with grpc.insecure_channel(n.endpoint) as ch:
        return rpc_pb2_grpc.MaintenanceStub(ch).Status(rpc_pb2.StatusRequest(), timeout=5)


def _members(n: Node) -> list[rpc_pb2.Member]:
    with grpc.insecure_channel(n.endpoint) as ch:
        return list(rpc_pb2_grpc.ClusterStub(ch).MemberList(rpc_pb2.MemberListRequest(), timeout=5).members)


def _serializable(n: Node, key: bytes) -> bytes | None:
    try:
        with grpc.insecure_channel(n.endpoint) as ch:
            r = rpc_pb2_grpc.KVStub(ch).Range(rpc_pb2.RangeRequest(key=key, serializable=True), timeout=5)
    except grpc.RpcError:
        return None
    return r.kvs[0].value if r.kvs else None


def _put(n: Node, key: bytes, value: bytes) -> None:
    def attempt() -> bool:
        try:
            with grpc.insecure_channel(n.endpoint) as ch:
                rpc_pb2_grpc.KVStub(ch).Put(rpc_pb2.PutRequest(key=key, value=value), timeout=5)
            return True
        except grpc.RpcError:
            return False

    wait_for(attempt, what=f"put {key!r}")


def test_peer_tls_cluster_forms_and_replicates(peer_cluster: tuple[TLSCluster, Pair]) -> None:
    c, _ = peer_cluster
    assert all(n.peer_url.startswith("https://") for n in c.nodes)
    _put(c.nodes[0], b"peer-tls", b"replicated")
    for n in c.nodes:
        wait_for(lambda n=n: _serializable(n, b"peer-tls") == b"replicated", what=f"replication to {n.name}")
    members = _members(c.nodes[1])
    assert len(members) == 3 and all(m.name for m in members)
    assert all(u.startswith("https://") for m in members for u in m.peerURLs)


def test_peer_messages_with_wrong_certificate_are_refused(pki: PKI, peer_cluster: tuple[TLSCluster, Pair]) -> None:
    c, peer = peer_cluster
    n1, n2 = c.nodes[0], c.nodes[1]
    st1, st2 = _status(n1), _status(n2)
    cluster_id, frm, to = st2.header.cluster_id, st2.header.member_id, st1.header.member_id
    term = st1.raftTerm
    # Sanity: the right certificate with the right identity gets through the
    # handshake and the identity check.
    assert peer_hello(n1.peer_port, cluster_id, frm, to, ctx=_peer_ssl(pki, peer)) == [(0, "")]
    # A certificate of another CA (claiming the right name): the handshake fails.
    foreign = pki.pair("foreign-peer", "kvstore-peer", ca=pki.other)
    assert peer_hello(n1.peer_port, cluster_id, frm, to, ctx=_peer_ssl(pki, foreign)) is None
    # No client certificate at all: the handshake fails.
    assert peer_hello(n1.peer_port, cluster_id, frm, to, ctx=_peer_ssl(pki)) is None
    # Our CA, but not the allowed common name: refused before any message is read.
    wrong_cn = pki.pair("wrong-cn-peer", "not-a-member")
    [(code, reason)] = peer_hello(n1.peer_port, cluster_id, frm, to, ctx=_peer_ssl(pki, wrong_cn)) or [(None, "")]
    assert code == wire.Code.PERMISSION_DENIED
    assert "'not-a-member' is not the allowed 'kvstore-peer'" in reason
    wait_for(lambda: "is not the allowed 'kvstore-peer'" in n1.log_text(), what="refusal logged")
    # Plaintext to the peer port: refused too.
    assert peer_hello(n1.peer_port, cluster_id, frm, to, ctx=None) is None
    assert _status(n1).raftTerm == term  # nothing reached Raft
    _put(n1, b"after-intruders", b"ok")


def test_member_with_foreign_certificate_cannot_join(pki: PKI, peer_cluster: tuple[TLSCluster, Pair]) -> None:
    c, _ = peer_cluster
    foreign = pki.pair("intruder", "kvstore-peer", ca=pki.other)
    intruder = c.add_node("intruder")
    assert isinstance(intruder, TLSNode)
    # Its own (foreign) files: later flags win.
    intruder.extra_args += ["--peer-cert-file", foreign.cert, "--peer-key-file", foreign.key,
                            "--peer-trusted-ca-file", pki.other_ca_file]
    # Up before it is added, so that the leader's very first attempt to reach
    # it is a TLS handshake (the first failure of an episode is the one logged).
    intruder.start(c.initial_cluster, state="existing")
    wait_for(lambda: "serving:" in intruder.log_text() or not intruder.alive, what="intruder start")
    with grpc.insecure_channel(c.nodes[0].endpoint) as ch:
        added = rpc_pb2_grpc.ClusterStub(ch).MemberAdd(
            rpc_pb2.MemberAddRequest(peerURLs=[intruder.peer_url]), timeout=10
        ).member
    try:
        # The leader cannot even talk to it: its certificate fails verification.
        def refusal_logged() -> bool:
            return any(
                f"peer {added.ID:x}" in line and "unreachable" in line and "handshake" in line.lower()
                for n in c.nodes[:3] for line in n.log_text().splitlines()
            )

        wait_for(refusal_logged, what="the leader's handshake with the intruder failing")
        _put(c.nodes[0], b"still-working", b"yes")  # quorum of 3 out of 4
        for n in c.nodes[:3]:
            wait_for(lambda n=n: _serializable(n, b"still-working") == b"yes", what=f"replication to {n.name}")
        # It never got the data, never published its name: not a started member.
        assert intruder.alive
        assert _serializable(intruder, b"still-working") is None
        assert not intruder.health()
        m = [m for m in _members(c.nodes[0]) if m.ID == added.ID]
        assert m and m[0].name == ""
    finally:
        intruder.kill()
        with grpc.insecure_channel(c.nodes[0].endpoint) as ch:
            rpc_pb2_grpc.ClusterStub(ch).MemberRemove(rpc_pb2.MemberRemoveRequest(ID=added.ID), timeout=10)
        c.nodes.remove(intruder)
    assert_no_key_material(c.nodes)


def test_peer_auto_tls_cluster() -> None:
    with TLSCluster(3, ["--peer-auto-tls", "--peer-client-cert-auth"], peer_tls=True) as c:
        c.start(timeout=60)
        _put(c.nodes[2], b"auto-peer", b"ok")
        for n in c.nodes:
            wait_for(lambda n=n: _serializable(n, b"auto-peer") == b"ok", what=f"replication to {n.name}")
        for n in c.nodes:
            assert os.path.exists(os.path.join(n.data_dir, "fixtures", "peer", "cert.pem"))
        assert_no_key_material(c.nodes)


# ----------------------------------------------------------------------- limits
def test_watch_and_lease_limits() -> None:
    with TLSCluster(1, ["--max-watches-per-stream", "2", "--max-leases", "2"]) as c:
        c.start()
        n = c.nodes[0]
        with grpc.insecure_channel(n.endpoint) as ch:
            lease = rpc_pb2_grpc.LeaseStub(ch)
            ids = [lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=60), timeout=10).ID for _ in range(2)]
            with pytest.raises(grpc.RpcError) as e:
                lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=60), timeout=10)
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert e.value.details().startswith("etcdserver: too many leases")
            lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=ids[0]), timeout=10)
            lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=60), timeout=10)  # room again

            reqs = [rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=k)) for k in (b"a", b"b", b"c")]
            gate: list[rpc_pb2.WatchRequest] = []

            def requests() -> Iterator[rpc_pb2.WatchRequest]:
                yield from reqs
                while not gate:  # keep the stream open until the responses are read
                    time.sleep(0.01)

            stream = rpc_pb2_grpc.WatchStub(ch).Watch(requests(), timeout=20)
            got = [next(stream) for _ in range(3)]
            gate.append(reqs[0])
            stream.cancel()
        assert [r.created for r in got] == [True, True, True]
        assert [r.canceled for r in got] == [False, False, True]
        assert got[2].cancel_reason.startswith("etcdserver: too many watches on this stream")
        assert n.alive


# ------------------------------------------------------------- no secrets in logs
@need_etcdctl
def test_no_secrets_in_logs_at_debug_level(pki: PKI) -> None:
    """Passwords, tokens and key material never reach the log, even at debug
    level: auth enabled and used through etcdctl over mutual TLS, a failed
    login, a certificate rotation."""
    server = pki.pair("secrets-server", "kvstore-server")
    alice = pki.pair("secrets-alice", "alice")
    args = ["--cert-file", server.cert, "--key-file", server.key, "--trusted-ca-file", pki.ca_file,
            "--client-cert-auth", "--log-level", "debug"]
    password, wrong = "S3cret-pa55word-xyzzy", "Wr0ng-pa55word-plugh"
    with TLSCluster(1, args, client_tls=True, health_ctx=client_ctx(pki, alice)) as c:
        c.start()
        n = c.nodes[0]
        ep = n.client_url
        t = ["--cacert", pki.ca_file, "--cert", alice.cert, "--key", alice.key]
        etcdctl(ep, *t, "user", "add", f"root:{password}")
        etcdctl(ep, *t, "user", "grant-role", "root", "root")
        etcdctl(ep, *t, "auth", "enable")
        etcdctl(ep, *t, "--user", f"root:{password}", "put", "secret-key", "v")
        assert etcdctl(ep, *t, "--user", f"root:{wrong}", "get", "secret-key", check=False).returncode != 0
        # A token, as a client would hold it.
        with grpc.secure_channel(n.endpoint, channel_creds(pki, alice)) as ch:
            token = rpc_pb2_grpc.AuthStub(ch).Authenticate(
                rpc_pb2.AuthenticateRequest(name="root", password=password), timeout=10
            ).token
            rpc_pb2_grpc.KVStub(ch).Range(rpc_pb2.RangeRequest(key=b"secret-key"), metadata=(("token", token),),
                                          timeout=10)
        etcdctl(ep, *t, "--user", f"root:{password}", "auth", "disable")
        text = n.log_text()
        assert "authentication failed for user 'root'" in text  # the failed login is logged, not its password
        assert token and token not in text
        for secret in (password, wrong, "PRIVATE KEY", "BEGIN CERTIFICATE"):
            assert secret not in text, secret


@need_etcdctl
def test_client_certificate_common_name_is_the_user(pki: PKI) -> None:
    """etcd's --client-cert-auth behaviour with auth enabled: no token, the
    verified certificate's CN is the user (kvstore.tls.peer_common_name)."""
    server = pki.pair("cn-server", "kvstore-server")
    root = pki.pair("cn-root", "root")
    bob = pki.pair("cn-bob", "bob")
    args = ["--cert-file", server.cert, "--key-file", server.key, "--trusted-ca-file", pki.ca_file,
            "--client-cert-auth"]
    with TLSCluster(1, args, client_tls=True, health_ctx=client_ctx(pki, root)) as c:
        c.start()
        n = c.nodes[0]
        as_root = ["--cacert", pki.ca_file, "--cert", root.cert, "--key", root.key]
        as_bob = ["--cacert", pki.ca_file, "--cert", bob.cert, "--key", bob.key]
        etcdctl(n.client_url, *as_root, "user", "add", "root:rootpw")
        etcdctl(n.client_url, *as_root, "user", "grant-role", "root", "root")
        etcdctl(n.client_url, *as_root, "user", "add", "bob:bobpw")
        etcdctl(n.client_url, *as_root, "auth", "enable")
        etcdctl(n.client_url, *as_root, "put", "cn-key", "by-root")  # no --user: the CN is root
        assert put_get(n.endpoint, channel_creds(pki, root), b"cn-key", b"grpc-root") == b"grpc-root"
        p = etcdctl(n.client_url, *as_bob, "put", "cn-key", "by-bob", check=False)
        assert p.returncode != 0 and "permission denied" in (p.stdout + p.stderr)
        with grpc.secure_channel(n.endpoint, channel_creds(pki, bob)) as ch:
            with pytest.raises(grpc.RpcError) as e:
                rpc_pb2_grpc.KVStub(ch).Range(rpc_pb2.RangeRequest(key=b"cn-key"), timeout=10)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        etcdctl(n.client_url, *as_root, "auth", "disable")
