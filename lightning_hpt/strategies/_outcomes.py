"""Bayesian proposals for several objectives or outcome constraints, on BoTorch's own acquisitions.

:class:`~lightning_hpt.strategies.bayesian.BayesianStrategy` hands a study over to this module when it
has several objectives or outcome constraints. The model is one BoTorch GP per outcome (a multi-output
``SingleTaskGP``, or ``MixedSingleTaskGP`` with categorical parameters), fitted on:

* every objective, in maximization form (minimized objectives negated), standardized by the model
  (no Yeo-Johnson warp here: a reference point must mean the same in the model's units and the user's);
* every outcome constraint's *slack* (``bound - value`` for ``<=``, ``value - bound`` for ``>=``), which
  is >= 0 where the constraint holds; infeasible trials are observations too, so the model learns
  where the constraint breaks.

The acquisition is ``qLogNoisyExpectedHypervolumeImprovement`` with several objectives, and
``qLogNoisyExpectedImprovement`` on the one objective otherwise; either way the constraints go to
BoTorch's ``constraints=`` (a sample is feasible where every slack is >= 0), so the acquisition is
weighted by the modelled probability of feasibility. The hypervolume's reference point is given
(``BayesianStrategy(ref_point=...)``, in the objectives' own units) or inferred by BoTorch's
``infer_reference_point`` from the feasible observed front (its nadir, moved out by a tenth of the
front's range).

Observations: COMPLETE trials with every value finite, and PRUNED ones with each objective at the
worse of its value and the median of the completed trials (``pruned="penalize"``, as for one
objective) or left out (``"ignore"``). Past ``max_points`` the model sees the best half by
non-dominated sorting and a seeded sample of the rest.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from lightning_hpt.exceptions import ConfigurationError
from lightning_hpt.masking import get_logger
from lightning_hpt.objectives import Objective, to_maximize
from lightning_hpt.space import SearchSpace
from lightning_hpt.strategies.base import trial_rng
from lightning_hpt.surrogate import FIT_MAXITER, valid
from lightning_hpt.trial import Direction, History, TrialRecord, TrialState

__all__ = ["acquisition", "check_ref_point", "fit", "objectives_of", "observations", "wanted"]

_SALT = 0xB1
logger = get_logger(__name__)


def wanted(history: History) -> bool:
    """Whether the study needs this module: several objectives, or outcome constraints."""
    return history.multi or bool(history.outcome_constraints)


def objectives_of(history: History) -> tuple[Objective, ...]:
    """The study's objectives (its one ``direction`` as an objective when it has one)."""
    return history.objectives or (Objective("value", history.direction),)


def _row(t: TrialRecord, objectives: Sequence[Objective], constraints: Sequence[Any]) -> list[float] | None:
    """A trial's outcomes: objectives in maximization form, then constraint slacks; ``None`` if one is missing."""
    values = t.objective_values
    if values is None or len(values) != len(objectives) or not all(math.isfinite(v) for v in values):
        return None
    measured = (t.attrs.get("constraint_values") if isinstance(t.attrs, Mapping) else None) or {}
    slacks = []
    for c in constraints:
        v = measured.get(c.metric)
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            return None
        slacks.append(c.slack(float(v)))
    return to_maximize(values, objectives) + slacks


