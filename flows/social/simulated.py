"""`SimulatedPlatform`: a real loopback HTTP social platform for the demo and the tests.

This module owns the simulated platform: its rules (a token bucket per account and one for the
whole platform, answered with 429 + `Retry-After`; one post per idempotency key), its record of
every post request, its deterministic audience (`flows.social.engagement`) and its life cycle
(a `LoopbackServer` from `agents.testing.loopback`: uvicorn in a daemon thread on 127.0.0.1,
port 0 by default, like the bundled model server).
The campaign talks to it only through `HttpPlatform`, exactly as it would to a real network.
"""

from __future__ import annotations

import itertools
import json
import math
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from agents.testing.loopback import LoopbackServer
from flows.social.engagement import Audience
from flows.social.models import Limit, PostContent, PostEngagement, PostReceipt, RateLimits
from flows.social.platform import HttpPlatform

BUNDLED_CONFIG = Path(__file__).resolve().parent.parent / "data" / "engagement_platform.json"
Outcome = Literal["accepted", "repeat", "refused", "forced", "lost"]


@dataclass
class Bucket:
    """A token bucket on the monotonic clock.

    Example:
        >>> bucket = Bucket(Limit(burst=1, per_second=2.0))
        >>> bucket.wait(now=0.0), bucket.take(now=0.0), round(bucket.wait(now=0.0), 2)
        (0.0, None, 0.5)
    """

    limit: Limit
    tokens: float = -1.0
    stamp: float | None = None

    def _refill(self, now: float) -> None:
        if self.stamp is None or self.tokens < 0:
            self.tokens, self.stamp = float(self.limit.burst), now
            return
        self.tokens = min(
            float(self.limit.burst), self.tokens + (now - self.stamp) * self.limit.per_second
        )
        self.stamp = now

    def wait(self, now: float) -> float:
        """Seconds until one token is there (0 when one is there now)."""
        self._refill(now)
        # A hair of tolerance: float drift must not refuse a post that is exactly on time.
        return 0.0 if self.tokens >= 1.0 - 1e-6 else (1.0 - self.tokens) / self.limit.per_second

    def take(self, now: float) -> None:
        """Spend one token (call `wait` first)."""
        self._refill(now)
        self.tokens -= 1.0


@dataclass(frozen=True)
class PostRequest:
    """One `POST` the platform received, whatever became of it."""

    at: float
    account: str
    idempotency_key: str
    outcome: Outcome
    scope: str | None = None
    """For a refusal: `account` or `platform` (the bucket that was empty), `forced` for tests."""


@dataclass
class Faults:
    """Misbehaviour to inject, consumed request by request.

    Example:
        >>> Faults(refuse_next=3).refuse_next
        3
    """

    refuse_next: int = 0
    """Answer the next N post requests 429 whatever the buckets say (a burst of refusals)."""
    refuse_retry_after: float = 0.05
    """The `Retry-After` of those forced refusals, in seconds."""
    lose_next: int = 0
    """Accept the next N posts, then answer 503 as if the answer were lost on the way."""


@dataclass
class PlatformState:
    """Everything the simulated platform knows; shared by the server thread and the caller."""

    limits: RateLimits
    config: Mapping[str, Any]
    faults: Faults = field(default_factory=Faults)
    requests: list[PostRequest] = field(default_factory=list)
    posts: dict[str, tuple[PostReceipt, float]] = field(default_factory=dict)
    by_account: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _buckets: dict[str, Bucket] = field(default_factory=dict)
    _audiences: dict[str, Audience] = field(default_factory=dict)

    def audience(self, account: str) -> Audience:
        if account not in self._audiences:
            self._audiences[account] = Audience.from_config(account, self.config)
        return self._audiences[account]

    def _bucket(self, key: str, limit: Limit) -> Bucket:
        if key not in self._buckets:
            self._buckets[key] = Bucket(limit)
        return self._buckets[key]

    def submit(
        self, account: str, content: PostContent, key: str
    ) -> tuple[Outcome, PostReceipt | None, float, str | None]:
        """Apply the platform's rules to one post request; record it; say what happened.

        Returns (outcome, receipt, retry_after seconds, refused scope).
        """
        now = time.monotonic()
        with self.lock:
            if key in self.posts:
                original = self.posts[key][0]
                self.requests.append(PostRequest(now, account, key, "repeat"))
                return "repeat", original.model_copy(update={"duplicate": True}), 0.0, None
            if self.faults.refuse_next > 0:
                self.faults.refuse_next -= 1
                self.requests.append(PostRequest(now, account, key, "forced", "forced"))
                return "forced", None, self.faults.refuse_retry_after, "forced"
            mine = self._bucket(f"account:{account}", self.limits.per_account)
            everyone = self._bucket("platform", self.limits.platform)
            waits = {"account": mine.wait(now), "platform": everyone.wait(now)}
            scope, wait = max(waits.items(), key=lambda kv: kv[1])
            if wait > 0:
                self.requests.append(PostRequest(now, account, key, "refused", scope))
                return "refused", None, wait, scope
            mine.take(now)
            everyone.take(now)
            receipt = PostReceipt(
                post_id=f"p-{next(self._ids):06d}",
                account=account,
                idempotency_key=key,
                hour=content.hour,
                topic=content.topic,
                format=content.format,
                ref=content.ref,
            )
            self.posts[key] = (receipt, now)
            self.by_account[account].append(key)
            lost = self.faults.lose_next > 0
            if lost:
                self.faults.lose_next -= 1
            outcome: Outcome = "lost" if lost else "accepted"
            self.requests.append(PostRequest(now, account, key, outcome))
            return outcome, receipt, 0.0, None

    def engagement(self, account: str, limit: int) -> list[PostEngagement]:
        """The account's latest posts, newest first, with their (deterministic) engagement."""
        with self.lock:
            keys = list(self.by_account.get(account, ()))[-limit:][::-1]
            receipts = [self.posts[k][0] for k in keys]
        audience = self.audience(account)
        found = []
        for r in receipts:
            salt = f"{account}|{r.ref}|{r.hour}|{r.topic}"
            replies = audience.replies(hour=r.hour, topic=r.topic, salt=salt)
            found.append(
                PostEngagement(
                    post_id=r.post_id,
                    account=account,
                    hour=r.hour,
                    topic=r.topic,
                    format=r.format,
                    replies=replies,
                    likes=audience.likes(replies=replies, salt=salt),
                )
            )
        return found


