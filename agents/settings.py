"""Settings: the one place Stalwart reads its environment.

Every knob is a field of `Settings`, read from environment variables once and cached. Code calls
`get_current_settings()`; tests override with `temporary_settings(...)`.

Example:
    >>> from agents.settings import temporary_settings, get_current_settings
    >>> with temporary_settings(model="gpt-4o-mini"):
    ...     get_current_settings().model
    'gpt-4o-mini'
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import platformdirs
from pydantic import AliasChoices, BeforeValidator, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from agents.durations import parse_timedelta

DEFAULT_MODEL = "stalwart-test"


def default_data_dir() -> Path:
    """The per-user data directory where the default SQLite database lives."""
    return Path(platformdirs.user_data_dir("stalwart", appauthor=False))


class Settings(BaseSettings):
    """Stalwart's configuration, one field per knob, each overridable by environment variable."""

    model_config = SettingsConfigDict(env_prefix="STALWART_", extra="ignore", frozen=True)

    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="Where the default SQLite database and quarantine files live.",
    )
    database_url: SecretStr | None = Field(
        default=None,
        description="SQLAlchemy URL of the state database (STALWART_DATABASE_URL). "
        "Default: an SQLite file in `data_dir`. PostgreSQL: postgresql+psycopg://user@host/db.",
    )
    model_url: str | None = Field(
        default=None,
        description="Base URL of an OpenAI-compatible endpoint (STALWART_MODEL_URL). "
        "Unset: the bundled offline model server is started in-process.",
    )
    model: str = Field(default=DEFAULT_MODEL, description="Model name sent to the endpoint.")
    fallback_model: str | None = Field(default=None, description="Model tried when one fails.")
    api_key: SecretStr | None = Field(default=None, description="Bearer key for the endpoint.")
    model_mode: Literal["tools", "json"] = Field(
        default="tools", description="instructor mode: function tools or a JSON object."
    )
    model_timeout_seconds: float = Field(default=60.0, gt=0, description="Per-request timeout.")
    model_max_reasks: int = Field(
        default=2, ge=0, description="Re-asks after a validation failure of the model's output."
    )
    model_max_attempts: int = Field(
        default=4,
        ge=1,
        description="HTTP attempts per `decide` on transient errors (429, 5xx, timeouts, "
        "dropped connections) before ProviderUnavailable. Retries live in the LLM layer only.",
    )
    model_retry_base_seconds: float = Field(
        default=0.5,
        ge=0,
        description="Backoff base: wait ~ uniform(0, base * 2**(attempt-1)) (full jitter).",
    )
    model_retry_max_wait_seconds: float = Field(
        default=30.0,
        ge=0,
        description="Longest wait between two attempts, Retry-After headers included.",
    )
    model_output_retries: int = Field(
        default=1,
        ge=0,
        description="Fresh attempts after instructor's re-asks still gave invalid output, "
        "before ModelOutputError.",
    )
    breaker_failure_threshold: int = Field(
        # 20, not 5: at 30% transient faults (retried to success) five failures in a row
        # happen a few times per thousand requests, and each opens the breaker for every call
        # of every worker; 0.3^20 never happens, while a real outage fails 20 requests within a
        # second or two (docs/measurements.md, circuit breaker).
        default=20,
        ge=1,
        description="Consecutive transient failures that open an endpoint's circuit breaker.",
    )
    breaker_reset_seconds: float = Field(
        default=30.0,
        ge=0,
        description="How long an open circuit breaker refuses requests before one probe.",
    )
    llm_cache_enabled: bool = Field(
        default=True,
        description="Cache model answers in the state database (llm_cache); "
        "`LLM(cache=False)` or `decide(..., cache=False)` turn it off locally.",
    )
    sentry_dsn: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("SENTRY_DSN", "STALWART_SENTRY_DSN"),
        description="Sentry DSN (SENTRY_DSN). Unset: failures are not reported.",
    )
    sentry_environment: str = Field(default="production", description="Sentry environment tag.")
    sentry_traces_sample_rate: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Share of agent runs traced to Sentry (STALWART_SENTRY_TRACES_SAMPLE_RATE): "
        "a sampled run sends one transaction with its steps, model calls and tool calls, in the "
        "shape of Sentry's AI Agents insights; decided per run, never per span. 0 (the "
        "default): no tracing. A Sentry block's `traces_sample_rate` replaces it.",
    )
    otlp_endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP endpoint (STALWART_OTLP_ENDPOINT, e.g. http://collector:4318) that "
        "receives the same run spans with OpenTelemetry GenAI attributes. Unset (the default): "
        "no export, and the OpenTelemetry SDK is never imported. The standard OTEL_* variables "
        "(headers, timeout, compression, service name, resource, traces sampler) apply.",
    )
    trace_content: bool = Field(
        default=False,
        description="Record prompts, model outputs and tool arguments and results on traced "
        "spans (STALWART_TRACE_CONTENT), scrubbed of secrets like everything else. Off by "
        "default: spans carry names, counts, tokens, costs and timings only.",
    )
    max_input_bytes: int = Field(
        default=1_000_000, gt=0, description="Largest accepted JSON line in `stalwart run`."
    )
    result_storage_block: str = Field(
        default="stalwart", description="Name under which the SQL result storage block is saved."
    )
    model_prices: dict[str, tuple[float, float]] = Field(
        default_factory=dict,
        description="USD per 1k tokens (in, out) per model name; env STALWART_MODEL_PRICES as JSON",
    )
    model_block: str | None = Field(
        default=None,
        description="Name of a saved model-endpoint block; its values replace the STALWART_MODEL_* "
        "variables. Unset: the environment (or the bundled offline server).",
    )
    database_block: str | None = Field(
        default=None,
        description="Name of a saved state-database block; its URL replaces STALWART_DATABASE_URL.",
    )
    sentry_block: str | None = Field(
        default=None,
        description="Name of a saved Sentry block; its DSN, environment and sample rates replace "
        "SENTRY_DSN and STALWART_SENTRY_ENVIRONMENT.",
    )
    monitor: Literal["deployments", "always", "off"] = Field(
        default="deployments",
        description="When a batch ends with a quality check (drift detector) and a summary "
        "artifact: in flow runs of deployments (scheduled or triggered), always, or never.",
    )
    task_state_logs: Literal["off", "local", "api"] = Field(
        default="off",
        description="The INFO line per completed step ('Finished in state Completed()', one "
        "per task run): `off` (not logged: the UI shows each task run's state), `local` "
        "(console and log files of this process) or `api` as well (one log row per step on "
        "the Prefect server). A step that fails is logged at ERROR whatever this says.",
    )
    task_running_after_seconds: float = Field(
        default=1.0,
        ge=0,
        description="How long a step runs before its task run is recorded Running: a step that "
        "ends sooner is recorded with its final state alone (start and end times included), "
        "and no step records Pending, which saves the Prefect server two of a step's three "
        "events. 0 records every state, as Prefect's own engine does.",
    )
    max_concurrency: int = Field(
        default=64,
        ge=1,
        description="Agent runs in flight at once in this process, across all batches and tenants.",
    )
    tenant_concurrency: int | None = Field(
        default=None,
        ge=1,
        description="A hard cap on one tenant's agent runs in flight in this process. Unset (the "
        "default): none; a tenant alone gets every slot its batch asks for, and tenants that "
        "compete for max_concurrency share it equally.",
    )
    action_lease_seconds: float = Field(
        default=15.0,
        gt=0,
        description="How long an action's claim holds its idempotency key: renewed every third "
        "of it while the action runs. Another execution that finds the key claimed stops with "
        "ActionInProgress while the lease is alive, and takes the action over (in doubt, same "
        "key) once it has expired (the holder crashed).",
    )
    database_pool_size: int = Field(
        default=10,
        ge=1,
        description="PostgreSQL connections each process keeps open to the state database.",
    )
    database_max_overflow: int = Field(
        default=20,
        ge=0,
        description="Extra PostgreSQL connections a process may open at a peak (closed after use). "
        "Count pool size plus overflow, times the processes (one per flow run), against the "
        "server's max_connections: past it, PostgreSQL refuses connections.",
    )
    database_retry_seconds: float = Field(
        default=30.0,
        ge=0,
        description="How long a store operation retries, with backoff, after losing its database "
        "connection (a PostgreSQL restart or failover); 0 turns these retries off.",
    )
    tenant_limits: dict[str, int] = Field(
        default_factory=dict,
        description="Hard caps for some tenants, replacing tenant_concurrency for them "
        "(STALWART_TENANT_LIMITS, JSON).",
    )
    retention: Annotated[timedelta, BeforeValidator(parse_timedelta)] = Field(
        default=timedelta(days=90),
        gt=timedelta(0),
        description="How long runs, steps, decisions, step results, completed actions and cached "
        "model answers are kept (STALWART_RETENTION, e.g. 90d, 12w): the maintenance "
        "deployment's nightly prune deletes what is older.",
    )

    def resolved_database_url(self) -> str:
        """The database URL in force (a secret: never log it; see `agents.store.redact_url`)."""
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        return f"sqlite:///{self.data_dir / 'stalwart.db'}"


_override: contextvars.ContextVar[Settings | None] = contextvars.ContextVar(
    "stalwart_settings", default=None
)
_cached: Settings | None = None


def get_current_settings() -> Settings:
    """The settings in force: a `temporary_settings` override, else the environment (cached)."""
    global _cached
    current = _override.get()
    if current is not None:
        return current
    if _cached is None:
        _cached = Settings()
    return _cached


def reload_settings() -> Settings:
    """Read the environment again (after a test or the CLI changed it)."""
    global _cached
    _cached = Settings()
    return _cached


@contextlib.contextmanager
def temporary_settings(**updates: Any) -> Iterator[Settings]:
    """Override settings inside a `with` block (and the threads and tasks it starts).

    Example:
        >>> with temporary_settings(database_url="sqlite://"):
        ...     get_current_settings().resolved_database_url()
        'sqlite://'
    """
    base = get_current_settings()
    data = base.model_dump()
    for key, value in updates.items():
        if key in {"database_url", "api_key", "sentry_dsn"} and isinstance(value, str):
            value = SecretStr(value)
        data[key] = value
    settings = Settings.model_validate(data)
    token = _override.set(settings)
    try:
        yield settings
    finally:
        _override.reset(token)
