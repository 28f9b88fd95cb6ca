"""Byte encodings used by the MVCC store.

Revision keys use etcd's exact on-disk format so that ``hash_kv`` computes the
same CRC as etcd's ``HashKV`` for the same history:

    main (8 bytes big-endian) | b"_" | sub (8 bytes big-endian) [| b"t" for a tombstone]

User keys are stored as LMDB keys, whose size LMDB limits to 511 bytes. Keys
of up to ``MAX_RAW_KEY`` bytes are stored as they are; a longer key ``k`` is
stored as ``k[:MAX_RAW_KEY] + blake2b(k)[:16]``. All encodings of long keys
that share a prefix ``p`` sort directly after ``p`` and before every other
key, so a cursor walk only has to re-sort such a "group" by the real key
(read from the stored ``KeyValue``) to yield keys in etcd's byte order.
"""
from __future__ import annotations

import hashlib
import struct

MAX_RAW_KEY = 480
_LONG_KEY_LEN = MAX_RAW_KEY + 16

_Q = struct.Struct(">Q")
_q = struct.Struct(">q")
_REV = struct.Struct(">QBQ")  # main, b"_", sub
_REV_FLAG = struct.Struct(">QBQB")  # main, b"_", sub, flag

TOMBSTONE = 0x74  # ord("t"), etcd's markTombstone
FLAG_PUT = b"p"
FLAG_TOMB = b"t"
_SEP = 0x5F  # ord("_")
_PUT = 0x70  # ord("p")


def rev_key(main: int, sub: int) -> bytes:
    """etcd's 17-byte revision key (revToBytes)."""
    return _REV.pack(main, _SEP, sub)


def put_dup(main: int, sub: int) -> bytes:
    """The ``revs`` index entry of a put: ``rev_key(main, sub) + FLAG_PUT`` in one pack."""
    return _REV_FLAG.pack(main, _SEP, sub, _PUT)


def tomb_key(main: int, sub: int) -> bytes:
    """A tombstone's 18-byte hist key (etcd's markTombstone), also its revs entry."""
    return _REV_FLAG.pack(main, _SEP, sub, TOMBSTONE)


def rev_main(k: bytes) -> int:
    return _Q.unpack_from(k, 0)[0]


def rev_sub(k: bytes) -> int:
    return _Q.unpack_from(k, 9)[0]


def is_tombstone(k: bytes) -> bool:
    """True for an 18-byte marked revision (hist key or revs dup value)."""
    return len(k) == 18 and k[17] == TOMBSTONE


def hist_key_of_dup(d: bytes) -> bytes:
    """Per-key index entries are rev(17) + flag(1); a tombstone entry is its own hist key."""
    return d if d[17] == TOMBSTONE else d[:17]


def enc_key(k: bytes) -> bytes:
    if len(k) <= MAX_RAW_KEY:
        return k
    return k[:MAX_RAW_KEY] + hashlib.blake2b(k, digest_size=16).digest()


def is_long(dbkey: bytes) -> bool:
    return len(dbkey) > MAX_RAW_KEY


def int64_key(n: int) -> bytes:
    """etcd's int64ToBytes (lease IDs): big-endian two's complement."""
    return _q.pack(n)


def int64_of(b: bytes) -> int:
    return _q.unpack(b)[0]


def kv_key(raw: bytes) -> bytes:
    """The key (field 1) of a serialized mvccpb.KeyValue without parsing the rest.

    Every stored KeyValue starts with field 1 (keys are never empty)."""
    if not raw or raw[0] != 0x0A:
        return b""
    n = 0
    shift = 0
    i = 1
    while True:
        b = raw[i]
        n |= (b & 0x7F) << shift
        i += 1
        if b < 0x80:
            break
        shift += 7
    return raw[i:i + n]


def tombstone_value(key: bytes) -> bytes:
    """Serialized mvccpb.KeyValue{Key: key}, what etcd stores for a deletion."""
    n = len(key)
    out = bytearray(b"\x0a")
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    out += key
    return bytes(out)


def mk_gte_range(range_end: bytes) -> bytes | None:
    """etcd's mkGteRange plus proto3's nil==empty: None = single key,
    b"" = every key >= key, otherwise the exclusive end."""
    if not range_end:
        return None
    if range_end == b"\x00":
        return b""
    return range_end


# --- CRC-32C (Castagnoli), as etcd's hashes use -------------------------------

def _make_table():
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        t.append(c)
    return t


_T = _make_table()


def _crc32c_py(data: bytes, crc: int = 0) -> int:
    """Byte-at-a-time CRC-32C; in CPython this beats slicing-by-N tables."""
    t = _T
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = t[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


try:  # optional C implementation (PyPI "crc32c"); identical results
    import crc32c as _crc32c_mod  # type: ignore

    def crc32c(data: bytes, crc: int = 0) -> int:
        return _crc32c_mod.crc32c(data, crc)
except Exception:  # pragma: no cover - depends on the environment
    crc32c = _crc32c_py
