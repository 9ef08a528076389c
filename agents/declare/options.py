"""`Calibration`: how a reasoning step opts into threshold calibration (a declaration value).

Kept free of store imports so `agents._declare` can import it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class Calibration:
    """Let `agents.learning.calibration.apply` move this step's threshold, per tenant.

    Example:
        >>> Calibration(target_precision=0.95, bounds=(0.6, 0.95)).problems(0.7)
        []
        >>> Calibration(bounds=(0.8, 0.9)).problems(0.7)
        ['threshold 0.7 is outside the calibration bounds (0.8, 0.9)']
    """

    target_precision: float = 0.95
    """Share of auto-decided (at or above threshold) decisions that must be correct."""
    bounds: tuple[float, float] = (0.5, 0.95)
    """The lowest and highest threshold calibration may set."""
    min_decisions: int = 20
    """Labelled decisions needed before a threshold is recommended at all."""

    def problems(self, threshold: float | None) -> list[str]:
        """What is wrong with these options for a step declared with `threshold`."""
        found: list[str] = []
        lo, hi = self.bounds
        if not 0.0 <= lo <= hi <= 1.0:
            found.append(f"bounds {self.bounds} must satisfy 0 <= low <= high <= 1")
        if not 0.0 < self.target_precision <= 1.0:
            found.append(f"target_precision {self.target_precision} must be in (0, 1]")
        if self.min_decisions < 1:
            found.append(f"min_decisions {self.min_decisions} must be at least 1")
        if threshold is None:
            found.append("calibration needs a declared 'threshold' to start from")
        elif not found and not lo <= threshold <= hi:
            found.append(f"threshold {threshold} is outside the calibration bounds {self.bounds}")
        return found
