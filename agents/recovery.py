"""Re-submit agent flow runs that died, so a lost process loses no input.

A deployed flow run of an agent (tagged `agent:<name>`) that ended Crashed or Failed did not
finish its inputs, and neither did one the server still shows Running or Pending whose process
is gone (a lost machine takes its worker with it, so nobody reports the crash). Running it
again with the same parameters is safe: finished steps come from the results cache and actions
from the ledger (an action in doubt is retried under its idempotency key). `recover` re-submits
each such run from its deployment, tagged `stalwart:retry-of:<id>` and `stalwart:attempt:<n>`,
at most `max_attempts` times per original run, and never twice for the same dead run: calling
it again, from a cron or another machine, is harmless, and so are two calls at once (the retry
is created under an idempotency key, `retry_key`, so the server keeps one).

A dead flow run with nothing left to do is not re-submitted: when the latest execution of every
one of its inputs (by run key, in any flow run) completed, is held or awaits review, it is
reported `skipped` once and tagged `stalwart:nothing-left` (later calls pass it by). A batch whose
inputs failed ends Failed (`agents.execution.batch.final_state`), so it is re-submitted until its
failed inputs pass or `max_attempts` is reached.

A process can only be seen dead on its own machine (`infrastructure_pid` is `host:pid`). For
workers on other machines, turn on Prefect's flow-run heartbeats
(`PREFECT_FLOWS_HEARTBEAT_FREQUENCY`) with an automation that marks a run Crashed when they
stop: `recover` then re-submits it like any crashed run.

Example:
    >>> from datetime import timedelta
    >>> from agents.recovery import recover
    >>> for r in recover(since=timedelta(hours=6)):  # doctest: +SKIP
    ...     print(r.flow_run_name, r.state, r.action, r.new_flow_run_id)
    batch-10 CRASHED resubmitted 3f2a...
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from agents._text import one_line

logger = logging.getLogger(__name__)

__all__ = [
    "AGENT_TAG",
    "ATTEMPT_TAG",
    "DEAD_STATES",
    "FINISHED",
    "LIVE_STATES",
    "NOTHING_LEFT",
    "RETRIED",
    "RETRY_TAG",
    "Recovery",
    "process_alive",
    "recover",
    "retry_key",
]

AGENT_TAG = "agent:"
RETRY_TAG = "stalwart:retry-of:"
#: Every flow run `recover` created carries this tag (Prefect filters tags by exact value).
RETRIED = "stalwart:retry"
ATTEMPT_TAG = "stalwart:attempt:"
#: States whose runs did not finish and will not: re-submit them.
DEAD_STATES = ("CRASHED", "FAILED")
#: States that mean "a process is working on it", true only while that process lives.
LIVE_STATES = ("RUNNING", "PENDING", "CANCELLING")
#: Tag of a dead flow run `recover` left alone: every input had finished (reported once).
NOTHING_LEFT = "stalwart:nothing-left"
#: `agent_run` statuses of an input that needs no more work from a re-submission.
FINISHED = ("completed", "held", "awaiting_review")
#: `Recovery.reason` of a dead run whose inputs all finished.
ALL_FINISHED = "nothing left to do: the latest execution of every input finished"
#: `Recovery.reason` of a live-state run whose process is gone.
PROCESS_GONE = "Its process is gone"
#: `Recovery.reason` is a state message on one line, cut to this many characters.
REASON_WIDTH = 300


@dataclass(frozen=True)
class Recovery:
    """What `recover` did about one dead flow run."""

    flow_run_id: str
    flow_run_name: str
    state: str
    """The state it was found in (RUNNING/PENDING: its process was gone)."""
    action: Literal["resubmitted", "gave up", "skipped"]
    attempt: int
    """The attempt the dead run was (1 for the original)."""
    new_flow_run_id: str | None = None
    reason: str = ""
    """Why it is dead: its final state's message, or that its process is gone."""


def process_alive(infrastructure_pid: str | None) -> bool | None:
    """Whether a flow run's process lives: None when it cannot be told from here (no process
    yet, or a process on another host).

    Example:
        >>> process_alive(f"{os.uname().nodename}:{os.getpid()}")
        True
        >>> process_alive(None) is None
        True
    """
    if not infrastructure_pid:
        return None
    host, _, pid = str(infrastructure_pid).rpartition(":")
    if not pid.isdigit() or (host and host != os.uname().nodename):
        return None
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie is dead, only not reaped


def retry_key(flow_run_id: Any) -> str:
    """The idempotency key of the one flow run that re-submits `flow_run_id`.

    Example:
        >>> retry_key("3f2a")
        'stalwart:retry-of:3f2a'
    """
    return f"{RETRY_TAG}{flow_run_id}"


def _tag_value(tags: list[str], prefix: str) -> str | None:
    return next((t[len(prefix) :] for t in tags if t.startswith(prefix)), None)


def _attempt(tags: list[str]) -> int:
    value = _tag_value(tags, ATTEMPT_TAG)
    return int(value) if value and value.isdigit() else 1


