"""Drift: detect quality drops, error and cost spikes and volume jumps; alert once per incident.

This module owns the quality detector. `check(tenant=..., agent=...)` reads what the decision log
and the run log gained since the last check, updates one detector per (tenant, agent, step,
signal), and on a change of state emits a Prefect event (`stalwart.quality.degraded` /
`stalwart.quality.recovered`, so a Prefect automation can pause a deployment or notify) and, when
an incident opens, one Sentry message. Nothing more is sent while the incident stays open.

**The detector (EWMA against a baseline window).** Each signal is a stream of observations, one
per decision (per agent run for `error_rate`):

| signal | observation | bad direction | minimum shift |
|---|---|---|---|
| `confidence` | a scored decision's confidence | drop | 0.15 |
| `accuracy` | a labelled decision: 1 correct, 0 wrong (its verdict, below) | drop | 0.2 |
| `error_rate` | a finished agent run: 1 failed, 0 not | rise | 0.2 |
| `cost` | a decision's cost (USD) | rise | 50% of the baseline |

A decision's verdict is the one calibration and shadow runs use
(`agents.learning.feedback.verdict`): its latest feedback when that says right or wrong (given
with `stalwart feedback`, `Agent.feedback` or from a learning step), else its outcome's
`correct` flag. Accuracy observations are read in the order their labels arrived (the later of
the latest feedback and the outcome), so feedback given after the decision counts when it is
given; a decision whose label changes later is observed again with its new verdict.

The first `baseline_runs` observations (10) form the baseline: their mean μ and standard
deviation s. Then the EWMA `z ← λ·x + (1-λ)·z` (λ = 0.2, starting at μ) is compared with μ: the
incident opens when `z` has moved in the bad direction by more than the threshold
`T = max(L·s·√(λ/(2-λ)), minimum shift)` (L = 3, the classic EWMA control limit), and clears
when it is back within `T/2` (hysteresis: no flapping around the limit). While healthy the
baseline follows slow drift (weight 0.01 per observation); during an incident it is frozen.

*Detection delay.* After a step change of size Δ > T the EWMA crosses after
`n = floor(ln(1 - T/Δ) / ln(1 - λ)) + 1` observations — one observation per run of a single-decision
agent: 2 runs for Δ = 4T (confidence 0.9 → 0.3), 4 runs for Δ = 2T, 7 runs for Δ = 4T/3. It
clears at most `floor(ln(T/(2Δ)) / ln(1 - λ)) + 1` runs after the shift reverts (10 runs for
Δ = 4T; `recovery_delay`). A perfect accuracy that falls to 0 (Δ = 1, T = 0.2) fires on the
second wrong run and clears within 11 good runs.
A single outlier moves `z` by λ·Δ only, so one bad decision alone never opens an incident
when λ·Δ ≤ T.

**Volume.** `volume` counts the agent's runs in the last `volume_bucket` (1 h) against the
`volume_baseline_buckets` (24) buckets before it: a jump when the count exceeds
`max(3·mean, mean + 3·sd, 20)`, cleared below `mean + (threshold - mean)/2`. Detected at the
first check after the jump; an agent needs half a baseline window of history first.

State (baseline, EWMA, cursor, open incident) is kept in the memory table under tenant
`<tenant>`, agent `stalwart.monitor`, subject `<agent>:<step>` (`<agent>:*` for the agent-level
`error_rate` and `volume`), one key per signal, written with compare-and-set: when two checks
race, only one opens (and reports) an incident.

Example:
    >>> from agents.observe import drift
    >>> result = drift.check(tenant="acme", agent="triage", url="sqlite://")
    >>> result.opened, result.recovered
    ([], [])
"""

from __future__ import annotations

import logging
import math
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlmodel import col, select

