"""Counters of the offline model server: what it was asked and what it served.

This module owns `Stats`, updated by the HTTP handlers (in the server's thread) and read by tests
and `GET /_stalwart/stats` (anywhere); every method takes a lock. Besides totals it keeps, per
prompt (a hash of model + messages), how many times a request was answered successfully, so the
reliability suite can count model calls that were paid for twice (`remade`), and how many
requests are being served right now (`in_flight`) and from which client ports
(`in_flight_ports`, so a test can tell which process is waiting on an answer).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


def prompt_hash(model: str, messages: Any) -> str:
    """The identity of one model call: sha256 of the canonical JSON of model and messages.

    Example:
        >>> prompt_hash("m", [{"role": "user", "content": "hi"}])[:12]
        '3aa069de508d'
    """
    canonical = json.dumps([model, messages], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


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
        tool_calls_total: Calls of a step's tools served in tool-loop turns (the answers,
            `final_result` calls, not counted).
        in_flight: Chat-completion requests being served now (received, not yet answered).
        in_flight_ports: Client (peer) ports of those requests, with how many each.
        answers_by_prompt: Successful answers (no fault) per `prompt_hash` of model + messages.

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
    tool_calls_total: int = 0
    in_flight: int = 0
    in_flight_ports: Counter[int] = field(default_factory=Counter)
    answers_by_prompt: Counter[str] = field(default_factory=Counter)
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

    def record_tool_calls(self, count: int) -> None:
        """Count `count` tool calls served in one tool-loop turn.

        Example:
            >>> stats = Stats(); stats.record_tool_calls(2); stats.tool_calls_total
            2
        """
        with self._lock:
            self.tool_calls_total += count

    def begin(self, port: int | None = None) -> None:
        """One more request in flight, from client `port` if known (pair with `end`).

        Example:
            >>> stats = Stats(); stats.begin(50123); stats.in_flight, stats.ports_in_flight()
            (1, {50123})
        """
        with self._lock:
            self.in_flight += 1
            if port is not None:
                self.in_flight_ports[port] += 1

    def end(self, port: int | None = None) -> None:
        """One request fewer in flight (the same `port` as its `begin`).

        Example:
            >>> stats = Stats(); stats.begin(50123); stats.end(50123); stats.in_flight
            0
        """
        with self._lock:
            self.in_flight -= 1
            if port is not None:
                self.in_flight_ports[port] -= 1
                if self.in_flight_ports[port] <= 0:
                    del self.in_flight_ports[port]

    def ports_in_flight(self) -> set[int]:
        """The client ports with a request in flight now.

        Example:
            >>> Stats().ports_in_flight()
            set()
        """
        with self._lock:
            return set(self.in_flight_ports)

    def record_answer(self, model: str, messages: Any) -> None:
        """Count one successful answer to (model, messages).

        Example:
            >>> stats = Stats()
            >>> stats.record_answer("m", [{"role": "user", "content": "hi"}])
            >>> stats.record_answer("m", [{"role": "user", "content": "hi"}])
            >>> stats.remade()
            1
        """
        key = prompt_hash(model, messages)
        with self._lock:
            self.answers_by_prompt[key] += 1

    def remade(self) -> int:
        """Successful answers beyond the first to the same (model, messages): calls paid twice.

        Example:
            >>> Stats().remade()
            0
        """
        with self._lock:
            return sum(n - 1 for n in self.answers_by_prompt.values() if n > 1)

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
                "tool_calls_total": self.tool_calls_total,
                "in_flight": self.in_flight,
                "answers": sum(self.answers_by_prompt.values()),
                "distinct_prompts": len(self.answers_by_prompt),
                "remade": sum(n - 1 for n in self.answers_by_prompt.values() if n > 1),
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
            self.tool_calls_total = 0
            self.answers_by_prompt = Counter()
