"""How the pruners rank trials of a study with several objectives: non-dominated sorting at the step judged.

With one objective a pruner compares values; with several it compares vectors of every objective's
value (:attr:`~lightning_hpt.trial.TrialRecord.intermediate_values`) by non-dominated sorting, as
multi-objective ASHA does (Schmucker et al., 2021, "Multi-objective multi-fidelity hyperparameter
optimization with application to fairness"): the points at a rung are ordered front by front, and
within a front by crowding distance, larger first (:mod:`lightning_hpt.pareto`; the extremes of a front
come first). A trial's place is the number of rivals *strictly* ahead of it in that order, so ties go on,
as they do with one objective:

* successive halving (and each Hyperband bracket) keeps a trial at a rung iff fewer than
  ``max(n // reduction_factor, 1)`` of the ``n`` trials there (itself included) are ahead of it;
* the median rule prunes a trial iff more than half of the other trials at the step are ahead of it.

A non-finite value in any objective counts as the worst (the trial itself is pruned at once).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from lightning_hpt.objectives import Objective, to_maximize
from lightning_hpt.trial import TrialRecord

__all__ = ["ahead", "finite_vector", "vector_from"]


def finite_vector(vector: Sequence[float] | None) -> bool:
    """Whether every objective's value in ``vector`` is a finite number."""
    return vector is not None and all(v is not None and math.isfinite(v) for v in vector)


def vector_from(values: Mapping[int, Sequence[float]], step: int) -> Sequence[float] | None:
    """The vector at the first recorded step ``>= step`` (``None`` if the trial never got there)."""
    reached = [s for s in values if s >= step]
    return values[min(reached)] if reached else None


def ahead(own: Sequence[float], rivals: Sequence[Sequence[float]], objectives: Sequence[Objective]) -> int:
    """How many of ``rivals`` come strictly before ``own`` by non-dominated sorting and crowding distance."""
    from lightning_hpt.pareto import nds_keys

    if not rivals:
        return 0
    points = torch.tensor([to_maximize(v, objectives) for v in (own, *rivals)], dtype=torch.float64)
    keys = nds_keys(points)
    return sum(k < keys[0] for k in keys[1:])


def rivals_at(trials: Sequence[TrialRecord], step: int, exact: bool) -> list[Sequence[float]]:
    """The vectors of ``trials`` at ``step`` (``exact``: recorded at that very step; else the first at or after it)."""
    if exact:
        return [t.intermediate_values[step] for t in trials if step in t.intermediate_values]
    return [v for t in trials if (v := vector_from(t.intermediate_values, step)) is not None]
