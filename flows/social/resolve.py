"""Which platform the campaign talks to: one set in code, one configured, or a bundled one.

This module owns resolution, in this order: a platform installed with `use_platform` (tests, the
deployable flow), `STALWART_SOCIAL_PLATFORM_URL` (an `HttpPlatform`), else a bundled
`SimulatedPlatform` started once per process on loopback, so the CLI demo needs no setup (as
the bundled model server does for `llm`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from flows.social.platform import HttpPlatform, Platform
from flows.social.settings import social_settings
from flows.social.simulated import SimulatedPlatform

_lock = threading.Lock()
# A plain global, not a context variable: steps run in worker threads and in event loops that
# Prefect starts, where a context variable set by the caller is not always visible.
_installed: list[Platform] = []
_bundled: SimulatedPlatform | None = None


def bundled_platform() -> SimulatedPlatform:
    """The process's bundled simulated platform, started on first use (bundled config).

    Example:
        >>> bundled_platform().url  # doctest: +SKIP
        'http://127.0.0.1:43121'
    """
    global _bundled
    with _lock:
        if _bundled is None:
            _bundled = SimulatedPlatform(name="bundled-simulated").start()
        return _bundled


def current_platform() -> Platform:
    """The platform in force (see the module docstring for the order).

    Example:
        >>> with use_platform(HttpPlatform("http://127.0.0.1:9")):
        ...     current_platform().name
        '127-0-0-1-9'
    """
    with _lock:
        if _installed:
            return _installed[-1]
    settings = social_settings()
    if settings.platform_url:
        return HttpPlatform(settings.platform_url, name=settings.platform_name)
    return bundled_platform().adapter()


@contextmanager
def use_platform(platform: Platform) -> Iterator[Platform]:
    """Make `platform` the one in force inside the block (for every thread).

    Example:
        >>> with SimulatedPlatform() as sim, use_platform(sim.adapter()):  # doctest: +SKIP
        ...     campaign.batch(inputs, tenant="acme")
    """
    with _lock:
        _installed.append(platform)
    try:
        yield platform
    finally:
        with _lock:
            _installed.remove(platform)
