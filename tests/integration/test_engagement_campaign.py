"""engagement-campaign: dozens of accounts, rate limits, one post per key, learning, tenants.

Every test talks to a real `SimulatedPlatform` on loopback and the bundled model server.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import httpx
import pytest

from agents import Memory
from flows.engagement_campaign import (
    AccountState,
    PostPlan,
    campaign,
    engagement_campaign_flow,
    load_accounts,
    wave_inputs,
)
from flows.social import (
    HttpPlatform,
    Limit,
    PostContent,
    RateLimited,
    RateLimits,
    SimulatedPlatform,
    use_platform,
)

pytestmark = pytest.mark.usefixtures("prefect_api", "sqlite_url", "model_server")

LIMITS = RateLimits(
    per_account=Limit(burst=1, per_second=1.0), platform=Limit(burst=4, per_second=12.0)
)


def _one_post_per_item(platform: SimulatedPlatform) -> Counter[tuple[str, str]]:
    return Counter((receipt.account, receipt.ref) for receipt, _ in platform.accepted())


def test_platform_answers_429_with_retry_after_and_keeps_one_post_per_key() -> None:
    limits = RateLimits(per_account=Limit(burst=1, per_second=2.0))
    content = PostContent(hour=9, topic="tips", format="thread", text="hi", ref="t#1")
    with SimulatedPlatform(limits=limits) as platform:
        adapter = platform.adapter()
        first = asyncio.run(adapter.post("a", content, idempotency_key="k1"))
        again = asyncio.run(adapter.post("a", content, idempotency_key="k1"))
        with pytest.raises(RateLimited) as refused:
            asyncio.run(adapter.post("a", content, idempotency_key="k2"))
        raw = httpx.post(
            f"{platform.url}/accounts/a/posts",
            json=content.model_dump(),
            headers={"Idempotency-Key": "k3"},
        )
    assert (first.duplicate, again.duplicate, again.post_id) == (False, True, first.post_id)
    assert 0 < refused.value.retry_after <= 0.5 and refused.value.scope == "account"
    assert raw.status_code == 429 and raw.headers["Retry-After"] == "1"
    assert platform.outcomes() == {"accepted": 1, "repeat": 1, "refused": 2}


def test_campaign_over_24_accounts_stays_inside_the_limits_and_a_rerun_posts_nothing() -> None:
    accounts = load_accounts()[:24]
    inputs = wave_inputs(accounts, "launch", 1)
    with SimulatedPlatform(limits=LIMITS) as platform, use_platform(platform.adapter()):
        started = time.monotonic()
        results = campaign.batch(inputs, tenant="acme", concurrency=16)
        first_run_s = time.monotonic() - started
        rerun = campaign.batch(inputs, tenant="acme", concurrency=16)

    assert [r.status for r in results] == ["completed"] * 24, {r.error for r in results}
    assert all(r.steps["publish"] == "cached" for r in rerun)
    posts = _one_post_per_item(platform)
    assert len(posts) == 24 and set(posts.values()) == {1}
    outcomes = platform.outcomes()
    # The rerun sent nothing: no request repeated an accepted key.
    assert outcomes["accepted"] == 24 and outcomes["repeat"] == 0
    # Prefect's rate limits, set to the platform's, kept the platform from refusing anything.
    assert sum(platform.refusals().values()) == 0, platform.refusals()
    assert platform.peak(1.0) <= LIMITS.platform.burst + LIMITS.platform.per_second
    assert max(platform.peak(0.99, account=a["handle"]) for a in accounts) == 1
    # 24 posts at 12/s after a burst of 4 need at least 20/12 s.
    times = [t for _, t in platform.accepted()]
    assert times[-1] - times[0] >= (24 - 4) / 12.0 * 0.95, first_run_s


def test_429_bursts_and_lost_answers_never_make_a_second_post() -> None:
    accounts = load_accounts()[:6]
    with SimulatedPlatform(limits=LIMITS) as platform, use_platform(platform.adapter()):
        platform.state.faults.refuse_next = 5  # the next 5 requests: 429, Retry-After 50 ms
        platform.state.faults.lose_next = 2  # then 2 posts land but their answer is lost
        results = campaign.batch(wave_inputs(accounts, "burst", 1), tenant="acme")
        rerun = campaign.batch(wave_inputs(accounts, "burst", 1), tenant="acme")
    assert [r.status for r in results] == ["completed"] * 6, {r.error for r in results}
    assert [r.steps["publish"] for r in rerun] == ["cached"] * 6
    outcomes = platform.outcomes()
    assert outcomes["forced"] == 5 and outcomes["lost"] == 2
    # Each lost answer was asked again with the same key and got the original post back.
    assert outcomes["repeat"] == 2
    assert set(_one_post_per_item(platform).values()) == {1}
    assert len(platform.state.posts) == 6
    receipts = [r.outputs["publish"] for r in results]
    assert sum(r.attempts for r in receipts) == 6 + 5 + 2
    assert sum(r.duplicate for r in receipts) == 2


def _history(best_hour: int) -> list[dict[str, Any]]:
    """Posts at three hours (the best gets most replies) on each of the account's topics."""
    posts = []
    for n, (hour, replies) in enumerate(((8, 2), (14, 3), (best_hour, 11))):
        posts.append(
            {
                "post_id": f"old-{n}",
                "hour": hour,
                "topic": "recipes",
                "replies": replies,
                "likes": 3 * replies,
            }
        )
    posts += [
        {"post_id": "old-g", "hour": best_hour, "topic": "gear", "replies": 6, "likes": 18},
        {
            "post_id": "old-b",
            "hour": best_hour,
            "topic": "behind-the-scenes",
            "replies": 13,
            "likes": 40,
        },
    ]
    return posts


