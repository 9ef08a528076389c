"""The values that cross the platform boundary: what is posted, what comes back, the limits.

This module owns the wire shapes shared by the `Platform` adapters, the simulated platform and
the engagement-campaign agent; it does no I/O.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

#: Topics the campaign may post about (the bundled model server's rules know each one).
TOPICS: tuple[str, ...] = (
    "recipes",
    "gear",
    "tips",
    "news",
    "community",
    "behind-the-scenes",
    "giveaway",
    "tutorial",
)
#: Formats of a post.
FORMATS: tuple[str, ...] = ("question", "thread", "photo", "poll")


class PostContent(BaseModel):
    """One post as the campaign wants it published.

    Example:
        >>> PostContent(hour=19, topic="recipes", format="question", text="Soup?", ref="w1").hour
        19
    """

    hour: int = Field(ge=0, le=23, description="Hour of the (simulated) day to publish at.")
    topic: str = Field(description="What the post is about.")
    format: str = Field(description="question, thread, photo or poll.")
    text: str = Field(description="The text published.")
    ref: str = Field(description="The campaign item this post is for, e.g. `launch#1`.")


class PostReceipt(BaseModel):
    """What the platform answered to a post: its id, and whether the key was seen before.

    Example:
        >>> PostReceipt(post_id="p1", account="a", idempotency_key="k", hour=9, topic="tips",
        ...             format="thread", ref="w1").duplicate
        False
    """

    post_id: str
    account: str
    idempotency_key: str
    hour: int
    topic: str
    format: str
    ref: str
    duplicate: bool = False
    """True when the key had been posted before and the platform returned that post instead."""
    attempts: int = 1
    """Requests the client needed (a 429 or a lost answer adds one)."""


class PostEngagement(BaseModel):
    """How one published post did: replies and likes.

    Example:
        >>> PostEngagement(post_id="p1", account="a", hour=9, topic="tips", format="thread",
        ...                replies=3, likes=12).replies
        3
    """

    post_id: str
    account: str
    hour: int
    topic: str
    format: str
    replies: int
    likes: int


class Limit(BaseModel):
    """A token bucket: `burst` posts at once, refilled at `per_second`.

    Example:
        >>> Limit(burst=2, per_second=0.5).min_interval
        2.0
    """

    burst: int = Field(ge=1, description="Posts allowed at once (the bucket's size).")
    per_second: float = Field(gt=0, description="Posts added back to the bucket per second.")

    @property
    def min_interval(self) -> float:
        """Seconds between two posts once the burst is spent."""
        return 1.0 / self.per_second


class RateLimits(BaseModel):
    """A platform's published limits: per account and for the whole platform.

    Example:
        >>> RateLimits().per_account.burst
        1
    """

    per_account: Limit = Field(default_factory=lambda: Limit(burst=1, per_second=0.5))
    platform: Limit = Field(default_factory=lambda: Limit(burst=4, per_second=4.0))
