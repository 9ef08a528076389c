"""The reliability suite's one result type and its one table.

Every scenario module `bench/faults/sN_<name>.py` exposes `run(short: bool = False) ->
ScenarioResult` (short: the bounded version `.ci/run` runs through `tests/faults/`)
and a `main()` that prints its one-row table; `bench/faults/run_all.py` runs them all and prints
one table.

Example:
    >>> r = ScenarioResult("1 model faults", runs=10, completed=10, lost=0,
    ...                    duplicate_actions=0, llm_recalls=0, recover_s=None)
    >>> r.passed
    True
    >>> table([r]).splitlines()[2].startswith("| 1 model faults | 10 | 10 | 0 | 0 | 0 | n/a | pass")
    True
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["ScenarioResult", "table"]


@dataclass
class ScenarioResult:
    """What one scenario measured: the issue's five figures plus whatever else it checks.

    `passed` is False when anything was lost or done twice, or when `failures` names a
    scenario-specific check that did not hold (an unauthorized action, a leaked secret, ...).
    """

    scenario: str
    runs: int
    completed: int
    lost: int
    duplicate_actions: int
    llm_recalls: int | None = None
    recover_s: float | None = None
    notes: str = ""
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.lost == 0 and self.duplicate_actions == 0 and not self.failures


def _cell(value: float | int | None, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.1f}{unit}"
    return f"{value}{unit}"


def table(results: Iterable[ScenarioResult]) -> str:
    """The suite's markdown table, one row per scenario."""
    lines = [
        "| scenario | runs | completed | lost | duplicate actions | LLM calls re-made "
        "| time to recover | result | notes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        verdict = "pass" if r.passed else "FAIL: " + "; ".join(r.failures or ["lost/duplicates"])
        lines.append(
            f"| {r.scenario} | {r.runs} | {r.completed} | {r.lost} | {r.duplicate_actions} "
            f"| {_cell(r.llm_recalls)} | {_cell(r.recover_s, ' s')} | {verdict} | {r.notes} |"
        )
    return "\n".join(lines)
