"""Sentry reporting, end to end: a real `sentry_sdk` sends to an in-process `SentryReceiver`.

Covers `agents.observe.sentry` (init, scrubbing, capture-once, Prefect hooks) and
`agents.testing.sentry` (the receiver).
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import secrets
import string
import threading
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import prefect
import pytest
import sentry_sdk
from prefect import flow, task

from agents.observe import (
    capture_failure,
    flow_failure_hook,
    flush,
    init_sentry,
    shutdown_sentry,
    task_failure_hook,
)
from agents.settings import temporary_settings
from agents.testing.sentry import SentryReceiver

# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture
def no_secrets_in_settings() -> Iterator[None]:
    """Settings without a DSN, API key or database password from the developer's environment."""
    with temporary_settings(sentry_dsn=None, api_key=None, database_url="sqlite://"):
        yield


@pytest.fixture
def receiver(no_secrets_in_settings: None) -> Iterator[SentryReceiver]:
    """A fresh receiver with `sentry_sdk` (re)initialised to send to it."""
    with SentryReceiver() as rec:
        assert init_sentry(rec.dsn, environment="test", force=True) is True
        try:
            yield rec
        finally:
            shutdown_sentry(timeout=1.0)


def _raise(exc: BaseException) -> BaseException:
    """Raise and catch `exc` so it carries a traceback, as a real failure does."""
    try:
        raise exc
    except BaseException as caught:
        return caught


def _tags(event: dict[str, Any]) -> dict[str, str]:
    tags = event.get("tags") or {}
    return dict(tags) if isinstance(tags, dict) else {k: v for k, v in tags}


def _exception_types(event: dict[str, Any]) -> list[str]:
    return [value["type"] for value in event["exception"]["values"]]


# -- capture ---------------------------------------------------------------------------------------


def test_capture_failure_sends_one_event_with_all_tags(receiver: SentryReceiver) -> None:
    exc = _raise(ValueError("classification failed"))

    event_id = capture_failure(
        exc,
        agent="triage",
        step="classify",
        layer="reasoning",
        tenant="acme",
        flow_run_id="0f1e",
        attempt=2,
        extra={"ticket": "T-1"},
    )
    flush()

    events = receiver.wait_for(1)
    assert len(events) == 1
    event = events[0]
    assert event_id is not None and event["event_id"] == event_id
    assert _tags(event) == {
        "agent": "triage",
        "step": "classify",
        "layer": "reasoning",
        "tenant": "acme",
        "flow_run_id": "0f1e",
        "attempt": "2",
    }
    assert event["extra"]["ticket"] == "T-1"
    assert event["environment"] == "test"
    assert _exception_types(event) == ["ValueError"]


def test_the_same_exception_is_sent_once(receiver: SentryReceiver) -> None:
    exc = _raise(RuntimeError("boom"))

    first = capture_failure(
        exc, agent="a", step="s", layer="action", tenant=None, flow_run_id=None, attempt=1
    )
    second = capture_failure(
        exc, agent="a", step=None, layer=None, tenant=None, flow_run_id=None, attempt=1
    )
    # Another path (sys.excepthook, a thread) reporting the same exception is dropped as well.
    thread = threading.Thread(target=sentry_sdk.capture_exception, args=(exc,))
    thread.start()
    thread.join()
    flush()

    assert first is not None and second == first
    assert len(receiver.wait_for(2, timeout=0.5)) == 1


def test_init_is_once_per_dsn(receiver: SentryReceiver, caplog: pytest.LogCaptureFixture) -> None:
    client = sentry_sdk.get_client()
    caplog.set_level(logging.DEBUG)

    assert init_sentry(receiver.dsn, environment="test") is True
    assert sentry_sdk.get_client() is client
    with SentryReceiver() as other:
        assert init_sentry(other.dsn, environment="test") is True
        assert sentry_sdk.get_client() is not client
        capture_failure(_raise(ValueError("to the other")), agent="a")
        flush()
        assert len(other.wait_for(1)) == 1
        assert receiver.events() == []
        assert other.dsn not in caplog.text
    assert receiver.dsn not in caplog.text


# -- scrubbing -------------------------------------------------------------------------------------


def _random(n: int) -> str:
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(n))


def _call_model(api_key: str, message: str) -> None:
    raise PermissionError(message)


def _report_model_failure(api_key: str, message: str) -> None:
    try:
        _call_model(api_key, message)
    except PermissionError as exc:
        capture_failure(
            exc,
            agent="triage",
            step="call",
            layer="action",
            tenant="acme",
            flow_run_id=None,
            attempt=1,
            extra={"password": "hunter2pass"},
        )


