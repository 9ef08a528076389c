"""Learning from outcomes: feedback on decisions, calibrated thresholds, few-shot examples.

* `feedback`: record that a decision was right or wrong (and the right answer), from code, the
  CLI (`stalwart feedback`) or a learning step.
* `calibration`: per tenant and reasoning step, the threshold that meets a declared precision,
  applied only within the step's declared bounds and versioned with its evidence.
* `examples`: confirmed and corrected decisions become examples, retrieved per tenant by BM25
  similarity (no network) and put into a reasoning prompt, with a record of which were used.

Example:
    >>> from agents.learning import Calibration
    >>> Calibration(target_precision=0.95, bounds=(0.6, 0.95)).bounds
    (0.6, 0.95)
"""

from __future__ import annotations

from agents.declare.options import Calibration

__all__ = ("Calibration",)
