"""TLS for kvstore's listeners and peer links, with etcd's flags.

For the auth layer (etcd's behaviour with ``--client-cert-auth``)
-----------------------------------------------------------------
When ``--client-cert-auth`` is on, a client reaching the gRPC API has
presented a certificate signed by ``--trusted-ca-file`` (the TLS handshake
refuses anyone else), and etcd takes that certificate's common name as the
user of the request when no token is given::

    from kvstore.tls import peer_common_name, http_common_name

    user = peer_common_name(context)   # grpc.aio.ServicerContext -> str | None
    user = http_common_name(request)   # aiohttp.web.Request      -> str | None

Both return ``None`` unless the connection carries a *verified* client
certificate (plain HTTP, TLS without ``--client-cert-auth``, an in-process
call context without ``auth_context()``). Neither ever raises.

What this module provides to ``__main__``
-----------------------------------------
* ``client_source(cfg)`` / ``peer_source(cfg)``: the ``CertSource`` of the
  client resp. peer listeners (``None`` when TLS is not configured); files are
  validated at once, ``--auto-tls``/``--peer-auto-tls`` certificates are
  generated into ``<data-dir>/fixtures/{client,peer}`` first. A missing or
  bad file raises ``TLSError`` with a one-line message naming the flag.
* ``CertSource.ssl_server_context(alpn)``: an ``ssl.SSLContext`` for the
  gRPC server (``h2``), aiohttp and the peer listener; the files are checked
  (stat) on every new handshake and re-read when they changed, so
  certificates rotate without a restart. A half-written or invalid
  replacement is logged once and the previous certificate stays.
* ``CertSource.grpc_channel_credentials``: a callable returning the current
  client credentials (re-read when the files change), for member-to-member
  gRPC calls; ``CertSource.ssl_client_context`` the same as an
  ``ssl.SSLContext``, for ``raft.transport.PeerTransport(client_ssl=...)``.
* ``allowed_cn_check(cn)``: the ``authorize_peer`` callback of the transport
  for ``--peer-cert-allowed-cn``.

``--peer-auto-tls``: etcd's auto-TLS peers do not verify each other at all.
Here every member derives the same
development CA key from ``--initial-cluster-token`` and signs its generated
certificate with it: peer traffic is encrypted, and only members knowing the
token are trusted. That is no stronger than the token's secrecy: development
only, like ``--auto-tls``.

Key material is never logged: messages name files and flags, not contents.
"""
from __future__ import annotations

import datetime
import hashlib
import ipaddress
import logging
import os
import ssl
import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence
from urllib.parse import urlsplit

import grpc

log = logging.getLogger("kvstore.tls")

__all__ = [
    "TLSError",
    "TLSInfo",
    "CertSource",
    "peer_common_name",
    "http_common_name",
    "client_source",
    "peer_source",
    "allowed_cn_check",
]


class TLSError(Exception):
    """A TLS file or setting cannot be used (one-line message)."""


# ------------------------------------------------------------ for the auth layer
def peer_common_name(context: Any) -> str | None:
    """Common name of the verified client certificate of a gRPC call, if any."""
    try:
        auth = context.auth_context()
    except Exception:  # not a real gRPC context (gateway), or no transport security
        return None
    if not auth:
        return None
    # The CN is only there when the handshake verified the certificate:
    # the servers here never request a client certificate without verifying it.
    values = auth.get("x509_common_name") or []
    if not values:
        return None
    v = values[0]
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def http_common_name(request: Any) -> str | None:
    """Common name of the verified client certificate of an aiohttp request, if any."""
    try:
        cert = request.transport.get_extra_info("peercert")
    except Exception:
        return None
    return _cn_of_peercert(cert)


def _cn_of_peercert(cert: Any) -> str | None:
    # ssl's getpeercert() form: {"subject": ((("commonName", "x"),), ...)};
    # only filled in for a certificate that was verified.
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for k, v in rdn:
            if k == "commonName":
                return str(v)
    return None


def allowed_cn_check(allowed_cn: str) -> Callable[[Any], str | None]:
    """``authorize_peer`` for ``PeerTransport``: refuse a peer whose verified
    certificate (``getpeercert()`` form) has another common name (returns the
    refusal reason)."""

    def check(cert: Any) -> str | None:
        cn = _cn_of_peercert(cert)
        if cn == allowed_cn:
            return None
        return f"peer certificate common name {cn!r} is not the allowed {allowed_cn!r}"

    return check