from agents.observe.metrics import DecisionPoint, load_decisions, load_runs, window_metrics
from agents.observe.sentry import flush, init_sentry
from agents.redact import scrub_text
from agents.store._convert import as_utc, require_tenant
from agents.store.engine import session
from agents.store.memory import Memory, MemoryConflict
from agents.store.tables import AgentRun, DecisionRecord, MemoryItem

__all__ = [
    "DEGRADED_EVENT",
    "MONITOR_AGENT",
    "RECOVERED_EVENT",
    "SIGNALS",
    "CheckResult",
    "DetectorConfig",
    "SignalState",
    "check",
    "detection_delay",
    "monitor",
    "recovery_delay",
    "signal_states",
    "summary_markdown",
]

logger = logging.getLogger(__name__)

MONITOR_AGENT = "stalwart.monitor"
"""The agent name under which detector state is kept in the memory table."""

DEGRADED_EVENT = "stalwart.quality.degraded"
"""The Prefect event emitted when an incident opens."""

RECOVERED_EVENT = "stalwart.quality.recovered"
"""The Prefect event emitted when an incident clears."""

Signal = Literal["confidence", "accuracy", "error_rate", "cost", "volume"]
SIGNALS: tuple[Signal, ...] = ("confidence", "accuracy", "error_rate", "cost", "volume")
"""Every signal the detector watches."""

AGENT_LEVEL = "*"
"""The step name of agent-level signals (`error_rate`, `volume`)."""

_DROP: frozenset[str] = frozenset({"confidence", "accuracy"})
_BATCH = 5000
_STEP_LOOKBACK = timedelta(days=30)
_EVENT_NAMESPACE = uuid.UUID("6c1f4a52-8f0e-4f6b-9b8e-2b7d1c0e5a11")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_KEY_INVALID = re.compile(r"[^a-z0-9-]+")


@dataclass(frozen=True, kw_only=True)
class DetectorConfig:
    """The detector's parameters (the defaults are the documented ones).

    Example:
        >>> DetectorConfig(smoothing=0.3).limit
        3.0
    """

    smoothing: float = 0.2
    """λ, the weight of a new observation in the EWMA."""
    limit: float = 3.0
    """L, the control limit in standard deviations of the EWMA."""
    baseline_runs: int = 10
    """Observations that form the baseline before anything can fire."""
    baseline_smoothing: float = 0.01
    """Weight of a healthy observation in the (slowly following) baseline."""
    recover_fraction: float = 0.5
    """An incident clears when the deviation is below this fraction of the threshold."""
    min_shift: dict[str, float] = field(
        default_factory=lambda: {"confidence": 0.15, "accuracy": 0.2, "error_rate": 0.2}
    )
    """The smallest deviation that fires, per signal (absolute)."""
    cost_min_ratio: float = 0.5
    """The smallest cost rise that fires, as a fraction of the baseline cost."""
    volume_bucket: timedelta = timedelta(hours=1)
    """The window whose run count is compared with the baseline buckets."""
    volume_baseline_buckets: int = 24
    """How many buckets before the current one form the volume baseline."""
    volume_ratio: float = 3.0
    """A volume jump is at least this many times the baseline mean."""
    volume_min_runs: int = 20
    """A volume jump is at least this many runs in one bucket."""