def build_app(state: PlatformState) -> Starlette:
    """The platform's HTTP API over `state` (handlers are async: they run on one loop)."""

    async def limits(_: Request) -> JSONResponse:
        return JSONResponse(state.limits.model_dump())

    async def post(request: Request) -> JSONResponse:
        account = request.path_params["account"]
        key = request.headers.get("idempotency-key", "")
        if not key:
            return JSONResponse({"error": "an Idempotency-Key header is required"}, 400)
        try:
            content = PostContent.model_validate(await request.json())
        except (ValidationError, ValueError) as exc:
            return JSONResponse({"error": f"invalid post: {exc}"}, 422)
        outcome, receipt, wait, scope = state.submit(account, content, key)
        if outcome in ("refused", "forced"):
            headers = {
                "Retry-After": str(max(1, math.ceil(wait))),  # whole seconds, per RFC 9110
                "retry-after-ms": str(max(1, math.ceil(wait * 1000))),
            }
            return JSONResponse({"error": "rate limited", "scope": scope}, 429, headers)
        if outcome == "lost":
            return JSONResponse({"error": "upstream timeout"}, 503)
        assert receipt is not None
        return JSONResponse(receipt.model_dump(), 200 if outcome == "repeat" else 201)

    async def engagement(request: Request) -> JSONResponse:
        limit = max(1, min(int(request.query_params.get("limit", "50")), 500))
        found = state.engagement(request.path_params["account"], limit)
        return JSONResponse([e.model_dump() for e in found])

    return Starlette(
        routes=[
            Route("/limits", limits, methods=["GET"]),
            Route("/accounts/{account}/posts", post, methods=["POST"]),
            Route("/accounts/{account}/engagement", engagement, methods=["GET"]),
        ]
    )


def load_config(config: Mapping[str, Any] | str | Path | None) -> dict[str, Any]:
    """A platform config from a mapping, a JSON file, or None (the bundled one).

    Example:
        >>> sorted(load_config(None))
        ['accounts', 'audience', 'description', 'limits']
    """
    if config is None:
        config = BUNDLED_CONFIG
    if isinstance(config, str | Path):
        return dict(json.loads(Path(config).read_text(encoding="utf-8")))
    return dict(config)


class SimulatedPlatform(LoopbackServer):
    """The simulated social platform, served on loopback from a background thread.

    Its life cycle (`start`, `stop`, `url`, `port`, use as `with`) is `LoopbackServer`'s.

    Attributes:
        state: The live state: `state.faults` to inject 429 bursts or lost answers,
            `state.requests` and `state.posts` for what it received and accepted.

    Example:
        >>> with SimulatedPlatform(limits=RateLimits()) as platform:  # doctest: +SKIP
        ...     adapter = platform.adapter()  # an HttpPlatform on platform.url
        ...     platform.state.faults.refuse_next = 5
    """

    def __init__(
        self,
        *,
        limits: RateLimits | None = None,
        config: Mapping[str, Any] | str | Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        name: str | None = None,
    ) -> None:
        loaded = load_config(config)
        limits = limits or RateLimits.model_validate(loaded.get("limits") or {})
        self.state = PlatformState(limits=limits, config=loaded)
        self._name = name
        super().__init__(
            lambda: build_app(self.state),
            host=host,
            port=port,
            label="The simulated platform",
            thread_name="simulated-platform",
        )

    def __repr__(self) -> str:
        return f"SimulatedPlatform({self.host}:{self.port})"

    @property
    def name(self) -> str:
        """The platform's name in Prefect limit names: `simulated-<port>` unless given."""
        return self._name or f"simulated-{self.port}"

    def adapter(self) -> HttpPlatform:
        """An `HttpPlatform` talking to this server (limits read from `GET /limits`)."""
        return HttpPlatform(self.url, name=self.name)

    # -- what it saw -------------------------------------------------------------------------

    def outcomes(self) -> Counter[str]:
        """Post requests by outcome: accepted, repeat, refused, forced, lost."""
        with self.state.lock:
            return Counter(r.outcome for r in self.state.requests)

    def refusals(self) -> Counter[str]:
        """Requests refused by an empty bucket, by scope (`account`, `platform`)."""
        with self.state.lock:
            return Counter(r.scope or "" for r in self.state.requests if r.outcome == "refused")

    def accepted(self) -> list[tuple[PostReceipt, float]]:
        """Every accepted post with its monotonic acceptance time, in order."""
        with self.state.lock:
            return sorted(self.state.posts.values(), key=lambda item: item[1])

    def peak(self, window: float, *, account: str | None = None) -> int:
        """Most posts accepted in any `window` seconds (for one account, or all of them)."""
        times = [t for r, t in self.accepted() if account is None or r.account == account]
        best, start = 0, 0
        for end, t in enumerate(times):
            while t - times[start] > window:
                start += 1
            best = max(best, end - start + 1)
        return best