def observations(
    history: History, space: SearchSpace, pruned: str, max_points: int, ref_point: Sequence[float] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoded inputs ``n x d`` and outcomes ``n x (objectives + constraints)`` the model is fitted on.

    Raises:
        ConfigurationError: ``ref_point`` does not give one value per objective.
    """
    objectives, constraints = objectives_of(history), history.outcome_constraints
    if ref_point is not None and history.multi and len(ref_point) != len(objectives):
        raise ConfigurationError(
            f"BayesianStrategy: ref_point must give one value per objective {[o.name for o in objectives]},"
            f" got ref_point={list(ref_point)!r}"
        )
    width = len(objectives) + len(constraints)
    xs, ys = [], []
    for t in history.trials:
        if t.state is TrialState.COMPLETE and valid(space, t.params) and (row := _row(t, objectives, constraints)):
            xs.append(space.to_unit(t.params))
            ys.append(row)
    if pruned == "penalize":
        m = len(objectives)
        caps = [statistics.median(col) for col in zip(*(y[:m] for y in ys), strict=True)] if ys else [math.inf] * m
        for t in history.trials:
            if t.state is TrialState.PRUNED and valid(space, t.params) and (row := _row(t, objectives, constraints)):
                xs.append(space.to_unit(t.params))
                ys.append([min(v, cap) for v, cap in zip(row[:m], caps, strict=True)] + row[m:])
    if not xs:
        return torch.zeros(0, space.dim, dtype=torch.float64), torch.zeros(0, width, dtype=torch.float64)
    x, y = torch.stack(xs), torch.tensor(ys, dtype=torch.float64)
    if len(y) > max_points:
        x, y = _subset(x, y, len(objectives), history, max_points)
    return x, y


def _subset(
    x: torch.Tensor, y: torch.Tensor, m: int, history: History, max_points: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The best half of ``max_points`` by non-dominated sorting, and a seeded sample of the others."""
    from lightning_hpt.pareto import nds_keys

    keys = nds_keys(y[:, :m])
    order = sorted(range(len(y)), key=keys.__getitem__)
    k = max_points // 2
    rng = trial_rng(history.seed, history.next_number, _SALT)
    picked = rng.choice(np.array(order[k:]), size=max_points - k, replace=False)
    idx = torch.as_tensor(sorted([*order[:k], *picked.tolist()]))
    return x[idx], y[idx]


def fit(x: torch.Tensor, y: torch.Tensor, categorical: Sequence[int]) -> Any:
    """BoTorch's multi-output GP (one independent output per column of ``y``), fitted like the one-objective model."""
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import MixedSingleTaskGP, SingleTaskGP
    from gpytorch.mlls import ExactMarginalLogLikelihood

    model = MixedSingleTaskGP(x, y, cat_dims=list(categorical)) if categorical else SingleTaskGP(x, y)
    fit_gpytorch_mll(
        ExactMarginalLogLikelihood(model.likelihood, model), optimizer_kwargs={"options": {"maxiter": FIT_MAXITER}}
    )
    return model.eval()


def reference_point(y: torch.Tensor, history: History, given: Sequence[float] | None) -> torch.Tensor:
    """The hypervolume's reference point in maximization form: ``given`` (in the objectives' units) or inferred."""
    from botorch.utils.multi_objective.hypervolume import infer_reference_point
    from botorch.utils.multi_objective.pareto import is_non_dominated

    objectives = objectives_of(history)
    m = len(objectives)
    if given is not None:  # its length is checked with the observations
        ref = torch.tensor(to_maximize(given, objectives), dtype=torch.float64)
        _warn_unbeaten(ref, y[:, :m], objectives, given)
        return ref
    feasible = (y[:, m:] >= 0).all(dim=-1) if y.shape[1] > m else torch.ones(len(y), dtype=torch.bool)
    points = y[feasible, :m] if bool(feasible.any()) else y[:, :m]
    return infer_reference_point(points[is_non_dominated(points)])


_WARNED: set[tuple[Any, ...]] = set()


def _warn_unbeaten(
    ref: torch.Tensor, points: torch.Tensor, objectives: Sequence[Objective], given: Sequence[float]
) -> None:
    """Warn once when some objective's given reference value is better than every trial's (often a swapped order).

    No trial then adds hypervolume, so the acquisition cannot rank configurations by it; it is a warning,
    not an error, because a demanding reference point is allowed (the first trials may not reach it).
    """
    unbeaten = [j for j in range(len(objectives)) if len(points) and not bool((points[:, j] > ref[j]).any())]
    key = (tuple(given), tuple(o.name for o in objectives))
    if not unbeaten or key in _WARNED:
        return
    _WARNED.add(key)
    best = points.max(dim=0).values
    said = [
        f"{objectives[j].name} {given[j]:g} ({'max' if objectives[j].direction is Direction.MAXIMIZE else 'min'};"
        f" the best of {len(points)} trials: {to_maximize([float(best[j])], [objectives[j]])[0]:g})"
        for j in unbeaten
    ]
    hint = ""
    if len(given) == 2:
        swapped = [given[1], given[0]]
        other = torch.tensor(to_maximize(swapped, objectives), dtype=torch.float64)
        if bool((points > other).all(dim=1).any()):
            hint = f"; did you mean ref_point={swapped!r}?"
    logger.warning(
        "BayesianStrategy: ref_point=%r is better than every trial so far on %s, so no trial adds hypervolume"
        " and the proposals cannot rank configurations by it. ref_point gives one value per objective %s, in that"
        " order and in each one's units: the worst value you would accept%s",
        list(given),
        " and ".join(said),
        [o.name for o in objectives],
        hint,
    )


def acquisition(
    model: Any, x_obs: torch.Tensor, y_obs: torch.Tensor, history: History, pending: Any, ref: Any = None
) -> Any:
    """qLogNEHVI (several objectives) or qLogNEI (one), with the outcome constraints as BoTorch constraints."""
    m = len(objectives_of(history))
    constraints = [_slack(m + j) for j in range(len(history.outcome_constraints))] or None
    if m > 1:
        from botorch.acquisition.multi_objective.logei import qLogNoisyExpectedHypervolumeImprovement
        from botorch.acquisition.multi_objective.objective import IdentityMCMultiOutputObjective

        return qLogNoisyExpectedHypervolumeImprovement(
            model,
            ref_point=reference_point(y_obs, history, ref),
            X_baseline=x_obs,
            objective=IdentityMCMultiOutputObjective(outcomes=list(range(m))),
            constraints=constraints,
            X_pending=pending,
            prune_baseline=True,
        )
    from botorch.acquisition import qLogNoisyExpectedImprovement
    from botorch.acquisition.objective import GenericMCObjective

    return qLogNoisyExpectedImprovement(
        model,
        X_baseline=x_obs,
        objective=GenericMCObjective(lambda samples, X=None: samples[..., 0]),
        constraints=constraints,
        X_pending=pending,
        prune_baseline=True,
    )


def _slack(column: int) -> Any:
    """BoTorch's constraint on ``column``: feasible where it is >= 0 (BoTorch: where the result is <= 0)."""
    return lambda samples: -samples[..., column]


def check_ref_point(ref_point: Sequence[float] | None) -> list[float] | None:
    """``ref_point`` as a list of finite numbers, or ``None``; a ConfigurationError otherwise."""
    if ref_point is None:
        return None
    ok = isinstance(ref_point, Sequence) and not isinstance(ref_point, str) and len(ref_point) >= 2
    if not ok or not all(
        not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) for v in ref_point
    ):
        raise ConfigurationError(
            "BayesianStrategy: ref_point must be one finite number per objective, two or more (it is the"
            " hypervolume's corner with several objectives; one objective takes none), in each one's units (e.g."
            f" [0.5, 2e6] for val_acc and n_params), or None to infer it; got ref_point={ref_point!r}"
        )
    return [float(v) for v in ref_point]
