"""The simulated audience: how many replies and likes a post gets, deterministically.

This module owns the engagement model of the simulated platform. Each account has a peak hour
and a taste for some topics; a post's replies fall off with its distance (around the clock)
from the peak hour and scale with the topic's appeal, plus a small jitter drawn from a hash of
the post's identity (never from a random generator), so a rerun sees the same numbers. Accounts
listed in `flows/data/engagement_platform.json` use their listed traits; any other account gets
traits derived from a hash of its handle.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flows.social.models import TOPICS


def _unit(*parts: object) -> int:
    """A stable non-negative integer from the parts (sha256; Python's `hash` is salted)."""
    text = "|".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def hour_distance(a: int, b: int) -> int:
    """Hours between two hours of the day, around the clock.

    Example:
        >>> hour_distance(23, 1)
        2
    """
    d = abs(a - b) % 24
    return min(d, 24 - d)


@dataclass(frozen=True)
class Audience:
    """One account's audience: when it is around and what it likes.

    Example:
        >>> Audience(peak_hour=19, topics={"recipes": 1.0}).replies(hour=19, topic="recipes",
        ...                                                          salt="x") >= 14
        True
    """

    peak_hour: int
    topics: Mapping[str, float] = field(default_factory=dict)
    base_replies: float = 14.0
    spread_hours: float = 2.5
    other_topic_appeal: float = 0.35

    def replies(self, *, hour: int, topic: str, salt: str) -> int:
        """Replies a post at `hour` about `topic` gets (salt: the post's identity, for jitter)."""
        closeness = math.exp(
            -(hour_distance(hour, self.peak_hour) ** 2) / (2 * self.spread_hours**2)
        )
        appeal = self.topics.get(topic, self.other_topic_appeal)
        jitter = _unit("replies", salt) % 3  # 0..2: enough noise to be real, too little to mislead
        return round(self.base_replies * closeness * appeal) + jitter

    def likes(self, *, replies: int, salt: str) -> int:
        """Likes follow replies, with their own jitter."""
        return replies * 3 + _unit("likes", salt) % 5

    @classmethod
    def derived(cls, account: str) -> Audience:
        """Traits for an account the config does not list, from a hash of its handle.

        Example:
            >>> Audience.derived("acct-x") == Audience.derived("acct-x")
            True
        """
        seed = _unit("audience", account)
        first, second = TOPICS[seed % len(TOPICS)], TOPICS[(seed // 7) % len(TOPICS)]
        return cls(peak_hour=seed % 24, topics={first: 1.0, second: 0.7})

    @classmethod
    def from_config(cls, account: str, config: Mapping[str, Any]) -> Audience:
        """The listed traits of `account` in a platform config, else derived ones."""
        listed = (config.get("accounts") or {}).get(account)
        if not listed:
            return cls.derived(account)
        defaults = config.get("audience") or {}
        return cls(
            peak_hour=int(listed["peak_hour"]) % 24,
            topics={str(k): float(v) for k, v in (listed.get("topics") or {}).items()},
            base_replies=float(defaults.get("base_replies", 14.0)),
            spread_hours=float(defaults.get("spread_hours", 2.5)),
            other_topic_appeal=float(defaults.get("other_topic_appeal", 0.35)),
        )
