"""The numerics of :class:`~lightning_hpt.strategies.bayesian.BayesianStrategy`: a light GP and an acquisition maximizer.

The model is an exact GP with a Matern-5/2 ARD kernel on the unit cube, written in plain torch and
exposed to BoTorch as a :class:`botorch.models.model.Model`, so BoTorch's acquisition functions and
optimizers run on it unchanged. A GPyTorch model spends most of a proposal in framework overhead at
the sizes a hyperparameter search has (tens to a few hundred points); this one does the same
arithmetic in a fraction of the time, which keeps proposals cheap while trials train.

Categorical dimensions enter the kernel through the Hamming distance (``1[x != x']``), each with its
own lengthscale, so the categories of a parameter are exchangeable rather than ordered. Outcomes
are power-transformed (Yeo-Johnson) and standardized. Priors: the dimension-scaled log-normal
lengthscales of BoTorch's default ``SingleTaskGP`` (typical value growing with ``sqrt(d)``), a
Gamma(2, 1) signal variance, and a Gamma(1.1, 30) noise variance, whose mean (0.04) makes the model
robust to noisy metrics while letting the noise shrink to almost nothing for a deterministic one,
so the model still resolves small differences near the optimum.

:func:`maximize_acqf` maximizes any BoTorch acquisition over a mixed space: L-BFGS-B on the
continuous dimensions alternating with a neighbourhood search on the finite ones, all restarts in
one batch, with a bounded number of acquisition calls.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from botorch.acquisition.objective import PosteriorTransform
from botorch.models.model import Model
from botorch.posteriors.gpytorch import GPyTorchPosterior
from gpytorch.distributions import MultivariateNormal
from scipy.optimize import minimize
from torch import Tensor

__all__ = ["GPFitError", "LightGP", "fit_gp", "maximize_acqf"]

_MIN_LENGTHSCALE = 0.025
_MAX_LENGTHSCALE = 100.0
_MAX_CAT_LENGTHSCALE = 2.0
_MIN_NOISE = 1e-8
_NOISE_SHAPE, _NOISE_RATE = 1.1, 30.0  # Gamma prior of the noise variance
_MAX_NOISE = 1.0
_JITTERS = (0.0, 1e-8, 1e-6, 1e-4)


class GPFitError(RuntimeError):
    """The GP could not be fitted or factorized (the caller falls back to quasi-random proposals)."""


def _sq_dist(x1: Tensor, x2: Tensor, lengthscale: Tensor, cat: Tensor) -> Tensor:
    """Scaled squared distances, ``... x n1 x n2``; categorical dims use the Hamming distance."""
    if not bool(cat.any()):  # the common all-continuous case, without boolean indexing
        z1, z2 = x1 / lengthscale, x2 / lengthscale
        d2 = z1.pow(2).sum(-1, keepdim=True) - 2 * z1 @ z2.transpose(-1, -2) + z2.pow(2).sum(-1).unsqueeze(-2)
        return d2.clamp_min(0.0)
    d2 = x1.new_zeros(*torch.broadcast_shapes(x1.shape[:-2], x2.shape[:-2]), x1.shape[-2], x2.shape[-2])
    cont = ~cat
    if cont.any():
        z1, z2 = x1[..., cont] / lengthscale[cont], x2[..., cont] / lengthscale[cont]
        # the expanded form keeps this a matrix product; clamp the rounding error below zero
        d2 = d2 + (z1.pow(2).sum(-1, keepdim=True) - 2 * z1 @ z2.transpose(-1, -2) + z2.pow(2).sum(-1).unsqueeze(-2))
        d2 = d2.clamp_min(0.0)
    if cat.any():
        diff = (x1[..., cat].unsqueeze(-2) - x2[..., cat].unsqueeze(-3)).abs() > 1e-9
        d2 = d2 + (diff.to(x1.dtype) / lengthscale[cat].pow(2)).sum(-1)
    return d2


def matern52(x1: Tensor, x2: Tensor, lengthscale: Tensor, cat: Tensor) -> Tensor:
    """Matern-5/2 kernel matrix ``... x n1 x n2`` with unit signal variance."""
    # sqrt is not differentiable at 0; the kernel is, so keep the argument off 0
    s = torch.sqrt(5.0 * _sq_dist(x1, x2, lengthscale, cat).clamp_min(1e-30))
    return (1.0 + s + s.pow(2) / 3.0) * torch.exp(-s)


def _cholesky(k: Tensor) -> Tensor:
    """Cholesky factor of ``k``, adding growing jitter if needed; raises :class:`GPFitError`."""
    eye = torch.eye(k.shape[-1], dtype=k.dtype)
    for jitter in _JITTERS:
        chol, info = torch.linalg.cholesky_ex(k + jitter * eye)
        if not bool((info != 0).any()) and bool(torch.isfinite(chol).all()):
            return chol
    raise GPFitError(
        f"the kernel matrix is not positive definite ({k.shape[-1]} points), even with jitter {_JITTERS[-1]}"
    )


class LightGP(Model):
    """An exact GP posterior on standardized outcomes, conditioned on ``n`` points.

    Args:
        train_x: ``n x d`` inputs in the unit cube (categorical dims hold one fixed value per category).
        train_y: ``n`` outcomes (larger is better), on the scale the model works on (transformed).
        cat_mask: ``d`` booleans, True for categorical dims.
        lengthscale: ``d`` positive lengthscales.
        noise: the noise variance on the standardized scale.
    """

    _num_outputs = 1

    def __init__(
        self,
        train_x: Tensor,
        train_y: Tensor,
        cat_mask: Tensor,
        lengthscale: Tensor,
        noise: float,
        outputscale: float = 1.0,
    ) -> None:
        super().__init__()
        self.train_x = train_x
        self.cat_mask = cat_mask
        self.lengthscale = lengthscale
        self.noise = float(noise)
        self.outputscale = float(outputscale)
        self.train_y = train_y
        self.y_mean, self.y_std = _standardize_stats(train_y)
        y = (train_y - self.y_mean) / self.y_std
        k = self._k(train_x, train_x) + self.noise * torch.eye(len(train_x), dtype=train_x.dtype)
        self._chol = _cholesky(k)
        self._alpha = torch.cholesky_solve(y.unsqueeze(-1), self._chol).squeeze(-1)

    def _k(self, x1: Tensor, x2: Tensor) -> Tensor:
        return self.outputscale * matern52(x1, x2, self.lengthscale, self.cat_mask)

    @property
    def num_outputs(self) -> int:
        return 1

    @property
    def batch_shape(self) -> torch.Size:
        return torch.Size()

    def mean_std(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior mean and standard deviation at ``... x d`` points, on the outcome's scale."""
        kx = self._k(x, self.train_x)
        mean = kx @ self._alpha
        v = torch.linalg.solve_triangular(self._chol, kx.unsqueeze(-1), upper=False).squeeze(-1)
        var = (self.outputscale - v.pow(2).sum(-1)).clamp_min(1e-12)
        return mean * self.y_std + self.y_mean, var.sqrt() * self.y_std

    def posterior(
        self,
        X: Tensor,
        output_indices: list[int] | None = None,
        observation_noise: bool | Tensor = False,
        posterior_transform: PosteriorTransform | None = None,
        **kwargs: Any,
    ) -> GPyTorchPosterior:
        """The joint posterior at ``batch x q x d`` points (a ``batch x q`` multivariate normal)."""
        kx = self._k(X, self.train_x)  # batch x q x n
        mean = kx @ self._alpha
        chol = self._chol.expand(*kx.shape[:-2], *self._chol.shape)
        v = torch.linalg.solve_triangular(chol, kx.transpose(-1, -2), upper=False)  # batch x n x q
        cov = self._k(X, X) - v.transpose(-1, -2) @ v
        eye = torch.eye(X.shape[-2], dtype=X.dtype)
        if observation_noise is True:
            cov = cov + self.noise * eye
        # a little jitter keeps the q x q sampling factorization stable for near-identical points
        cov = cov + 1e-8 * eye
        mvn = MultivariateNormal(mean * self.y_std + self.y_mean, cov * self.y_std**2)
        post = GPyTorchPosterior(mvn)
        return post if posterior_transform is None else posterior_transform(post)


