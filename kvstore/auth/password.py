"""Password hashes: scrypt with a per-user random salt.

The hash is computed by the member that receives UserAdd/ChangePassword,
before proposing (etcd 3.5 does the same with bcrypt), so applying the Raft
entry is fast and the plain password never reaches the log. The stored form
carries its parameters, so they can change without breaking old hashes:

    b"scrypt$<log2 n>$<r>$<p>$<salt, base64>$<hash, base64>"
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os

DEFAULT_LOG2_N = 14  # n = 16384, r = 8: 16 MiB and tens of ms per hash
R = 8
P = 1
SALT_BYTES = 16
KEY_BYTES = 32
_MAXMEM = 64 * 1024 * 1024


def hash_password(password: str, log2_n: int = DEFAULT_LOG2_N) -> bytes:
    salt = os.urandom(SALT_BYTES)
    dk = hashlib.scrypt(password.encode(), salt=salt, n=1 << log2_n, r=R, p=P, maxmem=_MAXMEM, dklen=KEY_BYTES)
    return b"$".join(
        [b"scrypt", str(log2_n).encode(), str(R).encode(), str(P).encode(),
         base64.b64encode(salt), base64.b64encode(dk)]
    )


def verify_password(password: str, stored: bytes) -> bool:
    """Constant-time comparison; False for anything malformed."""
    try:
        scheme, log2_n, r, p, salt, want = stored.split(b"$")
        if scheme != b"scrypt":
            return False
        n_log2 = int(log2_n)
        if not 1 <= n_log2 <= 20:
            return False
        salt_b = base64.b64decode(salt, validate=True)
        want_b = base64.b64decode(want, validate=True)
        got = hashlib.scrypt(
            password.encode(), salt=salt_b, n=1 << n_log2, r=int(r), p=int(p), maxmem=_MAXMEM, dklen=len(want_b)
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want_b)


# Checked against when the user does not exist, so that a missing user costs
# the same time as a wrong password (no user enumeration by timing).
_DUMMY: dict[int, bytes] = {}


def dummy_hash(log2_n: int = DEFAULT_LOG2_N) -> bytes:
    h = _DUMMY.get(log2_n)
    if h is None:
        h = _DUMMY[log2_n] = hash_password(os.urandom(8).hex(), log2_n)
    return h
