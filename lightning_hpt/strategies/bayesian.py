"""Bayesian optimization on BoTorch's own model, acquisition functions and optimizers.

How a proposal is made, every time from the history alone:

1. Every trial is encoded in the unit cube of the :class:`~lightning_hpt.space.SearchSpace`
   (log-scale domains are linear in log space). Integers and stepped floats keep their ordered
   grid of values; categorical parameters are categories (BoTorch's categorical kernel and a
   discrete search over their values), never ordinal numbers.
2. Until ``n_initial`` observations exist, configurations come from a scrambled Sobol design:
   point number ``trial number`` of the sequence seeded with the study's seed.
3. Afterwards the surrogate of :mod:`lightning_hpt.surrogate` (BoTorch's
   ``SingleTaskGP``, or ``MixedSingleTaskGP`` with categorical parameters, fitted by
   ``fit_gpytorch_mll`` on Yeo-Johnson-warped outcomes) is fitted on the observations, and
   BoTorch's ``qLogNoisyExpectedImprovement`` (by default) is maximized with ``optimize_acqf``, or
   ``optimize_acqf_mixed_alternating`` when some parameters take finite sets of values. A maximizer
   that decodes to a configuration already tried is replaced by the best new one.
4. A batch (``n > 1``) is built greedily: every chosen configuration, and every RUNNING or
   QUEUED trial, is a pending point of the acquisition, so parallel workers get different,
   diverse configurations.

What counts as an observation is said in :mod:`lightning_hpt.surrogate` (COMPLETE
trials, PRUNED ones at a penalized value, ``warm_start`` results). FAILED trials never enter the
fit; their configurations are never proposed again, and they act as pending points so the
acquisition also steers away from their immediate neighbourhood. Non-finite values never reach
the model. Past ``max_points`` observations the model sees the best half and a seeded sample of
the rest, which bounds the cost of a proposal.

A failed fit or acquisition optimization (a Cholesky error, NaN) never stops the search: the
strategy logs a warning and proposes quasi-random configurations instead.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch

import lightning_hpt.surrogate as _surrogate
from lightning_hpt.checks import check_bool, check_int
from lightning_hpt.exceptions import ConfigurationError
from lightning_hpt.masking import get_logger
from lightning_hpt.objectives import Objective
from lightning_hpt.space import SearchSpace
from lightning_hpt.strategies import _outcomes
from lightning_hpt.strategies._encoding import _Encoding
from lightning_hpt.strategies._threads import blas_threads
from lightning_hpt.strategies._warm_start import warm_start_pairs
from lightning_hpt.strategies.base import Strategy, allowed, no_feasible_point, params_key, trial_rng
from lightning_hpt.trial import History, TrialRecord, TrialState

__all__ = ["ACQUISITIONS", "BayesianStrategy"]

logger = get_logger(__name__)

#: acquisition functions selectable by name.
ACQUISITIONS = ("lognei", "logei", "ucb", "pi")

_SALT = 0xB0
_MAX_PENDING = 64  # RUNNING/QUEUED/FAILED points given to the acquisition, most recent first
_UCB_BETA = 2.0


class BayesianStrategy(Strategy):
    """Gaussian-process Bayesian optimization with BoTorch's models, acquisition functions and optimizers.

    Args:
        seed: seeds the initial design and every proposal; ``None`` uses the study's seed.
        n_initial: size of the scrambled Sobol design before the model is used (observations,
            warm-start ones included). Default ``max(5, d // 2 + 3)`` for ``d`` parameters.
        acquisition: ``"lognei"`` (log noisy expected improvement, robust to noisy metrics),
            ``"logei"`` (log expected improvement over the best observed value), ``"ucb"``
            (upper confidence bound, beta 2) or ``"pi"`` (probability of improvement).
        warp: Yeo-Johnson-transform the outcomes before the model's standardization (robust to a
            few very bad values).
        pruned: ``"penalize"`` (pruned trials count at the worse of their value and the median
            completed value) or ``"ignore"`` (left out of the fit).
        warm_start: results of another study on the same space, used as extra observations:
            :class:`~lightning_hpt.trial.TrialRecord` objects (COMPLETE ones are used) or
            ``(params, value)`` pairs, with values in this study's direction. Entries that do not
            fit the space are skipped with a warning.
        threads: torch threads for the fit and the acquisition (the previous setting is restored
            afterwards). Keep 1 while trials train on the same machine: oversubscribed threads
            make a fit an order of magnitude slower.
        max_points: most observations the model is fitted on; beyond it, the best half and a
            seeded random sample of the rest, which keeps proposal time bounded in long studies.
        num_restarts: starting points of the acquisition optimization (BoTorch's ``num_restarts``).
        raw_samples: candidate points screened to choose those starting points.
        center_first: trial 0 is the centre of the space (midpoints, on the log scale for log
            domains; the middle value of a finite domain), as Ax's first trial is; the Sobol design
            follows.
        ref_point: with several objectives, the hypervolume's reference point, one value per objective
            in its own units (the worst values worth having); ``None`` infers it from the observed
            front. Several objectives and outcome constraints: see :mod:`lightning_hpt.strategies._outcomes`.

    Example:
        >>> from lightning_hpt.space import Float, SearchSpace
        >>> from lightning_hpt.trial import Direction, History
        >>> strategy = BayesianStrategy(seed=0)
        >>> history = History(SearchSpace({"model.lr": Float(1e-4, 1e-1, log=True)}), Direction.MINIMIZE)
        >>> [params] = strategy.ask(history)
        >>> 1e-4 <= params["model.lr"] <= 1e-1
        True
    """

    name = "bayes"

    def __init__(
        self,
        seed: int | None = None,
        *,
        n_initial: int | None = None,
        acquisition: str = "lognei",
        pruned: Literal["penalize", "ignore"] = "penalize",
        warm_start: Sequence[TrialRecord | tuple[Mapping[str, Any], float]] | None = None,
        threads: int = 1,
        max_points: int = 200,
        num_restarts: int = 20,
        raw_samples: int = 1024,
        warp: bool = True,
        center_first: bool = True,
        ref_point: Sequence[float] | None = None,
    ) -> None:
        super().__init__(seed)
        if n_initial is not None:
            check_int("BayesianStrategy", "n_initial", n_initial, 1)
        if acquisition not in ACQUISITIONS:
            raise ConfigurationError(
                f"acquisition must be one of {list(ACQUISITIONS)}, got acquisition={acquisition!r}"
            )
        if pruned not in ("penalize", "ignore"):
            raise ConfigurationError(f"pruned must be 'penalize' or 'ignore', got pruned={pruned!r}")
        check_int("BayesianStrategy", "threads", threads, 1)
        check_int("BayesianStrategy", "max_points", max_points, 10)
        check_int("BayesianStrategy", "num_restarts", num_restarts, 1)
        check_int("BayesianStrategy", "raw_samples", raw_samples, 1)
        self.n_initial = n_initial
        self.acquisition = acquisition
        self.pruned = pruned
        self.warm_start = warm_start_pairs(warm_start)
        self.threads = threads
        self.max_points = max_points
        self.num_restarts = num_restarts
        self.raw_samples = raw_samples
        self.warp = warp
        self.center_first = check_bool(center_first, "center_first")
        self.ref_point = _outcomes.check_ref_point(ref_point)

    def __repr__(self) -> str:
        return f"BayesianStrategy(seed={self.seed!r}, acquisition={self.acquisition!r}, n_initial={self.n_initial!r})"

    def check(self, space: SearchSpace, objectives: Sequence[Objective]) -> None:
        """``ref_point`` gives one value per objective; ``warm_start`` has results that fit ``space``.

        Warm-start results that do not fit are skipped (another study's space may differ a little),
        said once here with the first one's reason; when none fits, the warm start would do nothing,
        and the search is refused.
        """
        names = [o.name for o in objectives]
        if self.ref_point is not None and len(self.ref_point) != len(names):
            raise ConfigurationError(
                f"BayesianStrategy: ref_point must give one value per objective {names}, in that order and in each"
                f" one's units, got ref_point={self.ref_point!r} ({len(self.ref_point)} values)"
            )
        reasons = []
        for i, (params, _) in enumerate(self.warm_start):
            try:
                space.validate(params)
            except ValueError as e:
                reasons.append(f"warm_start[{i}]: {e}")
        if reasons and len(reasons) == len(self.warm_start):
            raise ConfigurationError(
                f"BayesianStrategy: no warm_start result fits the search space, so the warm start would do nothing;"
                f" {reasons[0]} (give results whose keys and values are the space's: {list(space)})"
            )
        if reasons:
            logger.warning(
                "BayesianStrategy: %d of %d warm_start results do not fit the search space and are skipped; %s",
                len(reasons),
                len(self.warm_start),
                reasons[0],
            )

    # ------------------------------------------------------------------ ask

    def ask(self, history: History, n: int = 1) -> list[dict[str, Any]]:
        """Propose up to ``n`` new, distinct configurations (fewer only when a finite space runs out).

        Args:
            history: every trial so far; RUNNING and QUEUED trials are pending points.
            n: how many configurations are wanted.
        """
        check_int("BayesianStrategy", "n", n, 0)
        if n == 0:
            return []
        space = history.space
        enc = _Encoding.of(space)
        seed = self.effective_seed(history)
        seen = {params_key(dict(t.params)) for t in history.trials}
        if _outcomes.wanted(history):  # several objectives or outcome constraints: see strategies._outcomes
            x_obs, y_obs = _outcomes.observations(history, enc.space, self.pruned, self.max_points, self.ref_point)
        else:
            x_obs, y_obs = self._observations(history, enc)
        n_initial = self.n_initial if self.n_initial is not None else max(5, space.dim // 2 + 3)

        proposals: list[dict[str, Any]] = []
        if len(y_obs) >= max(n_initial, 2):
            try:
                proposals = self._model_proposals(history, enc, x_obs, y_obs, seen, n, seed)
            except Exception as e:
                logger.warning(
                    "Bayesian proposal for trial %d failed (%s: %s); using quasi-random configurations instead",
                    history.next_number,
                    type(e).__name__,
                    e,
                )
                proposals = []
        while len(proposals) < n:
            number = history.next_number + len(proposals)
            params = self._design_point(enc, seed, number, seen | {params_key(p) for p in proposals}, history)
            if params is None and enc.cardinality is None:
                raise no_feasible_point(history, number)  # an infinite space runs out only of allowed points
            if params is None:
                break  # a finite space with every configuration already tried
            proposals.append(params)
        return proposals

    # ----------------------------------------------------------- observations

    def _observations(self, history: History, enc: _Encoding) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoded inputs ``n x d`` and outcomes ``n`` (larger is better) the model is fitted on."""
        extra = [(p, v) for p, v in self.warm_start if _surrogate.valid(enc.space, p)]  # the others: see check()
        x, y = _surrogate.observations(history.trials, enc.space, history.direction, pruned=self.pruned, extra=extra)
        if len(y) > self.max_points:
            x, y = self._subset(x, y, history)
        return x, y

    def _subset(self, x: torch.Tensor, y: torch.Tensor, history: History) -> tuple[torch.Tensor, torch.Tensor]:
        """The best half of ``max_points`` and a seeded random sample of the others."""
        order = torch.argsort(y, descending=True)
        k = self.max_points // 2
        rest = order[k:].numpy()
        rng = trial_rng(self.effective_seed(history), history.next_number, _SALT + 1)
        picked = rng.choice(rest, size=self.max_points - k, replace=False)
        idx = torch.cat([order[:k], torch.as_tensor(np.sort(picked))])
        return x[idx], y[idx]

    # ---------------------------------------------------------- initial design

    def _design_point(
        self, enc: _Encoding, seed: int | None, number: int, seen: set, history: History
    ) -> dict[str, Any] | None:
        """Scrambled Sobol point ``number``; if already tried, seeded uniform draws until a new one."""
        total = enc.cardinality
        if total is not None and len(seen) >= total:
            return None
        if seed is None:  # an unseeded engine would draw its scramble from torch's global generator
            seed = int(trial_rng(None, number).integers(2**31))
        engine = torch.quasirandom.SobolEngine(enc.dim, scramble=True, seed=seed)
        if number:
            engine.fast_forward(number)
        point = engine.draw(1, dtype=torch.float64)[0]
        if self.center_first and number == 0:
            point = torch.full((enc.dim,), 0.5, dtype=torch.float64)
        params = enc.decode(point)
        rng = trial_rng(seed, number, _SALT)
        for _ in range(1000):
            if params_key(params) not in seen and allowed(history, params):
                return params
            params = enc.space.sample(rng)
        if total is not None:  # nearly exhausted: enumerate what is left
            for params in enc.space.grid():
                if params_key(params) not in seen and allowed(history, params):
                    return params
        return None

    # ---------------------------------------------------------- model proposals

    def _model_proposals(
        self,
        history: History,
        enc: _Encoding,
        x_obs: torch.Tensor,
        y_obs: torch.Tensor,
        seen: set,
        n: int,
        seed: int | None,
    ) -> list[dict[str, Any]]:
        torch_seed = int(trial_rng(seed, history.next_number, _SALT + 2).integers(2**31 - 1))
        pending = _pending_points(history, enc)
        previous_threads = torch.get_num_threads()
        proposals: list[dict[str, Any]] = []
        try:
            torch.set_num_threads(self.threads)
            with (
                blas_threads(self.threads),
                torch.random.fork_rng(devices=[]),
                warnings.catch_warnings(record=True) as caught,
            ):
                warnings.simplefilter("always")
                torch.manual_seed(torch_seed)
                if y_obs.dim() > 1:  # several objectives or outcome constraints
                    model = _outcomes.fit(x_obs, y_obs, _surrogate.cat_dims(enc.space))
                    acq = enc.wrap(_outcomes.acquisition(model, x_obs, y_obs, history, pending, self.ref_point))
                else:
                    y_fit = _surrogate.warp(y_obs) if self.warp else y_obs
                    model = _surrogate.fit_surrogate(x_obs, y_fit, _surrogate.cat_dims(enc.space))
                    acq = enc.wrap(self._acquisition(model, x_obs, y_fit, pending))
                taken = set(seen)
                for _ in range(n):
                    x = self._optimize(acq, enc)
                    if not bool(torch.isfinite(x).all()):
                        raise FloatingPointError(f"the acquisition optimizer returned a non-finite point {x.tolist()}")
                    x = enc.snap(x)
                    params = enc.decode(x)
                    if params_key(params) in taken or not allowed(history, params):
                        ok = functools.partial(allowed, history)
                        x = self._best_unseen(acq, enc, x, taken, torch_seed + len(proposals), ok)
                        if x is None:
                            break  # every configuration of a finite space is taken
                        params = enc.decode(x)
                    proposals.append(params)
                    taken.add(params_key(params))
                    pending = x.reshape(1, -1) if pending is None else torch.cat([pending, x.reshape(1, -1)])
                    acq.set_X_pending(pending)
            for w in caught:
                logger.debug("while proposing trial %d: %s", history.next_number, w.message)
        finally:
            torch.set_num_threads(previous_threads)
        return proposals

    def _acquisition(self, model: Any, x_obs: torch.Tensor, y_fit: torch.Tensor, pending: torch.Tensor | None) -> Any:
        """BoTorch's acquisition function of the chosen name (Monte Carlo, so pending points count)."""
        from botorch.acquisition import (
            qLogExpectedImprovement,
            qLogNoisyExpectedImprovement,
            qProbabilityOfImprovement,
            qUpperConfidenceBound,
        )

        if self.acquisition == "lognei":
            return qLogNoisyExpectedImprovement(model, X_baseline=x_obs, X_pending=pending, prune_baseline=True)
        best = float(y_fit.max())  # the model's outcomes are the warped values
        if self.acquisition == "logei":
            return qLogExpectedImprovement(model, best_f=best, X_pending=pending)
        if self.acquisition == "ucb":
            return qUpperConfidenceBound(model, _UCB_BETA, X_pending=pending)
        tau = 1e-3 * float(y_fit.std().clamp_min(1e-9))
        return qProbabilityOfImprovement(model, best, X_pending=pending, tau=tau)

    def _optimize(self, acq: Any, enc: _Encoding) -> torch.Tensor:
        """The maximizer ``d`` of the acquisition: BoTorch's ``optimize_acqf`` or its mixed alternating optimizer."""
        from botorch.optim import optimize_acqf
        from botorch.optim.optimize_mixed import optimize_acqf_mixed_alternating

        if not enc.values:
            x, _ = optimize_acqf(acq, enc.bounds, q=1, num_restarts=self.num_restarts, raw_samples=self.raw_samples)
        else:
            kinds = enc.kinds
            x, _ = optimize_acqf_mixed_alternating(
                acq,
                enc.bounds,
                discrete_dims={i: list(v) for i, v in enc.values.items() if kinds[i] == "disc"},
                cat_dims={i: list(v) for i, v in enc.values.items() if kinds[i] == "cat"},
                q=1,
                num_restarts=self.num_restarts,
                raw_samples=self.raw_samples,
            )
        return x.reshape(-1).detach()

    def _best_unseen(
        self, acq: Any, enc: _Encoding, x: torch.Tensor, taken: set, seed: int, ok: Any = None
    ) -> torch.Tensor | None:
        """The best-scoring configuration not yet taken, among neighbours of ``x`` and a Sobol set.

        The acquisition's maximizer can round onto a configuration already evaluated (typical for
        integers and categories late in a search); a repeat teaches the model nothing.
        """
        total = enc.cardinality
        if total is not None and len(taken) >= total:
            return None
        candidates = [x.reshape(1, -1)]
        for i, values in enc.values.items():
            for v in values:
                y = x.clone()
                y[i] = v
                candidates.append(y.reshape(1, -1))
        sobol = torch.quasirandom.SobolEngine(enc.dim, scramble=True, seed=seed).draw(256, dtype=torch.float64)
        pool = enc.snap(torch.cat([*candidates, sobol]))
        ok = ok or (lambda params: True)  # the parameter constraints
        keep = [i for i, row in enumerate(pool) if params_key(p := enc.decode(row)) not in taken and ok(p)]
        if not keep:
            if total is None:
                return None
            left = [p for p in enc.space.grid() if params_key(p) not in taken and ok(p)]
            if not left:
                return None
            pool, keep = torch.stack([enc.encode(p) for p in left]), list(range(len(left)))
        pool = pool[keep]
        with torch.no_grad():
            values = torch.cat([acq(chunk) for chunk in pool.unsqueeze(-2).split(512)])
        values = torch.nan_to_num(values, nan=-math.inf)
        return pool[int(torch.argmax(values))]


def _pending_points(history: History, enc: _Encoding) -> torch.Tensor | None:
    """``m x d`` points of RUNNING/QUEUED trials, then FAILED ones (most recent first), at most 64."""
    ordered = sorted(history.pending, key=lambda t: -t.number) + sorted(
        history.with_state(TrialState.FAILED), key=lambda t: -t.number
    )
    xs = [enc.encode(t.params) for t in ordered if _surrogate.valid(enc.space, t.params)][:_MAX_PENDING]
    return torch.stack(xs) if xs else None
