"""Ids made without a system call: well-formed UUIDs, time-ordered v7, distinct after a fork."""

from __future__ import annotations

import os
import time
import uuid

import pytest

from agents._ids import new_hex, new_uuid4, new_uuid7


def test_ids_are_well_formed_uuids() -> None:
    for made, version in ((new_uuid4(), 4), (new_uuid7(), 7)):
        assert made.version == version
        assert made.variant == uuid.RFC_4122
        assert uuid.UUID(str(made)) == made
    assert len(new_hex()) == 32 and uuid.UUID(new_hex()).version == 4


def test_uuid7_carries_the_time_in_milliseconds_and_sorts_by_it() -> None:
    before = time.time_ns() // 1_000_000
    first = new_uuid7()
    time.sleep(0.002)
    second = new_uuid7()
    assert before <= first.int >> 80 <= time.time_ns() // 1_000_000
    assert first < second


def test_many_ids_do_not_collide() -> None:
    assert len({new_hex() for _ in range(50_000)}) == 50_000


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        os.write(write, "".join(new_hex() for _ in range(4)).encode())
        os._exit(0)
    os.close(write)
    parent = "".join(new_hex() for _ in range(4))
    os.waitpid(pid, 0)
    with os.fdopen(read) as pipe:
        child = pipe.read()
    assert len(child) == 128 and child != parent