@dataclass(frozen=True, kw_only=True)
class SignalState:
    """One detector's state after a check.

    `change` is `"degraded"` when this check opened an incident, `"recovered"` when it cleared
    one, else None.
    """

    tenant: str
    agent: str
    step: str
    signal: str
    status: Literal["warming_up", "ok", "degraded"]
    observations: int
    baseline: float | None
    value: float | None
    """The EWMA (the run count of the last bucket for `volume`)."""
    threshold: float | None
    """The deviation that opens an incident."""
    incident_id: str | None = None
    opened_at: datetime | None = None
    change: Literal["degraded", "recovered"] | None = None
    sentry_event_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict.

        Example:
            >>> SignalState(tenant="a", agent="b", step="s", signal="cost", status="ok",
            ...             observations=3, baseline=0.1, value=0.1,
            ...             threshold=0.05).to_dict()["status"]
            'ok'
        """
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["opened_at"] = self.opened_at.isoformat() if self.opened_at else None
        return data


@dataclass(frozen=True, kw_only=True)
class CheckResult:
    """What one `check` saw: every detector's state, and the incidents it opened or cleared."""

    tenant: str
    agent: str
    signals: list[SignalState]

    @property
    def opened(self) -> list[SignalState]:
        """Detectors whose incident opened in this check."""
        return [s for s in self.signals if s.change == "degraded"]

    @property
    def recovered(self) -> list[SignalState]:
        """Detectors whose incident cleared in this check."""
        return [s for s in self.signals if s.change == "recovered"]

    @property
    def open_incidents(self) -> list[SignalState]:
        """Detectors with an open incident after this check."""
        return [s for s in self.signals if s.status == "degraded"]


def detection_delay(shift: float, threshold: float, smoothing: float = 0.2) -> int | None:
    """Observations the EWMA needs to cross `threshold` after a step change of size `shift`.

    None when the shift is not larger than the threshold (it never fires).

    Example:
        >>> detection_delay(0.6, 0.15), detection_delay(0.3, 0.15), detection_delay(0.1, 0.15)
        (2, 4, None)
    """
    if shift <= threshold:
        return None
    return math.floor(math.log(1 - threshold / shift) / math.log(1 - smoothing)) + 1


def recovery_delay(
    shift: float, threshold: float, smoothing: float = 0.2, recover_fraction: float = 0.5
) -> int:
    """At most how many good observations clear an incident whose EWMA sits `shift` away from
    the baseline (the whole step change, at worst), once the signal is back at its baseline.

    Example:
        >>> recovery_delay(0.6, 0.15), recovery_delay(1.0, 0.2)
        (10, 11)
    """
    target = recover_fraction * threshold
    if shift < target:
        return 0
    return math.floor(math.log(target / shift) / math.log(1 - smoothing)) + 1


# -- the EWMA detector ----------------------------------------------------------------------------


def _fresh() -> dict[str, Any]:
    return {
        "status": "warming_up",
        "n": 0,
        "mean": 0.0,
        "m2": 0.0,
        "var": 0.0,
        "ewma": None,
        "cursor": None,
        "incident": None,
        "incidents": 0,
    }


def _threshold(signal: str, state: dict[str, Any], config: DetectorConfig) -> float:
    lam = config.smoothing
    sigma_ewma = math.sqrt(max(state["var"], 0.0)) * math.sqrt(lam / (2 - lam))
    if signal == "cost":
        floor = max(config.cost_min_ratio * abs(state["mean"]), 1e-6)
    else:
        floor = config.min_shift.get(signal, 0.0)
    return max(config.limit * sigma_ewma, floor)


def _deviation(signal: str, state: dict[str, Any]) -> float:
    value = state["ewma"] if state["ewma"] is not None else state["mean"]
    return float(state["mean"] - value if signal in _DROP else value - state["mean"])


def _observe(
    signal: str, state: dict[str, Any], x: float, at: datetime, config: DetectorConfig
) -> Literal["degraded", "recovered"] | None:
    """Feed one observation; return "degraded" or "recovered" on a change of state."""
    state["n"] += 1
    if state["status"] == "warming_up":
        delta = x - state["mean"]
        state["mean"] += delta / state["n"]
        state["m2"] += delta * (x - state["mean"])
        if state["n"] >= config.baseline_runs:
            state["var"] = state["m2"] / max(state["n"] - 1, 1)
            state["ewma"] = state["mean"]
            state["status"] = "ok"
        return None
    lam = config.smoothing
    state["ewma"] = lam * x + (1 - lam) * state["ewma"]
    threshold = _threshold(signal, state, config)
    deviation = _deviation(signal, state)
    if state["status"] == "ok":
        if deviation > threshold:
            state["status"] = "degraded"
            state["incidents"] += 1
            state["incident"] = {
                "id": uuid.uuid4().hex,
                "opened_at": at.isoformat(),
                "baseline": state["mean"],
                "threshold": threshold,
            }
            return "degraded"
        beta = config.baseline_smoothing
        delta = x - state["mean"]
        state["mean"] += beta * delta
        state["var"] = (1 - beta) * (state["var"] + beta * delta * delta)
        return None
    if deviation < config.recover_fraction * threshold:
        state["status"] = "ok"
        return "recovered"
    return None