def _standardize_stats(y: Tensor) -> tuple[float, float]:
    std = float(y.std()) if len(y) > 1 else 0.0
    return float(y.mean()), std if std > 1e-12 and math.isfinite(std) else 1.0


def _pair_sq_diffs(x: Tensor, cat: Tensor) -> Tensor:
    """``n x n x d`` squared differences per dimension (``1[x != x']`` on categorical ones)."""
    diff = x.unsqueeze(-2) - x.unsqueeze(-3)
    return torch.where(cat, (diff.abs() > 1e-9).to(x.dtype), diff.pow(2))


def _neg_log_posterior(theta: Tensor, d2: Tensor, y: Tensor, ls_loc: float, ls_scale: float) -> tuple[float, Tensor]:
    """Negative log marginal likelihood plus negative log prior per point, and its gradient.

    ``theta = (log lengthscales, log noise, log signal variance)``; ``d2`` from :func:`_pair_sq_diffs`.
    The gradient is in closed form, ``0.5 tr((K^-1 - a a^T) dK)`` per parameter: an autograd
    graph of the same arithmetic costs several times more at these sizes.

    Raises:
        GPFitError: the kernel matrix cannot be factorized at ``theta``.
    """
    n, d = y.shape[0], d2.shape[-1]
    inv_ls2 = torch.exp(-2.0 * theta[:d])
    noise, scale = float(theta[d].exp()), float(theta[d + 1].exp())
    r = (5.0 * (d2 @ inv_ls2)).sqrt()
    e = torch.exp(-r)
    kf = scale * (1.0 + r + r.pow(2) / 3.0) * e
    chol, info = torch.linalg.cholesky_ex(kf + noise * torch.eye(n, dtype=y.dtype))
    if bool(info != 0):
        raise GPFitError("Cholesky failed during the hyperparameter fit")
    alpha = torch.cholesky_solve(y.unsqueeze(-1), chol).squeeze(-1)
    nll = 0.5 * float(y @ alpha) + float(chol.diagonal().log().sum()) + 0.5 * n * math.log(2 * math.pi)
    w = torch.cholesky_inverse(chol) - torch.outer(alpha, alpha)
    grad = torch.empty(d + 2, dtype=y.dtype)
    grad[:d] = (0.5 * 5.0 / 3.0) * inv_ls2 * torch.einsum("ab,abi->i", w * (scale * (1.0 + r) * e), d2)
    grad[d] = 0.5 * noise * float(w.diagonal().sum())
    grad[d + 1] = 0.5 * float((w * kf).sum())
    # log-normal densities on the lengthscales (not on their logs), as BoTorch's priors;
    # Gamma(1.1, 30) on the noise variance: mean 0.04, yet free to go to ~0 for a deterministic
    # metric; Gamma(2, 1) on the signal variance
    t = theta[:d]
    log_prior = float((-((t - ls_loc) ** 2) / (2 * ls_scale**2) - t).sum())
    log_prior += (_NOISE_SHAPE - 1.0) * float(theta[d]) - _NOISE_RATE * noise + float(theta[d + 1]) - scale
    grad[:d] += (t - ls_loc) / ls_scale**2 + 1.0
    grad[d] += _NOISE_RATE * noise - (_NOISE_SHAPE - 1.0)
    grad[d + 1] += scale - 1.0
    return (nll - log_prior) / n, grad / n


