"""New job ids: random version 4 UUIDs drawn from `os.urandom` in batches; it does not
check an id a caller gives (`models.Job.validate` does) nor keep any record of ids.

`new_job_id` is `Job.id`'s default, re-exported by `models`. Its unused random bytes are
kept per thread and forgotten in a forked child.
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
    as uuid.UUID(version=4) sets them."""
    data = bytearray(os.urandom(4096))
    data[6::16] = bytes(b & 0x0F | 0x40 for b in data[6::16])
    data[8::16] = bytes(b & 0x3F | 0x80 for b in data[8::16])
    return bytes(data)
