"""Parameter importance: how much of the variation of the value each parameter explains on its own.

Method (sensitivity of a Gaussian-process model):

1. Every COMPLETE trial with a finite value is encoded in the unit cube, on each domain's own scale
   (log domains in log space, so a uniform draw there is a log-uniform draw of the parameter);
   categorical parameters are one-hot encoded, so their choices are not ordered.
2. A Gaussian process (BoTorch's ``SingleTaskGP``: an RBF kernel with one lengthscale per input
   and BoTorch's default priors) is fitted to the standardized values.
3. The importance of parameter ``i`` is the first-order Sobol index of the GP posterior mean ``m``
   under a uniform distribution on the space: ``S_i = Var_{x_i}[ E_{x_-i}[m(x)] ] / Var_x[m(x)]``,
   the fraction of the value's variance explained by ``x_i`` alone (a functional ANOVA main effect).
   It is estimated by Monte Carlo with a fixed seed: a grid of values of ``x_i`` (every value of a
   discrete domain) crossed with shared random draws of the other parameters.

Indices are in ``[0, 1]``; their sum is at most about 1, the rest being interactions between
parameters. They describe the model fitted to the trials run so far: with few trials, or trials
concentrated in one region (a Bayesian search late in a study), they describe that region.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from lightning_hpt.exceptions import HPTError
from lightning_hpt.space import Categorical, SearchSpace
from lightning_hpt.trial import TrialRecord, TrialState

__all__ = ["IMPORTANCE_METHOD", "MIN_TRIALS", "param_importance"]

#: one line for reports: what the numbers mean.
IMPORTANCE_METHOD = (
    "first-order Sobol index of a Gaussian-process model of the value (the fraction of the value's variance "
    "that each parameter explains on its own; the rest is interactions)"
)
#: fewest COMPLETE trials with a finite value that a model is fitted to.
MIN_TRIALS = 4


def _columns(space: SearchSpace) -> list[slice]:
    """The model's input columns of each parameter: one per numeric one, one per choice of a categorical one."""
    out, start = [], 0
    for dom in space.values():
        width = len(dom.choices) if isinstance(dom, Categorical) else 1
        out.append(slice(start, start + width))
        start += width
    return out


def _encode_one(dom: Any, value: Any) -> list[float]:
    if isinstance(dom, Categorical):
        onehot = [0.0] * len(dom.choices)
        onehot[dom.index(value)] = 1.0
        return onehot
    return [dom.to_unit(value)]


def _draws(dom: Any, u: torch.Tensor) -> torch.Tensor:
    """Encoded values of ``dom`` for uniform draws ``u`` (length ``m``): ``m x width``."""
    return torch.tensor([_encode_one(dom, dom.from_unit(float(v))) for v in u], dtype=torch.float64)


def _axis(dom: Any, k: int, gen: torch.Generator) -> torch.Tensor:
    """Values of one parameter at which its main effect is evaluated (equally weighted), encoded: ``k' x width``."""
    values = dom.values()
    if values is not None and len(values) <= k:
        # every value, each weighted by its share of the unit interval (equal for all but log integers)
        u = torch.tensor([dom.to_unit(v) for v in values], dtype=torch.float64)
        if not isinstance(dom, Categorical) and getattr(dom, "log", False):
            u = (torch.arange(k, dtype=torch.float64) + 0.5) / k  # log integers: values are not equally likely
        return _draws(dom, u)
    u = (torch.arange(k, dtype=torch.float64) + torch.rand(k, generator=gen, dtype=torch.float64)) / k  # stratified
    return _draws(dom, u)