# -- observations ---------------------------------------------------------------------------------


def _cursor(state: dict[str, Any]) -> tuple[datetime, str] | None:
    cursor = state.get("cursor")
    if not cursor:
        return None
    return datetime.fromisoformat(cursor[0]), str(cursor[1])


def _decision_values(
    signal: str, points: Sequence[DecisionPoint]
) -> list[tuple[float, datetime, str]]:
    """(value, instant, id) per decision: the cursor moves over every decision seen."""
    if signal == "confidence":
        return [(p.confidence, p.created_at, p.id) for p in points if p.confidence is not None]
    return [(p.cost, p.created_at, p.id) for p in points]


def _finished_runs(
    tenant: str, agent: str, after: tuple[datetime, str] | None, url: str | None
) -> list[tuple[float, datetime, str]]:
    r = AgentRun
    query = select(r.id, r.finished_at, r.status).where(
        col(r.tenant) == tenant,
        col(r.agent) == agent,
        col(r.finished_at).is_not(None),
        col(r.status) != "running",
    )
    if after is not None:
        at, last_id = after
        query = query.where(
            (col(r.finished_at) > at) | ((col(r.finished_at) == at) & (col(r.id) > last_id))
        )
    query = query.order_by(col(r.finished_at), col(r.id)).limit(_BATCH)
    with session(url) as s:
        rows = s.exec(query).all()
    return [
        (1.0 if status == "failed" else 0.0, finished, run_id)
        for run_id, finished, status in rows
        if finished is not None
    ]


def _observations(
    signal: str, tenant: str, agent: str, step: str, state: dict[str, Any], url: str | None
) -> tuple[list[tuple[float, datetime, str]], tuple[datetime, str] | None]:
    """New observations of a signal since the state's cursor, and the cursor after them."""
    after = _cursor(state)
    if signal == "error_rate":
        values = _finished_runs(tenant, agent, after, url)
    elif signal == "accuracy":
        # Labels arrive after the decision (feedback, an outcome): the cursor walks the label
        # time, so a decision labelled (or relabelled) since the last check is observed now.
        points = load_decisions(
            tenant=tenant,
            agent=agent,
            step=step,
            labelled_after=after or (_EPOCH, ""),
            limit=_BATCH,
            url=url,
        )
        values = [
            (1.0 if p.correct else 0.0, p.labelled_at or p.created_at, p.id)
            for p in points
            if p.correct is not None
        ]
        if points:
            last = points[-1]
            return values, (last.labelled_at or last.created_at, last.id)
        return values, after
    else:
        points = load_decisions(
            tenant=tenant, agent=agent, step=step, after=after, limit=_BATCH, url=url
        )
        values = _decision_values(signal, points)
        if points:
            return values, (points[-1].created_at, points[-1].id)
        return values, after
    return values, ((values[-1][1], values[-1][2]) if values else after)


# -- reporting ------------------------------------------------------------------------------------


def _resource(tenant: str, agent: str, step: str, signal: str) -> dict[str, str]:
    return {
        "prefect.resource.id": f"stalwart.agent.{agent}",
        "prefect.resource.name": agent,
        "stalwart.tenant": tenant,
        "stalwart.step": step,
        "stalwart.signal": signal,
    }


