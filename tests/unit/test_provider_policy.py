"""The provider-failure policy, unit by unit: status classification, Retry-After headers,
full-jitter backoff, the step retry predicate, credential-free breaker keys and the settings'
defaults. Against the bundled model server: tests/integration/test_provider_failures.py."""

from __future__ import annotations

import httpx
import openai
import pytest

from agents import UserError
from agents.policy import (
    ModelOutputError,
    ProviderRejected,
    ProviderUnavailable,
    breaker_key,
    classify,
    is_retryable_by_step,
    retry_after_seconds,
    retry_wait_seconds,
)
from agents.settings import get_current_settings

PLANTED_KEY = "sk-test-" + "Q7" * 16  # 32 characters after the prefix


_REQUEST = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")


def status_error(status: int, headers: dict[str, str] | None = None) -> openai.APIStatusError:
    response = httpx.Response(status, request=_REQUEST, headers=headers or {})
    return openai.APIStatusError(f"HTTP {status}", response=response, body=None)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (408, "transient"),
        (409, "transient"),
        (429, "transient"),
        (500, "transient"),
        (503, "transient"),
        (400, "fatal"),
        (401, "fatal"),
        (403, "fatal"),
        (404, "fatal"),
        (422, "fatal"),
    ],
)
def test_status_classification(status: int, kind: str) -> None:
    assert classify(status_error(status)) == kind


def test_connection_errors_are_transient_and_others_unknown() -> None:
    assert classify(openai.APITimeoutError(_REQUEST)) == "transient"
    assert classify(openai.APIConnectionError(request=_REQUEST)) == "transient"
    assert classify(RuntimeError("a bug in a step")) == "unknown"


def test_retry_after_headers() -> None:
    assert retry_after_seconds(status_error(429, {"Retry-After": "3"})) == 3.0
    both = {"Retry-After": "1", "retry-after-ms": "250"}
    assert retry_after_seconds(status_error(429, both)) == 0.25
    date = {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}
    assert retry_after_seconds(status_error(429, date), now=1445412470.0) == 10.0
    assert retry_after_seconds(status_error(429, {"Retry-After": "soon"})) is None
    assert retry_after_seconds(status_error(500)) is None


def test_backoff_is_full_jitter_and_capped() -> None:
    waits = [retry_wait_seconds(3, base=0.5, cap=30.0) for _ in range(200)]
    assert all(0.0 <= w <= 2.0 for w in waits) and max(waits) > 1.0
    assert retry_wait_seconds(20, base=0.5, cap=1.5) <= 1.5
    assert retry_wait_seconds(1, base=0.5, cap=1.5, retry_after=9.0) == 1.5


def test_step_retry_predicate() -> None:
    assert not is_retryable_by_step(ProviderRejected("401"))
    assert not is_retryable_by_step(ProviderUnavailable("down"))
    assert not is_retryable_by_step(ModelOutputError("bad json"))
    assert not is_retryable_by_step(UserError("mistake"))
    assert is_retryable_by_step(ConnectionError("a flaky action"))


def test_breaker_keys_hold_no_credentials() -> None:
    key = breaker_key(f"https://bob:{PLANTED_KEY}@api.example.com/v1/?api_key=x", "gpt")
    assert key == "https://api.example.com/v1#gpt"
    long_key = breaker_key("http://127.0.0.1:1/v1", "m" * 400)
    assert len(long_key) <= 300
    assert long_key != breaker_key("http://127.0.0.1:1/v1", "m" * 401)


def test_settings_defaults() -> None:
    settings = get_current_settings()
    assert settings.model_max_attempts == 4
    assert settings.breaker_failure_threshold == 20
    assert settings.breaker_reset_seconds == 30
    assert settings.model_retry_max_wait_seconds == 30
    assert settings.llm_cache_enabled


def test_a_breaker_is_quiet_only_while_closed_and_freshly_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`is_quiet` says when an async model call may route and report on its event loop: only
    while the breaker is closed and its row was read within the sync interval, so neither
    `allow()` nor a success touches the database. Any other state sends it to a thread."""
    from agents.policy import breaker as breakers
    from agents.settings import temporary_settings

    breakers.reset_breakers()
    breaker = breakers.get_breaker("http://127.0.0.1:9/v1#quiet-test")
    with temporary_settings(database_url="sqlite://", breaker_failure_threshold=1):
        assert not breaker.is_quiet()  # its row was never read
        permit = breaker.allow()
        assert permit is not None and breaker.is_quiet()
        with monkeypatch.context() as patched:
            patched.setattr(breakers, "DB_SYNC_INTERVAL_S", 0.0)
            assert not breaker.is_quiet()  # due for a read
        assert breaker.is_quiet()
        permit.failure("HTTP 503")  # opens at the threshold of 1
        assert breaker.state == "open" and not breaker.is_quiet()
    breakers.reset_breakers()


def test_of_many_callers_due_for_a_breaker_read_one_reads_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Calls that arrive together when the row is due for a read (a batch's model calls come
    back in waves) must not each hop to a thread to read it: one claims the read, the others
    go on with the state in memory until the next interval."""
    from agents.policy import breaker as breakers
    from agents.settings import temporary_settings

    breakers.reset_breakers()
    breaker = breakers.get_breaker("http://127.0.0.1:9/v1#claim-test")
    reads: list[bool] = []
    real_session = breakers.session
    monkeypatch.setattr(breakers, "session", lambda *a, **k: reads.append(True) or real_session())
    with temporary_settings(database_url="sqlite://"):
        assert breaker.claim_sync()
        breaker.sync(force=True)
        claims = [breaker.claim_sync() for _ in range(20)]
        assert claims == [False] * 20 and breaker.is_quiet()
        for _ in range(20):
            breaker.sync()  # within the interval: no read
        assert len(reads) == 1
        with monkeypatch.context() as patched:
            patched.setattr(breakers, "DB_SYNC_INTERVAL_S", 0.0)
            assert breaker.claim_sync()  # due again: claimed by one
    breakers.reset_breakers()
