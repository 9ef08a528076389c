"""Counters of the offline model server: what it was asked and what it served.

This module owns `Stats`, updated by the HTTP handlers (in the server's thread) and read by tests
and `GET /_stalwart/stats` (anywhere); every method takes a lock.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Stats:
    """Request, fault and token counters of one model server.

    Attributes:
        requests_total: Chat-completion requests received (faulted ones included).
        requests_by_model: The same, per requested model name.
        faults_injected: Requests that got a fault.
        faults_by_kind: The same, per fault kind.
        prompt_tokens: Estimated prompt tokens of answered requests.
        completion_tokens: Estimated completion tokens served.
        tokens_served: prompt_tokens + completion_tokens.

    Example:
        >>> stats = Stats()
        >>> stats.record_request("stalwart-test"); stats.requests_total
        1
    """

    requests_total: int = 0
    requests_by_model: dict[str, int] = field(default_factory=dict)
    faults_injected: int = 0
    faults_by_kind: dict[str, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tokens_served: int = 0
    _lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )

    def record_request(self, model: str) -> None:
        """Count one chat-completion request for `model`.

        Example:
            >>> Stats().record_request("m")
        """
        with self._lock:
            self.requests_total += 1
            self.requests_by_model[model] = self.requests_by_model.get(model, 0) + 1

    def record_fault(self, kind: str) -> None:
        """Count one injected fault of `kind`.

        Example:
            >>> Stats().record_fault("429")
        """
        with self._lock:
            self.faults_injected += 1
            self.faults_by_kind[kind] = self.faults_by_kind.get(kind, 0) + 1

    def record_tokens(self, prompt: int, completion: int) -> None:
        """Add the usage of one answered request.

        Example:
            >>> Stats().record_tokens(10, 5)
        """
        with self._lock:
            self.prompt_tokens += prompt
            self.completion_tokens += completion
            self.tokens_served += prompt + completion

    def snapshot(self) -> dict[str, Any]:
        """A consistent JSON-compatible copy of the counters.

        Example:
            >>> Stats().snapshot()["faults_injected"]
            0
        """
        with self._lock:
            return {
                "requests_total": self.requests_total,
                "requests_by_model": dict(self.requests_by_model),
                "faults_injected": self.faults_injected,
                "faults_by_kind": dict(self.faults_by_kind),
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "tokens_served": self.tokens_served,
            }

    def reset(self) -> None:
        """Zero every counter, in place.

        Example:
            >>> stats = Stats(requests_total=3); stats.reset(); stats.requests_total
            0
        """
        with self._lock:
            self.requests_total = 0
            self.requests_by_model = {}
            self.faults_injected = 0
            self.faults_by_kind = {}
            self.prompt_tokens = 0
            self.completion_tokens = 0
            self.tokens_served = 0
