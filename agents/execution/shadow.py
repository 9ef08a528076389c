"""Live shadow: a candidate model also decides a share of runs; its decision is logged with
path `shadow` beside the real one and never acted on."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from agents.declare.decision import LadderPath
from agents.endpoint import resolve_endpoint
from agents.execution.call import StepCall
from agents.execution.inject import inject
from agents.execution.ladder import LadderOutcome
from agents.execution.rows import decision_row
from agents.execution.task import invoke
from agents.redact import scrub_error
from agents.resources.llm import LLM, LLMCall

if TYPE_CHECKING:
    from agents.graph import StepNode
    from agents.result import RunResult
    from agents.store.tables import DecisionRecord

logger = logging.getLogger(__name__)


async def live_shadow(
    node: StepNode, call: StepCall, args: dict[str, Any], result: RunResult
) -> DecisionRecord | None:
    """The candidate's decision row for a run in the step's shadow share, or None.

    A failing candidate never fails the run: the error is logged at debug level only.
    """
    shadow = node.step.options.shadow
    if shadow is None or not shadow.picks(result.run_key):
        return None
    calls: list[LLMCall] = []

    def candidate() -> LLM:
        return LLM(endpoint=resolve_endpoint(shadow.model), calls=calls, tenant=call.tenant)

    kwargs = {**args, **inject(node.resources, call, llm=candidate)}
    try:
        decision = await invoke(node, kwargs)
    except Exception as exc:
        logger.debug("shadow %s.%s failed: %s", call.agent, node.name, scrub_error(exc))
        return None
    outcome = LadderOutcome(decision=decision, path=LadderPath.SHADOW)
    return decision_row(call.agent, node.step, result, args, outcome, calls, 1)
