"""New job ids: random version 4 UUIDs drawn from `os.urandom` in batches, each carrying a
checksum that tells it from an id a caller chose (`made_by_jobcore`); it does not check an
id a caller gives (`models.Job.validate` does) nor keep any record of ids.

`new_job_id` is `Job.id`'s default, re-exported by `models`. Its unused random bytes are
kept per thread and forgotten in a forked child.

Why a checksum: an id jobcore made is never given again, so a process that completed its
job may answer `wait` and `poll` for it from memory (`waiting.Settlements`). An id of a
caller's own may be: another process deletes the job (`cleanup_old_results`) and stores a
new one under it. Told apart by their shape alone, 1 in 64 hex digests (idempotent ids
made from a work item's key) and every `uuid.uuid4().hex` of a caller's passed for
jobcore's, and were answered with the deleted job's outcome. The last 4 of the 16 bytes
are the first 4 mapped through a fixed permutation of the byte values (90 random bits
remain, a version 4 UUID still): an id of a caller's own passes for jobcore's about once
in 4 billion. A permutation, not a CRC: `bytes.translate` sets it for a batch of 256 ids
at C speed, where a CRC per id cost `enqueue` 0.2 µs more.
"""

from __future__ import annotations

import os
import threading

_random = threading.local()  # per thread: os.urandom bytes not yet used for ids


def _forget_random() -> None:
    global _random
    _random = threading.local()  # a forked child must not reuse its parent's bytes


os.register_at_fork(after_in_child=_forget_random)


def new_job_id() -> str:
    """A random (version 4) UUID as 32 hex digits, like `uuid.uuid4().hex`.

    Drawn from `os.urandom` 4 KiB at a time (a system call per 256 ids, not per id), whose
    version and variant bits are set for all 256 at once."""
    pool = getattr(_random, "pool", None)
    if not pool or pool[1] >= 4096:
        pool = _random.pool = [_uuid4_bytes(), 0]
    at: int = pool[1]
    pool[1] = at + 16
    drawn: bytes = pool[0]
    return drawn[at:at + 16].hex()


def _uuid4_bytes() -> bytes:
    """4 KiB of random bytes, each 16 of them a version 4 UUID: the version (4) in the
    high nibble of byte 6 and the RFC 4122 variant (binary 10) in the top bits of byte 8,
    as uuid.UUID(version=4) sets them, and the checksum of `made_by_jobcore` in the last 4."""
    data = bytearray(os.urandom(4096))
    data[6::16] = bytes(b & 0x0F | 0x40 for b in data[6::16])
    data[8::16] = bytes(b & 0x3F | 0x80 for b in data[8::16])
    for k in range(4):
        data[12 + k::16] = data[k::16].translate(_CHECK)
    return bytes(data)


# The permutation of byte values the checksum maps bytes 0-3 of an id through (odd
# multiplier: a permutation). Fixed for good: ids stored by any version are checked by any.
_CHECK = bytes((b * 167 + 89) % 256 for b in range(256))


def made_by_jobcore(job_id: str) -> bool:
    """Whether `job_id` is one `new_job_id` made (in any process): 32 lower-case hex digits
    of a version 4 UUID whose last 4 bytes are its first 4 mapped through `_CHECK`. An id
    a caller chose passes about once in 4 billion (see module docstring)."""
    if len(job_id) != 32 or job_id[12] != "4" or job_id[16] not in "89ab":
        return False  # (most ids of a caller's own: no parse)
    try:
        raw = bytes.fromhex(job_id)
    except ValueError:
        return False
    return raw[12:] == raw[:4].translate(_CHECK) and raw.hex() == job_id
