"""Errors: one base class, developer mistakes apart from failures at run time.

A `UserError` (bad declaration, bad configuration, bad input) is never retried; a `StepRunError`
follows the step's retry policy.
"""

from __future__ import annotations

from collections.abc import Sequence


class StalwartError(Exception):
    """Base class of every error Stalwart raises."""


class UserError(StalwartError):
    """A mistake in how Stalwart is used: fixing the code or configuration is the remedy."""


class DeclarationError(UserError):
    """An agent's declaration is invalid. The message lists every problem, one per line.

    Each line names the step and the parameter, what was expected, what was found, and the fix.
    """

    def __init__(self, agent: str, problems: Sequence[str]) -> None:
        self.agent = agent
        self.problems = sorted(problems)
        count = len(self.problems)
        noun = "problem" if count == 1 else "problems"
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"Agent {agent!r} has {count} declaration {noun}:\n{lines}")

    @classmethod
    def single(cls, agent: str, problem: str) -> DeclarationError:
        return cls(agent, [problem])


class ConfigurationError(UserError):
    """Stalwart's configuration (settings, endpoint, database) is unusable."""


class InputError(UserError):
    """A run input is malformed: missing, not JSON, too large, not an object."""


class MemoryConflict(StalwartError):
    """A memory write lost an optimistic-concurrency race: re-read and try again."""

    def __init__(self, key: str, expected: int | None, found: int | None) -> None:
        self.key = key
        self.expected = expected
        self.found = found
        super().__init__(
            f"Memory key {key!r} changed concurrently: expected version {expected}, "
            f"found {found}. Re-read the value and retry the update."
        )


class StepRunError(StalwartError):
    """A step failed at run time; retried according to the step's policy."""
