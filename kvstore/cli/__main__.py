"""``kvctl``: the operator's command line for kvstore (and etcd), in etcdctl's style.

    kvctl [global flags] COMMAND [flags] [args]

Global flags (anywhere on the line): ``--endpoints`` (or ``$KVCTL_ENDPOINTS``,
comma-separated, default 127.0.0.1:2379), ``-w/--write-out simple|table|json``,
``--dial-timeout``, ``--command-timeout``, ``--user name[:password]``,
``--password``, ``--cacert``, ``--cert``, ``--key``, ``--debug``.

Errors are one line on stderr (``Error: ...``) with exit status 1 (2 for a
usage error); ``exec``, ``lock`` and ``elect`` with a command exit with the
command's status.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ..client import ClientError
from ..client.backoff import parse_duration

EXIT_ERROR = 1
EXIT_USAGE = 2


class UsageError(Exception):
    pass


class CliError(Exception):
    """A one-line error for the user (exit status ``code``)."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see '{self.prog} --help')")


def duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def hex_id(text: str) -> int:
    try:
        return int(text, 16)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid ID {text!r} (hexadecimal expected)") from None


def _globals() -> argparse.ArgumentParser:
    g = argparse.ArgumentParser(add_help=False)
    s = argparse.SUPPRESS
    g.add_argument("--endpoints", default=s, help="comma-separated gRPC endpoints (env KVCTL_ENDPOINTS)")
    g.add_argument("-w", "--write-out", choices=["simple", "table", "json"], default=s, help="output format")
    g.add_argument("--dial-timeout", type=duration, default=s, help="connection timeout (default 2s)")
    g.add_argument("--command-timeout", type=duration, default=s, help="timeout of one request (default 5s)")
    g.add_argument("--user", default=s, help="user name, or name:password")
    g.add_argument("--password", default=s, help="password (else from --user name:password)")
    g.add_argument("--cacert", default=s, help="CA bundle to verify TLS servers")
    g.add_argument("--cert", default=s, help="TLS client certificate")
    g.add_argument("--key", dest="tls_key", default=s, help="TLS client key")
    g.add_argument("--debug", action="store_true", default=s, help="show tracebacks")
    return g


CHILD_COMMANDS = {"exec", "lock", "elect", "watch"}  # take a command after "--"

GLOBAL_DEFAULTS = dict(endpoints=None, write_out=None, dial_timeout=2.0, command_timeout=5.0, user=None,
                       password=None, cacert=None, cert=None, tls_key=None, debug=False)


def build_parser() -> argparse.ArgumentParser:
    from . import commands, container

    g = _globals()
    p = _Parser(prog="kvctl", parents=[g], description="Command line for kvstore and etcd (v3 API).")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.register(sub, g)
    container.register(sub, g)
    return p


def split_command(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """kvctl's own arguments, and the command after ``--`` (None if no ``--``)."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    own, cmd = split_command(argv)
    debug = "--debug" in own
    try:
        parser = build_parser()
        if cmd is None:
            args = parser.parse_args(own)
        else:
            try:
                args = parser.parse_args(own)
            except UsageError:
                args = None
            if args is None or getattr(args, "command", None) not in CHILD_COMMANDS:
                args = parser.parse_args(argv)  # "--" only ends the options (a key starting with "-")
                cmd = None
        for k, v in GLOBAL_DEFAULTS.items():
            if not hasattr(args, k):
                setattr(args, k, v)
        args.child_argv = cmd
        if not getattr(args, "func", None):
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        rc = args.func(args)
        return int(rc or 0)
    except UsageError as e:
        print(f"Error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except CliError as e:
        print(f"Error: {e}", file=sys.stderr)
        return e.code
    except ClientError as e:
        if debug:
            raise
        print(f"Error: {e.message}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return EXIT_ERROR
    except Exception as e:  # never a traceback for the user
        if debug:
            raise
        print(f"Error: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
