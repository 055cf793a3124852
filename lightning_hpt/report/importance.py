"""Parameter importance: how much of the variation of the value each parameter explains on its own.

Method (sensitivity of the Bayesian strategy's own surrogate):

1. The trials are turned into observations exactly as
   :class:`~lightning_hpt.strategies.bayesian.BayesianStrategy` does it
   (:func:`lightning_hpt.surrogate.observations`): COMPLETE trials with a finite value,
   and PRUNED ones at a penalized value (the worse of their best reported value and the median
   completed value), so a search whose trials were mostly pruned still gets an importance. Each is
   encoded in the unit cube on its domain's own scale (log domains in log space).
2. The same surrogate as the proposals (:func:`lightning_hpt.surrogate.fit_surrogate`:
   BoTorch's ``SingleTaskGP``, or ``MixedSingleTaskGP`` whose categorical kernel leaves choices
   unordered, on Yeo-Johnson-warped values) is fitted.
3. The importance of parameter ``i`` is the first-order Sobol index of the GP posterior mean ``m``
   under a uniform distribution on the space: ``S_i = Var_{x_i}[ E_{x_-i}[m(x)] ] / Var_x[m(x)]``,
   the fraction of the value's variance explained by ``x_i`` alone (a functional ANOVA main effect).
   It is estimated by quasi-Monte Carlo with a fixed seed: a grid of values of ``x_i`` (every value
   of a discrete domain, else the middles of equally likely strata) crossed with shared scrambled
   Sobol draws of the other parameters. The parameters are taken in the order of their names, so
   the result does not depend on the order of the space's keys (a report reads the stored space).

Indices are in ``[0, 1]``; their sum is at most about 1, the rest being interactions between
parameters. A conditional parameter is drawn like the others, but where its condition does not
hold it sits at its placeholder, as in the trials (:meth:`~lightning_hpt.space.SearchSpace.project`):
its index is the share of the variance it explains across the whole space, the branches where it
is absent included. They describe the model fitted to the trials run so far: with few trials, or trials
concentrated in one region (a Bayesian search late in a study), they describe that region.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from lightning_hpt.exceptions import HPTError
from lightning_hpt.space import Categorical, SearchSpace
from lightning_hpt.surrogate import cat_dims, fit_surrogate, observations, warp
from lightning_hpt.trial import Direction, TrialRecord, TrialState

__all__ = ["IMPORTANCE_METHOD", "MIN_TRIALS", "param_importance"]

#: one line for reports: what the numbers mean.
IMPORTANCE_METHOD = (
    "first-order Sobol index of the Bayesian strategy's Gaussian-process model of the value, fitted to the"
    " completed and pruned trials (the fraction of the value's variance that each parameter explains on its"
    " own; the rest is interactions)"
)
#: fewest trials with a finite value (COMPLETE, or PRUNED) that a model is fitted to.
MIN_TRIALS = 4


def _draws(dom: Any, u: torch.Tensor) -> torch.Tensor:
    """Encoded values of ``dom`` for uniform draws ``u`` (length ``m``): ``m``."""
    return torch.tensor([dom.to_unit(dom.from_unit(float(v))) for v in u], dtype=torch.float64)


def _axis(dom: Any, k: int) -> torch.Tensor:
    """Values of one parameter at which its main effect is evaluated (equally weighted), encoded: ``k'``.

    Every value of a discrete domain of at most ``k`` equally likely values; otherwise the middles of
    ``k`` equally likely strata (a log integer's values are not equally likely): no random draws.
    """
    values = dom.values()
    if values is not None and len(values) <= k and (isinstance(dom, Categorical) or not getattr(dom, "log", False)):
        return torch.tensor([dom.to_unit(v) for v in values], dtype=torch.float64)
    return _draws(dom, (torch.arange(k, dtype=torch.float64) + 0.5) / k)


def _posterior_mean(model: Any, x: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """The model's posterior mean at each row of ``x`` (one-point posteriors: no joint covariance)."""
    with torch.no_grad():
        parts = [model.posterior(x[i : i + chunk].unsqueeze(-2)).mean.reshape(-1) for i in range(0, len(x), chunk)]
    return torch.cat(parts)


def param_importance(
    trials: Sequence[TrialRecord],
    space: SearchSpace | Mapping[str, Any],
    *,
    direction: Direction | str | None = None,
    samples: int = 256,
    grid: int = 24,
    seed: int = 0,
) -> dict[str, float]:
    """Importance of each parameter: the first-order Sobol index of the strategy's GP model of the value.

    See the module docstring for the method. The direction only decides how PRUNED trials are
    penalized (a parameter that moves the value matters whether it is minimized or maximized).

    Args:
        trials: the study's trials; COMPLETE and PRUNED ones with a finite value and params in
            ``space`` are used.
        space: the study's search space.
        direction: the study's direction (``"min"``/``"max"`` or a Direction); ``None``: PRUNED
            trials count at their own value, uncapped.
        samples: Monte Carlo draws of the other parameters per evaluated value (more: less noise).
        grid: evaluated values per continuous parameter (discrete ones use all their values up to this).
        seed: seed of the Monte Carlo draws and of the fit; the same inputs give the same result.

    Returns:
        ``{name: index}`` for every parameter, most important first; all zeros when the model is flat.

    Raises:
        HPTError: fewer than :data:`MIN_TRIALS` usable trials.
    """
    space = space if isinstance(space, SearchSpace) else SearchSpace(space)
    space = SearchSpace({name: space[name] for name in sorted(space)})  # the same result whatever the keys' order
    trials = list(trials)
    d = Direction.MINIMIZE if direction is None else Direction.parse(direction)
    # without a direction there is no "worse than the median": pruned trials count at their own value
    x, y = observations(trials if direction is not None else [_as_complete(t) for t in trials], space, d)
    if len(y) < MIN_TRIALS:
        raise HPTError(
            f"parameter importance needs at least {MIN_TRIALS} COMPLETE trials (PRUNED ones count too) with a"
            f" finite value in the current space, got {len(y)}; run more trials and ask again"
        )
    names = list(space)
    if not names or float(y.std()) == 0.0:
        return dict.fromkeys(names, 0.0)
    threads = torch.get_num_threads()
    # a report may run beside training trials: one thread avoids oversubscribing the cores (25x slower fits)
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.manual_seed(seed)
            model = fit_surrogate(x, warp(y), cat_dims(space))
            # scrambled Sobol draws of the other parameters: far less Monte Carlo noise than uniform ones
            u = torch.quasirandom.SobolEngine(len(names), scramble=True, seed=seed).draw(samples, dtype=torch.float64)
            base = torch.stack([_draws(dom, u[:, j]) for j, dom in enumerate(space.values())], dim=-1)  # samples x d
            # an inactive parameter sits where the model saw it in every trial: at its placeholder
            total = float(_posterior_mean(model, space.project(base)).var(unbiased=False))
            scores: dict[str, float] = {}
            for i, name in enumerate(names):
                points = _axis(space[name], grid)  # k
                xs = base.unsqueeze(0).repeat(len(points), 1, 1)  # k x samples x d
                xs[:, :, i] = points.unsqueeze(1)
                xs = space.project(xs.reshape(-1, base.shape[-1]))
                effect = _posterior_mean(model, xs).reshape(len(points), samples).mean(-1)
                scores[name] = float(effect.var(unbiased=False))
    finally:
        torch.set_num_threads(threads)
    if total <= 0.0:
        return dict.fromkeys(names, 0.0)
    return {n: min(scores[n] / total, 1.0) for n in sorted(names, key=lambda n: -scores[n])}


def _as_complete(t: TrialRecord) -> TrialRecord:
    """A PRUNED trial as a COMPLETE one (its own value); others unchanged."""
    return dataclasses.replace(t, state=TrialState.COMPLETE) if t.state is TrialState.PRUNED else t
