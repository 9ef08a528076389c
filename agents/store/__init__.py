"""Store: Stalwart's durable state in one SQL database (SQLite by default, or PostgreSQL).

Owns the tables (`tables`), connections and schema upgrades (`engine`), Prefect result storage
(`results.SQLResultStorage`), agent memory (`memory.Memory`), the at-most-once action ledger
(`ledger`), and the tenant-scoped read API (`queries`). `SQLResultStorage` imports Prefect, so it
is loaded on first access only.

Example:
    >>> from agents.store import Memory, runs
    >>> Memory("acme", "triage", url="sqlite://").set("k", {"v": 1})
    1
    >>> runs(tenant="nobody", url="sqlite://")
    []
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agents.store import ledger
from agents.store.decisions import (
    find_decisions,
    get_decision,
    prune,
    record_decisions,
    set_outcome,
)
from agents.store.engine import (
    current_revision,
    dispose_engines,
    downgrade,
    get_engine,
    head_revision,
    normalize_url,
    redact_url,
    session,
    upgrade,
)
from agents.store.memory import Memory
from agents.store.queries import (
    actions,
    memory,
    record_run_end,
    record_run_start,
    record_steps,
    runs,
    steps,
)
from agents.store.tables import (
    ActionRecord,
    AgentRun,
    DecisionRecord,
    MemoryItem,
    StepResult,
    StepRun,
)

if TYPE_CHECKING:
    from agents.store.results import SQLResultStorage

__all__ = [
    "ActionRecord",
    "AgentRun",
    "DecisionRecord",
    "Memory",
    "MemoryItem",
    "SQLResultStorage",
    "StepResult",
    "StepRun",
    "actions",
    "current_revision",
    "dispose_engines",
    "downgrade",
    "find_decisions",
    "get_decision",
    "get_engine",
    "head_revision",
    "ledger",
    "memory",
    "normalize_url",
    "prune",
    "record_decisions",
    "record_run_end",
    "record_run_start",
    "record_steps",
    "redact_url",
    "runs",
    "session",
    "set_outcome",
    "steps",
    "upgrade",
]


def __getattr__(name: str) -> Any:
    if name == "SQLResultStorage":
        from agents.store.results import SQLResultStorage

        return SQLResultStorage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
