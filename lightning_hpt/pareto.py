"""The Pareto front of a study with several objectives: non-dominated trials, sorting, crowding, hypervolume.

Values are compared in *maximization form* (minimized objectives negated, NaN and infinite values
the worst), with BoTorch's multi-objective utilities (``botorch.utils.multi_objective``): its
``is_non_dominated`` decides the fronts and its ``DominatedPartitioning`` computes hypervolumes.

Non-dominated sorting orders points front by front (front 0 is the Pareto front; front ``k`` is the
front of what is left without fronts ``0..k-1``), and within a front by crowding distance (NSGA-II,
Deb et al. 2002: the sum over objectives of the gap between a point's two neighbours, relative to
the front's range; the extremes of a front get an infinite distance), larger first: a point in a
sparse part of the front is kept before one in a crowded part. This order is the package's tie rule
wherever one point of several objectives must be ranked against others (the pruners, the proposals'
ranking). Tables list a front best first by the first objective, as the Pareto front is shown.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from lightning_hpt.exceptions import ConfigurationError
from lightning_hpt.objectives import Objective, describe, to_maximize
from lightning_hpt.trial import TrialRecord, rank_trials

__all__ = [
    "choose",
    "crowding_distance",
    "front_ranks",
    "hypervolume",
    "nds_keys",
    "objective_matrix",
    "pareto_front",
    "rank_pareto",
]


def objective_matrix(trials: Sequence[TrialRecord], objectives: Sequence[Objective]) -> torch.Tensor:
    """``n x m`` values of ``trials`` (each with every objective's value) in maximization form, float64."""
    rows = [to_maximize(t.objective_values or (math.nan,) * len(objectives), objectives) for t in trials]
    return torch.tensor(rows, dtype=torch.float64).reshape(len(rows), len(objectives))


def _non_dominated(points: torch.Tensor) -> torch.Tensor:
    from botorch.utils.multi_objective.pareto import is_non_dominated

    if len(points) == 0:
        return torch.zeros(0, dtype=torch.bool)
    return is_non_dominated(points, maximize=True, deduplicate=False)


def front_ranks(points: torch.Tensor) -> torch.Tensor:
    """The front of each of ``n x m`` points (maximization form): 0 for the non-dominated ones, and so on.

    Points with a non-finite coordinate come after every front of finite points, in one last front.
    """
    ranks = torch.full((len(points),), -1, dtype=torch.long)
    finite = torch.isfinite(points).all(dim=-1)
    left = torch.nonzero(finite).flatten()
    rank = 0
    while len(left):
        front = _non_dominated(points[left])
        ranks[left[front]] = rank
        left = left[~front]
        rank += 1
    ranks[~finite] = rank
    return ranks


def crowding_distance(points: torch.Tensor) -> torch.Tensor:
    """NSGA-II's crowding distance of each of ``n x m`` points of one front; the extremes get ``inf``."""
    n, m = points.shape
    distance = torch.zeros(n, dtype=torch.float64)
    if n <= 2:
        return torch.full((n,), math.inf, dtype=torch.float64)
    for j in range(m):
        order = torch.argsort(points[:, j], stable=True)
        col = points[order, j]
        span = float(col[-1] - col[0])
        distance[order[0]] = distance[order[-1]] = math.inf
        if span > 0 and math.isfinite(span):
            distance[order[1:-1]] += (col[2:] - col[:-2]) / span
    return distance


def nds_keys(points: torch.Tensor) -> list[tuple[int, float]]:
    """Sort keys of ``n x m`` points: ``(front, -crowding distance)``; smaller is better (see the module)."""
    ranks = front_ranks(points)
    crowd = torch.zeros(len(points), dtype=torch.float64)
    for r in ranks.unique():
        members = torch.nonzero(ranks == r).flatten()
        crowd[members] = crowding_distance(torch.nan_to_num(points[members], neginf=-1e300))
    return [(int(r), -float(c)) for r, c in zip(ranks, crowd, strict=True)]


def pareto_front(trials: Sequence[TrialRecord], objectives: Sequence[Objective]) -> list[TrialRecord]:
    """The non-dominated ones among the scored trials (COMPLETE, feasible, finite), best first by the first objective.

    Trials with equal values are all on the front; ties keep the order of their numbers.
    """
    scored = [t for t in trials if t.scored]
    if not scored:
        return []
    points = objective_matrix(scored, objectives)
    front = [t for t, keep in zip(scored, _non_dominated(points).tolist(), strict=True) if keep]
    return sorted(front, key=lambda t: (-to_maximize(t.objective_values[:1], objectives[:1])[0], t.number))


def rank_pareto(trials: Sequence[TrialRecord], objectives: Sequence[Objective]) -> list[TrialRecord]:
    """Trials best first with several objectives, for tables: the scored ones by front, within a front best
    first by the first objective (as :func:`pareto_front` lists the front), then number; then the others as
    :func:`~lightning_hpt.trial.rank_trials` orders them."""
    scored = [t for t in trials if t.scored]
    points = objective_matrix(scored, objectives) if scored else None
    fronts = front_ranks(points).tolist() if points is not None else []
    first = points[:, 0].tolist() if points is not None else []  # maximization form: larger is better
    order = sorted(range(len(scored)), key=lambda i: (fronts[i], -first[i], scored[i].number))
    ranked = [scored[i] for i in order]
    return ranked + [t for t in rank_trials(trials, objectives[0].direction) if not t.scored]


def hypervolume(points: torch.Tensor, ref_point: Sequence[float] | torch.Tensor) -> float:
    """The hypervolume that ``n x m`` points (maximization form) dominate above ``ref_point``; 0.0 for none."""
    from botorch.utils.multi_objective.box_decompositions.dominated import DominatedPartitioning

    ref = torch.as_tensor(ref_point, dtype=torch.float64)
    points = points[torch.isfinite(points).all(dim=-1)] if len(points) else points.reshape(0, len(ref))
    better = points[(points > ref).all(dim=-1)]
    if len(better) == 0:
        return 0.0
    return float(DominatedPartitioning(ref_point=ref, Y=better).compute_hypervolume())


def choose(
    front: Sequence[TrialRecord],
    objectives: Sequence[Objective],
    weights: Mapping[str, float] | Sequence[float] | None = None,
    rule: Callable[[TrialRecord], Any] | None = None,
) -> TrialRecord:
    """One trial of the Pareto ``front``: the largest ``rule(trial)``, or the largest weighted sum.

    With ``weights`` each objective is scaled over the front to ``[0, 1]`` (0 its worst value on the
    front, 1 its best), so weights compare objectives of any units; the chosen trial maximizes
    ``sum(weight * scaled value)``. Ties go to the lowest trial number.
    """
    if (weights is None) == (rule is None):
        raise ConfigurationError(
            f"best: give weights= (one per objective: {describe(objectives)}) or rule= (a function trial -> score,"
            " larger is better), one of them"
        )
    if rule is not None:
        if not callable(rule):
            raise ConfigurationError(f"best: rule must be a function trial -> score, got rule={rule!r}")
        return min(front, key=lambda t: (_negate(rule(t)), t.number))
    w = _weights(weights, objectives)
    points = objective_matrix(front, objectives)
    low, high = points.min(dim=0).values, points.max(dim=0).values
    scaled = (points - low) / (high - low).clamp_min(1e-300)
    scores = (scaled * torch.tensor(w, dtype=torch.float64)).sum(dim=-1).tolist()
    return min(zip(front, scores, strict=True), key=lambda ts: (-ts[1], ts[0].number))[0]


def _negate(score: Any) -> Any:
    if isinstance(score, tuple):
        return tuple(-s for s in score)
    return -score


def _weights(weights: Mapping[str, float] | Sequence[float], objectives: Sequence[Objective]) -> list[float]:
    names = [o.name for o in objectives]
    example = dict.fromkeys(names, 1.0)
    if isinstance(weights, Mapping):
        unknown = sorted(set(weights) - set(names))
        if unknown:
            raise ConfigurationError(f"best: weights names {unknown}, which are not objectives; e.g. weights={example}")
        values = [weights.get(n, 0.0) for n in names]
    elif isinstance(weights, Sequence) and not isinstance(weights, str) and len(weights) == len(names):
        values = list(weights)
    else:
        raise ConfigurationError(f"best: weights must give one weight per objective, e.g. weights={example}")
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 for v in values) or not any(values):
        raise ConfigurationError(f"best: weights must be numbers >= 0, not all 0, got weights={weights!r}")
    return [float(v) for v in values]
