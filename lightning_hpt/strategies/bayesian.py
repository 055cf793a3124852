"""Bayesian optimization: a Gaussian-process surrogate and BoTorch's acquisition functions.

How a proposal is made, every time from the history alone:

1. Every trial is encoded in the unit cube of the :class:`~lightning_hpt.space.SearchSpace`
   (log-scale domains are linear in log space). Integers and stepped floats keep their ordered
   grid of values; categorical parameters are categories (a Hamming-distance kernel term and a
   discrete search over their values), never ordinal numbers.
2. Until ``n_initial`` observations exist, configurations come from a scrambled Sobol design:
   point number ``trial number`` of the sequence seeded with the study's seed.
3. Afterwards a GP (:mod:`lightning_hpt.strategies._gp`) is fitted on the observations with
   power-transformed, standardized outcomes, and an acquisition is maximized (log noisy expected
   improvement by default, in closed form given quasi-random samples of the incumbent, see
   :mod:`lightning_hpt.strategies._acquisition`; or a BoTorch Monte Carlo acquisition): L-BFGS-B
   on the continuous dimensions, alternating with a neighbourhood search over the allowed values
   of integers, stepped floats and categories.
   A maximizer that decodes to a configuration already tried is replaced by the best new one.
4. A batch (``n > 1``) is built greedily: every chosen configuration, and every RUNNING or
   QUEUED trial, is a pending point of the acquisition, so parallel workers get different,
   diverse configurations.

What counts as an observation:

* COMPLETE trials with a finite value.
* PRUNED trials with a finite value, counted at a penalized value (``pruned="penalize"``): the
  worse of their best reported value and the median of the completed trials. A pruned trial
  stopped because it ranked below its peers at the same step, so its partial value is an
  optimistic estimate of where it would have ended; the median cap keeps the model from
  mistaking a short, promising-looking curve for a good configuration, while a partial value
  worse than the median is kept as the evidence it is. ``pruned="ignore"`` leaves them out.
* ``warm_start`` results of another study on the same space.

FAILED trials never enter the fit; their configurations are never proposed again, and they act
as pending points so the acquisition also steers away from their immediate neighbourhood.
Non-finite values never reach the model.

A failed fit or acquisition optimization (a Cholesky error, NaN) never stops the search: the
strategy logs a warning and proposes quasi-random configurations instead.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import statistics
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch

from lightning_hpt.exceptions import ConfigurationError
from lightning_hpt.space import SearchSpace
from lightning_hpt.strategies._encoding import _Encoding
from lightning_hpt.strategies.base import Strategy, params_key, trial_rng
from lightning_hpt.trial import Direction, History, TrialRecord, TrialState

__all__ = ["ACQUISITIONS", "BayesianStrategy"]

logger = logging.getLogger(__name__)

#: acquisition functions selectable by name.
ACQUISITIONS = ("lognei", "logei", "ucb", "pi")

_SALT = 0xB0
_MAX_PENDING = 64  # RUNNING/QUEUED/FAILED points given to the acquisition, most recent first
_UCB_BETA = 2.0


class BayesianStrategy(Strategy):
    """Gaussian-process Bayesian optimization (BoTorch acquisitions on a light exact GP).

    Args:
        seed: seeds the initial design and every proposal; ``None`` uses the study's seed.
        n_initial: size of the scrambled Sobol design before the model is used (observations,
            warm-start ones included). Default ``max(5, d // 2 + 3)`` for ``d`` parameters.
        acquisition: ``"lognei"`` (log noisy expected improvement, robust to noisy metrics),
            ``"logei"`` (log expected improvement over the best observed value), ``"ucb"``
            (upper confidence bound, beta 2) or ``"pi"`` (probability of improvement).
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
        num_restarts: L-BFGS-B starting points of the acquisition optimization.
        raw_samples: candidate points screened to choose those starting points.
        mc_samples: quasi-Monte-Carlo samples of the incumbent (``"lognei"``, and ``"logei"`` with
            pending points) or of the joint posterior (``"ucb"``, ``"pi"``).

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
        max_points: int = 250,
        num_restarts: int = 4,
        raw_samples: int = 256,
        mc_samples: int = 128,
    ) -> None:
        super().__init__(seed)
        if n_initial is not None:
            _check_int("n_initial", n_initial, 1)
        if acquisition not in ACQUISITIONS:
            raise ConfigurationError(
                f"acquisition must be one of {list(ACQUISITIONS)}, got acquisition={acquisition!r}"
            )
        if pruned not in ("penalize", "ignore"):
            raise ConfigurationError(f"pruned must be 'penalize' or 'ignore', got pruned={pruned!r}")
        _check_int("threads", threads, 1)
        _check_int("max_points", max_points, 10)
        _check_int("num_restarts", num_restarts, 1)
        _check_int("raw_samples", raw_samples, 1)
        _check_int("mc_samples", mc_samples, 1)
        self.n_initial = n_initial
        self.acquisition = acquisition
        self.pruned = pruned
        self.warm_start = _check_warm_start(warm_start)
        self.threads = threads
        self.max_points = max_points
        self.num_restarts = num_restarts
        self.raw_samples = raw_samples
        self.mc_samples = mc_samples

    def __repr__(self) -> str:
        return f"BayesianStrategy(seed={self.seed!r}, acquisition={self.acquisition!r}, n_initial={self.n_initial!r})"

    # ------------------------------------------------------------------ ask

    def ask(self, history: History, n: int = 1) -> list[dict[str, Any]]:
        """Propose up to ``n`` new, distinct configurations (fewer only when a finite space runs out).

        Args:
            history: every trial so far; RUNNING and QUEUED trials are pending points.
            n: how many configurations are wanted.
        """
        _check_int("n", n, 0)
        if n == 0:
            return []
        space = history.space
        enc = _Encoding.of(space)
        seed = self.effective_seed(history)
        seen = {params_key(dict(t.params)) for t in history.trials}
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
            params = self._design_point(enc, seed, number, seen | {params_key(p) for p in proposals})
            if params is None:
                break  # a finite space with every configuration already tried
            proposals.append(params)
        return proposals

    # ----------------------------------------------------------- observations

    def _observations(self, history: History, enc: _Encoding) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoded inputs ``n x d`` and outcomes ``n`` (larger is better) the model is fitted on."""
        sign = 1.0 if history.direction is Direction.MAXIMIZE else -1.0
        xs: list[torch.Tensor] = []
        ys: list[float] = []
        completed = [t for t in history.completed if _valid(enc.space, t.params)]
        for t in completed:
            xs.append(enc.encode(t.params))
            ys.append(sign * float(t.value))
        if self.pruned == "penalize":
            cap = statistics.median(ys) if ys else math.inf
            for t in history.with_state(TrialState.PRUNED):
                if t.value is None or not math.isfinite(t.value) or not _valid(enc.space, t.params):
                    continue
                xs.append(enc.encode(t.params))
                ys.append(min(sign * float(t.value), cap))
        skipped = 0
        for params, value in self.warm_start:
            if not _valid(enc.space, params):
                skipped += 1
                continue
            xs.append(enc.encode(params))
            ys.append(sign * value)
        if skipped:
            logger.warning(
                "warm_start: skipped %d of %d results that do not fit the search space", skipped, len(self.warm_start)
            )
        if not xs:
            return torch.zeros(0, enc.dim, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
        x, y = torch.stack(xs), torch.tensor(ys, dtype=torch.float64)
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

    def _design_point(self, enc: _Encoding, seed: int | None, number: int, seen: set) -> dict[str, Any] | None:
        """Scrambled Sobol point ``number``; if already tried, seeded uniform draws until a new one."""
        total = enc.cardinality
        if total is not None and len(seen) >= total:
            return None
        if seed is None:  # an unseeded engine would draw its scramble from torch's global generator
            seed = int(trial_rng(None, number).integers(2**31))
        engine = torch.quasirandom.SobolEngine(enc.dim, scramble=True, seed=seed)
        if number:
            engine.fast_forward(number)
        params = enc.decode(engine.draw(1, dtype=torch.float64)[0])
        rng = trial_rng(seed, number, _SALT)
        for _ in range(1000):
            if params_key(params) not in seen:
                return params
            params = enc.space.sample(rng)
        if total is not None:  # nearly exhausted: enumerate what is left
            for params in enc.space.grid():
                if params_key(params) not in seen:
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
        from lightning_hpt.strategies._gp import fit_gp

        torch_seed = int(trial_rng(seed, history.next_number, _SALT + 2).integers(2**31 - 1))
        pending = _pending_points(history, enc)
        previous_threads = torch.get_num_threads()
        proposals: list[dict[str, Any]] = []
        try:
            torch.set_num_threads(self.threads)
            with (
                _blas_threads(self.threads),
                torch.random.fork_rng(devices=[]),
                warnings.catch_warnings(record=True) as caught,
            ):
                warnings.simplefilter("always")
                torch.manual_seed(torch_seed)
                model = fit_gp(x_obs, y_obs, enc.cat_mask)
                acq = self._acquisition(model, x_obs, y_obs, pending, torch_seed)
                taken = set(seen)
                for j in range(n):
                    x = self._optimize(acq, enc, x_obs, y_obs, torch_seed + j)
                    if not bool(torch.isfinite(x).all()):
                        raise FloatingPointError(f"the acquisition optimizer returned a non-finite point {x.tolist()}")
                    x = enc.snap(x)
                    params = enc.decode(x)
                    if params_key(params) in taken:
                        x = self._best_unseen(acq, enc, x, taken, torch_seed + j)
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

    def _acquisition(
        self,
        model: Any,
        x_obs: torch.Tensor,
        y_obs: torch.Tensor,
        pending: torch.Tensor | None,
        torch_seed: int,
    ) -> Any:
        from botorch.acquisition.monte_carlo import qProbabilityOfImprovement, qUpperConfidenceBound
        from botorch.sampling import SobolQMCNormalSampler

        from lightning_hpt.strategies._acquisition import LogConditionalEI, prune_baseline

        if self.acquisition == "lognei":
            baseline = prune_baseline(model, x_obs, seed=torch_seed)
            return LogConditionalEI(model, baseline, samples=self.mc_samples, seed=torch_seed, X_pending=pending)
        if self.acquisition == "logei":
            best_f = float(model.train_y.max())  # the model's (transformed) outcome scale
            return LogConditionalEI(model, best_f=best_f, samples=self.mc_samples, seed=torch_seed, X_pending=pending)
        sampler = SobolQMCNormalSampler(torch.Size([self.mc_samples]), seed=torch_seed)
        best = float(model.train_y.max())
        if self.acquisition == "ucb":
            return qUpperConfidenceBound(model, _UCB_BETA, sampler=sampler, X_pending=pending)
        tau = 1e-3 * float(model.train_y.std().clamp_min(1e-9))
        return qProbabilityOfImprovement(model, best, sampler=sampler, X_pending=pending, tau=tau)

    def _optimize(self, acq: Any, enc: _Encoding, x_obs: torch.Tensor, y_obs: torch.Tensor, seed: int) -> torch.Tensor:
        """The maximizer ``d`` of the acquisition over the space (finite dims on their values)."""
        from lightning_hpt.strategies._gp import maximize_acqf

        values = {i: torch.tensor(v, dtype=torch.float64) for i, v in enc.values.items()}
        top = x_obs[torch.argsort(y_obs, descending=True)[:5]]
        return maximize_acqf(
            acq, enc.kinds, values, top, seed, raw_samples=self.raw_samples, num_restarts=self.num_restarts
        )

    def _best_unseen(self, acq: Any, enc: _Encoding, x: torch.Tensor, taken: set, seed: int) -> torch.Tensor | None:
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
        sobol = torch.quasirandom.SobolEngine(enc.dim, scramble=True, seed=seed).draw(
            max(self.raw_samples, 256), dtype=torch.float64
        )
        pool = enc.snap(torch.cat(candidates + [sobol]))
        keep = [i for i, row in enumerate(pool) if params_key(enc.decode(row)) not in taken]
        if not keep:
            if total is None:
                return None
            left = [p for p in enc.space.grid() if params_key(p) not in taken]
            if not left:
                return None
            pool, keep = torch.stack([enc.encode(p) for p in left]), list(range(len(left)))
        pool = pool[keep]
        with torch.no_grad():
            values = torch.cat([acq(chunk) for chunk in pool.unsqueeze(-2).split(512)])
        values = torch.nan_to_num(values, nan=-math.inf)
        return pool[int(torch.argmax(values))]


@functools.cache
def _threadpools() -> Any:
    """threadpoolctl's view of the loaded thread pools (found once: finding them reads /proc)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - installed with BoTorch
        return None
    return ThreadpoolController()