def test_history_in_memory_steers_the_next_post_and_tenants_stay_apart() -> None:
    account = load_accounts()[0]  # coffee-01: topics recipes, gear, behind-the-scenes
    handle = account["handle"]
    Memory("acme", campaign.name, handle).set("posts", _history(best_hour=20))
    with SimulatedPlatform(limits=LIMITS) as platform, use_platform(platform.adapter()):
        informed = campaign.run(
            tenant="acme", subject=handle, account=account, campaign="spring", wave=7
        )
        fresh = campaign.run(
            tenant="globex", subject=handle, account=account, campaign="spring", wave=7
        )

    seen: AccountState = informed.outputs["account_state"]
    plan: PostPlan = informed.outputs["plan"]
    assert (seen.mode, plan.hour, plan.topic, plan.format) == (
        "exploit",
        20,
        "behind-the-scenes",
        "thread",
    )
    assert plan.confidence >= 0.7 and informed.status == "completed"
    # The other tenant has no history of this account: it explores an hour of its schedule.
    other: PostPlan = fresh.outputs["plan"]
    assert fresh.outputs["account_state"].mode == "explore-hour"
    assert other.hour != 20 and other.hour in (8, 14, 20, 2) and other.format == "question"
    acme = Memory("acme", campaign.name, handle).get("posts")
    globex = Memory("globex", campaign.name, handle).get("posts")
    assert len(acme) == 6 and len(globex) == 1
    assert globex[0]["post_id"] == fresh.outputs["publish"].post_id
    assert all(p["post_id"] != globex[0]["post_id"] for p in acme)


def test_a_wrong_subject_fails_the_input_before_anything_posts() -> None:
    account = load_accounts()[1]
    with SimulatedPlatform(limits=LIMITS) as platform, use_platform(platform.adapter()):
        result = campaign.run(
            tenant="acme", subject="someone-else", account=account, campaign="spring", wave=1
        )
    assert result.status == "failed" and "subject" in (result.error or "")
    assert platform.outcomes() == {}


def test_the_deployable_flow_runs_waves_and_learns_between_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with SimulatedPlatform(limits=LIMITS) as platform:
        monkeypatch.setenv("STALWART_SOCIAL_PLATFORM_URL", platform.url)
        accounts = load_accounts()[:3]
        summaries = asyncio.run(
            engagement_campaign_flow(accounts=accounts, waves=2, tenant="flow-demo")
        )
    assert [(s.wave, s.completed) for s in summaries] == [(1, 3), (2, 3)]
    assert all(s.modes == {"explore-hour": 3} for s in summaries)
    assert len(platform.state.posts) == 6 and platform.outcomes()["repeat"] == 0
    for a in accounts:
        hours = {o["hour"] for o in Memory("flow-demo", campaign.name, a["handle"]).get("posts")}
        assert len(hours) == 2  # wave 2 tried a new hour, having learned wave 1's
    assert isinstance(HttpPlatform(platform.url).name, str)