def test_secrets_never_reach_sentry(receiver: SentryReceiver) -> None:
    openai_key = "sk-proj-" + _random(40)
    local_key = "lk" + _random(30)  # matches no pattern: only its variable name gives it away
    configured_key = "cfg" + _random(20)
    secrets_ = [
        openai_key,
        "abc.def.ghi",
        "hunter2pass",
        "alice.smith@example.com",
        local_key,
        configured_key,
    ]

    message = (
        f"model call failed: key {openai_key}, Authorization: Bearer abc.def.ghi, "
        "db postgresql://user:hunter2pass@host/db, password=hunter2pass, "
        f"user alice.smith@example.com, configured {configured_key}"
    )
    with temporary_settings(api_key=configured_key):
        logging.getLogger("stalwart.test").warning("retrying with token=%s", configured_key)
        # Only the frames below are in the traceback: their locals are `api_key` and `message`.
        _report_model_failure(local_key, message)
        flush()

    events = receiver.wait_for(1)
    assert len(events) == 1
    assert _exception_types(events[0]) == ["PermissionError"]
    raw = receiver.raw_text()
    assert "model call failed" in raw
    leaked = [s for s in secrets_ if s in raw]
    assert leaked == []
    frames = events[0]["exception"]["values"][0]["stacktrace"]["frames"]
    assert any("api_key" in (frame.get("vars") or {}) for frame in frames)


# -- Prefect hooks ------------------------------------------------------------------------------


@task(retries=2, retry_delay_seconds=0, on_failure=[task_failure_hook("demo", "step1", "action")])
def failing_step() -> None:
    raise RuntimeError("step1 exploded")


@task(retries=2, retry_delay_seconds=0, on_failure=[task_failure_hook("demo", "step1", "action")])
async def failing_async_step() -> None:
    raise RuntimeError("async step1 exploded")


@flow
def sync_flow() -> None:
    failing_step()


@flow
async def async_flow() -> None:
    await failing_async_step()


@flow(on_failure=[flow_failure_hook("demo")])
def hooked_flow_with_failing_task() -> None:
    failing_step()


@flow(on_failure=[flow_failure_hook("demo")])
def failing_flow() -> None:
    raise LookupError("flow exploded")


def _assert_task_event(receiver: SentryReceiver, state: Any, message: str) -> None:
    assert state.is_failed()
    flush()
    events = receiver.events()
    assert len(events) == 1, [e["exception"]["values"][0]["value"] for e in events]
    event = events[0]
    assert _tags(event) == {
        "agent": "demo",
        "step": "step1",
        "layer": "action",
        "tenant": "acme",
        "flow_run_id": str(state.state_details.flow_run_id),
        "attempt": "3",
    }
    assert event["exception"]["values"][-1]["value"] == message


def test_task_hook_reports_once_after_the_last_retry(
    prefect_api: None, receiver: SentryReceiver
) -> None:
    with prefect.tags("tenant:acme"):
        state = sync_flow(return_state=True)
    _assert_task_event(receiver, state, "step1 exploded")


def test_task_hook_works_for_async_tasks(prefect_api: None, receiver: SentryReceiver) -> None:
    async def main() -> Any:
        with prefect.tags("tenant:acme"):
            return await async_flow(return_state=True)

    state = asyncio.run(main())
    _assert_task_event(receiver, state, "async step1 exploded")


def test_task_and_flow_hooks_report_one_failure_once(
    prefect_api: None, receiver: SentryReceiver
) -> None:
    with prefect.tags("tenant:acme"):
        state = hooked_flow_with_failing_task(return_state=True)
    _assert_task_event(receiver, state, "step1 exploded")


def test_flow_hook_reports_a_flow_failure(prefect_api: None, receiver: SentryReceiver) -> None:
    with prefect.tags("tenant:acme"):
        state = failing_flow(return_state=True)
    assert state.is_failed()
    flush()

    events = receiver.events()
    assert len(events) == 1
    assert _tags(events[0]) == {
        "agent": "demo",
        "tenant": "acme",
        "flow_run_id": str(state.state_details.flow_run_id),
        "attempt": "1",
    }
    assert _exception_types(events[0]) == ["LookupError"]


def test_hooks_never_raise(receiver: SentryReceiver) -> None:
    task_failure_hook("a", "s", "action")(None, None, None)  # type: ignore[arg-type]
    flow_failure_hook("a")(None, None, None)  # type: ignore[arg-type]


# -- receiver --------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["gzip", "deflate", ""])
def test_receiver_decodes_bodies(encoding: str) -> None:
    body = b'{"event_id":"e2"}\n{"type":"event"}\n{"message":"hi"}\n'
    compress: dict[str, Callable[[bytes], bytes]] = {
        "gzip": gzip.compress,
        "deflate": zlib.compress,
        "": bytes,
    }
    data = compress[encoding](body)
    with SentryReceiver() as rec:
        headers = {"Content-Encoding": encoding} if encoding else {}
        url = f"http://127.0.0.1:{rec.port}/api/1/envelope/"
        request = urllib.request.Request(url, data=data, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200
        store = urllib.request.Request(
            f"http://127.0.0.1:{rec.port}/api/1/store/", data=b'{"message":"legacy"}'
        )
        with urllib.request.urlopen(store, timeout=5) as response:
            assert response.status == 200
        assert [e["message"] for e in rec.wait_for(2)] == ["hi", "legacy"]
        assert rec.raw_bodies[0] == body
        rec.clear()
        assert rec.events() == [] and rec.envelopes == []