def fit_gp(x: Tensor, y: Tensor, cat_mask: Tensor, maxiter: int = 100) -> LightGP:
    """Fit lengthscales, signal and noise variances by MAP with L-BFGS-B and return the model.

    The fit starts from fixed values (lengthscales at their prior's mode), so it is
    deterministic: the same data give the same model.

    Args:
        x: ``n x d`` inputs in the unit cube (float64).
        y: ``n`` outcomes, larger is better; power-transformed (:func:`warp`) and standardized here.
        cat_mask: ``d`` booleans, True for categorical dims.
        maxiter: most L-BFGS-B iterations; the fit is cheap and bounded whatever ``n``.

    Raises:
        GPFitError: the data are degenerate or the kernel matrix cannot be factorized.
    """
    if x.ndim != 2 or y.shape != (x.shape[0],) or not bool(torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise GPFitError(f"need finite n x d inputs and n outcomes, got {tuple(x.shape)} and {tuple(y.shape)}")
    d = x.shape[-1]
    y = warp(y)
    mean, std = _standardize_stats(y)
    ys = (y - mean) / std
    ls_loc, ls_scale = math.sqrt(2.0) + 0.5 * math.log(d), math.sqrt(3.0)
    theta0 = np.array([ls_loc - ls_scale**2] * d + [math.log(1e-2), 0.0])
    # a categorical lengthscale beyond 2 would make the categories near-copies of each other, so
    # the model would never see a reason to try an untested category where the others do well
    bounds = [(math.log(_MIN_LENGTHSCALE), math.log(_MAX_CAT_LENGTHSCALE if c else _MAX_LENGTHSCALE)) for c in cat_mask]
    bounds.append((math.log(_MIN_NOISE), math.log(_MAX_NOISE)))
    bounds.append((math.log(0.05), math.log(20.0)))

    d2 = _pair_sq_diffs(x, cat_mask)

    def fun(theta_np: np.ndarray) -> tuple[float, np.ndarray]:
        try:
            value, grad = _neg_log_posterior(torch.from_numpy(theta_np), d2, ys, ls_loc, ls_scale)
        except GPFitError:
            # a huge value makes the line search step back from the singular region
            return 1e10, np.zeros_like(theta_np)
        if not math.isfinite(value) or not bool(torch.isfinite(grad).all()):
            return 1e10, np.zeros_like(theta_np)
        return value, grad.numpy()

    theta0 = np.clip(theta0, [b[0] for b in bounds], [b[1] for b in bounds])
    # ftol 1e-6: the MAP objective (per point) is flat to that precision long before the default stops
    result = minimize(
        fun, theta0, jac=True, method="L-BFGS-B", bounds=bounds, options={"maxiter": maxiter, "ftol": 1e-6}
    )
    theta = result.x if np.isfinite(result.fun) and result.fun < 1e9 else theta0
    ls = torch.tensor(np.exp(theta[:d]), dtype=torch.float64)
    return LightGP(x, y, cat_mask, ls, float(np.exp(theta[d])), float(np.exp(theta[d + 1])))


def warp(y: Tensor) -> Tensor:
    """Yeo-Johnson power transform of standardized outcomes ``n`` (the exponent by maximum likelihood).

    Metrics of a search are skewed: a few diverging configurations sit far from a dense cluster
    of good ones. Untransformed, the far ones set the scale and the differences between good
    configurations drown in the noise term; after the transform the model resolves them.
    """
    if len(y) < 3:
        return y
    y_np = y.numpy()
    std = y_np.std()
    if not std > 1e-12:
        return y
    z = (y_np - y_np.mean()) / std
    # the log-likelihood on a grid of exponents, all at once: cheaper than a scalar optimizer
    lam = np.linspace(-2.0, 4.0, 121)[:, None]
    with np.errstate(all="ignore"):
        t = _yeo_johnson(z[None, :], lam)
        llf = -0.5 * len(z) * np.log(t.var(axis=1)) + (lam[:, 0] - 1) * (np.sign(z) * np.log1p(np.abs(z))).sum()
    llf = np.where(np.isfinite(llf), llf, -np.inf)
    if not np.isfinite(llf).any():
        return y
    out = t[int(np.argmax(llf))]
    return torch.tensor(out, dtype=torch.float64) if np.isfinite(out).all() else y


def _yeo_johnson(z: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """The Yeo-Johnson transform of ``z`` for each exponent in ``lam`` (broadcast)."""
    pos = z >= 0
    zp, zn = np.where(pos, z, 0.0), np.where(pos, 0.0, -z)
    lam_p = np.where(np.abs(lam) < 1e-8, 1.0, lam)
    lam_n = np.where(np.abs(2 - lam) < 1e-8, 1.0, 2 - lam)
    tp = np.where(np.abs(lam) < 1e-8, np.log1p(zp), ((zp + 1) ** lam_p - 1) / lam_p)
    tn = np.where(np.abs(2 - lam) < 1e-8, -np.log1p(zn), -((zn + 1) ** lam_n - 1) / lam_n)
    return np.where(pos, tp, tn)


# ----------------------------------------------------------------------------- acquisition


def _evaluate(acq: Any, x: Tensor) -> Tensor:
    """Acquisition values of ``m x d`` single points, ``m`` (NaN counts as the worst)."""
    with torch.no_grad():
        values = torch.cat([acq(chunk.unsqueeze(-2)) for chunk in x.split(1024)])
    return torch.nan_to_num(values, nan=-math.inf)


def snap_finite(x: Tensor, values: dict[int, Tensor]) -> Tensor:
    """``m x d`` points with every finite dimension moved to its nearest allowed value."""
    x = x.clone()
    for i, vals in values.items():
        x[:, i] = vals[(x[:, i : i + 1] - vals).abs().argmin(-1)]
    return x


def _continuous_step(acq: Any, x: Tensor, cont: list[int], maxiter: int) -> Tensor:
    """L-BFGS-B on the continuous dims of ``r x d`` starting points, the other dims fixed.

    The restarts are independent, so one bounded problem on their sum optimizes all of them in
    one batch per acquisition call.
    """
    idx = torch.tensor(cont)
    base = x.detach().clone()

    def fun(z_np: np.ndarray) -> tuple[float, np.ndarray]:
        z = torch.tensor(z_np, dtype=torch.float64).view(len(base), len(cont))
        if hasattr(acq, "value_and_grad"):  # a closed-form gradient, far cheaper than autograd
            values, full = acq.value_and_grad(base.index_copy(1, idx, z))
            loss, grad = -values.sum(), -full[:, idx]
        else:
            z.requires_grad_(True)
            loss = -acq(base.index_copy(1, idx, z).unsqueeze(-2)).sum()
            (grad,) = torch.autograd.grad(loss, z)
        value = loss.detach().item()
        if not math.isfinite(value) or not bool(torch.isfinite(grad).all()):
            return 1e30, np.zeros_like(z_np)
        return value, grad.numpy().ravel()

    z0 = base[:, idx].numpy().ravel()
    result = minimize(fun, z0, jac=True, method="L-BFGS-B", bounds=[(0.0, 1.0)] * len(z0), options={"maxiter": maxiter})
    z = torch.tensor(np.clip(result.x, 0.0, 1.0), dtype=torch.float64).view(len(base), len(cont))
    candidate = base.index_copy(1, idx, z)
    # keep a start where the step made things worse (a failed line search, NaN)
    better = _evaluate(acq, candidate) >= _evaluate(acq, base)
    return torch.where(better.unsqueeze(-1), candidate, base)


def _discrete_step(acq: Any, x: Tensor, values: dict[int, Tensor], current: Tensor) -> tuple[Tensor, Tensor, bool]:
    """Move each of ``r x d`` points to its best neighbour differing in one finite dim.

    Neighbours: every value of a categorical or short ordered dim, the three nearest values on
    each side for a long ordered one.
    """
    r, d = x.shape
    moves: list[Tensor] = []
    for i, vals in values.items():
        if len(vals) <= 1:
            continue
        candidates = vals.expand(r, -1)
        if len(vals) > 9:  # a long integer range: look around the current value
            pos = (x[:, i : i + 1] - vals).abs().argmin(-1, keepdim=True)
            offsets = torch.arange(-3, 4).unsqueeze(0)
            candidates = vals[(pos + offsets).clamp(0, len(vals) - 1)]
        moved = x.unsqueeze(1).repeat(1, candidates.shape[1], 1)
        moved[:, :, i] = candidates
        moves.append(moved)
    if not moves:
        return x, current, False
    neighbours = torch.cat(moves, dim=1)  # r x m x d
    scores = _evaluate(acq, neighbours.reshape(-1, d)).view(r, -1)
    best, arg = scores.max(-1)
    improved = best > current + 1e-12
    x = torch.where(improved.unsqueeze(-1), neighbours[torch.arange(r), arg], x)
    return x, torch.where(improved, best, current), bool(improved.any())


def maximize_acqf(
    acq: Any,
    kinds: tuple[str, ...],
    values: dict[int, Tensor],
    x_best: Tensor,
    seed: int,
    raw_samples: int = 256,
    num_restarts: int = 4,
    maxiter: int = 12,
    alternations: int = 4,
) -> Tensor:
    """Maximize an acquisition over a mixed unit cube; returns the best point ``d``.

    Starting points are the best of a scrambled Sobol set and of perturbations of ``x_best``
    (the optimum usually lies near the best observations). From each, continuous dims are
    optimized by L-BFGS-B and finite dims (integers, stepped floats, categories) by a discrete
    neighbourhood search, alternating until no finite dim moves. Finite dims only ever hold
    their allowed values, so nothing is rounded after the fact.

    Args:
        acq: a BoTorch acquisition function of ``b x 1 x d`` points.
        kinds: ``"cont"``, ``"disc"`` or ``"cat"`` per dimension.
        values: allowed (sorted) unit values of each finite dimension.
        x_best: ``k x d`` best observed points, used to seed local starts.
        seed: seeds the Sobol set and the perturbations.
        raw_samples: Sobol points screened for starting points.
        num_restarts: starting points optimized (in one batch).
        maxiter: L-BFGS-B iterations of each continuous step; a handful suffice from good
            starting points, and they bound the cost of a proposal.
        alternations: most continuous/discrete rounds on mixed spaces.
    """
    d = len(kinds)
    gen = torch.Generator().manual_seed(seed)
    cont = [i for i, k in enumerate(kinds) if k == "cont"]
    sobol = torch.quasirandom.SobolEngine(d, scramble=True, seed=seed).draw(raw_samples, dtype=torch.float64)
    spray = x_best.repeat_interleave(24, 0)
    # two scales: 0.05 reaches the next basin, 0.01 refines the incumbent's
    scale = torch.tensor([0.05] * 16 + [0.01] * 8, dtype=torch.float64).repeat(len(x_best)).unsqueeze(-1)
    noise = scale * torch.randn(spray.shape, generator=gen, dtype=torch.float64)
    # finite dims of a perturbed point move one value at a time, now and then
    for i, vals in values.items():
        step = torch.randint(-1, 2, (len(spray),), generator=gen) * (torch.rand(len(spray), generator=gen) < 0.3)
        if kinds[i] == "cat":
            pick = vals[torch.randint(len(vals), (len(spray),), generator=gen)]
            noise[:, i] = torch.where(step != 0, pick - spray[:, i], torch.zeros(()))
        else:
            noise[:, i] = step * (1.0 / max(len(vals), 1))
    spray = (spray + noise).clamp(0.0, 1.0)
    pool = snap_finite(torch.cat([sobol, spray]), values)
    scores = _evaluate(acq, pool)
    order = torch.argsort(scores, descending=True)[:num_restarts]
    x, current = pool[order], scores[order]
    for _ in range(alternations if values else 1):
        if cont:
            x = _continuous_step(acq, x, cont, maxiter)
            current = _evaluate(acq, x)
        if not values:
            break
        x, current, moved = _discrete_step(acq, x, values, current)
        if not moved:
            break
    return x[int(torch.argmax(current))]
