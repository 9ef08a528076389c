"""Stalwart: declare an agent as a typed DAG in four layers and run it as a Prefect flow.

Example:
    >>> from agents import Agent, Decision
    >>> triage = Agent("ticket-triage")

Everything a user types is importable from here; the rest lives in `_`-prefixed modules.
"""

from agents._decision import Decision
from agents._declare import Agent, Layer, Review, Shadow, Step, StepInfo, StepOptions
from agents._errors import (
    ActionInProgress,
    ConfigurationError,
    DeclarationError,
    InputError,
    MemoryConflict,
    StalwartError,
    StepRunError,
    UserError,
)
from agents._run import RunContext, RunResult
from agents.resources.llm import LLM, Endpoint
from agents.store.memory import Memory

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
