"""engagement-campaign: post for dozens of accounts at the hours and on the topics that work.

Each run is one post of one account in one wave of a campaign. Perception reads the account, its
engagement history (memory: tenant = client, subject = account) and the platform's latest
engagement; reasoning asks the model for the hour, topic and format of the post; the action
posts once per idempotency key inside the platform's rate limits (Prefect global rate limits per
account and per platform, then `Retry-After` on a 429); learning records how the post did.

Run one wave over the 36 bundled accounts (offline: the bundled model server and a bundled
simulated platform answer):

    stalwart run engagement-campaign --input flows/data/accounts.jsonl

Run several waves, learning in between (what the deployment runs):

    >>> import asyncio  # doctest: +SKIP
    >>> asyncio.run(engagement_campaign_flow(waves=3, tenant="demo"))  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger
from pydantic import BaseModel, Field

from agents import LLM, Agent, Decision, InputError, Memory, RunContext, RunResult
from flows.social import (
    HttpPlatform,
    PostContent,
    PostEngagement,
    PostReceipt,
    SimulatedPlatform,
    current_platform,
    post_within_limits,
    social_settings,
    use_platform,
)

campaign = Agent(
    "engagement-campaign",
    description="Post for many accounts at the hours and on the topics their audiences answer.",
)

ACCOUNTS_FILE = Path(__file__).with_name("data") / "accounts.jsonl"
#: Hours tried first, six hours apart; each account starts at its own place in the list.
EXPLORE_HOURS = (8, 14, 20, 2)
#: How many different hours to try before trusting the best one.
HOURS_TO_TRY = 3
#: Own posts remembered per account (the oldest are forgotten).
HISTORY_LIMIT = 200

Topic = Literal[
    "recipes", "gear", "tips", "news", "community", "behind-the-scenes", "giveaway", "tutorial"
]
Format = Literal["question", "thread", "photo", "poll"]
Mode = Literal["explore-hour", "explore-topic", "exploit"]


class Observation(BaseModel):
    """One post of the account and how it did."""

    post_id: str
    hour: int
    topic: str
    replies: int
    likes: int
    own: bool = True
    """Posted by this agent for this tenant (False: seen on the platform only)."""


class AccountState(BaseModel):
    """What the agent sees: the account, its history, and the pattern found in it."""

    handle: str
    niche: str
    topics: list[str]
    campaign: str
    wave: int
    observations: list[Observation] = Field(default_factory=list)
    mode: Mode
    suggested_hour: int
    suggested_topic: str

    @property
    def ref(self) -> str:
        """The campaign item this run posts for: `<campaign>#<wave>`."""
        return f"{self.campaign}#{self.wave}"


class PostPlan(Decision):
    """When to post, about what, in which format."""

    hour: int = Field(ge=0, le=23, description="Hour of the day (0-23) to publish at.")
    topic: Topic = Field(description="What the post is about.")
    format: Format = Field(description="question, thread, photo or poll.")


def _average(values: list[int]) -> float:
    return sum(values) / len(values) if values else 0.0


def _pattern(
    handle: str, topics: list[str], observations: list[Observation]
) -> tuple[Mode, int, str]:
    """The strategy the history suggests: try hours, then topics at the best hour, then exploit.

    Example:
        >>> _pattern("a", ["tips"], [])[0]
        'explore-hour'
    """
    by_hour: dict[int, list[int]] = defaultdict(list)
    by_topic: dict[str, list[int]] = defaultdict(list)
    for o in observations:
        by_hour[o.hour].append(o.replies)
        by_topic[o.topic].append(o.replies)
    start = sum(map(ord, handle)) % len(EXPLORE_HOURS)
    schedule = EXPLORE_HOURS[start:] + EXPLORE_HOURS[:start]
    first_topic = topics[0] if topics else "community"
    if len(by_hour) < HOURS_TO_TRY:
        untried = next(h for h in schedule if h not in by_hour)
        return "explore-hour", untried, first_topic
    best_hour = max(by_hour, key=lambda h: (_average(by_hour[h]), -h))
    untried_topics = [t for t in topics if t not in by_topic]
    if untried_topics:
        return "explore-topic", best_hour, untried_topics[0]
    # Topic averages mix hours; compare topics at the best hour when that is possible.
    at_best: dict[str, list[int]] = defaultdict(list)
    for o in observations:
        if o.hour == best_hour:
            at_best[o.topic].append(o.replies)
    pool = at_best if len(at_best) > 1 else by_topic
    best_topic = max(pool, key=lambda t: (_average(pool[t]), t))
    return "exploit", best_hour, best_topic


@campaign.perception
async def account_state(
    account: dict[str, Any], campaign: str, wave: int, memory: Memory, context: RunContext
) -> AccountState:
    """Read the account, its remembered posts and the platform's latest engagement."""
    handle = str(account.get("handle", ""))
    if not handle or context.subject != handle:
        raise InputError(
            f"account {handle!r}: set the line's `subject` to the account handle, so each "
            f"account has its own engagement history (got subject {context.subject!r})"
        )
    remembered = [Observation.model_validate(o) for o in await memory.aget("posts", [])]
    known = {o.post_id for o in remembered}
    seen = await current_platform().engagement(handle, limit=50)
    # Posts on the platform this tenant's agent did not make (or has not learned from yet)
    # still say when the audience is around; they are used, not remembered.
    fresh = [
        Observation(
            post_id=e.post_id,
            hour=e.hour,
            topic=e.topic,
            replies=e.replies,
            likes=e.likes,
            own=False,
        )
        for e in seen
        if e.post_id not in known
    ]
    topics = [str(t) for t in account.get("topics", [])]
    observations = remembered + fresh
    mode, hour, topic = _pattern(handle, topics, observations)
    return AccountState(
        handle=handle,
        niche=str(account.get("niche", "")),
        topics=topics,
        campaign=campaign,
        wave=int(wave),
        observations=observations,
        mode=mode,
        suggested_hour=hour,
        suggested_topic=topic,
    )


