"""Identifiers of rows, runs and Prefect task runs, made without a system call.

`uuid.uuid4()` reads `os.urandom`, which releases the interpreter lock for the system call. With
another thread busy (a store thread, Prefect's events worker, the API log handler) the caller
then waits for the lock to come back, up to the switch interval: about 150 µs per id instead of
2 µs, and a batch makes some thirty ids per run. These come from a generator seeded once per
process from `os.urandom` (again in a forked child). They are unique and unguessable enough to
name rows; they are not secrets: never use them for tokens or keys.
"""

from __future__ import annotations

import os
import random
import time
import uuid

__all__ = ["new_hex", "new_uuid4", "new_uuid7"]

_random = random.Random(os.urandom(32))


def _reseed() -> None:
    _random.seed(os.urandom(32))


os.register_at_fork(after_in_child=_reseed)

_VERSION_MASK = ~(0xF000 << 64)
_VARIANT_MASK = ~(0xC000 << 48)
_VARIANT_RFC4122 = 0x8000 << 48


def _with_version(value: int, version: int) -> uuid.UUID:
    return uuid.UUID(int=(value & _VERSION_MASK & _VARIANT_MASK) | version << 76 | _VARIANT_RFC4122)


def new_uuid4() -> uuid.UUID:
    """A random (version 4) UUID.

    Example:
        >>> new_uuid4().version
        4
    """
    return _with_version(_random.getrandbits(128), 4)


def new_uuid7() -> uuid.UUID:
    """A time-ordered (version 7) UUID: Unix milliseconds, then 74 random bits, as Prefect's ids.

    Example:
        >>> earlier = new_uuid7(); time.sleep(0.002)
        >>> (new_uuid7().version, earlier < new_uuid7())
        (7, True)
    """
    return _with_version(time.time_ns() // 1_000_000 << 80 | _random.getrandbits(80), 7)


def new_hex() -> str:
    """A version-4 UUID as 32 hex digits: the id of Stalwart's rows.

    Example:
        >>> len(new_hex()), new_hex() != new_hex()
        (32, True)
    """
    return new_uuid4().hex
