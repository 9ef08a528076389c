"""Governed reasoning against a misbehaving provider: retries, fatal refusals, bad output, the
circuit breaker (in-process and in `circuit_state`), the fallback model and the LLM cache.

Everything goes through real HTTP to the bundled `ModelServer`; nothing in the openai client or
instructor is mocked. Waits are kept short through settings. Tests that touch the breaker table
or the cache run on SQLite and PostgreSQL; the PostgreSQL database is shared by the session, so
each test uses its own model names (the breaker and cache keys contain them).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from pydantic import BaseModel
from sqlmodel import select

from agents import LLM, UserError
from agents.modelserver import ModelServer
from agents.policy import (
    ModelOutputError,
    ProviderRejected,
    ProviderUnavailable,
    breaker_key,
    breaker_state,
    is_retryable_by_step,
    reset_breakers,
)
from agents.resources.llm import LLMCall
from agents.settings import reload_settings
from agents.store.engine import dispose_engines, session
from agents.store.tables import CircuitState, LLMCacheEntry
from tests.support.models import Routing

PLANTED_KEY = "sk-test-" + "Q7" * 16  # 32 characters after the prefix
_ENV = (
    "STALWART_MODEL_URL",
    "STALWART_API_KEY",
    "STALWART_MODEL",
    "STALWART_FALLBACK_MODEL",
    "STALWART_MODEL_TIMEOUT_SECONDS",
    "STALWART_MODEL_MAX_ATTEMPTS",
    "STALWART_MODEL_MAX_REASKS",
    "STALWART_MODEL_RETRY_BASE_SECONDS",
    "STALWART_MODEL_RETRY_MAX_WAIT_SECONDS",
    "STALWART_MODEL_OUTPUT_RETRIES",
    "STALWART_BREAKER_FAILURE_THRESHOLD",
    "STALWART_BREAKER_RESET_SECONDS",
)


class Summary(BaseModel):
    title: str
    words: int


@dataclass
class Provider:
    """The model server plus the names this test uses (unique: PostgreSQL is shared)."""

    server: ModelServer
    model: str
    fallback: str
    monkeypatch: pytest.MonkeyPatch

    def configure(self, **settings: object) -> None:
        """Set STALWART_<NAME> variables and reload the settings."""
        for name, value in settings.items():
            env = f"STALWART_{name.upper()}"
            assert env in _ENV, env
            self.monkeypatch.setenv(env, str(value))
        reload_settings()

    def requests_to(self, model: str) -> int:
        return int(self.server.stats.snapshot()["requests_by_model"].get(model, 0))

    @property
    def requests(self) -> int:
        return int(self.server.stats.snapshot()["requests_total"])

    def key(self, model: str | None = None) -> str:
        return breaker_key(self.server.url, model or self.model)


@pytest.fixture
def provider(monkeypatch: pytest.MonkeyPatch) -> Iterator[Provider]:
    """A model server configured as the endpoint, with short waits and a planted API key."""
    reset_breakers()
    suffix = uuid.uuid4().hex[:10]
    with ModelServer(port=0) as server:
        monkeypatch.setenv("STALWART_MODEL_URL", server.url)
        monkeypatch.setenv("STALWART_API_KEY", PLANTED_KEY)
        p = Provider(server, f"primary-{suffix}", f"fallback-{suffix}", monkeypatch)
        p.configure(
            model=p.model,
            model_timeout_seconds=5,
            model_retry_base_seconds=0.02,
            model_retry_max_wait_seconds=0.2,
        )
        server.faults.update(retry_after_s=0.05, timeout_sleep_s=2)
        yield p
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)
    reload_settings()
    reset_breakers()


def assert_no_key(exc: BaseException) -> None:
    for text in (str(exc), repr(exc)):
        assert PLANTED_KEY not in text
        assert PLANTED_KEY[8:] not in text


def last_call(llm: LLM) -> LLMCall:
    assert llm.calls, "no call was recorded"
    return llm.calls[-1]


# -- transient failures: retried inside the LLM, with backoff -------------------------------------


def test_a_429_waits_for_retry_after_then_succeeds(sqlite_url: str, provider: Provider) -> None:
    provider.server.faults.update(fail_next=["429"], retry_after_s=0.15)
    llm = LLM(cache=False)
    started = time.perf_counter()
    routing = llm.decide(Routing, "I was charged twice")
    elapsed = time.perf_counter() - started
    assert routing.category == "billing"
    assert provider.requests == 2
    assert elapsed >= 0.15  # retry-after-ms: 150 (Retry-After: 1 is capped at 0.2 s anyway)
    call = last_call(llm)
    assert call.attempts == 2 and call.error_class == "RateLimitError"
    assert call.model == provider.model and call.path_model == "primary" and not call.cached


def test_a_long_retry_after_is_capped(sqlite_url: str, provider: Provider) -> None:
    provider.server.faults.update(fail_next=["429"], retry_after_s=20)
    started = time.perf_counter()
    LLM(cache=False).decide(Routing, "my parcel is late")
    assert time.perf_counter() - started < 5  # waited the 0.2 s cap, not 20 s
    assert provider.requests == 2


def test_two_500s_then_success(sqlite_url: str, provider: Provider) -> None:
    provider.server.faults.update(fail_next=["500", "500"])
    llm = LLM(cache=False)
    assert llm.decide(Routing, "my parcel never arrived").category == "shipping"
    assert provider.requests == 3
    assert last_call(llm).attempts == 3
    assert last_call(llm).error_class == "InternalServerError"


def test_a_timeout_then_success(sqlite_url: str, provider: Provider) -> None:
    provider.configure(model_timeout_seconds=0.3)
    provider.server.faults.update(fail_next=["timeout"], timeout_sleep_s=3)
    llm = LLM(cache=False)
    started = time.perf_counter()
    llm.decide(Routing, "the app crashes on login")
    assert time.perf_counter() - started < 2.5
    assert provider.requests == 2
    assert last_call(llm).error_class == "APITimeoutError"


def test_a_dropped_connection_then_success(sqlite_url: str, provider: Provider) -> None:
    provider.server.faults.update(fail_next=["drop"])
    llm = LLM(cache=False)
    llm.decide(Routing, "reset my password")
    assert provider.requests == 2
    assert last_call(llm).error_class == "APIConnectionError"


def test_persistent_500s_give_provider_unavailable_after_max_attempts(
    sqlite_url: str, provider: Provider
) -> None:
    provider.configure(model_max_attempts=3)
    provider.server.faults.update(status_code=500)
    llm = LLM(cache=False)
    with pytest.raises(ProviderUnavailable) as caught:
        llm.decide(Routing, "anything")
    assert provider.requests == 3
    exc = caught.value
    assert exc.attempts == 3 and exc.status_code == 500 and not exc.breaker_open
    assert provider.model in str(exc) and "configured" in str(exc) and "127.0.0.1" in str(exc)
    assert_no_key(exc)
    assert isinstance(exc.__cause__, Exception)
    assert not isinstance(exc, UserError)
    assert not is_retryable_by_step(exc)  # already retried: retries live in one layer
    assert llm.calls == []


# -- fatal refusals: one request, a clear UserError ---------------------------------------------


@pytest.mark.parametrize("status", ["400", "401"])
def test_a_fatal_status_is_rejected_after_exactly_one_request(
    sqlite_url: str, provider: Provider, status: str
) -> None:
    provider.server.faults.update(fail_next=[status])
    with pytest.raises(ProviderRejected) as caught:
        LLM().decide(Routing, "I was charged twice")
    exc = caught.value
    assert provider.requests == 1
    assert isinstance(exc, UserError) and not is_retryable_by_step(exc)
    assert exc.status_code == int(status) and exc.model == provider.model
    text = str(exc)
    assert provider.model in text and f"HTTP {status}" in text and "127.0.0.1" in text
    assert_no_key(exc)
    time.sleep(0.1)
    assert provider.requests == 1  # nothing retried it in the background either


def test_a_fatal_refusal_does_not_trip_the_breaker(state_db: str, provider: Provider) -> None:
    provider.configure(breaker_failure_threshold=1)
    provider.server.faults.update(fail_next=["401"])
    with pytest.raises(ProviderRejected):
        LLM().decide(Routing, "hello")
    assert breaker_state(provider.key()) == "closed"


# -- bad output: re-asked by instructor, then once more afresh, then ModelOutputError -------------


@pytest.mark.parametrize("fault", ["malformed", "schema_invalid"])
def test_bad_output_is_reasked_then_succeeds(
    sqlite_url: str, provider: Provider, fault: str
) -> None:
    provider.server.faults.update(fail_next=[fault])
    llm = LLM(cache=False)
    assert llm.decide(Routing, "my parcel never arrived").category == "shipping"
    assert provider.requests == 2
    call = last_call(llm)
    assert call.attempts == 2 and call.error_class == "ValidationError"


def test_output_that_never_validates_raises_model_output_error(
    sqlite_url: str, provider: Provider
) -> None:
    provider.configure(model_max_reasks=1, model_output_retries=1, breaker_failure_threshold=1)
    provider.server.faults.update(status_code=None, error_rate=1.0, error_kinds=["malformed"])
    with pytest.raises(ModelOutputError) as caught:
        LLM(cache=False).decide(Routing, "hello")
    assert provider.requests == 4  # (1 + 1 re-ask) x (1 + 1 fresh attempt)
    exc = caught.value
    assert exc.attempts == 4 and "Routing" in str(exc) and provider.model in str(exc)
    assert_no_key(exc)
    assert not isinstance(exc, UserError) and not is_retryable_by_step(exc)
    assert breaker_state(provider.key(), sync=False) == "closed"  # the endpoint is up


# -- recording ----------------------------------------------------------------------------------


def test_a_call_is_recorded_with_digest_raw_output_and_usage(
    sqlite_url: str, provider: Provider
) -> None:
    calls: list[LLMCall] = []
    llm = LLM(calls=calls, cache=False)
    routing = llm.decide(Routing, "refund please", system="You route tickets.")
    assert calls is llm.calls and len(calls) == 1
    call = calls[0]
    assert re.fullmatch(r"[0-9a-f]{64}", call.prompt_digest)
    assert call.raw_output is not None
    assert Routing.model_validate(json.loads(call.raw_output)).model_dump() == routing.model_dump()
    assert call.endpoint == "configured" and call.model == provider.model
    assert call.output_type == "Routing" and call.attempts == 1 and call.error_class is None
    assert call.tokens_in > 0 and call.tokens_out > 0 and call.latency_ms > 0
    assert call.logprobs is None and not call.cached and call.path_model == "primary"
    llm.decide(Routing, "refund please", system="You route tickets.")
    assert calls[1].prompt_digest == call.prompt_digest
    llm.decide(Routing, "refund please!", system="You route tickets.")
    assert calls[2].prompt_digest != call.prompt_digest


# -- circuit breaker ----------------------------------------------------------------------------


def read_circuit(key: str) -> CircuitState | None:
    dispose_engines()  # a new connection, as another process would have
    with session() as s:
        return s.get(CircuitState, key)


def test_the_breaker_opens_routes_to_the_fallback_and_closes_after_a_probe(
    state_db: str, provider: Provider
) -> None:
    provider.configure(
        fallback_model=provider.fallback,
        model_max_attempts=1,
        breaker_failure_threshold=3,
        breaker_reset_seconds=2,
    )
    llm = LLM(cache=False)
    provider.server.faults.update(fail_next=["500"] * 3)
    for _ in range(3):
        with pytest.raises(ProviderUnavailable):
            llm.decide(Routing, "my parcel is late")
    assert breaker_state(provider.key()) == "open"
    assert provider.requests_to(provider.model) == 3

    # While open: the fallback model answers; the primary gets nothing.
    for _ in range(3):
        assert llm.decide(Routing, "my parcel is late").category == "shipping"
        assert last_call(llm).path_model == "fallback"
        assert last_call(llm).model == provider.fallback
    assert provider.requests_to(provider.model) == 3
    assert provider.requests_to(provider.fallback) == 3

    # Other workers see it: the row, read through a new connection ...
    row = read_circuit(provider.key())
    assert row is not None and row.state == "open" and row.failures == 3
    assert row.opened_at is not None and "HTTP 500" in (row.last_error or "")
    assert PLANTED_KEY not in (row.last_error or "")
    # ... and a fresh process (no in-process state) honours it without asking the primary.
    reset_breakers()
    assert breaker_state(provider.key()) == "open"
    fresh = LLM(cache=False)
    fresh.decide(Routing, "my parcel is late")
    assert last_call(fresh).path_model == "fallback"
    assert provider.requests_to(provider.model) == 3

    # After the reset time one probe goes to the primary; its success closes the breaker.
    time.sleep(max(0.0, row.opened_at.timestamp() + 2 - time.time()) + 0.1)
    fresh.decide(Routing, "my parcel is late")
    assert last_call(fresh).path_model == "primary"
    assert provider.requests_to(provider.model) == 4
    assert breaker_state(provider.key(), sync=False) == "closed"
    row = read_circuit(provider.key())
    assert row is not None and row.state == "closed" and row.failures == 0


def test_the_breaker_trips_mid_call_and_the_fallback_answers(
    state_db: str, provider: Provider
) -> None:
    provider.configure(fallback_model=provider.fallback, breaker_failure_threshold=2)
    provider.server.faults.update(fail_next=["503", "503"])
    llm = LLM(cache=False)
    assert llm.decide(Routing, "refund please").category == "billing"
    call = last_call(llm)
    assert call.path_model == "fallback" and call.model == provider.fallback
    assert call.attempts == 3 and call.error_class == "InternalServerError"
    assert provider.requests_to(provider.model) == 2
    assert provider.requests_to(provider.fallback) == 1


def test_an_open_breaker_without_fallback_fails_fast_and_a_failed_probe_reopens_it(
    state_db: str, provider: Provider
) -> None:
    provider.configure(model_max_attempts=2, breaker_failure_threshold=2, breaker_reset_seconds=1)
    provider.server.faults.update(fail_next=["500", "500"])
    llm = LLM(cache=False)
    with pytest.raises(ProviderUnavailable):
        llm.decide(Routing, "hello")
    assert provider.requests == 2 and breaker_state(provider.key()) == "open"

    with pytest.raises(ProviderUnavailable) as caught:
        llm.decide(Routing, "hello")
    assert caught.value.breaker_open and caught.value.attempts == 0
    assert provider.model in str(caught.value) and "circuit breaker" in str(caught.value)
    assert_no_key(caught.value)
    assert provider.requests == 2  # refused without a request

    time.sleep(1.1)
    provider.server.faults.update(fail_next=["500"])
    with pytest.raises(ProviderUnavailable) as probe_failed:
        llm.decide(Routing, "hello")
    # The probe failed: open again at once, so the retry was refused without a request.
    assert probe_failed.value.breaker_open
    assert provider.requests == 3
    row = read_circuit(provider.key())
    assert row is not None and row.state == "open"


def test_a_half_open_breaker_lets_exactly_one_probe_through(
    state_db: str, provider: Provider
) -> None:
    provider.configure(model_max_attempts=1, breaker_failure_threshold=1, breaker_reset_seconds=1)
    provider.server.faults.update(fail_next=["500"])
    with pytest.raises(ProviderUnavailable):
        LLM(cache=False).decide(Routing, "hello")
    time.sleep(1.1)
    provider.server.faults.update(latency_ms=400)  # the probe is slow: the others arrive meanwhile
    outcomes: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        try:
            LLM(cache=False).decide(Routing, "hello")
            result = "ok"
        except ProviderUnavailable as exc:
            result = "refused" if exc.breaker_open else "failed"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(outcomes) == ["ok"] + ["refused"] * 5
    assert provider.requests == 2  # the first failure and the one probe
    assert breaker_state(provider.key(), sync=False) == "closed"


def test_async_decide_goes_to_the_fallback_while_the_breaker_is_open(
    state_db: str, provider: Provider
) -> None:
    provider.configure(
        fallback_model=provider.fallback, model_max_attempts=1, breaker_failure_threshold=1
    )
    provider.server.faults.update(fail_next=["429"], retry_after_s=0)

    async def scenario() -> tuple[BaseException | None, list[Routing]]:
        llm = LLM(cache=False)
        try:
            await llm.adecide(Routing, "my parcel is late")
            first: BaseException | None = None
        except ProviderUnavailable as exc:
            first = exc
        answers = await asyncio.gather(
            *(llm.adecide(Routing, f"my parcel is late ({i})") for i in range(3))
        )
        return first, list(answers)

    first, answers = asyncio.run(scenario())
    assert isinstance(first, ProviderUnavailable)
    assert [a.category for a in answers] == ["shipping"] * 3
    assert provider.requests_to(provider.model) == 1
    assert provider.requests_to(provider.fallback) == 3


# -- the LLM answer cache -----------------------------------------------------------------------


def test_the_same_question_is_answered_once(state_db: str, provider: Provider) -> None:
    llm = LLM(tenant=f"acme-{uuid.uuid4().hex[:6]}")
    first = llm.decide(Summary, "Summarise: the cache works")
    second = llm.decide(Summary, "Summarise: the cache works")
    assert second.model_dump() == first.model_dump() and isinstance(second, Summary)
    assert provider.requests == 1
    miss, hit = llm.calls
    assert not miss.cached and hit.cached and hit.attempts == 0
    assert (hit.tokens_in, hit.tokens_out) == (0, 0) and miss.tokens_in > 0
    assert hit.raw_output == miss.raw_output and hit.prompt_digest == miss.prompt_digest
    assert hit.model == provider.model and hit.path_model == "primary"


def test_the_cache_is_per_tenant_and_can_be_turned_off(state_db: str, provider: Provider) -> None:
    tag = uuid.uuid4().hex[:6]
    prompt = "Summarise: tenants never share answers"
    LLM(tenant=f"a-{tag}").decide(Summary, prompt)
    LLM(tenant=f"b-{tag}").decide(Summary, prompt)
    assert provider.requests == 2

    LLM(tenant=f"a-{tag}").decide(Summary, prompt, cache=False)
    assert provider.requests == 3
    off = LLM(tenant=f"a-{tag}", cache=False)
    off.decide(Summary, prompt)
    assert provider.requests == 4 and not off.calls[-1].cached

    LLM(tenant=f"a-{tag}").decide(Summary, prompt)  # still cached for the default handle
    assert provider.requests == 4
    LLM(tenant=f"a-{tag}").decide(Routing, prompt)  # another output type: another question
    LLM(tenant=f"a-{tag}").decide(Summary, prompt, temperature=0.5)  # other params: too
    assert provider.requests == 6


def test_the_cache_lives_in_the_database(state_db: str, provider: Provider) -> None:
    tenant = f"durable-{uuid.uuid4().hex[:6]}"
    LLM(tenant=tenant).decide(Summary, "Summarise: restarts")
    reset_breakers()
    dispose_engines()  # a fresh process: nothing in memory
    again = LLM(tenant=tenant)
    again.decide(Summary, "Summarise: restarts")
    assert provider.requests == 1 and again.calls[-1].cached
    with session() as s:
        rows = s.exec(select(LLMCacheEntry).where(LLMCacheEntry.tenant == tenant)).all()
    assert len(rows) == 1
    row = rows[0]
    assert row.hits == 1 and row.model == provider.model
    assert row.response["usage"]["tokens_in"] > 0
    assert Summary.model_validate(row.response["output"])
    assert PLANTED_KEY not in json.dumps(row.response) + row.endpoint


def test_async_decide_uses_the_cache(state_db: str, provider: Provider) -> None:
    tenant = f"async-{uuid.uuid4().hex[:6]}"

    async def twice() -> list[Summary]:
        llm = LLM(tenant=tenant)
        return [await llm.adecide(Summary, "Summarise: async") for _ in range(2)]

    first, second = asyncio.run(twice())
    assert first.model_dump() == second.model_dump() and provider.requests == 1


def test_a_cached_answer_needs_no_provider(state_db: str, provider: Provider) -> None:
    tenant = f"outage-{uuid.uuid4().hex[:6]}"
    LLM(tenant=tenant).decide(Summary, "Summarise: outage")
    provider.server.faults.update(status_code=503)
    assert LLM(tenant=tenant).decide(Summary, "Summarise: outage").title
    assert provider.requests == 1
