"""Resource injection: the values of a step's injected parameters, for one call.

The graph found which parameters a step wants injected (`StepNode.resources`) when it was built;
here they are resolved per call. The task body, live shadow and offline replay all inject
through `inject`, so a step sees the same resources wherever it runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from agents.context import RunContext
from agents.store.memory import Memory

if TYPE_CHECKING:
    from agents.execution.call import StepCall
    from agents.resources.llm import LLM


def inject(
    resources: tuple[str, ...],
    call: StepCall,
    *,
    llm: Callable[[], LLM],
    decisions: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The injected arguments of one call: `memory`, `llm` (made by `llm()` only when the step
    asks for it), `context` and `idempotency_key`, as the step declares them."""
    found: dict[str, Any] = {}
    for name in resources:
        if name == "memory":
            found["memory"] = Memory(tenant=call.tenant, agent=call.agent, subject=call.subject)
        elif name == "llm":
            found["llm"] = llm()
        elif name == "context":
            found["context"] = RunContext(
                agent=call.agent,
                tenant=call.tenant,
                subject=call.subject,
                run_key=call.run_key,
                run_id=call.run_id,
                flow_run_id=call.flow_run_id,
                step=call.step,
                decisions={} if decisions is None else decisions,
            )
        elif name == "idempotency_key":
            found["idempotency_key"] = call.idempotency_key
    return found
