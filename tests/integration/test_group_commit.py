"""Group commit: the concurrent store operations of one event loop share transactions.

The ledger's claims and completions, memory reads and writes and the LLM answer cache's lookups
and stores each take one transaction per group of concurrent callers instead of one per caller,
with each caller's own outcome kept: exactly one claim of a key wins (others see it in progress
or completed), compare-and-set conflicts are told per key, tenants stay apart, and a request
that breaks its group fails alone. Every test runs on SQLite and PostgreSQL (`db_url`).
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import threading
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from sqlalchemy.engine import make_url
from sqlmodel import select

from agents.errors import ActionInProgress, MemoryConflict
from agents.policy import llm_cache
from agents.store import ActionRecord, Memory, ledger, results
from agents.store._group import database_of, shared
from agents.store.engine import SQLITE_BUSY_TIMEOUT_MS, get_engine, upgrade, without_lock_waits
from tests.support.sqlcount import counted

N = 32


T = TypeVar("T")


def _claim(key: str, tenant: str, url: str, owner: str, lease: float = 10.0) -> Any:
    return ledger.aclaim(
        key, tenant=tenant, agent="a", subject="s", run_key=f"rk-{key[:8]}", step="send",
        agent_run_id=owner, owner=owner, lease=lease, url=url,
    )  # fmt: skip


def _keys(tenant: str, n: int) -> list[str]:
    return [ledger.idempotency_key(tenant, "a", "s", f"rk{i}", "send") for i in range(n)]


# -- the mechanism ------------------------------------------------------------------------------


def test_a_failing_group_is_served_one_request_at_a_time() -> None:
    """Outcomes come back per caller, an exception outcome is raised to its caller alone, and
    a group whose transaction fails is retried request by request so only the bad one fails."""
    groups: list[list[int]] = []

    def together(url: str, items: list[int]) -> list[int | BaseException]:
        groups.append(list(items))
        if -1 in items:
            raise RuntimeError("the whole transaction failed")
        return [LookupError(f"no {i}") if i == 99 else i * 10 for i in items]

    async def main() -> list[Any]:
        first = await asyncio.gather(*(shared(together, "db", i) for i in range(20)))
        second = await asyncio.gather(
            *(shared(together, "db", i) for i in (1, -1, 99, 2)), return_exceptions=True
        )
        return [first, second]

    first, second = asyncio.run(main())
    assert first == [i * 10 for i in range(20)]
    assert groups[0] == list(range(20))  # one round trip for the twenty
    assert second[0] == 10 and second[3] == 20
    assert isinstance(second[1], RuntimeError) and isinstance(second[2], LookupError)
    assert sorted(len(g) for g in groups[1:]) == [1, 1, 1, 1, 4]  # the group, then each alone


async def _ticking_while(work: Awaitable[T], release: Callable[[], None]) -> tuple[T, int]:
    """`work`'s outcome, and how often the loop ticked (every 10 ms) while it was awaited;
    `release` (a lock holder's rollback) runs in a timer thread after 0.5 s."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticking = asyncio.ensure_future(ticker())
    threading.Timer(0.5, release).start()
    try:
        return await work, ticks
    finally:
        ticking.cancel()


def test_sqlite_groups_run_on_the_loop_and_postgresql_groups_in_a_worker(
    db_url: str, new_tenant: str
) -> None:
    """On SQLite a group is served on the loop's own thread (a worker thread would only add
    the interpreter lock's hand-overs); PostgreSQL's network round trips stay off the loop."""
    threads: list[int] = []

    def together(url: str, items: list[str]) -> list[bytes | None]:
        threads.append(threading.get_ident())
        return results._read_together(url, items)

    async def main() -> tuple[int, list[bytes | None]]:
        keys = [f"{new_tenant}:{i}" for i in range(3)]
        found = await asyncio.gather(*(shared(together, db_url, k) for k in keys))
        return threading.get_ident(), found

    loop_thread, found = asyncio.run(main())
    assert found == [None, None, None] and len(threads) == 1
    assert (threads[0] == loop_thread) is db_url.startswith("sqlite")


def test_a_locked_sqlite_database_waits_in_a_worker_not_on_the_loop(
    sqlite_url: str, new_tenant: str
) -> None:
    """While another connection holds SQLite's write lock, a write made on the loop fails at
    once (no busy wait there) and is made again in a worker thread, which waits for the lock:
    the loop keeps running meanwhile, and the write lands once, after the lock is released."""
    upgrade(sqlite_url)
    url = database_of(sqlite_url)
    holder = sqlite3.connect(make_url(url).database, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # the write lock, held by another connection
    writers: list[str] = []

    def together(url: str, items: list[tuple[str, bytes]]) -> list[None]:
        writers.append(threading.current_thread().name)
        return results._write_together(url, items)

    async def main() -> int:
        write = shared(together, url, (f"{new_tenant}:locked", b"value"))
        return (await _ticking_while(write, holder.rollback))[1]

    ticks = asyncio.run(main())
    holder.close()
    assert writers[0] == threading.main_thread().name  # tried on the loop first
    assert [w.startswith("stalwart-store") for w in writers[1:]] == [True]
    assert ticks >= 10  # the loop ran while the worker waited for the lock (~50 ticks)
    assert results._read_rows(url, [f"{new_tenant}:locked"]) == {f"{new_tenant}:locked": b"value"}
    # Other callers' connections still wait for a lock; the loop's come from their own pool.
    with get_engine(url).connect() as conn:
        timeouts = {conn.exec_driver_sql("PRAGMA busy_timeout").scalar()}
    with without_lock_waits(), get_engine(url).connect() as conn:
        timeouts.add(conn.exec_driver_sql("PRAGMA busy_timeout").scalar())
    assert timeouts == {SQLITE_BUSY_TIMEOUT_MS, 0}


def test_run_records_flush_on_the_loop_and_wait_for_a_lock_in_a_worker(
    sqlite_url: str, new_tenant: str
) -> None:
    """`RecordWriter.aflush` is served like a group: on SQLite on the loop's thread; while
    another connection holds the write lock, in a worker that waits for it while the loop keeps
    running. The run is stored once either way."""
    from agents.store import AgentRun, session
    from agents.store.records import RecordWriter

    upgrade(sqlite_url)
    url = database_of(sqlite_url)
    writer = RecordWriter(url=url)
    threads: list[str] = []
    write = writer._write

    def observed(pending: Any) -> None:
        threads.append(threading.current_thread().name)
        write(pending)

    writer._write = observed  # type: ignore[method-assign]

    def run(key: str) -> AgentRun:
        return AgentRun(
            tenant=new_tenant, agent="a", run_key=key, status="running", inputs_digest="0"
        )

    async def main() -> int:
        writer.start_run(run("free"))
        assert await writer.aflush() == 1
        database = make_url(url).database
        holder = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
        holder.execute("BEGIN IMMEDIATE")  # the write lock, held by another connection
        writer.start_run(run("locked"))
        written, ticks = await _ticking_while(writer.aflush(), holder.rollback)
        holder.close()
        assert written == 1
        return ticks

    ticks = asyncio.run(main())
    main_thread = threading.main_thread().name
    assert threads[:2] == [main_thread, main_thread]  # free: on the loop; locked: tried there
    assert [t.startswith("stalwart-store") for t in threads[2:]] == [True]
    assert ticks >= 10  # the loop ran while the worker waited for the lock (~50 ticks)
    with session(url) as s:
        keys = sorted(
            r.run_key for r in s.exec(select(AgentRun).where(AgentRun.tenant == new_tenant))
        )
    assert keys == ["free", "locked"]


# -- the action ledger --------------------------------------------------------------------------


def test_concurrent_claims_and_completions_share_transactions(db_url: str, new_tenant: str) -> None:
    keys = _keys(new_tenant, N)

    async def claims() -> list[Any]:
        return await asyncio.gather(
            *(_claim(k, new_tenant, db_url, f"run{i}") for i, k in enumerate(keys))
        )

    with counted(db_url) as trips:
        records = asyncio.run(claims())
    assert [(r.status, r.attempts, r.lease_owner) for r in records] == [
        ("started", 1, f"run{i}") for i in range(N)
    ]
    assert trips["commit"] <= 2, trips
    assert trips["INSERT action_record"] <= 2, trips

    async def completions() -> list[Any]:
        return await asyncio.gather(
            *(ledger.acomplete(k, {"i": i}, url=db_url) for i, k in enumerate(keys)),
            ledger.acomplete(_keys(f"{new_tenant}-none", 1)[0], {}, url=db_url),
            return_exceptions=True,
        )

    with counted(db_url) as trips:
        done = asyncio.run(completions())
    assert done[:N] == [None] * N
    assert isinstance(done[N], LookupError)  # never claimed: fails alone
    assert trips["commit"] <= 2, trips
    stored = [ledger.get(k, url=db_url) for k in keys]
    assert [(r.status, r.result) for r in stored if r] == [
        ("completed", {"i": i}) for i in range(N)
    ]

    # A rerun's claims find the completed records (one shared insert, then each looks).
    async def rerun() -> list[Any]:
        return await asyncio.gather(*(_claim(k, new_tenant, db_url, "rerun") for k in keys))

    assert [(r.status, r.result) for r in asyncio.run(rerun())] == [
        ("completed", {"i": i}) for i in range(N)
    ]


def test_racing_claims_act_exactly_once(db_url: str, new_tenant: str) -> None:
    """Two event loops (two workers' groups, on threads) and duplicates within each group claim
    the same keys, in different orders; exactly one claim per key wins, the winner completes,
    and every loser sees the action in progress or its completed record."""
    keys = _keys(new_tenant, 12)
    outcomes: dict[str, list[Any]] = {k: [] for k in keys}
    lock = threading.Lock()
    errors: list[BaseException] = []

    async def worker(name: str) -> None:
        order = keys * 2  # each key twice in this loop's group
        random.Random(name).shuffle(order)

        async def one(i: int, key: str) -> None:
            owner = f"{name}-{i}"
            try:
                record = await _claim(key, new_tenant, db_url, owner)
            except ActionInProgress as exc:
                outcome: Any = exc
            else:
                outcome = record
                if record.status == "started":
                    await asyncio.sleep(0.05)  # acting
                    await ledger.acomplete(key, {"by": owner}, url=db_url)
            with lock:
                outcomes[key].append((owner, outcome))

        await asyncio.gather(*(one(i, k) for i, k in enumerate(order)))

    def run(name: str) -> None:
        try:
            asyncio.run(worker(name))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in ("w1", "w2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    for key in keys:
        seen = outcomes[key]
        assert len(seen) == 4
        won = [(o, r) for o, r in seen if isinstance(r, ActionRecord) and r.status == "started"]
        assert len(won) == 1, seen
        winner, record = won[0]
        assert (record.attempts, record.lease_owner) == (1, winner)
        for owner, r in seen:
            if owner != winner:
                completed = isinstance(r, ActionRecord) and r.status == "completed"
                assert completed or isinstance(r, ActionInProgress), (owner, r)
        stored = ledger.get(key, url=db_url)
        assert stored is not None
        assert (stored.status, stored.attempts, stored.result) == ("completed", 1, {"by": winner})


def test_a_claim_of_another_tenants_key_fails_alone(db_url: str, new_tenant: str) -> None:
    key = _keys(new_tenant, 1)[0]
    other = f"{new_tenant}-other"

    async def main() -> list[Any]:
        return await asyncio.gather(
            _claim(key, new_tenant, db_url, "mine"),
            _claim(key, other, db_url, "theirs"),
            _claim(_keys(other, 1)[0], other, db_url, "theirs"),
            return_exceptions=True,
        )

    mine, theirs, own = asyncio.run(main())
    assert isinstance(mine, ActionRecord) and mine.tenant == new_tenant
    assert isinstance(theirs, ValueError) and "another tenant" in str(theirs)
    assert isinstance(own, ActionRecord) and own.tenant == other


# -- memory -------------------------------------------------------------------------------------


def test_concurrent_memory_reads_and_writes_share_transactions(
    db_url: str, new_tenant: str
) -> None:
    handles = [Memory(new_tenant, "a", f"customer-{i}", url=db_url) for i in range(N)]

    async def updates() -> list[Any]:
        return await asyncio.gather(
            *(m.aupdate("history", lambda h: {"tickets": (h or {}).get("tickets", 0) + 1})
              for m in handles)
        )  # fmt: skip

    with counted(db_url) as trips:
        first = asyncio.run(updates())
    assert first == [{"tickets": 1}] * N
    # One read and one write transaction for all (was one read and one write per update).
    assert trips["commit"] <= 4, trips
    with counted(db_url) as trips:
        second = asyncio.run(updates())
    assert second == [{"tickets": 2}] * N
    assert trips["commit"] <= 4, trips

    async def reads() -> list[Any]:
        return await asyncio.gather(*(m.aget_item("history") for m in handles))

    with counted(db_url) as trips:
        items = asyncio.run(reads())
    assert [(i.subject, i.version) for i in items if i] == [(f"customer-{n}", 2) for n in range(N)]
    assert trips["commit"] <= 2 and trips["SELECT memory_item"] <= 2, trips


def test_compare_and_set_conflicts_are_told_per_key_within_a_group(
    db_url: str, new_tenant: str
) -> None:
    hot = Memory(new_tenant, "a", "hot", url=db_url)
    cold = [Memory(new_tenant, "a", f"cold-{i}", url=db_url) for i in range(5)]
    other_tenant = Memory(f"{new_tenant}-b", "a", "hot", url=db_url)
    hot.set("k", "v0")  # version 1

    async def main() -> list[Any]:
        return await asyncio.gather(
            *(hot.aset("k", f"writer-{i}", expected_version=1) for i in range(5)),
            *(m.aset("k", "fresh", expected_version=0) for m in cold),
            other_tenant.aset("k", "theirs", expected_version=0),
            hot.aset("new", "once", expected_version=0),
            hot.aset("new", "twice", expected_version=0),
            return_exceptions=True,
        )

    outcomes = asyncio.run(main())
    hot_writes, rest = outcomes[:5], outcomes[5:]
    assert hot_writes.count(2) == 1, hot_writes
    conflicts = [o for o in hot_writes if isinstance(o, MemoryConflict)]
    assert len(conflicts) == 4 and all((c.expected, c.found) == (1, 2) for c in conflicts)
    assert rest[:6] == [1] * 6  # other keys and the other tenant's same key: unaffected
    assert rest[6] == 1 and isinstance(rest[7], MemoryConflict) and rest[7].found == 1
    winner = hot_writes.index(2)
    assert hot.get("k") == f"writer-{winner}"
    assert other_tenant.get("k") == "theirs" and hot.get("new") == "once"


def test_updates_from_two_event_loops_lose_nothing(db_url: str, new_tenant: str) -> None:
    """Two workers' groups racing on one counter: every increment lands exactly once."""
    counter = Memory(new_tenant, "a", "shared", url=db_url)

    async def bump_all() -> None:
        await asyncio.gather(
            *(counter.aupdate("n", lambda n: (n or 0) + 1, retries=200) for _ in range(15))
        )

    threads = [threading.Thread(target=asyncio.run, args=(bump_all(),)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    item = counter.get_item("n")
    assert item is not None and (item.value, item.version) == (30, 30)


@pytest.mark.postgres
def test_a_write_that_breaks_its_group_fails_alone(postgres_url: str, new_tenant: str) -> None:
    """PostgreSQL refuses a key longer than its column: that write's error, not its group's."""
    handles = [Memory(new_tenant, "a", f"s{i}", url=postgres_url) for i in range(6)]

    async def main() -> list[Any]:
        return await asyncio.gather(
            *(m.aset("k", i) for i, m in enumerate(handles)),
            handles[0].aset("x" * 600, "too long a key"),
            return_exceptions=True,
        )

    outcomes = asyncio.run(main())
    assert outcomes[:6] == [1] * 6
    assert isinstance(outcomes[6], Exception) and "too long" in str(outcomes[6]).lower()
    assert [m.get("k") for m in handles] == list(range(6))


# -- the LLM answer cache -----------------------------------------------------------------------


def test_concurrent_cache_lookups_and_stores_share_transactions(
    db_url: str, new_tenant: str
) -> None:
    keys = [uuid.uuid4().hex * 2 for _ in range(N)]

    async def stores() -> None:
        await asyncio.gather(
            *(llm_cache.astore(k, llm_cache.CachedAnswer(output={"i": i}), tenant=new_tenant,
                               endpoint="e", model="m", url=db_url)
              for i, k in enumerate(keys)),
            llm_cache.astore(keys[0], llm_cache.CachedAnswer(output="second"), tenant=new_tenant,
                             endpoint="e", model="m", url=db_url),
        )  # fmt: skip

    with counted(db_url) as trips:
        asyncio.run(stores())
    assert trips["commit"] <= 2, trips

    async def lookups() -> list[Any]:
        return await asyncio.gather(
            *(llm_cache.alookup(k, url=db_url) for k in [*keys, keys[1], "0" * 64])
        )

    with counted(db_url) as trips:
        found = asyncio.run(lookups())
    assert trips["commit"] <= 2, trips
    assert [a.output if a else None for a in found] == [
        *({"i": i} for i in range(N)),
        {"i": 1},
        None,
    ]  # the first answer stored under a key wins, within a group too
    assert llm_cache.lookup(keys[1], url=db_url) is not None
    from agents.store.engine import session
    from agents.store.tables import LLMCacheEntry

    with session(db_url) as s:
        hits = {k: s.get(LLMCacheEntry, k).hits for k in keys[:3]}  # type: ignore[union-attr]
    assert hits == {keys[0]: 1, keys[1]: 3, keys[2]: 1}  # each lookup counted, repeats too


def test_cache_lookups_are_best_effort_in_a_group(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> list[Any]:
        return await asyncio.gather(
            *(llm_cache.alookup("0" * 64, url="postgresql://nobody@127.0.0.1:1/none")
              for _ in range(3))
        )  # fmt: skip

    assert asyncio.run(main()) == [None, None, None]
    assert "LLM cache lookup failed" in caplog.text