def _prompt(state: AccountState) -> str:
    """The account, its engagement by hour and topic, and the suggested strategy."""
    lines = [
        f"Account @{state.handle} (niche: {state.niche}; topics: {', '.join(state.topics)}).",
        f"Campaign {state.campaign}, wave {state.wave}.",
    ]
    by_hour: dict[int, list[int]] = defaultdict(list)
    by_topic: dict[str, list[int]] = defaultdict(list)
    for o in state.observations:
        by_hour[o.hour].append(o.replies)
        by_topic[o.topic].append(o.replies)
    if not state.observations:
        lines.append("No engagement history yet.")
    else:
        lines.append(f"Engagement so far ({len(state.observations)} posts):")
        lines += [
            f"- {h:02d}:00, {len(v)} posts, {_average(v):.1f} replies per post"
            for h, v in sorted(by_hour.items())
        ]
        lines += [
            f"- about {t}, {len(v)} posts, {_average(v):.1f} replies per post"
            for t, v in sorted(by_topic.items())
        ]
    # The machine-readable line the bundled model server's rules key on; a real model reads
    # the numbers above as well.
    lines.append(
        f"Strategy: mode={state.mode.split('-')[0]}; slot=h{state.suggested_hour:02d}; "
        f"topic={state.suggested_topic}."
    )
    lines.append("Choose the hour (0-23), topic and format of the next post; say how sure you are.")
    return "\n".join(lines)


@campaign.reasoning(threshold=0.7, retries=2, retry_delay=0.5)
def plan(account_state: AccountState, llm: LLM) -> PostPlan:
    """Ask the model for the hour, topic and format of the next post."""
    return llm.decide(
        PostPlan,
        _prompt(account_state),
        system=(
            "You plan social media posts. Post when the account's audience answers most and "
            "about what it answers; try new hours and topics while the history is thin."
        ),
    )


@campaign.action(retries=2, retry_delay=1.0)
async def publish(plan: PostPlan, account_state: AccountState, idempotency_key: str) -> PostReceipt:
    """Post once for this key, inside the account's and the platform's rate limits."""
    content = PostContent(
        hour=plan.hour,
        topic=plan.topic,
        format=plan.format,
        text=f"[{account_state.ref}] A {plan.format} about {plan.topic} for {account_state.niche}",
        ref=account_state.ref,
    )
    return await post_within_limits(
        current_platform(), account_state.handle, content, idempotency_key=idempotency_key
    )