def _blas_threads(threads: int) -> contextlib.AbstractContextManager:
    """Limit the BLAS thread pools (SciPy's L-BFGS-B, NumPy) like torch's.

    SciPy's optimizers call into OpenBLAS for tiny problems; with its threads spinning against
    torch's and a training process for the same cores, each call costs milliseconds instead of
    microseconds.
    """
    controller = _threadpools()
    if controller is None:  # pragma: no cover
        return contextlib.nullcontext()
    return controller.limit(limits=threads, user_api="blas")


def _pending_points(history: History, enc: _Encoding) -> torch.Tensor | None:
    """``m x d`` points of RUNNING/QUEUED trials, then FAILED ones (most recent first), at most 64."""
    ordered = sorted(history.pending, key=lambda t: -t.number) + sorted(
        history.with_state(TrialState.FAILED), key=lambda t: -t.number
    )
    xs = [enc.encode(t.params) for t in ordered if _valid(enc.space, t.params)][:_MAX_PENDING]
    return torch.stack(xs) if xs else None


def _valid(space: SearchSpace, params: Mapping[str, Any]) -> bool:
    try:
        space.validate(params)
    except ValueError:
        return False
    return True


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"{name} must be an integer >= {minimum}, got {name}={value!r}")


def _check_warm_start(
    warm_start: Sequence[TrialRecord | tuple[Mapping[str, Any], float]] | None,
) -> list[tuple[dict[str, Any], float]]:
    """Normalize warm-start results to ``(params, value)`` pairs with finite values."""
    if warm_start is None:
        return []
    if isinstance(warm_start, (str, bytes, Mapping)) or not isinstance(warm_start, Sequence):
        raise ConfigurationError(
            f"warm_start must be a list of TrialRecord or (params, value) pairs, got {type(warm_start).__name__}"
        )
    out: list[tuple[dict[str, Any], float]] = []
    for i, item in enumerate(warm_start):
        if isinstance(item, TrialRecord):
            if item.state is TrialState.COMPLETE and item.value is not None and math.isfinite(item.value):
                out.append((dict(item.params), float(item.value)))
            continue
        if (
            isinstance(item, tuple)
            and len(item) == 2
            and isinstance(item[0], Mapping)
            and isinstance(item[1], (int, float))
            and not isinstance(item[1], bool)
        ):
            if math.isfinite(item[1]):
                out.append((dict(item[0]), float(item[1])))
            continue
        raise ConfigurationError(
            f"warm_start[{i}] must be a TrialRecord or a (params, value) pair such as ({{'model.lr': 0.01}}, 0.93),"
            f" got {item!r}"
        )
    return out
