"""Few-shot memory: confirmed and corrected decisions become examples for similar inputs.

A decision with feedback that establishes its right answer (`correct=True`, or a `label`) is an
example: its input (the decision's redacted input snapshot) and that answer. `similar` finds a
tenant's examples closest to a text with BM25 (Okapi, k1=1.5, b=0.75) over word tokens: no
network and no model. `recall` does the same from inside a reasoning step and records which
examples the step used (`example_use`, by run). `messages` puts them into the prompt: each
example as an earlier user/assistant turn (its input, then its right answer as JSON), the new
input last.

Another similarity (an embedding model, say) plugs in through `similar(..., backend=...)`: any
callable `(query, documents) -> scores`.

Example:
    >>> index = BM25(["refund for my invoice", "parcel never arrived", "reset my password"])
    >>> [round(s, 2) > 0 for s in index.scores("where is my parcel")]
    [False, True, False]
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlmodel import col, delete, func, select

from agents.learning.feedback import answer, latest
from agents.store._convert import require_tenant
from agents.store.engine import get_engine, session
from agents.store.tables import DecisionRecord, ExampleUse, Feedback

if TYPE_CHECKING:
    from agents.context import RunContext

__all__ = [
    "BM25",
    "MAX_EXAMPLES",
    "Example",
    "Similarity",
    "examples",
    "messages",
    "recall",
    "similar",
    "snapshot_text",
    "used",
]

MAX_EXAMPLES = 8
"""The most examples `similar` returns, whatever `k` asks for (the prompt's cap)."""
MAX_EXAMPLE_CHARS = 1500
"""An example's text is cut to this many characters in a prompt."""
HIDDEN_FIELDS = frozenset({"confidence", "rationale"})
"""Decision fields never shown as part of an example's answer."""

Similarity = Callable[[str, Sequence[str]], Sequence[float]]
"""A similarity backend: (query, documents) → one score per document, higher is closer."""

_TOKEN = re.compile(r"[a-z0-9]+")
_STOP = frozenset(
    _TOKEN.findall(
        "a an and are as at be but by for from has have i if in is it its me my of on or our so "
        "that the their this to was we were will with you your"
    )
)


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens without common stop words.

    Example:
        >>> tokenize("The parcel is LATE!")
        ['parcel', 'late']
    """
    return [t for t in _TOKEN.findall(text.casefold()) if t not in _STOP]


class BM25:
    """Okapi BM25 over a fixed list of documents.

    Example:
        >>> BM25(["a cat", "a dog"]).top("dog", 1)
        [(1, ...)]
    """

    def __init__(self, documents: Sequence[str], *, k1: float = 1.5, b: float = 0.75) -> None:
        self.k1, self.b = k1, b
        self.docs = [Counter(tokenize(d)) for d in documents]
        self.lengths = [sum(d.values()) for d in self.docs]
        self.avg = (sum(self.lengths) / len(self.docs)) if self.docs else 0.0
        frequency: Counter[str] = Counter()
        for doc in self.docs:
            frequency.update(doc.keys())
        n = len(self.docs)
        self.idf = {t: math.log(1 + (n - f + 0.5) / (f + 0.5)) for t, f in frequency.items()}

    def scores(self, query: str) -> list[float]:
        """One score per document (0 when no query word occurs in it)."""
        terms = tokenize(query)
        found = []
        for doc, length in zip(self.docs, self.lengths, strict=True):
            total = 0.0
            norm = self.k1 * (1 - self.b + self.b * length / (self.avg or 1.0))
            for term in terms:
                tf = doc.get(term, 0)
                if tf:
                    total += self.idf[term] * tf * (self.k1 + 1) / (tf + norm)
            found.append(total)
        return found

    def top(self, query: str, k: int) -> list[tuple[int, float]]:
        """The `k` best (index, score) pairs with a positive score, best first."""
        ranked = sorted(enumerate(self.scores(query)), key=lambda p: (-p[1], p[0]))
        return [(i, s) for i, s in ranked[:k] if s > 0]


@dataclass(frozen=True)
class Example:
    """A resolved decision, as a few-shot example."""

    decision_id: str
    """The decision it comes from."""
    text: str
    """Its input, as text."""
    answer: dict[str, Any]
    """The right answer (the output, with the feedback's label applied)."""
    score: float = 0.0
    """How similar it is to the query (0 when not retrieved by similarity)."""


def snapshot_text(snapshot: Any, fields: Iterable[str] | None = None) -> str:
    """The text of an input snapshot: its string values (only under keys in `fields`, if given).

    Example:
        >>> snapshot_text({"ticket": {"subject_line": "Late", "body": "Where?", "id": "T1"}},
        ...               fields=("subject_line", "body"))
        'Late\\nWhere?'
    """
    wanted = None if fields is None else frozenset(fields)
    parts: list[str] = []

    def walk(value: Any, key: str | None, inside: bool) -> None:
        take = inside or (wanted is not None and key in wanted)
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(v, str(k), take)
        elif isinstance(value, list):
            for v in value:
                walk(v, key, take)
        elif isinstance(value, str) and (wanted is None or take):
            parts.append(value)

    walk(snapshot, None, False)
    return "\n".join(parts)


def examples(
    tenant: str,
    agent: str,
    step: str,
    *,
    fields: Iterable[str] | None = None,
    url: str | None = None,
) -> list[Example]:
    """Every example of one tenant's step: decisions whose latest feedback gives an answer.

    Example:
        >>> examples("acme", "ticket-triage", "route", url="sqlite://")
        []
    """
    require_tenant(tenant)
    given = latest(tenant=tenant, agent=agent, step=step, url=url)
    ids = sorted(given)
    found: list[Example] = []
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        with session(url) as s:
            rows = s.exec(
                select(DecisionRecord).where(
                    col(DecisionRecord.tenant) == tenant, col(DecisionRecord.id).in_(chunk)
                )
            ).all()
        for row in rows:
            right = answer(row, given[row.id])
            text = snapshot_text(row.input_snapshot, fields)
            if right and text.strip():
                found.append(Example(decision_id=row.id, text=text, answer=right))
    # By text first: BM25 breaks ties by position, and decision ids are random, so the same
    # examples and query would otherwise recall different shots from one tenant to the next.
    found.sort(key=lambda e: (e.text, e.decision_id))
    return found


_indexes: dict[tuple[Any, ...], tuple[Any, list[Example], BM25]] = {}
_indexes_lock = threading.Lock()


def _index(
    tenant: str, agent: str, step: str, fields: tuple[str, ...] | None, url: str | None
) -> tuple[list[Example], BM25]:
    """The step's examples and their BM25 index, rebuilt only when its feedback changed."""
    with session(url) as s:
        version = tuple(
            s.exec(
                select(func.count(), func.max(Feedback.created_at)).where(
                    col(Feedback.tenant) == tenant,
                    col(Feedback.agent) == agent,
                    col(Feedback.step) == step,
                )
            ).one()
        )
    key = (str(get_engine(url).url), tenant, agent, step, fields)
    with _indexes_lock:
        cached = _indexes.get(key)
    if cached is not None and cached[0] == version:
        return cached[1], cached[2]
    pool = examples(tenant, agent, step, fields=fields, url=url)
    index = BM25([e.text for e in pool])
    with _indexes_lock:
        _indexes[key] = (version, pool, index)
    return pool, index


def similar(
    tenant: str,
    agent: str,
    step: str,
    text: str,
    k: int = 3,
    *,
    fields: Iterable[str] | None = None,
    backend: Similarity | None = None,
    url: str | None = None,
) -> list[Example]:
    """The `k` examples of one tenant's step most similar to `text`, closest first.

    Args:
        tenant: Whose examples (never another tenant's).
        agent: The agent's name.
        step: The reasoning step.
        text: The new input, as text.
        k: How many (at most `MAX_EXAMPLES`).
        fields: Only these keys of the examples' input snapshots are compared.
        backend: Another similarity (e.g. embeddings); default BM25.
        url: Database URL; None means the settings' URL.

    Example:
        >>> similar("acme", "ticket-triage", "route", "my parcel is late", url="sqlite://")
        []
    """
    require_tenant(tenant)
    k = max(0, min(int(k), MAX_EXAMPLES))
    pool, index = _index(tenant, agent, step, None if fields is None else tuple(fields), url)
    if not pool or k == 0:
        return []
    if backend is None:
        ranked = index.top(text, k)
    else:
        scores = list(backend(text, [e.text for e in pool]))
        ranked = sorted(enumerate(scores), key=lambda p: (-p[1], p[0]))[:k]
        ranked = [(i, s) for i, s in ranked if s > 0]
    return [
        Example(decision_id=pool[i].decision_id, text=pool[i].text, answer=pool[i].answer, score=s)
        for i, s in ranked
    ]


def recall(
    context: RunContext,
    text: str,
    k: int = 3,
    *,
    fields: Iterable[str] | None = None,
    backend: Similarity | None = None,
    url: str | None = None,
) -> list[Example]:
    """`similar` from inside a reasoning step, recording which examples this run used.

    Example:
        >>> @agent.reasoning(threshold=0.7)  # doctest: +SKIP
        ... def route(ticket: Ticket, llm: LLM, context: RunContext) -> Routing:
        ...     shots = examples.recall(context, ticket.body, k=3)
        ...     return llm.decide(Routing, examples.messages(ticket.body, shots))
    """
    found = similar(
        context.tenant,
        context.agent,
        context.step,
        text,
        k,
        fields=fields,
        backend=backend,
        url=url,
    )
    with session(url) as s:
        # A retried step records its last attempt only.
        s.exec(
            delete(ExampleUse).where(
                col(ExampleUse.tenant) == context.tenant,
                col(ExampleUse.agent_run_id) == context.run_id,
                col(ExampleUse.step) == context.step,
            )
        )
        s.add(
            ExampleUse(
                tenant=context.tenant,
                agent=context.agent,
                step=context.step,
                agent_run_id=context.run_id,
                run_key=context.run_key,
                example_ids=[e.decision_id for e in found],
            )
        )
    return found


def used(tenant: str, agent_run_id: str, *, url: str | None = None) -> dict[str, list[str]]:
    """The example decision ids each reasoning step of one run put into its prompt.

    Example:
        >>> used("acme", "0" * 32, url="sqlite://")
        {}
    """
    require_tenant(tenant)
    with session(url) as s:
        rows = s.exec(
            select(ExampleUse).where(
                col(ExampleUse.tenant) == tenant, col(ExampleUse.agent_run_id) == agent_run_id
            )
        ).all()
    return {row.step: list(row.example_ids or []) for row in rows}


def _shown(answer: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in answer.items() if k not in HIDDEN_FIELDS}


def messages(prompt: str, found: Sequence[Example]) -> list[dict[str, str]] | str:
    """The prompt with its examples: one user/assistant turn per example, then the input.

    Without examples the prompt comes back unchanged (a plain string).

    Example:
        >>> shot = Example("d1", "my parcel is late", {"category": "shipping"})
        >>> [m["role"] for m in messages("where is my order?", [shot])]
        ['user', 'assistant', 'user']
    """
    if not found:
        return prompt
    turns: list[dict[str, str]] = []
    for example in reversed(found):  # the closest one nearest to the new input
        turns.append({"role": "user", "content": example.text[:MAX_EXAMPLE_CHARS]})
        turns.append({"role": "assistant", "content": json.dumps(_shown(example.answer))})
    turns.append({"role": "user", "content": prompt})
    return turns
