"""Run records written in batches: one transaction for many runs' rows.

A batch of agent runs produces, per run, a start row, step rows, decision rows and an end
update. Writing each in its own transaction costs a commit per row group; `RecordWriter` queues
them and writes everything queued in one transaction when `flush()` is called, folding a run's
end into its still-unwritten start row. The writer never flushes on its own: its owner calls
`flush()` (the batch runner does so periodically and once more when the batch ends). A process
killed between flushes loses the records queued since the last one, never a step result or an
action (those are written by their own tasks before the run goes on).

Flushes run one at a time (`_flushing`): a run's end may be queued while the flush holding its
start row is still writing, and a second flush that ran beside it would update a row not yet
inserted (no effect) and then see it inserted as `running` for good.

A flush survives a lost connection (retried, see `engine.retrying`) and may safely run twice:
rows already stored are skipped by primary key (a run's row is overwritten with its newer
status), so a flush whose COMMIT landed before the connection dropped adds nothing the second
time, and rows kept after a failed flush never wedge the next one on a duplicate key.

A run's end also ends its dead predecessors: earlier executions of the same run key (from
another flow run) still recorded `running` become `crashed`, their error naming the run that
finished the work (`_crash_superseded_in`); a process killed mid-run leaves such a row.

Example:
    >>> writer = RecordWriter(url="sqlite://")
    >>> run = AgentRun(tenant="acme", agent="triage", run_key="t-1", status="running",
    ...                inputs_digest="0" * 64)
    >>> writer.start_run(run)
    >>> writer.end_run(run.id, status="completed")
    >>> writer.flush()  # one row: the run, written once, already completed
    1
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlmodel import Session

from agents.store._convert import as_utc
from agents.store._group import database_of, shared
from agents.store._writes import insert_ignoring, upsert
from agents.store.engine import retrying, session
from agents.store.tables import AgentRun, DecisionRecord, StepRun, utcnow


@dataclass
class _Pending:
    runs: dict[str, AgentRun] = field(default_factory=dict)
    ends: list[dict[str, Any]] = field(default_factory=list)
    steps: list[StepRun] = field(default_factory=list)
    decisions: list[DecisionRecord] = field(default_factory=list)
    recovered: list[DecisionRecord] = field(default_factory=list)
    continued: list[tuple[str, str]] = field(default_factory=list)
    superseding: list[tuple[str, str, str, str]] = field(default_factory=list)
    ended: list[dict[str, Any]] = field(default_factory=list)

    def size(self) -> int:
        return (
            len(self.runs)
            + len(self.ends)
            + len(self.steps)
            + len(self.decisions)
            + len(self.recovered)
            + len(self.continued)
            + len(self.superseding)
        )


class RecordWriter:
    """Buffers run, step and decision rows and writes them in one transaction per flush."""

    def __init__(self, url: str | None = None) -> None:
        self.url = url
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        self._pending = _Pending()
        #: Runs started and not yet ended (their tenant, agent and run key, for `end_run`).
        self._started: dict[str, AgentRun] = {}
        #: Every decision queued through this writer: the decisions the flow run made or
        #: changed (its decision artifact), not those it took from the log as they were.
        self.decisions_seen: list[DecisionRecord] = []

    def start_run(self, run: AgentRun) -> None:
        """Queue a run's start row."""
        with self._lock:
            self._pending.runs[run.id] = run
            self._started[run.id] = run

    def end_run(
        self,
        run_id: str,
        *,
        status: str,
        error: str | None = None,
        duration_ms: float | None = None,
        steps: list[StepRun] | None = None,
        decisions: list[DecisionRecord] | None = None,
        recovered: list[DecisionRecord] | None = None,
        continued: list[str] | None = None,
        reviewed: bool = False,
    ) -> None:
        """Queue how a run ended, with its step and decision rows.

        `recovered` decisions stand in for rows another execution may still write (a step taken
        from the cache reports the decision its first execution logged, under that decision's
        id): they are inserted only where no row is stored. `continued` reviews were taken by
        this run, which went on past them. A `reviewed` run (one that asked or took a review)
        supersedes the earlier executions of its run still recorded as awaiting review.
        """
        finished = utcnow()
        with self._lock:
            pending = self._pending
            run = pending.runs.get(run_id) or self._started.get(run_id)
            if reviewed and run is not None:
                pending.superseding.append((run.tenant, run.agent, run.run_key, run_id))
            if run is not None and status != "conflict":
                # A conflict means a twin execution is alive: its row is not a dead one.
                pending.ended.append(_ended(run, finished))
            pending.continued.extend((review, run_id) for review in continued or ())
            self._started.pop(run_id, None)
            run = pending.runs.get(run_id)
            if run is not None:  # not written yet: write it once, already finished
                run.status, run.error = status, error
                run.finished_at, run.duration_ms = finished, duration_ms
            else:
                pending.ends.append(
                    {
                        "b_id": run_id,
                        "status": status,
                        "error": error,
                        "finished_at": finished,
                        "duration_ms": duration_ms,
                    }
                )
            pending.steps.extend(steps or ())
            pending.decisions.extend(decisions or ())
            pending.recovered.extend(recovered or ())
            self.decisions_seen.extend(decisions or ())

    def flush(self) -> int:
        """Write everything queued in one transaction; returns the number of rows written.

        Safe from several threads at once: a second caller waits for the flush in progress
        (whose rows it may depend on) and then writes what was queued meanwhile.
        """
        with self._flushing:
            with self._lock:
                pending, self._pending = self._pending, _Pending()
            count = pending.size()
            if not count:
                return 0
            try:
                retrying(lambda _retry: self._write(pending), what="run records flush")
            except Exception:
                with self._lock:  # keep the rows for the next flush rather than lose them
                    self._pending.runs = {**pending.runs, **self._pending.runs}
                    self._pending.ends[:0] = pending.ends
                    self._pending.steps[:0] = pending.steps
                    self._pending.decisions[:0] = pending.decisions
                    self._pending.recovered[:0] = pending.recovered
                    self._pending.continued[:0] = pending.continued
                    self._pending.superseding[:0] = pending.superseding
                    self._pending.ended[:0] = pending.ended
                raise
            return count

    async def aflush(self) -> int:
        """Async `flush`, served as a group commit (`agents.store._group.shared`): on SQLite
        on the event loop's thread, on PostgreSQL or while another SQLite writer holds the
        lock in a store thread.

        Why: a flush in a thread ran beside the loop, and every SQLite call the loop made
        released the interpreter lock to it; a rerun of 1,000 runs spent 5-10% more CPU so.
        """
        written: int = await shared(_flush_all, database_of(self.url), self)
        return written

    def _write(self, pending: _Pending) -> None:
        """One transaction; safe to repeat (see the module docstring)."""
        with session(self.url) as s:
            if pending.runs:
                upsert(
                    s,
                    AgentRun,
                    [r.model_dump() for r in pending.runs.values()],
                    _RUN_END_COLUMNS,
                )
            if pending.ends:
                # A Core executemany, not an ORM bulk update by primary key.
                table = AgentRun.metadata.tables["agent_run"]
                s.connection().execute(
                    update(table)
                    .where(table.c.id == bindparam("b_id"))
                    .values(
                        status=bindparam("status"),
                        error=bindparam("error"),
                        finished_at=bindparam("finished_at"),
                        duration_ms=bindparam("duration_ms"),
                    ),
                    pending.ends,
                )
            if pending.steps:
                insert_ignoring(s, StepRun, [r.model_dump() for r in pending.steps])
            if pending.decisions or pending.recovered:
                from agents.store.decisions import record_decisions_in

                record_decisions_in(s, pending.decisions, recovered=pending.recovered)
            if pending.continued or pending.superseding:
                from agents.store.reviews import mark_continued_in, supersede_in

                mark_continued_in(s, pending.continued)
                supersede_in(s, pending.superseding)
            if pending.ended:
                _crash_superseded_in(s, pending.ended)


