"""Blocks: Stalwart's configuration saved in Prefect, loaded by name at run time.

This module owns three Prefect blocks and the per-process cache that loads them:

* `ModelEndpoint` — an OpenAI-compatible endpoint: base URL, model, fallback model, API key,
  prices per 1k tokens and timeout (`STALWART_MODEL_BLOCK=<name>`);
* `StateDatabase` — the state database URL (`STALWART_DATABASE_BLOCK=<name>`);
* `SentryConfig` — the Sentry DSN, environment and sample rates (`STALWART_SENTRY_BLOCK=<name>`).

Register them with `PYTHONPATH=. prefect block register -m blocks`. When a block name is set,
`agents.endpoint.resolve_endpoint`, `agents.pricing.cost_of`, `agents.store.engine` and
`agents.observe.init_sentry` load that block (once per process) and its values replace the
matching environment variables; when it is unset they read the environment. What the
environment variables mean stays in `agents.settings`; how each value is used stays with its
consumer. A block hands back plain values; it builds no runtime object.

Every credential is a `SecretStr`: Prefect stores it as a secret field and shows `********`, reprs
hide it, and the values of loaded blocks are scrubbed from Sentry events, logs and artifacts
(`loaded_secrets`, a secret source of `agents.redact`).

Example:
    >>> from pydantic import SecretStr
    >>> block = ModelEndpoint(base_url="http://127.0.0.1:8089/v1", model="m",
    ...                       api_key=SecretStr("sk-x"), price_in_per_1k=0.5)
    >>> block.api_key, block.prices()
    (SecretStr('**********'), {'m': (0.5, 0.0)})
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, TypeVar, cast
from urllib.parse import unquote, urlsplit

from prefect.blocks.core import Block
from pydantic import Field, SecretStr
from sqlalchemy.engine import make_url

from agents.errors import ConfigurationError
from agents.redact import add_secret_source
from agents.settings import DEFAULT_MODEL, get_current_settings

__all__ = [
    "ModelEndpoint",
    "SentryConfig",
    "SentryOptions",
    "StateDatabase",
    "database_block",
    "forget_loaded_blocks",
    "load_block",
    "loaded_secrets",
    "model_block",
    "sentry_block",
]

_DOCS_URL = "https://github.com/stalwart-agents/stalwart#blocks"
_LOGO_URL = "https://raw.githubusercontent.com/PrefectHQ/prefect/main/docs/images/logo.png"


class ModelEndpoint(Block):
    """An OpenAI-compatible model endpoint for Stalwart reasoning steps.

    Saved once, selected by name with `STALWART_MODEL_BLOCK=<name>`; its values then replace
    `STALWART_MODEL_URL`, `STALWART_MODEL`, `STALWART_FALLBACK_MODEL`, `STALWART_API_KEY`,
    `STALWART_MODEL_TIMEOUT_SECONDS`, and its prices replace the `STALWART_MODEL_PRICES` entry of
    its model.

    Attributes:
        base_url: The OpenAI-compatible base URL (ending in `/v1`).
        model: The model asked by default.
        fallback_model: The model asked while `model`'s circuit breaker is open.
        api_key: The bearer key (a secret).
        price_in_per_1k: USD per 1,000 prompt tokens of `model` (None: from STALWART_MODEL_PRICES).
        price_out_per_1k: USD per 1,000 completion tokens of `model`.
        timeout_seconds: Per-request timeout.

    Example:
        >>> from pydantic import SecretStr
        >>> ModelEndpoint(base_url="https://api.openai.com/v1", model="gpt-4o-mini",
        ...               api_key=SecretStr("sk-..."), price_in_per_1k=0.00015,
        ...               price_out_per_1k=0.0006)  # then .save("prod")  # doctest: +ELLIPSIS
        ModelEndpoint(base_url='https://api.openai.com/v1', model='gpt-4o-mini', ...)
    """

    _block_type_name = "Stalwart Model Endpoint"
    _block_type_slug = "stalwart-model-endpoint"
    _description = "An OpenAI-compatible model endpoint (URL, models, key, prices) for Stalwart."
    _logo_url = _LOGO_URL  # type: ignore[assignment]
    _documentation_url = _DOCS_URL  # type: ignore[assignment]

    base_url: str = Field(
        title="Base URL", description="OpenAI-compatible base URL, e.g. https://api.openai.com/v1."
    )
    model: str = Field(default=DEFAULT_MODEL, title="Model", description="Model asked by default.")
    fallback_model: str | None = Field(
        default=None,
        title="Fallback model",
        description="Model asked while the primary model's circuit breaker is open.",
    )
    api_key: SecretStr | None = Field(
        default=None, title="API key", description="Sent as the bearer token."
    )
    price_in_per_1k: float | None = Field(
        default=None,
        ge=0,
        title="Price in (USD / 1k tokens)",
        description="Cost of 1,000 prompt tokens of the model; empty: STALWART_MODEL_PRICES.",
    )
    price_out_per_1k: float | None = Field(
        default=None,
        ge=0,
        title="Price out (USD / 1k tokens)",
        description="Cost of 1,000 completion tokens of the model; empty: STALWART_MODEL_PRICES.",
    )
    timeout_seconds: float = Field(
        default=60.0, gt=0, title="Timeout (s)", description="Per-request timeout."
    )

    def prices(self) -> dict[str, tuple[float, float]]:
        """USD per 1k tokens `(in, out)` of the block's model; empty when it sets no price.

        Example:
            >>> ModelEndpoint(base_url="http://h/v1", model="m", price_in_per_1k=0.5).prices()
            {'m': (0.5, 0.0)}
        """
        if self.price_in_per_1k is None and self.price_out_per_1k is None:
            return {}
        return {self.model: (self.price_in_per_1k or 0.0, self.price_out_per_1k or 0.0)}


class StateDatabase(Block):
    """Stalwart's state database (SQLite or PostgreSQL), its URL kept as a secret.

    Selected with `STALWART_DATABASE_BLOCK=<name>`; its URL then replaces
    `STALWART_DATABASE_URL`.

    Attributes:
        database_url: SQLAlchemy URL, password included (a secret).

    Example:
        >>> from pydantic import SecretStr
        >>> db = StateDatabase(database_url=SecretStr("postgresql+psycopg://app:pw@db/stalwart"))
        >>> db.url()  # then db.save("prod")
        'postgresql+psycopg://app:pw@db/stalwart'
    """

    _block_type_name = "Stalwart State Database"
    _block_type_slug = "stalwart-state-database"
    _description = "The SQL database (SQLite or PostgreSQL) where Stalwart keeps its state."
    _logo_url = _LOGO_URL  # type: ignore[assignment]
    _documentation_url = _DOCS_URL  # type: ignore[assignment]

    database_url: SecretStr = Field(
        title="Database URL",
        description="SQLAlchemy URL, e.g. postgresql+psycopg://user:password@host:5432/stalwart.",
    )

    def url(self) -> str:
        """The database URL in clear (a secret: log `agents.store.redact_url(url)` instead).

        Example:
            >>> StateDatabase(database_url=SecretStr("sqlite://")).url()
            'sqlite://'
        """
        return self.database_url.get_secret_value()


@dataclass(frozen=True)
class SentryOptions:
    """What `init_sentry` needs from a `SentryConfig` block.

    Example:
        >>> SentryOptions(dsn="https://k@o.ingest.sentry.io/1", environment="prod").sample_rate
        1.0
    """

    dsn: str
    """The DSN in clear (a secret)."""
    environment: str
    """The Sentry environment tag."""
    sample_rate: float = 1.0
    """Share of error events sent."""
    traces_sample_rate: float = 0.0
    """Share of transactions traced."""

    def __repr__(self) -> str:  # the DSN carries the project key
        return f"SentryOptions(environment={self.environment!r}, sample_rate={self.sample_rate})"


class SentryConfig(Block):
    """Where Stalwart reports failures: a Sentry DSN (a secret), environment and sample rates.

    Selected with `STALWART_SENTRY_BLOCK=<name>`; its values then replace `SENTRY_DSN` and
    `STALWART_SENTRY_ENVIRONMENT`.

    Attributes:
        dsn: The project DSN (its key is a secret).
        environment: The Sentry environment tag.
        sample_rate: Share of error events sent (1.0: all).
        traces_sample_rate: Share of agent runs traced (0.0: no tracing).

    Example:
        >>> from pydantic import SecretStr
        >>> SentryConfig(dsn=SecretStr("https://key@o1.ingest.sentry.io/42"),
        ...              environment="staging").options().environment  # then .save("staging")
        'staging'
    """

    _block_type_name = "Stalwart Sentry"
    _block_type_slug = "stalwart-sentry"
    _description = "Sentry reporting for Stalwart agents: DSN, environment and sample rates."
    _logo_url = _LOGO_URL  # type: ignore[assignment]
    _documentation_url = _DOCS_URL  # type: ignore[assignment]

    dsn: SecretStr = Field(title="DSN", description="The Sentry project DSN.")
    environment: str = Field(
        default="production", title="Environment", description="Sentry environment tag."
    )
    sample_rate: float = Field(
        default=1.0, ge=0, le=1, title="Sample rate", description="Share of error events sent."
    )
    traces_sample_rate: float = Field(
        default=0.0,
        ge=0,
        le=1,
        title="Traces sample rate",
        description="Share of agent runs traced, each a whole transaction of its steps, model "
        "and tool calls (0: no tracing; replaces STALWART_SENTRY_TRACES_SAMPLE_RATE).",
    )

    def options(self) -> SentryOptions:
        """The values `init_sentry` uses, the DSN in clear.

        Example:
            >>> SentryConfig(dsn=SecretStr("https://k@h/1")).options().traces_sample_rate
            0.0
        """
        return SentryOptions(
            dsn=self.dsn.get_secret_value(),
            environment=self.environment,
            sample_rate=self.sample_rate,
            traces_sample_rate=self.traces_sample_rate,
        )


# -- loading by name, once per process ------------------------------------------------------------

B = TypeVar("B", bound=Block)

_lock = threading.Lock()
_loaded: dict[tuple[str, str], Block] = {}

_SETTING_OF: dict[str, str] = {
    "stalwart-model-endpoint": "STALWART_MODEL_BLOCK",
    "stalwart-state-database": "STALWART_DATABASE_BLOCK",
    "stalwart-sentry": "STALWART_SENTRY_BLOCK",
}


def load_block(cls: type[B], name: str) -> B:
    """Load a saved block by name, once per process (later calls return the same object).

    Works from sync code, worker threads and inside a running event loop alike: the load uses
    Prefect's synchronous client (one blocking request, the first time only).

    Args:
        cls: The block class, e.g. `ModelEndpoint`.
        name: The block document's name.

    Raises:
        ConfigurationError: No such block is saved, or the Prefect API cannot be reached.

    Example:
        >>> load_block(ModelEndpoint, "prod").model  # doctest: +SKIP
        'gpt-4o-mini'
    """
    slug = cls.get_block_type_slug()
    key = (slug, name)
    block = _loaded.get(key)
    if block is not None:
        return cast(B, block)
    with _lock:
        block = _loaded.get(key)
        if block is None:
            block = _load(cls, name)
            _loaded[key] = block
    return cast(B, block)


def _load(cls: type[B], name: str) -> B:
    setting = _SETTING_OF.get(cls.get_block_type_slug(), "the block name setting")
    type_name = cls.get_block_type_name()
    try:
        # `_sync=True`: the synchronous client, whether or not an event loop runs here.
        return cast(B, cast(Any, cls).load(name, _sync=True))
    except ValueError as exc:
        if "Unable to find block document" not in str(exc):
            raise ConfigurationError(
                f"The {type_name} block {name!r} ({setting}) cannot be loaded: "
                f"{type(exc).__name__}. Save it again with this version of Stalwart."
            ) from None
        raise ConfigurationError(
            f"No {type_name} block named {name!r} is saved in Prefect ({setting}={name}). "
            f"Save one (`{cls.__name__}(...).save({name!r})`, after `prefect block register -m "
            f"blocks`), or unset {setting} to use the environment variables."
        ) from None
    except Exception as exc:  # the API is down or the block type is not registered
        # Only the class name: a message could quote the request, and the request a secret.
        raise ConfigurationError(
            f"The {type_name} block {name!r} ({setting}) cannot be loaded from the Prefect API "
            f"({type(exc).__name__}). Check PREFECT_API_URL, run `prefect block register -m "
            f"blocks`, or unset {setting}."
        ) from None


def model_block() -> ModelEndpoint | None:
    """The `ModelEndpoint` named by `STALWART_MODEL_BLOCK`, or None when it is unset.

    Example:
        >>> model_block() is None  # STALWART_MODEL_BLOCK unset
        True
    """
    name = get_current_settings().model_block
    return load_block(ModelEndpoint, name) if name else None


def database_block() -> StateDatabase | None:
    """The `StateDatabase` named by `STALWART_DATABASE_BLOCK`, or None when it is unset.

    Example:
        >>> database_block() is None  # STALWART_DATABASE_BLOCK unset
        True
    """
    name = get_current_settings().database_block
    return load_block(StateDatabase, name) if name else None


def sentry_block() -> SentryConfig | None:
    """The `SentryConfig` named by `STALWART_SENTRY_BLOCK`, or None when it is unset.

    Example:
        >>> sentry_block() is None  # STALWART_SENTRY_BLOCK unset
        True
    """
    name = get_current_settings().sentry_block
    return load_block(SentryConfig, name) if name else None


def loaded_secrets() -> tuple[str, ...]:
    """The secret values of the blocks loaded so far: API keys, database passwords, DSNs.

    Never loads anything (the scrubber calls it on every log line and event).

    Example:
        >>> isinstance(loaded_secrets(), tuple)
        True
    """
    found: list[str] = []
    for block in list(_loaded.values()):
        if isinstance(block, ModelEndpoint) and block.api_key is not None:
            found.append(block.api_key.get_secret_value())
        elif isinstance(block, StateDatabase):
            found.extend(_url_password(block.url()))
        elif isinstance(block, SentryConfig):
            dsn = block.dsn.get_secret_value()
            found.append(dsn)
            found.extend(_dsn_keys(dsn))
    return tuple(secret for secret in found if secret)


add_secret_source(loaded_secrets)


def _url_password(url: str) -> tuple[str, ...]:
    try:
        password = make_url(url).password
    except Exception:  # not a URL SQLAlchemy parses: the engine will say so
        return ()
    if not password:
        return ()
    return (str(password), unquote(str(password)))


def _dsn_keys(dsn: str) -> tuple[str, ...]:
    """The public (and legacy secret) key of a DSN: a quoted key alone is still a secret."""
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return ()
    return tuple(key for key in (parts.username, parts.password) if key)


def forget_loaded_blocks() -> None:
    """Drop the loaded blocks: the next use loads them again (tests, or after re-saving one).

    Example:
        >>> forget_loaded_blocks()
    """
    with _lock:
        _loaded.clear()
