"""The values the qa-runs agent passes between its steps (all Pydantic, so Prefect can persist
them) and the `Decision` subclasses its reasoning step returns.

Example:
    >>> TestResult(nodeid="tests/test_a.py::test_x", outcome="passed").failing
    False
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from agents import Decision

Outcome = Literal["passed", "failed", "error", "skipped"]
#: What a failure is: a bug in the code under test, a test that fails only sometimes, a
#: machine or configuration problem, or a bug in the test itself.
FailureKind = Literal["real_bug", "flaky", "environment", "test_bug"]
KINDS: tuple[FailureKind, ...] = ("real_bug", "flaky", "environment", "test_bug")


class TestResult(BaseModel):
    """One test's outcome in one pytest execution (written by `flows.qa.shard_plugin`)."""

    __test__ = False  # not a pytest test class, whatever its name says

    nodeid: str
    outcome: Outcome
    phase: str = "call"
    """setup, call, teardown, or collect when the module failed to import."""
    exc_type: str = ""
    message: str = ""
    """The crash line pytest shows, e.g. `KeyError: 'INVENTORY_DATABASE_URL'`."""
    traceback: str = ""
    """pytest's short traceback, trimmed to its last 2,000 characters."""
    duration: float = 0.0

    @property
    def failing(self) -> bool:
        return self.outcome in ("failed", "error")


class Execution(BaseModel):
    """What one pytest subprocess did: its outcomes and how long it took."""

    results: list[TestResult]
    seconds: float
    """Wall time of the subprocess, start-up included."""
    exit_code: int


class ShardRun(BaseModel):
    """Perception: one shard of a project's suite, executed, plus what memory knows."""

    project: str
    round: str
    shard: int
    shards: int
    tests: int
    passed: int
    skipped: int
    failures: list[TestResult]
    """Only the failing tests: passes are counted, not carried (a shard may hold hundreds)."""
    pytest_seconds: float
    known_flaky: list[str] = Field(default_factory=list)
    """Failing tests this project has seen pass on a rerun before (from memory)."""


class FailureVerdict(Decision):
    """The model's classification of one failing test."""

    kind: FailureKind = Field(
        description=(
            "real_bug: the code under test is wrong (a wrong value, a failed assertion); "
            "flaky: the test fails only sometimes (timeouts, timing, ordering); "
            "environment: the machine or configuration is missing something (an environment "
            "variable, a service, a module); test_bug: the test itself is wrong (a typo, a "
            "missing fixture)."
        )
    )


class Verdict(BaseModel):
    """One failing test, classified: by the model, or from memory for a known flaky test."""

    nodeid: str
    kind: FailureKind
    confidence: float
    rationale: str
    source: Literal["model", "memory"] = "model"


class ShardVerdict(Decision):
    """Reasoning: every failure of a shard classified; the shard's confidence is the lowest
    of its verdicts (1.0 for a green shard), so one unsure verdict holds the whole shard."""

    verdicts: list[Verdict] = Field(default_factory=list)

    @property
    def suspected_flaky(self) -> list[str]:
        return [v.nodeid for v in self.verdicts if v.kind == "flaky"]


class Rerun(BaseModel):
    """Action: the suspected flaky tests executed once more, under one idempotency key."""

    nodeids: list[str]
    passed: list[str]
    """Suspected flakes that passed the rerun: confirmed flaky."""
    failed: list[str]
    """Suspected flakes that failed again: not flaky after all, a person should look."""
    pytest_seconds: float
    idempotency_key: str


class Remembered(BaseModel):
    """Learning: the project's flaky tests in memory after this shard."""

    project: str
    confirmed: list[str]
    forgotten: list[str]
    flaky: list[str]
