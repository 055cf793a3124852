"""What every pruner reads from a history: the evidence, rung values, and argument checks.

Steps are validation runs counted from 0; a trial at step ``s`` has used ``s + 1`` units of
resource.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from lightning_hpt.trial import Direction, History, TrialRecord, TrialState

# FAILED trials are left out: their values may come from a broken configuration or a crash
# half-way through a validation run, and letting them lower the bar would prune good trials.
# PRUNED trials stay in, because successive halving ranks every trial that reached a rung.
EVIDENCE_STATES = frozenset({TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING})


def others(history: History, trial: TrialRecord) -> list[TrialRecord]:
    """The trials whose intermediate values count as evidence against ``trial`` (itself excluded)."""
    return [t for t in history.trials if t.number != trial.number and t.state in EVIDENCE_STATES]


def is_finite(value: float | None) -> bool:
    """Whether ``value`` is a finite number; ``None`` (how some databases keep a NaN) is not."""
    try:
        return math.isfinite(value)
    except TypeError:
        return False


def score(value: float | None, direction: Direction) -> float:
    """``value``, or the direction's worst value when it is NaN, infinite or missing."""
    return float(value) if is_finite(value) else direction.worst


def value_from(intermediate: Mapping[int, float], step: int) -> float | None:
    """The value at the first recorded step ``>= step`` (``None`` if the trial never got there).

    A trial whose records skip ``step`` (a resumed trial, sparse validation) still counts at
    ``step`` with the first value recorded after it.
    """
    reached = [s for s in intermediate if s >= step]
    return intermediate[min(reached)] if reached else None


def previous_step(trial: TrialRecord, step: int) -> int:
    """The trial's latest recorded step before ``step``, or -1."""
    return max((s for s in trial.intermediate if s < step), default=-1)