# --------------------------------------------------------------------- settings
@dataclass(frozen=True)
class TLSInfo:
    """etcd's transport.TLSInfo: one side's files and policy."""

    cert_file: str
    key_file: str
    trusted_ca_file: str = ""
    client_cert_auth: bool = False
    flag_prefix: str = ""  # "" (client) or "peer-": for error messages
    auto: bool = False  # generated by --auto-tls / --peer-auto-tls

    def flag(self, name: str) -> str:
        return f"--{self.flag_prefix}{name}"


@dataclass(frozen=True)
class _Material:
    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes | None


def _read(info: TLSInfo, flag: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSError(f"{info.flag(flag)} {path}: {e.strerror or e}") from None


def _load_material(info: TLSInfo) -> _Material:
    """Read and check the files: PEM, key matches certificate, CA parses."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert_pem = _read(info, "cert-file", info.cert_file)
    key_pem = _read(info, "key-file", info.key_file)
    ca_pem = _read(info, "trusted-ca-file", info.trusted_ca_file) if info.trusted_ca_file else None
    try:
        certs = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise TLSError(f"{info.flag('cert-file')} {info.cert_file}: not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise TLSError(f"{info.flag('key-file')} {info.key_file}: encrypted keys are not supported") from None
    except (ValueError, Exception):
        raise TLSError(f"{info.flag('key-file')} {info.key_file}: not a PEM private key") from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != certs[0].public_key().public_bytes(*spki):
        raise TLSError(
            f"{info.flag('key-file')} {info.key_file} does not match {info.flag('cert-file')} {info.cert_file}"
        )
    if ca_pem is not None:
        try:
            x509.load_pem_x509_certificates(ca_pem)
        except ValueError:
            raise TLSError(
                f"{info.flag('trusted-ca-file')} {info.trusted_ca_file}: not a PEM certificate bundle"
            ) from None
    not_after = certs[0].not_valid_after_utc
    if not_after < datetime.datetime.now(datetime.timezone.utc):
        log.warning("%s %s expired on %s", info.flag("cert-file"), info.cert_file, not_after.isoformat())
    return _Material(cert_pem, key_pem, ca_pem)


class CertSource:
    """The files of one ``TLSInfo``: validated at construction (``TLSError``),
    re-read whenever their stat signature changes. Thread-safe: gRPC calls
    the server credential fetcher from its own threads."""

    def __init__(self, info: TLSInfo) -> None:
        self.info = info
        self._lock = threading.Lock()
        self._sig = self._signature()
        self.material = _load_material(info)
        self.version = 0
        self._bad_sig: object = None
        self._chan: tuple[int, grpc.ChannelCredentials] | None = None
        self._client_ctx: tuple[int, ssl.SSLContext] | None = None

    def _paths(self) -> list[str]:
        i = self.info
        return [p for p in (i.cert_file, i.key_file, i.trusted_ca_file) if p]

    def _signature(self) -> tuple[object, ...]:
        sig: list[object] = []
        for p in self._paths():
            try:
                st = os.stat(p)
                sig.append((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
            except OSError as e:
                sig.append(e.errno)
        return tuple(sig)

    def refresh(self) -> bool:
        """Re-read the files if they changed on disk; True if new material is in use."""
        sig = self._signature()
        if sig == self._sig:
            return False
        with self._lock:
            if sig == self._sig:
                return False
            try:
                material = _load_material(self.info)
            except TLSError as e:
                if sig != self._bad_sig:  # once per bad state, not per connection
                    self._bad_sig = sig
                    log.warning("keeping the current certificate: %s", e)
                return False
            self._sig = sig
            self.material = material
            self.version += 1
            log.info("re-read %s %s (certificate rotated)", self.info.flag("cert-file"), self.info.cert_file)
            return True

    # ------------------------------------------------------------------ gRPC
    def grpc_channel_credentials(self) -> grpc.ChannelCredentials:
        """Current client credentials (own certificate + trusted CA); pass the
        bound method itself to get a re-read on every new connection."""
        self.refresh()
        cached = self._chan
        if cached is not None and cached[0] == self.version:
            return cached[1]
        m = self.material
        creds = grpc.ssl_channel_credentials(
            root_certificates=m.ca_pem, private_key=m.key_pem, certificate_chain=m.cert_pem
        )
        self._chan = (self.version, creds)
        return creds

    def ssl_client_context(self) -> ssl.SSLContext:
        """For dialing peers: our certificate and the trusted CA. Pass the bound
        method itself to get a re-read (and a new context) after a rotation."""
        self.refresh()
        cached = self._client_ctx
        if cached is not None and cached[0] == self.version:
            return cached[1]
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.material.ca_pem is not None:
            ctx.load_verify_locations(cadata=self.material.ca_pem.decode("ascii", "replace"))
        else:
            ctx.load_default_certs()
        try:
            ctx.load_cert_chain(self.info.cert_file, self.info.key_file)
        except (OSError, ssl.SSLError) as e:
            raise TLSError(f"{self.info.flag('cert-file')} {self.info.cert_file}: {e}") from None
        self._client_ctx = (self.version, ctx)
        return ctx

    # ------------------------------------------------------------------- HTTP
    def _build_ssl_context(self, alpn: Sequence[str]) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(self.info.cert_file, self.info.key_file)
        except (OSError, ssl.SSLError) as e:
            raise TLSError(f"{self.info.flag('cert-file')} {self.info.cert_file}: {e}") from None
        if self.material.ca_pem is not None:
            ctx.load_verify_locations(cadata=self.material.ca_pem.decode("ascii", "replace"))
        if self.info.client_cert_auth:
            ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.set_alpn_protocols(list(alpn))
        return ctx

    def ssl_server_context(self, alpn: Sequence[str] = ("http/1.1",)) -> ssl.SSLContext:
        """For aiohttp (``http/1.1``), the gRPC server (``h2``) and the peer
        listener: the returned context hands each handshake over to a context
        built from the current files (rebuilt after a rotation)."""
        base = self._build_ssl_context(alpn)
        current = [base, self.version]  # this context's own: each listener kind has one

        def on_hello(sslobj: Any, _server_name: str | None, _ctx: ssl.SSLContext) -> None:
            # OpenSSL calls this on every ClientHello, with or without SNI.
            try:
                self.refresh()
                if current[1] != self.version:
                    current[1] = self.version  # tried once per version: logged once if it fails
                    current[0] = self._build_ssl_context(alpn)
                if current[0] is not base:
                    sslobj.context = current[0]
            except Exception as e:
                log.warning("keeping the current HTTPS certificate: %s", e)
            return None

        base.sni_callback = on_hello
        return base


# ------------------------------------------------------------------- auto TLS
def _hosts_of(urls: Sequence[str]) -> list[str]:
    hosts = []
    for u in urls:
        h = urlsplit(u).hostname
        if h and h not in hosts:
            hosts.append(h)
    for h in ("localhost", "127.0.0.1", "::1"):
        if h not in hosts:
            hosts.append(h)
    return hosts


def _san(hosts: Sequence[str]) -> Any:
    from cryptography import x509

    names: list[Any] = []
    for h in hosts:
        try:
            ip = ipaddress.ip_address(h)
        except ValueError:
            names.append(x509.DNSName(h))
            continue
        if not ip.is_unspecified:
            names.append(x509.IPAddress(ip))
    return x509.SubjectAlternativeName(names)


def _write_private(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _usable(cert_path: str, key_path: str) -> bool:
    from cryptography import x509

    try:
        with open(cert_path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        if not os.path.exists(key_path):
            return False
    except (OSError, ValueError):
        return False
    return cert.not_valid_after_utc > datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1)


def _new_cert(
    common_name: str,
    hosts: Sequence[str],
    years: int,
    issuer: tuple[Any, Any] | None = None,
) -> tuple[bytes, bytes]:
    """A P-256 certificate for ``hosts`` (self-signed unless ``issuer`` = (ca cert, ca key))."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kvstore auto-tls"),
                         x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    issuer_name, signing_key = (issuer[0].subject, issuer[1]) if issuer else (subject, key)
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365 * years))
        .add_extension(_san(hosts), critical=False)
        .add_extension(
            x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if issuer:
        b = b.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()), critical=False
        )
    cert = b.sign(signing_key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def self_signed_cert(directory: str, hosts: Sequence[str], years: int) -> tuple[str, str]:
    """``--auto-tls``: ``cert.pem``/``key.pem`` in ``directory``, generated once
    and reused while valid (clients may have pinned it)."""
    cert_path, key_path = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    if _usable(cert_path, key_path):
        return cert_path, key_path
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        cert_pem, key_pem = _new_cert("kvstore", hosts, years)
        _write_private(key_path, key_pem)
        _write_private(cert_path, cert_pem)
    except OSError as e:
        raise TLSError(f"--auto-tls: cannot write a certificate into {directory}: {e.strerror or e}") from None
    log.info("--auto-tls: generated a self-signed certificate in %s (development only)", directory)
    return cert_path, key_path


def _derived_ca(token: str) -> tuple[Any, Any, bytes]:
    """The development CA of ``--peer-auto-tls``: its key derives from the
    cluster token, so every member of the cluster has the same one."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    order = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551  # P-256
    seed = int.from_bytes(hashlib.sha512(b"kvstore peer-auto-tls CA\0" + token.encode()).digest(), "big")
    key = ec.derive_private_key(seed % (order - 1) + 1, ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kvstore auto-tls"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "kvstore peer-auto-tls CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc))
        .not_valid_after(datetime.datetime(2120, 1, 1, tzinfo=datetime.timezone.utc))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key, cert.public_bytes(serialization.Encoding.PEM)


def auto_peer_cert(directory: str, hosts: Sequence[str], token: str, name: str, years: int) -> tuple[str, str, str]:
    """``--peer-auto-tls``: a certificate signed by the token's development CA,
    regenerated at every start; returns (cert, key, ca) paths."""
    ca_cert, ca_key, ca_pem = _derived_ca(token)
    paths = tuple(os.path.join(directory, f) for f in ("cert.pem", "key.pem", "ca.pem"))
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        cert_pem, key_pem = _new_cert(name, hosts, years, issuer=(ca_cert, ca_key))
        _write_private(paths[1], key_pem)
        _write_private(paths[0], cert_pem)
        _write_private(paths[2], ca_pem)
    except OSError as e:
        raise TLSError(f"--peer-auto-tls: cannot write a certificate into {directory}: {e.strerror or e}") from None
    log.warning(
        "--peer-auto-tls: peers are trusted by a CA derived from --initial-cluster-token "
        "(development only: anyone knowing the token can join)"
    )
    return paths[0], paths[1], paths[2]


# ------------------------------------------------------------------ from flags
def client_source(cfg: Any) -> CertSource | None:
    """The client listeners' certificate source, or None without client TLS."""
    if cfg.cert_file:
        if cfg.auto_tls:
            log.warning("--auto-tls ignored: --cert-file/--key-file are given")
        info = TLSInfo(cfg.cert_file, cfg.key_file, cfg.trusted_ca_file, cfg.client_cert_auth)
    elif cfg.auto_tls:
        hosts = _hosts_of(cfg.listen_client_urls + cfg.listen_client_http_urls + cfg.advertise_client_urls)
        cert, key = self_signed_cert(
            os.path.join(cfg.data_dir, "fixtures", "client"), hosts, cfg.self_signed_cert_validity
        )
        info = TLSInfo(cert, key, cfg.trusted_ca_file, cfg.client_cert_auth, auto=True)
    else:
        return None
    return CertSource(info)


def peer_source(cfg: Any) -> CertSource | None:
    """The peer listener's and dialer's certificate source, or None without peer TLS."""
    if cfg.peer_cert_file:
        if cfg.peer_auto_tls:
            log.warning("--peer-auto-tls ignored: --peer-cert-file/--peer-key-file are given")
        info = TLSInfo(
            cfg.peer_cert_file, cfg.peer_key_file, cfg.peer_trusted_ca_file, cfg.peer_client_cert_auth, "peer-"
        )
    elif cfg.peer_auto_tls:
        hosts = _hosts_of(cfg.listen_peer_urls + cfg.initial_advertise_peer_urls)
        cert, key, ca = auto_peer_cert(
            os.path.join(cfg.data_dir, "fixtures", "peer"),
            hosts,
            cfg.initial_cluster_token,
            cfg.name,
            cfg.self_signed_cert_validity,
        )
        if cfg.peer_trusted_ca_file:
            log.warning("--peer-trusted-ca-file ignored with --peer-auto-tls")
        info = TLSInfo(cert, key, ca, cfg.peer_client_cert_auth, "peer-", auto=True)
    else:
        return None
    return CertSource(info)
