"""Settings of the social adapters, read from `STALWART_SOCIAL_*` environment variables.

This module owns the knobs of `flows.social` (which platform, how hard to retry, whether to pace
posts through Prefect). It follows `agents.settings`: one pydantic-settings class, read through
`social_settings()`, so nothing else reads the environment.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class SocialSettings(BaseSettings):
    """Where the platform is and how posting behaves.

    Example:
        >>> SocialSettings(platform_url=None).max_attempts
        6
    """

    model_config = SettingsConfigDict(env_prefix="STALWART_SOCIAL_", extra="ignore")

    platform_url: str | None = Field(
        default=None,
        description="Base URL of the platform API; none starts the bundled simulated platform.",
    )
    platform_name: str | None = Field(
        default=None, description="Name used in the Prefect rate limits (default: host-port)."
    )
    prefect_limits: bool = Field(
        default=True,
        description="Pace posts with Prefect global rate limits per account and per platform.",
    )
    max_attempts: int = Field(
        default=6, ge=1, le=50, description="Requests per post at most (429s and lost answers)."
    )
    max_wait_seconds: float = Field(
        default=10.0, gt=0, description="Longest `Retry-After` honoured in one wait."
    )
    acquire_timeout_seconds: float = Field(
        default=120.0, gt=0, description="Longest wait for a Prefect rate-limit slot."
    )


def social_settings() -> SocialSettings:
    """The settings in force (read on each call: cheap, and tests can change the environment).

    Example:
        >>> social_settings().prefect_limits in (True, False)
        True
    """
    return SocialSettings()