def _flush_all(url: str, writers: list[RecordWriter]) -> list[int]:
    """Flush the writers whose `aflush` arrived together, each in its own transaction; `url`
    is where they write."""
    return [writer.flush() for writer in writers]


def _ended(run: AgentRun, finished: datetime) -> dict[str, Any]:
    """What ending the earlier dead executions of `run` (it ended) needs to know."""
    return {
        "tenant": run.tenant,
        "agent": run.agent,
        "run_key": run.run_key,
        "id": run.id,
        "flow_run_id": run.flow_run_id,
        "started_at": run.started_at,
        "finished_at": finished,
    }


def _crash_superseded_in(s: Session, ended: list[dict[str, Any]]) -> None:
    """Mark `crashed` the executions of each ended run's key still recorded `running` that
    started before it in another flow run: a later execution of the same run only starts once
    the earlier one is dead (killed process, lost machine), so that row would stay `running`
    for ever. The error names the run that finished the work.

    One indexed SELECT per tenant and agent of the flush finds the candidates (usually none),
    then one UPDATE per row found: a per-run UPDATE cost ~0.5 ms a run on PostgreSQL."""
    table = AgentRun.metadata.tables["agent_run"]
    groups: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = {}
    for end in ended:
        keys = groups.setdefault((end["tenant"], end["agent"]), {})
        keys.setdefault(end["run_key"], []).append(end)
    changes: list[dict[str, Any]] = []
    for (tenant, agent), by_key in groups.items():
        wanted = sorted(by_key)
        for start in range(0, len(wanted), 500):
            found = s.connection().execute(
                select(table.c.id, table.c.run_key, table.c.flow_run_id, table.c.started_at).where(
                    table.c.tenant == tenant,
                    table.c.agent == agent,
                    table.c.run_key.in_(wanted[start : start + 500]),
                    table.c.status == "running",
                )
            )
            for row_id, run_key, flow_run_id, started_at in found:
                finisher = _finisher(by_key[run_key], row_id, flow_run_id, as_utc(started_at))
                if finisher is not None:
                    changes.append(_crash(row_id, finisher))
    if changes:
        s.connection().execute(
            update(table)
            .where(table.c.id == bindparam("b_id"), table.c.status == "running")
            .values(
                status=CRASHED, error=bindparam("b_error"), finished_at=bindparam("b_finished_at")
            ),
            changes,
        )


def _finisher(
    ends: list[dict[str, Any]], row_id: str, flow_run_id: str | None, started_at: datetime
) -> dict[str, Any] | None:
    """The ended execution that supersedes a `running` row: it started later, in another flow
    run (two inputs of one batch with the same key are both alive)."""
    for end in ends:
        if end["id"] == row_id or as_utc(end["started_at"]) <= started_at:
            continue
        if flow_run_id is not None and end["flow_run_id"] == flow_run_id:
            continue
        return end
    return None


def _crash(row_id: str, finisher: dict[str, Any]) -> dict[str, Any]:
    where = f" of flow run {finisher['flow_run_id']}" if finisher["flow_run_id"] else ""
    return {
        "b_id": row_id,
        "b_finished_at": finisher["finished_at"],
        "b_error": f"{SUPERSEDED} {finisher['id']}{where} (this execution died before "
        "recording its end)",
    }


_RUN_END_COLUMNS = ("status", "error", "finished_at", "duration_ms")
#: The status of an execution that died without recording its end, once a later execution of
#: the same run has ended.
CRASHED = "crashed"
#: How a crashed execution's error begins: the id of the run that finished the work follows.
SUPERSEDED = "superseded by run"