def recover(
    *,
    since: timedelta = timedelta(hours=6),
    max_attempts: int = 4,
    pending_grace_s: float = 60.0,
    flow_run_ids: list[str] | None = None,
    client: Any = None,
) -> list[Recovery]:
    """Re-submit every dead agent flow run of the last `since` (see the module docstring).

    Args:
        since: How far back to look (by flow-run creation time).
        max_attempts: Flow runs per original run at most (the original counts); past it the
            run is reported `gave up` and left as it is.
        pending_grace_s: A Pending run with no process for this long is dead.
        flow_run_ids: Look only at these flow runs (default: every agent flow run).
        client: A sync Prefect client (default: one for the current settings).

    Returns:
        One `Recovery` per dead run found, in the order they were found.

    Example:
        >>> recover(since=timedelta(minutes=30), max_attempts=3)  # doctest: +SKIP
        []
    """
    if client is None:
        from prefect import get_client

        with get_client(sync_client=True) as own:
            return recover(
                since=since,
                max_attempts=max_attempts,
                pending_grace_s=pending_grace_s,
                flow_run_ids=flow_run_ids,
                client=own,
            )
    runs = _agent_flow_runs(client, since, flow_run_ids)
    retried = {_tag_value(list(r.tags or []), RETRY_TAG) for r in _retries(client, since)}
    now = datetime.now(UTC)
    found: list[Recovery] = []
    for run in runs:
        tags = list(run.tags or [])
        state = run.state.type.value if run.state else "SCHEDULED"
        if str(run.id) in retried or not run.deployment_id or NOTHING_LEFT in tags:
            continue
        if state in LIVE_STATES:
            alive = process_alive(run.infrastructure_pid)
            if alive is None and state == "PENDING" and run.state is not None:
                since_pending = (now - run.state.timestamp).total_seconds()
                alive = since_pending < pending_grace_s
            if alive is not False:
                continue
            _mark_crashed(client, run.id)
            reason = PROCESS_GONE
        elif state not in DEAD_STATES:
            continue
        else:
            reason = one_line((run.state.message if run.state else None) or "", REASON_WIDTH)
        attempt = _attempt(tags)
        name = str(run.name)
        if nothing_left(run):
            client.update_flow_run(run.id, tags=[*tags, NOTHING_LEFT])
            found.append(Recovery(str(run.id), name, state, "skipped", attempt, None, ALL_FINISHED))
            continue
        if attempt >= max_attempts:
            found.append(Recovery(str(run.id), name, state, "gave up", attempt, reason=reason))
            continue
        kept = [t for t in tags if t != RETRIED and not t.startswith((RETRY_TAG, ATTEMPT_TAG))]
        # The key makes the server create one retry per dead run, however many `recover`
        # calls race past the `retried` check: the others get that same flow run back.
        new = client.create_flow_run_from_deployment(
            run.deployment_id,
            parameters=run.parameters,
            tags=[*kept, RETRIED, f"{RETRY_TAG}{run.id}", f"{ATTEMPT_TAG}{attempt + 1}"],
            idempotency_key=retry_key(run.id),
        )
        found.append(
            Recovery(str(run.id), name, state, "resubmitted", attempt, str(new.id), reason)
        )
    return found


def nothing_left(run: Any) -> bool:
    """Whether every input of an agent flow run has finished, in this flow run or another:
    the latest execution of each input's run key completed, is held or awaits review.

    False when it cannot be told (no inputs, no agent tag, the state database unreachable):
    re-submitting is the safe mistake, a finished input costs a cache read.
    """
    params = run.parameters or {}
    inputs = params.get("inputs")
    agent = _tag_value(list(run.tags or []), AGENT_TAG)
    if not isinstance(inputs, list) or not inputs or not agent:
        return False
    from agents.execution.batch import run_key_of
    from agents.store import queries

    keys = [run_key_of(item) for item in inputs if isinstance(item, dict)]
    if not keys:
        return False
    tenant = params.get("tenant") or "default"
    try:
        latest = queries.latest_statuses(tenant=str(tenant), agent=agent, run_keys=keys)
    except Exception as exc:
        logger.warning("recover: could not read the runs of %s (%s)", run.id, exc)
        return False
    return all(latest.get(key) in FINISHED for key in keys)


def _read_all(client: Any, flow_filter: Any) -> list[Any]:
    from prefect.client.schemas.sorting import FlowRunSort

    found: list[Any] = []
    while True:
        page = client.read_flow_runs(
            flow_run_filter=flow_filter,
            sort=FlowRunSort.EXPECTED_START_TIME_ASC,
            limit=200,
            offset=len(found),
        )
        found.extend(page)
        if len(page) < 200:
            return found


def _window(since: timedelta) -> Any:
    from prefect.client.schemas.filters import FlowRunFilterExpectedStartTime

    return FlowRunFilterExpectedStartTime(after_=datetime.now(UTC) - since)


def _agent_flow_runs(client: Any, since: timedelta, ids: list[str] | None) -> list[Any]:
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    wanted = [StateType(s) for s in (*DEAD_STATES, *LIVE_STATES)]
    flow_filter = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=wanted)))
    if ids is not None:
        flow_filter.id = FlowRunFilterId(any_=[uuid.UUID(i) for i in ids])
    else:
        flow_filter.expected_start_time = _window(since)
    runs = _read_all(client, flow_filter)
    return [r for r in runs if any(t.startswith(AGENT_TAG) for t in (r.tags or []))]


def _retries(client: Any, since: timedelta) -> list[Any]:
    """Flow runs `recover` created (each names the run it replaced in a tag)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    return _read_all(
        client,
        FlowRunFilter(
            tags=FlowRunFilterTags(all_=[RETRIED]),
            # A retry is created after the run it replaces: the same window holds it.
            expected_start_time=_window(since),
        ),
    )


def _mark_crashed(client: Any, flow_run_id: Any) -> None:
    from prefect.states import Crashed

    client.set_flow_run_state(
        flow_run_id, Crashed(message=f"{PROCESS_GONE} (stalwart recover)"), force=True
    )
