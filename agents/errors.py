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


class ActionInProgress(StalwartError):
    """Another live execution holds this action's claim: this one must not act.

    Raised by `ledger.claim` when the key's `started` row has an unexpired lease of another
    owner that is still alive (it renewed its lease or completed while we watched): the same
    agent run is executing twice at once (a worker presumed dead came back). The runner stops
    that execution cleanly (run status `conflict`); it is never retried.

    Attributes:
        key: The idempotency key.
        owner: The execution holding the lease (an `agent_run` id).
        expires_at: When its lease ran out, as last seen (ISO 8601), or None.
    """

    def __init__(self, key: str, *, owner: str | None, expires_at: str | None = None) -> None:
        self.key = key
        self.owner = owner
        self.expires_at = expires_at
        super().__init__(
            f"Action {key[:16]}… is being executed by another live execution (run "
            f"{owner}, lease until {expires_at}); this execution stops without acting. The "
            "same agent run was started twice: the other execution's outcome is the run's."
        )

    @classmethod
    def held(cls, key: str, owner: str | None, expires_at: object) -> ActionInProgress:
        """Build the error from a ledger row's lease fields."""
        when = expires_at.isoformat() if hasattr(expires_at, "isoformat") else None
        return cls(key, owner=owner, expires_at=when)

    @classmethod
    def completed_by_twin(cls, key: str, owner: str | None, at: object) -> ActionInProgress:
        """The action was completed by another execution after this one started: a twin."""
        error = cls(key, owner=owner)
        when = at.isoformat() if hasattr(at, "isoformat") else at
        error.args = (
            f"Action {key[:16]}… was completed by another live execution (run {owner}, at "
            f"{when}) while this one was running; this execution stops without acting. The "
            "same agent run was started twice: the other execution's outcome is the run's.",
        )
        return error


class StepRunError(StalwartError):
    """For a step to raise when it fails at run time: retried by the step's `retries`.

    Any exception but a `UserError` is retried the same way; this class lets a step say so
    explicitly and lets callers catch Stalwart's failures apart from others. The runtime itself
    never raises it: a failed step ends its run `failed`, with the error in `RunResult.error`.

    Example:
        >>> from agents import StepRunError, UserError
        >>> isinstance(StepRunError("upstream busy"), UserError)
        False
    """


class ProviderUnavailable(StalwartError):
    """The model endpoint is unavailable: transient failures outlasted the retries, or its
    circuit breaker is open and no fallback model could answer.

    Already retried inside `LLM.decide`, so a step does not retry it again (see
    `agents.policy.is_retryable_by_step`). The message names the endpoint and the model, never
    the key.

    Attributes:
        endpoint: The endpoint's name (e.g. "configured").
        model: The model last tried.
        attempts: HTTP requests made before giving up (0 when the breaker refused them all).
        status_code: The last HTTP status received, if any.
        breaker_open: Whether an open circuit breaker refused the request.
    """

    def __init__(
        self,
        message: str,
        *,
        endpoint: str = "",
        model: str = "",
        attempts: int = 0,
        status_code: int | None = None,
        breaker_open: bool = False,
    ) -> None:
        super().__init__(message)
        self.endpoint = endpoint
        self.model = model
        self.attempts = attempts
        self.status_code = status_code
        self.breaker_open = breaker_open


class ProviderRejected(UserError):
    """The model endpoint refused the request for good (HTTP 400, 401, 403, 404, 422, ...).

    Retrying cannot help: the key, the model name or the request must be fixed. Never retried.
    The message names the endpoint, its host, the model and the status code, never the key.

    Attributes:
        endpoint: The endpoint's name.
        model: The model the request named.
        status_code: The HTTP status, or None for a client-side configuration error.
    """

    def __init__(
        self,
        message: str,
        *,
        endpoint: str = "",
        model: str = "",
        status_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.endpoint = endpoint
        self.model = model
        self.status_code = status_code


class ModelOutputError(StalwartError):
    """The model kept answering with output that does not fit the requested type.

    Raised after instructor's re-asks and the LLM layer's extra fresh attempt(s) all failed
    validation. It is not a crash of the endpoint (the circuit breaker does not count it) and
    it is not retried by the step either: the retries already happened inside `LLM.decide`.

    Attributes:
        endpoint: The endpoint's name.
        model: The model that answered.
        attempts: HTTP requests made (re-asks included).
    """

    def __init__(
        self, message: str, *, endpoint: str = "", model: str = "", attempts: int = 0
    ) -> None:
        super().__init__(message)
        self.endpoint = endpoint
        self.model = model
        self.attempts = attempts


class ReviewNotFound(UserError):
    """No review with this id belongs to this tenant (another tenant's review is not found
    either: its existence is not revealed)."""


class ReviewClosed(UserError):
    """The review was answered already, or expired: a second answer is refused, never applied."""


class ToolLoopExhausted(StalwartError):
    """A reasoning step's tool loop used up its `max_turns` (or its bad-call budget) without an
    answer: the step has no decision, and the ladder's fallback model or safe default apply."""
