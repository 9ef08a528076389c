"""`agents.recovery.recover` against a Prefect API: which flow runs it re-submits, how often.

Runs are put in the states a lost process leaves behind (no worker executes them here);
`tests/test_faults_w1.py` does it for real, with SIGKILLed workers on a Prefect server.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from agents.recovery import RETRIED, process_alive, recover

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.faults]


@pytest.fixture
def client() -> Iterator[Any]:
    from prefect import get_client

    with get_client(sync_client=True) as sync:
        yield sync


@pytest.fixture
def deployment(client: Any) -> Any:
    """A deployment of a flow tagged like an agent's (no work pool: nothing executes it)."""
    name = f"recover-{uuid.uuid4().hex[:8]}"
    flow_id = client.create_flow_from_name(name)
    return client.create_deployment(flow_id=flow_id, name=name, tags=[f"agent:{name}"])


def _set(client: Any, run_id: Any, state: Any) -> None:
    client.set_flow_run_state(run_id, state, force=True)


def _ours(found: list[Any], run_id: Any) -> list[Any]:
    return [r for r in found if r.flow_run_id == str(run_id)]


def test_a_crashed_run_is_resubmitted_once_per_attempt_up_to_the_limit(
    client: Any, deployment: Any
) -> None:
    from prefect.states import Crashed, Failed

    params = {"inputs": [{"raw": {"id": 1}}], "tenant": "acme"}
    run = client.create_flow_run_from_deployment(deployment, parameters=params)
    _set(client, run.id, Crashed(message="Flow run infrastructure exited\nwith status -9"))

    first = _ours(recover(since=timedelta(hours=1), max_attempts=3, client=client), run.id)
    assert [(r.state, r.action, r.attempt) for r in first] == [("CRASHED", "resubmitted", 1)]
    assert first[0].reason == "Flow run infrastructure exited with status -9"  # one line
    assert _ours(recover(since=timedelta(hours=1), max_attempts=3, client=client), run.id) == []

    second = client.read_flow_run(first[0].new_flow_run_id)
    assert second.parameters == params
    assert {RETRIED, f"stalwart:retry-of:{run.id}", "stalwart:attempt:2"} <= set(second.tags)
    _set(client, second.id, Failed())
    [again] = _ours(recover(since=timedelta(hours=1), max_attempts=3, client=client), second.id)
    assert (again.action, again.attempt) == ("resubmitted", 2)

    third = client.read_flow_run(again.new_flow_run_id)
    assert "stalwart:attempt:3" in third.tags and "stalwart:attempt:2" not in third.tags
    _set(client, third.id, Crashed())
    [last] = _ours(recover(since=timedelta(hours=1), max_attempts=3, client=client), third.id)
    assert (last.action, last.attempt, last.new_flow_run_id) == ("gave up", 3, None)


def test_a_running_run_without_its_process_is_marked_crashed_and_resubmitted(
    client: Any, deployment: Any
) -> None:
    from prefect.states import Running

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        runs = {}
        for name, pid in (("dead", dead.pid), ("alive", alive.pid)):
            run = client.create_flow_run_from_deployment(deployment, parameters={})
            _set(client, run.id, Running())
            client.update_flow_run(run.id, infrastructure_pid=str(pid))
            runs[name] = run
        assert process_alive(str(dead.pid)) is False
        assert process_alive(str(alive.pid)) is True

        found = recover(since=timedelta(hours=1), client=client)
        assert [(r.state, r.action, r.reason) for r in _ours(found, runs["dead"].id)] == [
            ("RUNNING", "resubmitted", "Its process is gone")
        ]
        assert _ours(found, runs["alive"].id) == []
        assert client.read_flow_run(runs["dead"].id).state.is_crashed()
        assert client.read_flow_run(runs["alive"].id).state.is_running()
    finally:
        alive.kill()
        alive.wait()


def test_runs_that_are_not_an_agents_or_finished_are_left_alone(
    client: Any, deployment: Any
) -> None:
    from prefect.states import Cancelled, Completed, Crashed

    plain_flow = client.create_flow_from_name(f"plain-{uuid.uuid4().hex[:8]}")
    plain = client.create_deployment(flow_id=plain_flow, name="plain")  # no agent: tag
    crashed_plain = client.create_flow_run_from_deployment(plain, parameters={})
    _set(client, crashed_plain.id, Crashed())
    completed = client.create_flow_run_from_deployment(deployment, parameters={})
    _set(client, completed.id, Completed())
    cancelled = client.create_flow_run_from_deployment(deployment, parameters={})
    _set(client, cancelled.id, Cancelled())  # somebody meant it

    found = recover(since=timedelta(hours=1), client=client)
    touched = {r.flow_run_id for r in found}
    assert not touched & {str(crashed_plain.id), str(completed.id), str(cancelled.id)}


def _finished_elsewhere(tenant: str, agent: str, items: list[dict[str, Any]], status: str) -> None:
    """Record each input's latest execution, in another flow run, as `status`."""
    from agents.execution.batch import run_key_of
    from agents.store.queries import record_run_start
    from agents.store.tables import AgentRun

    for item in items:
        record_run_start(
            AgentRun(
                tenant=tenant,
                agent=agent,
                run_key=run_key_of(item),
                status=status,
                inputs_digest="0" * 64,
                flow_run_id=str(uuid.uuid4()),
            )
        )


def test_a_dead_run_whose_inputs_finished_elsewhere_is_skipped_once(
    client: Any, deployment: Any, sqlite_url: str
) -> None:
    from prefect.states import Failed

    agent = next(t for t in deployment_tags(client, deployment) if t.startswith("agent:"))[6:]
    done = [{"raw": {"id": 1}, "subject": "a"}, {"raw": {"id": 2}}]
    half = [{"raw": {"id": 3}}, {"raw": {"id": 4}, "run_key": "t-4"}]
    _finished_elsewhere("acme", agent, done, "completed")
    _finished_elsewhere("acme", agent, half[:1], "held")
    _finished_elsewhere("acme", agent, half[1:], "failed")  # its latest execution failed
    finished = client.create_flow_run_from_deployment(
        deployment, parameters={"inputs": done, "tenant": "acme"}
    )
    unfinished = client.create_flow_run_from_deployment(
        deployment, parameters={"inputs": half, "tenant": "acme"}
    )
    other_tenant = client.create_flow_run_from_deployment(
        deployment,
        parameters={"inputs": done, "tenant": "globex"},  # not globex's runs
    )
    for run in (finished, unfinished, other_tenant):
        _set(client, run.id, Failed(message="1 of 2 inputs failed"))

    found = recover(since=timedelta(hours=1), client=client)
    [skipped] = _ours(found, finished.id)
    assert (skipped.action, skipped.new_flow_run_id) == ("skipped", None)
    assert skipped.reason.startswith("nothing left to do")
    assert "stalwart:nothing-left" in client.read_flow_run(finished.id).tags
    assert [r.action for r in _ours(found, unfinished.id)] == ["resubmitted"]
    assert [r.action for r in _ours(found, other_tenant.id)] == ["resubmitted"]
    assert _ours(recover(since=timedelta(hours=1), client=client), finished.id) == []


def deployment_tags(client: Any, deployment: Any) -> list[str]:
    return list(client.read_deployment(deployment).tags)
