"""Stalwart: declare an agent as a typed DAG in four layers and run it as a Prefect flow.

Example:
    >>> from agents import Agent, Decision
    >>> triage = Agent("ticket-triage")

Everything a user types is importable from here; `docs/architecture.md` maps the rest.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agents.context import RunContext
    from agents.declare.agent import Agent
    from agents.declare.decision import Decision
    from agents.declare.options import Review, Shadow, StepOptions
    from agents.declare.step import Layer, Step, StepInfo
    from agents.endpoint import Endpoint
    from agents.errors import (
        ActionInProgress,
        ConfigurationError,
        DeclarationError,
        InputError,
        MemoryConflict,
        StalwartError,
        StepRunError,
        UserError,
    )
    from agents.resources.llm import LLM
    from agents.result import RunResult
    from agents.store.memory import Memory

# Imported on first use (PEP 562), so a process that needs one small module (`stalwart worker`
# runs `agents.worker` inside Prefect's worker) does not load the runtime.
_HOMES = {
    "Agent": "agents.declare.agent",
    "Decision": "agents.declare.decision",
    **dict.fromkeys(["Review", "Shadow", "StepOptions"], "agents.declare.options"),
    **dict.fromkeys(["Layer", "Step", "StepInfo"], "agents.declare.step"),
    **dict.fromkeys(
        [
            "ActionInProgress",
            "ConfigurationError",
            "DeclarationError",
            "InputError",
            "MemoryConflict",
            "StalwartError",
            "StepRunError",
            "UserError",
        ],
        "agents.errors",
    ),
    "RunContext": "agents.context",
    "RunResult": "agents.result",
    "LLM": "agents.resources.llm",
    "Endpoint": "agents.endpoint",
    "Memory": "agents.store.memory",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'agents' has no attribute {name!r}")
    value = getattr(import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])


__all__ = (
    "LLM",
    "ActionInProgress",
    "Agent",
    "ConfigurationError",
    "Decision",
    "DeclarationError",
    "Endpoint",
    "InputError",
    "Layer",
    "Memory",
    "MemoryConflict",
    "Review",
    "RunContext",
    "RunResult",
    "Shadow",
    "StalwartError",
    "Step",
    "StepInfo",
    "StepOptions",
    "StepRunError",
    "UserError",
)