def _payload(state: SignalState) -> dict[str, Any]:
    return {
        "tenant": state.tenant,
        "agent": state.agent,
        "step": state.step,
        "signal": state.signal,
        "incident_id": state.incident_id,
        "opened_at": state.opened_at.isoformat() if state.opened_at else None,
        "baseline": state.baseline,
        "value": state.value,
        "threshold": state.threshold,
        "observations": state.observations,
    }


def _emit_event(kind: Literal["degraded", "recovered"], state: SignalState) -> None:
    try:
        from prefect.events import emit_event

        emit_event(
            event=DEGRADED_EVENT if kind == "degraded" else RECOVERED_EVENT,
            resource=_resource(state.tenant, state.agent, state.step, state.signal),
            related=[
                {
                    "prefect.resource.id": f"stalwart.tenant.{state.tenant}",
                    "prefect.resource.role": "tenant",
                }
            ],
            payload=_payload(state),
            id=uuid.uuid5(_EVENT_NAMESPACE, f"{state.incident_id}:{kind}"),
        )
    except Exception as exc:
        logger.warning("Could not emit the %s event: %s", kind, scrub_text(str(exc)))


def _describe(state: SignalState) -> str:
    direction = "dropped" if state.signal in _DROP else "rose"
    where = state.agent if state.step == AGENT_LEVEL else f"{state.agent}.{state.step}"
    value = "?" if state.value is None else f"{state.value:.4g}"
    baseline = "?" if state.baseline is None else f"{state.baseline:.4g}"
    if state.signal == "volume":
        return f"Volume jump: {where} ran {value} times in the last bucket (baseline {baseline})"
    return (
        f"Quality degraded: {state.signal} of {where} {direction} to {value} (baseline {baseline})"
    )


def _capture_incident(state: SignalState) -> str | None:
    """One Sentry message for a new incident (scrubbed by Stalwart's `before_send`)."""
    try:
        import sentry_sdk

        init_sentry()
        if not sentry_sdk.get_client().is_active():
            return None
        with sentry_sdk.isolation_scope() as scope:
            for name, value in (
                ("tenant", state.tenant),
                ("agent", state.agent),
                ("step", state.step),
                ("signal", state.signal),
                ("incident_id", state.incident_id),
            ):
                if value is not None:
                    scope.set_tag(name, value)
            scope.fingerprint = [
                "stalwart.quality",
                state.tenant,
                state.agent,
                state.step,
                state.signal,
            ]
            scope.set_context("stalwart.quality", _payload(state))
            event_id = scope.capture_message(scrub_text(_describe(state)), level="warning")
        flush(2.0)
        return event_id
    except Exception as exc:
        logger.warning("Could not report the incident to Sentry (%s)", type(exc).__name__)
        return None


# -- check ----------------------------------------------------------------------------------------


def _to_state(
    tenant: str,
    agent: str,
    step: str,
    signal: str,
    raw: dict[str, Any],
    config: DetectorConfig,
    change: Literal["degraded", "recovered"] | None = None,
    value: float | None = None,
    threshold: float | None = None,
) -> SignalState:
    incident = raw.get("incident") or {}
    warming = raw["status"] == "warming_up"
    return SignalState(
        tenant=tenant,
        agent=agent,
        step=step,
        signal=signal,
        status=raw["status"],
        observations=int(raw.get("n", 0)),
        baseline=None if warming else raw.get("mean"),
        value=value if value is not None else (None if warming else raw.get("ewma")),
        threshold=threshold
        if threshold is not None
        else (None if warming else _threshold(signal, raw, config)),
        incident_id=incident.get("id") if incident else None,
        opened_at=datetime.fromisoformat(incident["opened_at"]) if incident else None,
        change=change,
    )


