"""The searches of the Bayesian-optimization suite: lightning-hpt's strategies and their peers.

Every runner takes ``(problem, trials, seed, batch)`` and returns one run: the observed and true
value of each trial in order, and the seconds spent proposing each batch. A batch of ``batch``
configurations is asked for before any of them is evaluated (parallel workers: the batch's first
points are pending while the rest are chosen).

Peers, with their library defaults:

* ``tpe``: Optuna's ``TPESampler(multivariate=True)``; ``gp``: Optuna's ``GPSampler``.
* ``ax_fast`` / ``ax``: Ax's ``Client`` with ``method="fast"`` / its default generation strategy,
  run by ``bo_ax.py`` in the Python of ``$HPT_AX_PYTHON`` (default ``/work/venv-ax/bin/python``
  when it exists, else this one), so Ax and its pins never enter the main environment.
* ``botorch``: a plain BoTorch loop: Sobol design, ``SingleTaskGP`` (``MixedSingleTaskGP`` with
  categories), ``fit_gpytorch_mll``, ``qLogNoisyExpectedImprovement``, ``optimize_acqf`` (or
  ``optimize_acqf_mixed_alternating`` with integers or categories), BoTorch's default options.
* ``random``, ``sobol``: lightning-hpt's RandomStrategy and SobolStrategy.
* ``bayes:key=value,...``: BayesianStrategy with other arguments (``bo_tune.py`` screens them);
  ``cat_kernel=product`` is not an argument but a screened surrogate, :func:`product_kernel_gp`;
  nor is ``fit_maxiter=N``: the surrogate's fit runs up to N L-BFGS-B steps instead of
  ``lightning_hpt.surrogate.FIT_MAXITER`` (15000 is scipy's default, the plain BoTorch loop's).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bo_problems import SUITE, SuiteProblem

from lightning_hpt.space import Categorical, Float, Int
from lightning_hpt.strategies.base import Strategy
from lightning_hpt.trial import Direction, History, TrialRecord, TrialState

Run = dict[str, Any]
HERE = Path(__file__).resolve().parent


def noise_rng(seed: int, number: int) -> np.random.Generator:
    """The noise of trial ``number`` of seed ``seed``: the same for every method."""
    return np.random.default_rng([seed, number, 7])


def _evaluate(problem: SuiteProblem, params: dict[str, Any], seed: int, number: int, run: Run) -> float:
    observed, true = problem.evaluate(params, noise_rng(seed, number))
    run["observed"].append(observed)
    run["true"].append(true)
    return observed


def _new_run() -> Run:
    return {"observed": [], "true": [], "ask_s": [], "ask_at": []}


def run_strategy(strategy: Strategy, problem: SuiteProblem, trials: int, seed: int, batch: int) -> Run:
    run, records = _new_run(), []
    while len(records) < trials:
        history = History(problem.space, Direction.MINIMIZE, tuple(records), seed=seed)
        t0 = time.perf_counter()
        proposals = strategy.ask(history, min(batch, trials - len(records)))
        run["ask_s"].append(time.perf_counter() - t0)
        run["ask_at"].append(len(records))
        for params in proposals:
            value = _evaluate(problem, params, seed, len(records), run)
            records.append(TrialRecord(len(records), params, TrialState.COMPLETE, value=value))
    return run


def suggest(trial: Any, problem: Any) -> dict[str, Any]:
    """An Optuna trial's suggestion of a configuration of ``problem.space`` (this package's domains)."""
    params: dict[str, Any] = {}
    for name, d in problem.space.items():
        if isinstance(d, Float):
            params[name] = trial.suggest_float(name, d.low, d.high, log=d.log, step=d.step)
        elif isinstance(d, Int):
            params[name] = trial.suggest_int(name, d.low, d.high, step=d.step, log=d.log)
        else:
            params[name] = trial.suggest_categorical(name, list(d.choices))
    return params


def run_optuna(name: str, problem: SuiteProblem, trials: int, seed: int, batch: int) -> Run:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = (
        optuna.samplers.TPESampler(multivariate=True, seed=seed)
        if name == "tpe"
        else optuna.samplers.GPSampler(seed=seed)
    )
    study = optuna.create_study(sampler=sampler, direction="minimize")
    run = _new_run()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        while len(run["true"]) < trials:
            t0 = time.perf_counter()
            asked = []
            for _ in range(min(batch, trials - len(run["true"]))):
                trial = study.ask()
                asked.append((trial, suggest(trial, problem)))
            run["ask_s"].append(time.perf_counter() - t0)
            run["ask_at"].append(len(run["true"]))
            for trial, params in asked:
                study.tell(trial, _evaluate(problem, params, seed, len(run["true"]), run))
    return run


def ax_python() -> str:
    default = "/work/venv-ax/bin/python"
    return os.environ.get("HPT_AX_PYTHON") or (default if Path(default).exists() else sys.executable)


def run_ax(method: str, problem: SuiteProblem, trials: int, seed: int, batch: int) -> Run:
    """Ax in its own interpreter (bo_ax.py); the run comes back as JSON on stdout."""
    cmd = [ax_python(), str(HERE / "bo_ax.py"), problem.name, str(trials), str(seed), str(batch), method]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"bo_ax.py failed ({out.returncode}): {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_botorch(problem: SuiteProblem, trials: int, seed: int, batch: int) -> Run:
    """The plain BoTorch loop with library defaults (module docstring)."""
    from botorch.acquisition import qLogNoisyExpectedImprovement
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import MixedSingleTaskGP, SingleTaskGP
    from botorch.optim import optimize_acqf
    from botorch.optim.optimize_mixed import optimize_acqf_mixed_alternating
    from gpytorch.mlls import ExactMarginalLogLikelihood

    space, d = problem.space, problem.space.dim
    finite = {
        i: sorted({dom.to_unit(v) for v in dom.values()}) for i, dom in enumerate(space.values()) if dom.cardinality
    }
    cats = [i for i, dom in enumerate(space.values()) if isinstance(dom, Categorical)]
    bounds = torch.tensor(
        [
            [finite[i][0] if i in finite else 0.0 for i in range(d)],
            [finite[i][-1] if i in finite else 1.0 for i in range(d)],
        ],
        dtype=torch.float64,
    )
    n_init = max(5, d // 2 + 3)
    torch.manual_seed(seed)
    sobol = torch.quasirandom.SobolEngine(d, scramble=True, seed=seed).draw(n_init, dtype=torch.float64)
    run, xs = _new_run(), []
    while len(xs) < trials:
        q = min(batch, trials - len(xs))
        t0 = time.perf_counter()
        if len(xs) < n_init:
            cand = [space.to_unit(space.from_unit(row)) for row in sobol[len(xs) : len(xs) + q]]
        else:
            x = torch.stack(xs)
            y = -torch.tensor(run["observed"], dtype=torch.float64).unsqueeze(-1)
            model = MixedSingleTaskGP(x, y, cat_dims=cats) if cats else SingleTaskGP(x, y)
            fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
            acq = qLogNoisyExpectedImprovement(model, X_baseline=x, prune_baseline=True)
            if finite:
                out, _ = optimize_acqf_mixed_alternating(
                    acq,
                    bounds,
                    discrete_dims={i: v for i, v in finite.items() if i not in cats},
                    cat_dims={i: v for i, v in finite.items() if i in cats},
                    q=q,
                )
            else:
                out, _ = optimize_acqf(acq, bounds, q=q, num_restarts=10, raw_samples=512)
            cand = [space.to_unit(space.from_unit(row)) for row in out.detach()]
        run["ask_s"].append(time.perf_counter() - t0)
        run["ask_at"].append(len(xs))
        for x_new in cand:
            _evaluate(problem, space.from_unit(x_new), seed, len(xs), run)
            xs.append(x_new)
    return run


def bayes_kwargs(method: str) -> dict[str, Any] | None:
    """The ``BayesianStrategy`` arguments of ``bayes`` (``{}``) or ``bayes:key=value,...``; else ``None``.

    Values are read as JSON (``20``, ``false``), else kept as text.
    """
    name, _, rest = method.partition(":")
    if name != "bayes":
        return None
    kwargs: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        try:
            kwargs[key] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key] = value
    return kwargs


def product_kernel_gp(x: torch.Tensor, y: torch.Tensor, categorical: Any) -> Any:
    """A screened variant of the surrogate (``bayes:cat_kernel=product``): one product kernel, as GPSampler's.

    BoTorch's ``SingleTaskGP`` with its dimension-scaled RBF kernel on the ordered dimensions times
    BoTorch's ``CategoricalKernel`` on the categories, instead of ``MixedSingleTaskGP``'s sum of a
    sum and a product kernel; fitted like the default surrogate.
    """
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.models.kernels.categorical import CategoricalKernel
    from botorch.models.utils.gpytorch_modules import get_covar_module_with_dim_scaled_prior
    from gpytorch.constraints import GreaterThan
    from gpytorch.mlls import ExactMarginalLogLikelihood

    from lightning_hpt.surrogate import FIT_MAXITER

    cat = sorted(categorical)
    ordered = [i for i in range(x.shape[-1]) if i not in cat]
    covar: Any = CategoricalKernel(ard_num_dims=len(cat), active_dims=cat, lengthscale_constraint=GreaterThan(1e-6))
    if ordered:
        covar = get_covar_module_with_dim_scaled_prior(ard_num_dims=len(ordered), active_dims=ordered) * covar
    model = SingleTaskGP(x, y.reshape(-1, 1), covar_module=covar)
    mll = ExactMarginalLogLikelihood(model.likelihood, model)
    fit_gpytorch_mll(mll, optimizer_kwargs={"options": {"maxiter": FIT_MAXITER}})
    return model.eval()


def run_method(method: str, problem: SuiteProblem, trials: int, seed: int, batch: int) -> Run:
    kwargs = bayes_kwargs(method)
    if kwargs is not None:
        from unittest import mock

        from lightning_hpt.strategies.bayesian import BayesianStrategy

        product = kwargs.pop("cat_kernel", "mixed") == "product" and any(
            isinstance(d, Categorical) for d in problem.space.values()
        )
        maxiter = kwargs.pop("fit_maxiter", None)
        patch = mock.patch("lightning_hpt.surrogate.fit_surrogate", product_kernel_gp)
        steps = mock.patch("lightning_hpt.surrogate.FIT_MAXITER", maxiter)
        with patch if product else contextlib.nullcontext(), steps if maxiter else contextlib.nullcontext():
            return run_strategy(BayesianStrategy(seed=seed, **kwargs), problem, trials, seed, batch)
    if method == "random":
        from lightning_hpt.strategies.random import RandomStrategy

        return run_strategy(RandomStrategy(seed=seed), problem, trials, seed, batch)
    if method == "sobol":
        from lightning_hpt.strategies.sobol import SobolStrategy

        return run_strategy(SobolStrategy(seed=seed), problem, trials, seed, batch)
    if method in ("tpe", "gp"):
        return run_optuna(method, problem, trials, seed, batch)
    if method in ("ax", "ax_fast"):
        return run_ax(method, problem, trials, seed, batch)
    if method == "botorch":
        return run_botorch(problem, trials, seed, batch)
    raise SystemExit(f"unknown method {method!r}")


METHODS = ("bayes", "random", "sobol", "tpe", "gp", "ax_fast", "ax", "botorch")
assert set(SUITE)  # the problems this module runs
