"""Social platforms for the engagement-campaign agent: an adapter interface and a simulated one.

Example:
    >>> from flows.social import SimulatedPlatform, use_platform
    >>> with SimulatedPlatform() as platform, use_platform(platform.adapter()):  # doctest: +SKIP
    ...     campaign.batch(inputs, tenant="acme")

`Platform` is the interface (implement it for a real network), `HttpPlatform` its HTTP adapter,
`SimulatedPlatform` a loopback server with rate limits (429 + `Retry-After`), idempotency keys,
a record of every post and a deterministic audience.
"""

from flows.social.limits import ensure_limits, limit_names, post_within_limits
from flows.social.models import (
    FORMATS,
    TOPICS,
    Limit,
    PostContent,
    PostEngagement,
    PostReceipt,
    RateLimits,
)
from flows.social.platform import HttpPlatform, Platform, PlatformError, RateLimited
from flows.social.resolve import bundled_platform, current_platform, use_platform
from flows.social.settings import SocialSettings, social_settings
from flows.social.simulated import SimulatedPlatform

__all__ = (
    "FORMATS",
    "TOPICS",
    "HttpPlatform",
    "Limit",
    "Platform",
    "PlatformError",
    "PostContent",
    "PostEngagement",
    "PostReceipt",
    "RateLimited",
    "RateLimits",
    "SimulatedPlatform",
    "SocialSettings",
    "bundled_platform",
    "current_platform",
    "ensure_limits",
    "limit_names",
    "post_within_limits",
    "social_settings",
    "use_platform",
)