def _update_ewma(
    tenant: str, agent: str, step: str, signal: str, config: DetectorConfig, url: str | None
) -> list[SignalState]:
    """Update one EWMA detector; return its transitions (or its state when none)."""
    memory = Memory(tenant, MONITOR_AGENT, f"{agent}:{step}", url=url)
    for _ in range(8):
        item = memory.get_item(signal)
        raw: dict[str, Any] = dict(item.value) if item is not None else _fresh()
        version = item.version if item is not None else 0
        transitions: list[SignalState] = []
        while True:
            values, cursor = _observations(signal, tenant, agent, step, raw, url)
            for x, at, _id in values:
                change = _observe(signal, raw, x, at, config)
                if change is not None:
                    transitions.append(
                        _to_state(tenant, agent, step, signal, raw, config, change=change)
                    )
            if cursor is not None:
                raw["cursor"] = [cursor[0].isoformat(), cursor[1]]
            if len(values) < _BATCH:
                break
        if item is not None and raw == item.value:
            break
        try:
            memory.set(signal, raw, expected_version=version)
        except MemoryConflict:
            continue  # another check moved this detector: start again from its state
        reported: list[SignalState] = []
        for state in transitions:
            _emit_event(state.change or "degraded", state)
            if state.change == "degraded":
                state = replace(state, sentry_event_id=_capture_incident(state))
            reported.append(state)
        return reported or [_to_state(tenant, agent, step, signal, raw, config)]
    return [_to_state(tenant, agent, step, signal, raw, config)]