class _MeanGP:
    """The posterior mean of a fitted GP, computed directly: ``m(x) = mu(x) + K(x, X) alpha``.

    BoTorch's ``posterior`` also builds the test covariance, which is quadratic in the number of
    points evaluated and dominates the cost here; only the mean is needed.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        from botorch.fit import fit_gpytorch_mll
        from botorch.models import SingleTaskGP
        from gpytorch.mlls import ExactMarginalLogLikelihood

        model = SingleTaskGP(x, y)
        fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
        model.eval()
        self.model = model
        with torch.no_grad():
            train_x, train_y = model.train_inputs[0], model.train_targets  # outcomes as the model sees them
            k = model.covar_module(train_x).to_dense()
            k = k + model.likelihood.noise.reshape(-1)[0] * torch.eye(len(train_x), dtype=k.dtype)
            self.train_x = train_x
            self.alpha = torch.linalg.solve(k, train_y - model.mean_module(train_x))

    def __call__(self, x: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        with torch.no_grad():
            parts = [
                self.model.mean_module(x[i : i + chunk])
                + self.model.covar_module(x[i : i + chunk], self.train_x).to_dense() @ self.alpha
                for i in range(0, len(x), chunk)
            ]
        return torch.cat(parts)


def param_importance(
    trials: Sequence[TrialRecord],
    space: SearchSpace | Mapping[str, Any],
    *,
    samples: int = 256,
    grid: int = 24,
    seed: int = 0,
) -> dict[str, float]:
    """Importance of each parameter: the first-order Sobol index of a GP model of the value.

    See the module docstring for the method. The direction does not matter: a parameter that
    moves the value matters whether the value is minimized or maximized.

    Args:
        trials: the study's trials; COMPLETE ones with a finite value and params in ``space`` are used.
        space: the study's search space.
        samples: Monte Carlo draws of the other parameters per evaluated value (more: less noise).
        grid: evaluated values per continuous parameter (discrete ones use all their values up to this).
        seed: seed of the Monte Carlo draws; the same inputs give the same result.

    Returns:
        ``{name: index}`` for every parameter, most important first; all zeros when the model is flat.

    Raises:
        HPTError: fewer than :data:`MIN_TRIALS` usable trials.
    """
    space = space if isinstance(space, SearchSpace) else SearchSpace(space)
    rows, values = [], []
    for t in trials:
        if t.state is not TrialState.COMPLETE or t.value is None or not math.isfinite(t.value):
            continue
        try:
            space.validate(t.params)
        except HPTError:  # a trial from before the space was changed (allow_changes=True)
            continue
        rows.append([c for name, dom in space.items() for c in _encode_one(dom, t.params[name])])
        values.append(float(t.value))
    if len(rows) < MIN_TRIALS:
        raise HPTError(
            f"parameter importance needs at least {MIN_TRIALS} COMPLETE trials with a finite value in the current"
            f" space, got {len(rows)}; run more trials and ask again"
        )
    names, cols = list(space), _columns(space)
    y = torch.tensor(values, dtype=torch.float64).unsqueeze(-1)
    if not names or float(y.std()) == 0.0:
        return dict.fromkeys(names, 0.0)
    threads = torch.get_num_threads()
    # a report may run beside training trials: one thread avoids oversubscribing the cores (25x slower fits)
    torch.set_num_threads(1)
    try:
        mean = _MeanGP(torch.tensor(rows, dtype=torch.float64), (y - y.mean()) / y.std())
        gen = torch.Generator().manual_seed(seed)
        base = torch.cat(
            [_draws(dom, torch.rand(samples, generator=gen, dtype=torch.float64)) for dom in space.values()], dim=-1
        )  # samples x width
        total = float(mean(base).var(unbiased=False))
        scores: dict[str, float] = {}
        for name, col in zip(names, cols):
            points = _axis(space[name], grid, gen)  # k x w
            xs = base.unsqueeze(0).repeat(len(points), 1, 1)  # k x samples x width
            xs[:, :, col] = points.unsqueeze(1)
            effect = mean(xs.reshape(-1, base.shape[-1])).reshape(len(points), samples).mean(-1)
            scores[name] = float(effect.var(unbiased=False))
    finally:
        torch.set_num_threads(threads)
    if total <= 0.0:
        return dict.fromkeys(names, 0.0)
    return {n: min(scores[n] / total, 1.0) for n in sorted(names, key=lambda n: -scores[n])}
