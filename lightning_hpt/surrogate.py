"""The one surrogate of the package: which trials it learns from and the BoTorch model fitted to them.

Both :class:`~lightning_hpt.strategies.bayesian.BayesianStrategy` (to propose) and
:func:`~lightning_hpt.report.importance.param_importance` (to explain) call :func:`observations`
and :func:`fit_surrogate`, so a report describes the model the proposals came from.

Observations (inputs in the unit cube of the :class:`~lightning_hpt.space.SearchSpace`, outcomes
larger-is-better):

* COMPLETE trials with a finite value.
* PRUNED trials with a finite value, at a penalized value (``pruned="penalize"``): the worse of
  their best reported value and the median of the completed trials (their own value when no trial
  completed). A pruned trial stopped because it ranked below its peers, so its partial value is an
  optimistic estimate; the median cap keeps a short, promising-looking curve from passing for a
  good configuration, while a partial value worse than the median is kept as the evidence it is.
  ``pruned="ignore"`` leaves them out.
* Extra ``(params, value)`` pairs (a warm start).

The model is BoTorch's own: ``SingleTaskGP`` (its default kernel and priors) on a space without
categorical parameters, ``MixedSingleTaskGP`` (a categorical kernel on the Hamming distance) with
them, fitted by ``fit_gpytorch_mll``. Outcomes are Yeo-Johnson transformed (SciPy) before BoTorch's
``Standardize``: a few very bad values otherwise stretch the scale and flatten the model where the
good values are.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch

from lightning_hpt.space import Categorical, SearchSpace
from lightning_hpt.trial import Direction, TrialRecord, TrialState

__all__ = ["FIT_MAXITER", "cat_dims", "fit_surrogate", "observations", "valid", "warp"]

#: most L-BFGS-B steps of the marginal-likelihood fit.
FIT_MAXITER = 100


def valid(space: SearchSpace, params: Mapping[str, Any]) -> bool:
    """Whether ``params`` is a configuration of ``space`` (a trial from before a change of space is not)."""
    try:
        space.validate(params)
    except ValueError:
        return False
    return True


def cat_dims(space: SearchSpace) -> list[int]:
    """Indices of the categorical parameters."""
    return [i for i, d in enumerate(space.values()) if isinstance(d, Categorical)]


def observations(
    trials: Iterable[TrialRecord],
    space: SearchSpace,
    direction: Direction,
    *,
    pruned: Literal["penalize", "ignore"] = "penalize",
    extra: Sequence[tuple[Mapping[str, Any], float]] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoded inputs ``n x d`` and outcomes ``n`` (larger is better) of the trials a model learns from.

    Args:
        trials: the study's trials; COMPLETE and (unless ``pruned="ignore"``) PRUNED ones with a
            finite value and params in ``space`` are used.
        space: the search space.
        direction: the study's direction (outcomes are negated when minimizing).
        pruned: ``"penalize"`` or ``"ignore"`` (see the module docstring).
        extra: ``(params, value)`` pairs in the study's direction, used after the trials.
    """
    sign = 1.0 if direction is Direction.MAXIMIZE else -1.0
    trials = list(trials)
    xs: list[torch.Tensor] = []
    ys: list[float] = []
    for t in trials:
        if t.state is TrialState.COMPLETE and _finite(t.value) and valid(space, t.params):
            xs.append(space.to_unit(t.params))
            ys.append(sign * float(t.value))
    if pruned == "penalize":
        cap = statistics.median(ys) if ys else math.inf
        for t in trials:
            if t.state is TrialState.PRUNED and _finite(t.value) and valid(space, t.params):
                xs.append(space.to_unit(t.params))
                ys.append(min(sign * float(t.value), cap))
    for params, value in extra:
        xs.append(space.to_unit(params))
        ys.append(sign * float(value))
    if not xs:
        return torch.zeros(0, space.dim, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
    return torch.stack(xs), torch.tensor(ys, dtype=torch.float64)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def warp(y: torch.Tensor) -> torch.Tensor:
    """Yeo-Johnson transform of ``y`` with SciPy's maximum-likelihood exponent (identity when constant).

    Values are standardized first so the exponent does not depend on the outcome's units.
    """
    from scipy.stats import yeojohnson

    std = float(y.std()) if len(y) > 1 else 0.0
    if std == 0.0 or not math.isfinite(std):
        return y.clone()
    z = ((y - y.mean()) / std).numpy()
    out, _ = yeojohnson(z)
    out = np.asarray(out, dtype=np.float64)
    if not np.isfinite(out).all():
        return y.clone()
    return torch.as_tensor(out, dtype=torch.float64)


def fit_surrogate(x: torch.Tensor, y: torch.Tensor, categorical: Sequence[int]) -> Any:
    """BoTorch's GP fitted to ``x`` (``n x d`` in the unit cube) and warped ``y`` (``n``).

    Args:
        x: encoded inputs.
        y: outcomes, larger is better (the caller warps them with :func:`warp` if wanted).
        categorical: indices of the categorical columns of ``x``.

    Returns:
        A fitted ``SingleTaskGP`` or ``MixedSingleTaskGP`` in eval mode.
    """
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import MixedSingleTaskGP, SingleTaskGP
    from gpytorch.mlls import ExactMarginalLogLikelihood

    train_y = y.reshape(-1, 1)
    model = MixedSingleTaskGP(x, train_y, cat_dims=list(categorical)) if categorical else SingleTaskGP(x, train_y)
    # L-BFGS-B to convergence can take over a thousand steps on the mixed kernel (20 s at 100
    # points); a bounded number of steps leaves the fit within a second and the regret unchanged
    # (docs/bayesian.md). BoTorch accepts a fit that stops at its step limit without a retry.
    options = {"maxiter": FIT_MAXITER}
    fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model), optimizer_kwargs={"options": options})
    return model.eval()