def _update_volume(
    tenant: str, agent: str, config: DetectorConfig, now: datetime, url: str | None
) -> SignalState:
    bucket, count = config.volume_bucket, config.volume_baseline_buckets
    start = now - bucket * (count + 1)
    runs = load_runs(tenant=tenant, agent=agent, since=start, until=now, url=url)
    counts = [0] * (count + 1)
    for _, started, _ in runs:
        counts[min(int((started - start) / bucket), count)] += 1
    current, history = counts[-1], counts[:-1]
    mean = sum(history) / count
    std = math.sqrt(sum((c - mean) ** 2 for c in history) / count)
    threshold = max(config.volume_ratio * mean, mean + config.limit * std, config.volume_min_runs)
    clear_below = mean + config.recover_fraction * (threshold - mean)
    seasoned = bool(runs) and runs[0][1] <= start + bucket * (count // 2)
    memory = Memory(tenant, MONITOR_AGENT, f"{agent}:{AGENT_LEVEL}", url=url)
    for _ in range(8):
        item = memory.get_item("volume")
        raw: dict[str, Any] = dict(item.value) if item is not None else _fresh()
        version = item.version if item is not None else 0
        raw["n"] = sum(counts)
        raw["mean"], raw["ewma"] = mean, float(current)
        change: Literal["degraded", "recovered"] | None = None
        if raw["status"] != "degraded":
            raw["status"] = "ok" if seasoned else "warming_up"
            if seasoned and current > threshold:
                raw["status"], change = "degraded", "degraded"
                raw["incidents"] = raw.get("incidents", 0) + 1
                raw["incident"] = {
                    "id": uuid.uuid4().hex,
                    "opened_at": now.isoformat(),
                    "baseline": mean,
                    "threshold": threshold,
                }
        elif current < clear_below:
            raw["status"], change = "ok", "recovered"
        try:
            memory.set("volume", raw, expected_version=version)
        except MemoryConflict:
            continue
        state = _to_state(
            tenant,
            agent,
            AGENT_LEVEL,
            "volume",
            raw,
            config,
            change=change,
            value=float(current),
            threshold=threshold,
        )
        state = replace(state, baseline=mean)
        if change is not None:
            _emit_event(change, state)
            if change == "degraded":
                state = replace(state, sentry_event_id=_capture_incident(state))
        return state
    raise RuntimeError("the volume detector kept conflicting with concurrent checks")


def _steps(tenant: str, agent: str, now: datetime, url: str | None) -> list[str]:
    query = (
        select(DecisionRecord.step)
        .where(
            col(DecisionRecord.tenant) == tenant,
            col(DecisionRecord.agent) == agent,
            col(DecisionRecord.created_at) >= now - _STEP_LOOKBACK,
        )
        .distinct()
    )
    known = select(MemoryItem.subject).where(
        col(MemoryItem.tenant) == tenant,
        col(MemoryItem.agent) == MONITOR_AGENT,
        col(MemoryItem.subject).startswith(f"{agent}:"),
    )
    with session(url) as s:
        steps = set(s.exec(query).all())
        steps.update(subject[len(agent) + 1 :] for subject in s.exec(known).all())
    steps.discard(AGENT_LEVEL)
    return sorted(steps)


def check(
    *,
    tenant: str,
    agent: str,
    step: str | None = None,
    signals: Sequence[str] = SIGNALS,
    config: DetectorConfig | None = None,
    now: datetime | None = None,
    url: str | None = None,
) -> CheckResult:
    """Update the detectors of one agent from the decisions and runs logged since the last check.

    Call it after each scheduled run (see `monitor`), or on its own schedule: observations are
    read from the logs, so how often it runs changes nothing but the delay of the alert.

    Args:
        tenant: the tenant (mandatory).
        agent: the agent whose steps are watched.
        step: only this reasoning step (agent-level signals are still checked).
        signals: the signals to check (default all of `SIGNALS`).
        config: the detector's parameters; None means `DetectorConfig()`.
        now: the reference instant of the volume check; None means now.
        url: database URL; None means the settings' URL.

    Returns:
        Every detector's state; `opened` / `recovered` list the incidents this check changed
        (each was announced by one Prefect event; an opened one also by one Sentry message).

    Example:
        >>> check(tenant="acme", agent="triage", signals=["confidence"], url="sqlite://").signals
        []
    """
    require_tenant(tenant)
    unknown = sorted(set(signals) - set(SIGNALS))
    if unknown:
        raise ValueError(f"unknown signal(s) {unknown}: use {', '.join(SIGNALS)}")
    config = config or DetectorConfig()
    reference = as_utc(now) if now is not None else datetime.now(UTC)
    states: list[SignalState] = []
    steps = [step] if step is not None else _steps(tenant, agent, reference, url)
    for step_name in steps:
        for signal in ("confidence", "accuracy", "cost"):
            if signal in signals:
                states.extend(_update_ewma(tenant, agent, step_name, signal, config, url))
    if "error_rate" in signals:
        states.extend(_update_ewma(tenant, agent, AGENT_LEVEL, "error_rate", config, url))
    if "volume" in signals:
        states.append(_update_volume(tenant, agent, config, reference, url))
    return CheckResult(tenant=tenant, agent=agent, signals=states)


def signal_states(
    *, tenant: str, agent: str | None = None, url: str | None = None
) -> list[SignalState]:
    """The detectors' stored states of one tenant (for `stalwart stats`), without updating them.

    Example:
        >>> signal_states(tenant="nobody", url="sqlite://")
        []
    """
    from agents.store import queries

    config = DetectorConfig()
    result: list[SignalState] = []
    for item in queries.memory(tenant=tenant, agent=MONITOR_AGENT, url=url):
        agent_name, _, step = item.subject.rpartition(":")
        if agent is not None and agent_name != agent:
            continue
        if not isinstance(item.value, dict) or "status" not in item.value:
            continue
        raw = {**_fresh(), **item.value}
        result.append(_to_state(tenant, agent_name, step, item.key, raw, config))
    return result


# -- the Prefect-friendly entry -------------------------------------------------------------------


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def summary_markdown(
    result: CheckResult, *, tenant: str, since: str = "1d", url: str | None = None
) -> str:
    """A Markdown summary of one agent: its metrics over `since` and its detectors' states.

    Example:
        >>> print(summary_markdown(CheckResult(tenant="acme", agent="triage", signals=[]),
        ...                        tenant="acme", url="sqlite://").splitlines()[0])
        # triage · tenant acme
    """
    lines = [f"# {scrub_text(result.agent)} · tenant {scrub_text(tenant)}", ""]
    incidents = result.open_incidents
    lines.append(
        f"**{len(incidents)} open incident(s).** "
        + " ".join(f"`{s.step}/{s.signal}`" for s in incidents)
    )
    lines += ["", f"## Metrics, last {since}", ""]
    lines.append(
        "| step | decisions | confidence mean / p10 | direct | fallback | human | default "
        "| held | accuracy | error rate | retry rate | latency p50 / p95 ms | cost |"
    )
    lines.append("|" + "---|" * 13)
    for m in window_metrics(tenant=tenant, agent=result.agent, since=since, url=url):
        p = m.paths
        lines.append(
            f"| {scrub_text(m.step)} | {m.decisions} | {_fmt(m.confidence_mean)} / "
            f"{_fmt(m.confidence_p10)} | {p.get('direct', 0):.0%} | "
            f"{p.get('fallback_model', 0):.0%} | {p.get('human', 0):.0%} | "
            f"{p.get('default', 0):.0%} | {p.get('held', 0):.0%} | {_fmt(m.accuracy)} | "
            f"{_fmt(m.error_rate)} | {_fmt(m.retry_rate)} | {_fmt(m.latency_p50_ms, '.0f')} / "
            f"{_fmt(m.latency_p95_ms, '.0f')} | {m.cost_sum:.4f} |"
        )
    lines += ["", "## Detectors", "", "| step | signal | status | baseline | value | threshold |"]
    lines.append("|---|---|---|---|---|---|")
    for s in result.signals:
        lines.append(
            f"| {scrub_text(s.step)} | {s.signal} | {s.status} | {_fmt(s.baseline, '.4g')} | "
            f"{_fmt(s.value, '.4g')} | {_fmt(s.threshold, '.4g')} |"
        )
    return "\n".join(lines)


async def monitor(
    tenant: str,
    agent: str,
    *,
    since: str = "1d",
    config: DetectorConfig | None = None,
    url: str | None = None,
    publish: Callable[..., Any] | None = None,
) -> CheckResult:
    """Check an agent's detectors and publish a summary Markdown artifact (for scheduled runs).

    Call it at the end of a scheduled flow run: it runs `check` in a worker thread, then
    publishes `summary_markdown` as the artifact `stalwart-monitor-<agent>-<tenant>`. Publishing
    is a courtesy: a failure is logged and swallowed.

    Args:
        tenant: the tenant (mandatory).
        agent: the agent to watch.
        since: the window of the metrics in the summary.
        config: the detector's parameters.
        url: database URL; None means the settings' URL.
        publish: the artifact publisher; None means `prefect.artifacts.acreate_markdown_artifact`.

    Example:
        >>> import asyncio
        >>> result = asyncio.run(monitor("acme", "triage", url="sqlite://"))  # doctest: +SKIP
    """
    import asyncio

    result = await asyncio.to_thread(check, tenant=tenant, agent=agent, config=config, url=url)
    try:
        if publish is None:
            from prefect.artifacts import acreate_markdown_artifact

            publish = acreate_markdown_artifact
        markdown = await asyncio.to_thread(
            summary_markdown, result, tenant=tenant, since=since, url=url
        )
        key = _KEY_INVALID.sub("-", f"stalwart-monitor-{agent}-{tenant}".lower()).strip("-")
        outcome = publish(
            markdown=markdown,
            key=key[:100],
            description=f"Quality of {agent} for tenant {tenant}",
        )
        if asyncio.iscoroutine(outcome):
            await outcome
    except Exception as exc:
        logger.debug("Could not publish the monitor artifact: %s", scrub_text(str(exc)))
    return result
