"""The `Platform` interface the campaign talks to, and `HttpPlatform`, its HTTP adapter.

This module owns the adapter contract (publish with an idempotency key, read engagement, read
the published limits) and how HTTP answers map onto it: 429 becomes `RateLimited` carrying the
server's `Retry-After`. Pacing and retrying live in `flows.social.limits`; the simulated server
lives in `flows.social.simulated`.
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import httpx

from flows.social.models import PostContent, PostEngagement, PostReceipt, RateLimits


class PlatformError(Exception):
    """The platform refused or failed a request for another reason than a rate limit."""


class RateLimited(PlatformError):
    """The platform answered 429; `retry_after` says how long it asked us to wait (seconds).

    Example:
        >>> RateLimited(0.25, scope="account").retry_after
        0.25
    """

    def __init__(self, retry_after: float, *, scope: str = "unknown") -> None:
        super().__init__(f"rate limited ({scope}); retry after {retry_after:.3f} s")
        self.retry_after = retry_after
        self.scope = scope


@runtime_checkable
class Platform(Protocol):
    """A social platform as the campaign sees it. Implement it for a real network.

    Example:
        >>> async def publish(platform: Platform) -> PostReceipt:  # doctest: +SKIP
        ...     content = PostContent(hour=9, topic="tips", format="thread", text="…", ref="w1")
        ...     return await platform.post("acct-01", content, idempotency_key="k-1")
    """

    @property
    def name(self) -> str:
        """A stable name; the Prefect rate limits are named after it."""
        ...

    async def limits(self) -> RateLimits:
        """The platform's published limits, per account and platform-wide."""
        ...

    async def post(
        self, account: str, content: PostContent, *, idempotency_key: str
    ) -> PostReceipt:
        """Publish once per key: a repeated key returns the original post (`duplicate`).

        Raises:
            RateLimited: the platform answered 429.
            PlatformError: any other refusal.
        """
        ...

    async def engagement(self, account: str, *, limit: int = 50) -> list[PostEngagement]:
        """The account's latest posts with their replies and likes, newest first."""
        ...


def retry_after_seconds(response: httpx.Response, default: float = 1.0) -> float:
    """How long a 429 asks us to wait: `retry-after-ms` when present, else `Retry-After`.

    Example:
        >>> retry_after_seconds(httpx.Response(429, headers={"Retry-After": "2"}))
        2.0
    """
    precise = response.headers.get("retry-after-ms")
    coarse = response.headers.get("retry-after")
    for value, scale in ((precise, 1000.0), (coarse, 1.0)):
        if value is None:
            continue
        try:
            seconds = float(value) / scale
        except ValueError:
            continue  # an HTTP date: rare from APIs; fall back to the default
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
    return default


class HttpPlatform:
    """The `Platform` adapter for an HTTP API shaped like the simulated platform's.

    Each call opens its own short-lived client, so one adapter is safe across event loops
    (the CLI, a Prefect flow and tests each run their own).

    Example:
        >>> platform = HttpPlatform("http://127.0.0.1:8700")  # doctest: +SKIP
        >>> await platform.engagement("acct-01")  # doctest: +SKIP
        [PostEngagement(post_id='p-000001', ...)]
    """

    def __init__(
        self,
        base_url: str,
        *,
        name: str | None = None,
        limits: RateLimits | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._name = name
        self._limits = limits
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"HttpPlatform({self.base_url!r})"

    @property
    def name(self) -> str:
        """The given name, else `host-port` of the base URL (safe in a limit name)."""
        if self._name is None:
            url = httpx.URL(self.base_url)
            self._name = f"{url.host}-{url.port or 80}".replace(".", "-").replace(":", "-")
        return self._name

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, timeout=self.timeout)

    async def limits(self) -> RateLimits:
        """The configured limits, else the server's `GET /limits`."""
        if self._limits is None:
            async with self._client() as client:
                response = await client.get("/limits")
                response.raise_for_status()
                self._limits = RateLimits.model_validate(response.json())
        return self._limits

    async def post(
        self, account: str, content: PostContent, *, idempotency_key: str
    ) -> PostReceipt:
        """`POST /accounts/{account}/posts` with an `Idempotency-Key` header."""
        async with self._client() as client:
            try:
                response = await client.post(
                    f"/accounts/{account}/posts",
                    json=content.model_dump(),
                    headers={"Idempotency-Key": idempotency_key},
                )
            except httpx.TransportError as exc:
                # The post may or may not have landed; the caller retries with the same key.
                raise PlatformError(f"no answer from {self.base_url}: {exc!r}") from exc
        if response.status_code == 429:
            scope = response.json().get("scope", "unknown") if response.content else "unknown"
            raise RateLimited(retry_after_seconds(response), scope=scope)
        if response.status_code >= 400:
            raise PlatformError(f"POST {account}: HTTP {response.status_code} {response.text}")
        return PostReceipt.model_validate(response.json())

    async def engagement(self, account: str, *, limit: int = 50) -> list[PostEngagement]:
        """`GET /accounts/{account}/engagement?limit=N`."""
        async with self._client() as client:
            response = await client.get(f"/accounts/{account}/engagement", params={"limit": limit})
        if response.status_code >= 400:
            raise PlatformError(f"engagement {account}: HTTP {response.status_code}")
        return [PostEngagement.model_validate(item) for item in response.json()]
