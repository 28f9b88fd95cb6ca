"""kvctl: the command line (``python -m kvstore.cli`` or the ``kvctl`` script)."""
import os as _os

# kvctl starts commands while gRPC threads run: gRPC's fork handlers are not
# wanted (and log noise). Set before grpc is imported; not passed on to the
# commands kvctl runs.
OWN_ENV: set[str] = set()
for _k, _v in (("GRPC_ENABLE_FORK_SUPPORT", "false"), ("GRPC_VERBOSITY", "ERROR")):
    if _k not in _os.environ:
        _os.environ[_k] = _v
        OWN_ENV.add(_k)
