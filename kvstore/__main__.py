"""``python -m kvstore`` / ``kvstore``: run one member until SIGTERM/SIGINT."""
from __future__ import annotations

import os

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # before grpc loads: no C-core chatter on stderr

import asyncio
import gc
import ipaddress
import json
import logging
import signal
import sys
import time
from typing import Sequence
from urllib.parse import urlsplit

from aiohttp import web

from . import __version__, limits, tls
from .api import add_services
from .config import ConfigError, ServerConfig, parse
from .http import build_app
from .rpc.server import RpcServer
from .server import DataDirError, KvServer
from .tls import CertSource, TLSError

log = logging.getLogger("kvstore")

GRPC_OVERHEAD = 512 * 1024  # etcd allows this much on top of --max-request-bytes


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info).replace("\n", " | ")
        return json.dumps(out)


class _OneLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        s = super().format(record)
        return s.replace("\n", " | ")


class _FrameworkErrorsOneLine(logging.Filter):
    """grpc and aiohttp log a peer's malformed input (undecodable messages,
    broken HTTP, clients vanishing mid-write) with a traceback: that is the
    peer's doing, so keep it to one line with the reason, at warning level,
    and a hostile client cannot flood the log with tracebacks. Our own code's
    errors (kvstore.*, raft.*) keep theirs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.name.startswith(("grpc", "aiohttp")):
            exc = record.exc_info[1]
            record.msg = f"{record.getMessage()}: {type(exc).__name__}: {exc}"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
            if record.levelno > logging.WARNING:
                record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def setup_logging(cfg: ServerConfig) -> None:
    level = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR}[
        cfg.log_level
    ]
    handler = logging.StreamHandler(sys.stderr)
    if cfg.log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(_OneLineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_FrameworkErrorsOneLine())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("grpc").setLevel(max(level, logging.INFO))


def _tls_url(url: str) -> bool:
    return urlsplit(url).scheme in ("https", "unixs")


def _loopback(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme.startswith("unix"):
        return True
    host = parts.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warn_plaintext(cfg: ServerConfig, client_tls: bool, peer_tls: bool) -> None:
    """Safe defaults: loopback is the default; say so when that is left without TLS."""
    for kind, urls, have_tls in (
        ("client", cfg.listen_client_urls, client_tls),
        ("HTTP", cfg.listen_client_http_urls + cfg.listen_metrics_urls, client_tls),
        ("peer", cfg.listen_peer_urls, peer_tls),
    ):
        prefix = "peer-" if kind == "peer" else ""
        for url in urls:
            if _tls_url(url):
                continue
            if have_tls:  # etcd: "scheme is HTTP while key and cert files are present"
                log.warning("%s URL %s is plain http: the TLS certificate is not used there", kind, url)
            if not _loopback(url):
                log.warning(
                    "serving %s traffic on non-loopback %s without TLS: anyone on the network can read "
                    "and send it (use https:// with --%scert-file/--%skey-file)",
                    kind, url, prefix, prefix,
                )


def peer_security(cfg: ServerConfig, source: CertSource | None) -> dict[str, object] | None:
    if source is None:
        return None
    sec: dict[str, object] = {
        "server_ssl": source.ssl_server_context(),
        "client_ssl": source.ssl_client_context,  # re-read per connection
    }
    if cfg.peer_cert_allowed_cn:
        sec["authorize_peer"] = tls.allowed_cn_check(cfg.peer_cert_allowed_cn)
    return sec


async def serve(cfg: ServerConfig) -> int:
    # Certificates first: a bad file fails the start before anything else.
    client_src = tls.client_source(cfg)
    peer_src = tls.peer_source(cfg)
    warn_plaintext(cfg, client_src is not None, peer_src is not None)
    server = KvServer(cfg, peer_security=peer_security(cfg, peer_src), client_tls=client_src)
    grpc_ssl = client_src.ssl_server_context(alpn=("h2",)) if client_src is not None else None
    http_ssl = client_src.ssl_server_context() if client_src is not None else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    # Our own HTTP/2 server (kvstore.rpc): grpc.aio's costs several times more CPU per call.
    grpc_server = RpcServer(max_receive_message_length=cfg.max_request_bytes + GRPC_OVERHEAD)
    server.metrics.client_traffic = grpc_server
    runner: web.AppRunner | None = None
    try:
        try:
            await server.start()
        except OSError as e:  # the peer listener (raft.transport): one line, not a traceback
            raise DataDirError(e.strerror or str(e)) from None
        limits.install(server)  # watch and lease limits, before the services are built
        add_services(grpc_server, server)
        for url in cfg.listen_client_urls:
            try:
                await grpc_server.listen(url, grpc_ssl if _tls_url(url) else None)
            except OSError as e:
                raise DataDirError(f"cannot listen on client URL {url}: {e.strerror or e}") from None
        runner = web.AppRunner(build_app(server), access_log=None)
        await runner.setup()
        for url in cfg.listen_client_http_urls + cfg.listen_metrics_urls:
            parts = urlsplit(url)
            try:
                ssl_context = http_ssl if _tls_url(url) else None
                await web.TCPSite(runner, parts.hostname, parts.port, ssl_context=ssl_context).start()
            except OSError as e:
                raise DataDirError(f"cannot listen on HTTP URL {url}: {e.strerror}") from None
        log.info(
            "kvstore %s serving: member %x name=%s client=%s peer=%s http=%s",
            __version__,
            server.member_id,
            cfg.name,
            ",".join(cfg.listen_client_urls),
            ",".join(cfg.listen_peer_urls),
            ",".join(cfg.listen_client_http_urls),
        )
        removed = asyncio.ensure_future(server.removed.wait())
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait([removed, stopped], return_when=asyncio.FIRST_COMPLETED)
        for t in (removed, stopped):
            t.cancel()
        if server.removed.is_set() and not stop.is_set():
            log.warning("member removed from the cluster: shutting down")
        log.info("shutting down")
        return 0
    finally:
        await grpc_server.stop(grace=1.0)
        if runner is not None:
            await runner.cleanup()
        await server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--version" in argv:
        print(f"kvstore {__version__} (etcd API 3.4)")
        return 0
    try:
        cfg = parse(argv)
    except ConfigError as e:
        print(f"kvstore: error: {e}", file=sys.stderr)
        return 2
    setup_logging(cfg)
    # Long-lived servers allocate many short-lived protobuf objects: a larger
    # young generation and frozen start-up objects cut collector time.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    try:
        return asyncio.run(serve(cfg))
    except (DataDirError, TLSError) as e:
        print(f"kvstore: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
