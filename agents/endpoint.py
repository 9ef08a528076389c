"""Endpoint resolution: which OpenAI-compatible model endpoint a model call goes to.

This module owns `Endpoint` (where and how to call a model; the key is a secret) and
`resolve_endpoint`, which picks the endpoint in force: the `STALWART_MODEL_BLOCK` block (an
`agents.blocks.ModelEndpoint`), else `STALWART_MODEL_URL` and its companion settings, else the
offline model server named with `use_offline_server` (`agents.resources.llm` names the bundled
one, `agents.modelserver`, started in-process on first use). It imports configuration only.

Example:
    >>> from agents.settings import temporary_settings
    >>> with temporary_settings(model_url="http://127.0.0.1:8089/v1", model="m"):
    ...     resolve_endpoint()
    Endpoint(name='configured', base_url='http://127.0.0.1:8089/v1', model='m')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from pydantic import SecretStr

from agents.errors import ConfigurationError
from agents.settings import get_current_settings

__all__ = ["Endpoint", "OfflineServer", "resolve_endpoint", "use_offline_server"]


@dataclass(frozen=True, kw_only=True)
class Endpoint:
    """Where and how to call a model. The key is a secret and never appears in reprs.

    Attributes:
        base_url: The OpenAI-compatible base URL (ending in `/v1`).
        model: The model asked by default.
        api_key: Bearer key (None: a placeholder is sent).
        mode: instructor mode: function tools or a JSON object.
        timeout: Per-request timeout in seconds.
        max_reasks: instructor re-asks after a validation failure.
        name: A short name used in records and messages ("configured", "bundled", ...).
        fallback_model: Model asked instead while `model`'s circuit breaker is open.

    Example:
        >>> Endpoint(base_url="http://127.0.0.1:8089/v1", model="m", api_key=SecretStr("sk-x"))
        Endpoint(name='default', base_url='http://127.0.0.1:8089/v1', model='m')
    """

    base_url: str
    model: str
    api_key: SecretStr | None = None
    mode: Literal["tools", "json"] = "tools"
    timeout: float = 60.0
    max_reasks: int = 2
    name: str = "default"
    fallback_model: str | None = None

    @property
    def host(self) -> str:
        """`host[:port]` of the base URL, without credentials.

        Example:
            >>> Endpoint(base_url="https://u:p@api.example.com/v1", model="m").host
            'api.example.com'
        """
        parts = urlsplit(self.base_url)
        host = parts.hostname or "?"
        return f"{host}:{parts.port}" if parts.port else host

    def __repr__(self) -> str:
        return f"Endpoint(name={self.name!r}, base_url={self.base_url!r}, model={self.model!r})"


OfflineServer = Callable[[], str]
"""Starts (once) the offline model server used when no endpoint is configured; returns its URL."""

_offline_server: OfflineServer | None = None


def use_offline_server(start: OfflineServer) -> None:
    """Name what `resolve_endpoint` starts when neither a block nor `STALWART_MODEL_URL` is set.

    `agents.resources.llm` names the bundled model server (`bundled_model_url`) when it is
    imported, so every model call has an endpoint with no configuration at all.

    Args:
        start: Returns the base URL of the offline server, starting it on the first call.

    Example:
        >>> use_offline_server(lambda: "http://127.0.0.1:8089/v1")  # doctest: +SKIP
    """
    global _offline_server
    _offline_server = start


def _offline_url() -> str:
    start = _offline_server
    if start is None:
        raise ConfigurationError(
            "No model endpoint is configured: set STALWART_MODEL_URL or STALWART_MODEL_BLOCK "
            "(the bundled offline model server starts by itself once agents.resources.llm is "
            "imported)."
        )
    return start()


def resolve_endpoint(model: str | None = None) -> Endpoint:
    """The endpoint in force: the `STALWART_MODEL_BLOCK` block, `STALWART_MODEL_URL`, or the
    offline model server (the bundled one, see `use_offline_server`).

    With `STALWART_MODEL_BLOCK=<name>` the saved `agents.blocks.ModelEndpoint` of that name
    (loaded once per process) gives the URL, models, key and timeout (the instructor mode and
    re-asks still come from settings); its name is recorded as the endpoint's (`block:<name>`).

    Args:
        model: Ask this model instead of `STALWART_MODEL` (or the block's model).

    Raises:
        ConfigurationError: `STALWART_MODEL_BLOCK` names a block that cannot be loaded, or no
            endpoint is configured and no offline server is named.

    Example:
        >>> resolve_endpoint().model  # doctest: +SKIP
        'stalwart-test'
    """
    settings = get_current_settings()
    if settings.model_block:
        # Imported here: Prefect's block machinery is needed only when a block is named.
        from agents.blocks import model_block

        block = model_block()
        assert block is not None
        return Endpoint(
            base_url=block.base_url,
            model=model or block.model,
            api_key=block.api_key,
            mode=settings.model_mode,
            timeout=block.timeout_seconds,
            max_reasks=settings.model_max_reasks,
            name=f"block:{settings.model_block}",
            fallback_model=block.fallback_model,
        )
    base_url = settings.model_url or _offline_url()
    return Endpoint(
        base_url=base_url,
        model=model or settings.model,
        api_key=settings.api_key,
        mode=settings.model_mode,
        timeout=settings.model_timeout_seconds,
        max_reasks=settings.model_max_reasks,
        name="configured" if settings.model_url else "bundled",
        fallback_model=settings.fallback_model,
    )
