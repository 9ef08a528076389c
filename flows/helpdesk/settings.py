"""Settings of the helpdesk adapter, read from `STALWART_HELPDESK_*` environment variables.

It follows `agents.settings`: one pydantic-settings class, read through `helpdesk_settings()`,
so nothing else reads the environment.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class HelpdeskSettings(BaseSettings):
    """Where ticket-triage's actions go.

    Example:
        >>> HelpdeskSettings(url=None).timeout_seconds
        10.0
    """

    model_config = SettingsConfigDict(env_prefix="STALWART_HELPDESK_", extra="ignore")

    url: str | None = Field(
        default=None,
        description="Base URL of the helpdesk API (STALWART_HELPDESK_URL); none keeps actions "
        "in process.",
    )
    timeout_seconds: float = Field(default=10.0, gt=0, description="Per-request timeout.")


def helpdesk_settings() -> HelpdeskSettings:
    """The settings in force (read on each call: cheap, and tests can change the environment).

    Example:
        >>> helpdesk_settings().timeout_seconds > 0
        True
    """
    return HelpdeskSettings()