@campaign.learning
async def remember(publish: PostReceipt, memory: Memory, context: RunContext) -> int | None:
    """Record how the post did (replies, likes) in the account's history; return its replies."""
    found: PostEngagement | None = next(
        (
            e
            for e in await current_platform().engagement(publish.account, limit=50)
            if e.post_id == publish.post_id
        ),
        None,
    )
    if found is None:
        return None  # out of the platform's window already: nothing to learn from
    observed = Observation(
        post_id=found.post_id,
        hour=found.hour,
        topic=found.topic,
        replies=found.replies,
        likes=found.likes,
    ).model_dump()

    def add(posts: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
        posts = list(posts or [])
        if all(p.get("post_id") != observed["post_id"] for p in posts):
            posts.append(observed)
        return posts[-HISTORY_LIMIT:]

    await memory.aupdate("posts", add, default=[])
    context.set_outcome({"replies": found.replies, "likes": found.likes, "hour": found.hour})
    return found.replies


# -- the deployable flow: several waves, learning in between -------------------------------------


class WaveSummary(BaseModel):
    """What one wave did."""

    wave: int
    completed: int
    held: int
    failed: int
    replies: int
    """Replies to this wave's posts (the simulated audience answers at once)."""
    modes: dict[str, int]


def load_accounts(path: Path = ACCOUNTS_FILE) -> list[dict[str, Any]]:
    """The account objects of a JSONL file of run inputs (the bundled 36 by default).

    Example:
        >>> len(load_accounts())
        36
    """
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return [line.get("account", line) for line in lines]


def wave_inputs(accounts: list[dict[str, Any]], campaign: str, wave: int) -> list[dict[str, Any]]:
    """The run inputs of one wave: one post per account, subject = the account's handle.

    Example:
        >>> wave_inputs([{"handle": "a"}], "launch", 2)[0]["subject"]
        'a'
    """
    return [
        {"account": a, "campaign": campaign, "wave": wave, "subject": str(a["handle"])}
        for a in accounts
    ]


def summarize(wave: int, results: list[RunResult]) -> WaveSummary:
    """Counts of one wave's results."""
    modes: dict[str, int] = defaultdict(int)
    for r in results:
        state = r.outputs.get("account_state")
        if isinstance(state, AccountState):
            modes[state.mode] += 1
    return WaveSummary(
        wave=wave,
        completed=sum(r.status == "completed" for r in results),
        held=sum(r.status == "held" for r in results),
        failed=sum(r.status == "failed" for r in results),
        replies=sum(int(r.outputs.get("remember") or 0) for r in results),
        modes=dict(modes),
    )


@flow(name="engagement-campaign-waves", persist_result=False)
async def engagement_campaign_flow(
    accounts: list[dict[str, Any]] | None = None,
    campaign_name: str = "launch-week",
    waves: int = 3,
    first_wave: int | None = 1,
    tenant: str = "demo",
    concurrency: int = 16,
    platform_url: str | None = None,
) -> list[WaveSummary]:
    """Run `waves` waves of the campaign, one agent batch (a subflow) per wave.

    Args:
        accounts: Account objects (`handle`, `niche`, `topics`); the bundled 36 when None.
        campaign_name: The campaign; with the wave it names each post (`launch-week#2`).
        waves: How many waves to run, one post per account each.
        first_wave: The number of the first wave (run 4.. after 1..3; a wave run again
            posts nothing new: its idempotency keys are spent). None (what the scheduled
            deployment passes) numbers the wave by the flow run's scheduled hour, e.g.
            2026112506: each hourly run is a new wave, and a retried run of the same slot
            posts nothing twice.
        tenant: The client the accounts belong to (memory is per tenant and account).
        concurrency: Runs in flight per wave (rate limits still pace the posts).
        platform_url: The platform API; else `STALWART_SOCIAL_PLATFORM_URL`; else a simulated
            platform started for this flow run.
    """
    logger = get_run_logger()
    accounts = accounts if accounts is not None else load_accounts()
    url = platform_url or social_settings().platform_url
    if first_wave is None:
        from prefect.runtime import flow_run

        first_wave = int(f"{flow_run.scheduled_start_time:%Y%m%d%H}")
    summaries: list[WaveSummary] = []
    with ExitStack() as stack:
        if url:
            platform = HttpPlatform(url, name=social_settings().platform_name)
        else:
            platform = stack.enter_context(SimulatedPlatform(name="flow-simulated")).adapter()
        stack.enter_context(use_platform(platform))
        for wave in range(first_wave, first_wave + waves):
            results = await campaign.abatch(
                wave_inputs(accounts, campaign_name, wave), tenant=tenant, concurrency=concurrency
            )
            summaries.append(summarize(wave, results))
            logger.info("wave %d: %s", wave, summaries[-1].model_dump_json())
    return summaries
