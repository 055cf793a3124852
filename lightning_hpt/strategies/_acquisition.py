"""Log (noisy) expected improvement on :class:`~lightning_hpt.strategies._gp.LightGP`, in closed form.

Noisy expected improvement (Letham et al., 2019, "Constrained Bayesian optimization with noisy
experiments") averages expected improvement over joint posterior samples of the latent function at
the best observed points: the incumbent is uncertain, so it is sampled rather than taken from a
noisy observation. Given one such sample, the value at a candidate is Gaussian (the GP conditioned
on the sample), so its expected improvement has a closed form. Only the incumbent is sampled
(a fixed quasi-random set, drawn once per proposal); the candidate never is. Compared with the
Monte Carlo ``qLogNoisyExpectedImprovement`` of BoTorch, which samples candidate and baseline
jointly on every call, this is the same quantity without sampling noise in the candidate, smooth
for L-BFGS-B, and several times cheaper.

Pending points (RUNNING trials, earlier members of a batch) join the sampled set without being
observed: maximizing ``E[max(f(x), f(pending), f(best)) - max(f(best))]`` over ``x`` is maximizing
the expected improvement of ``x`` over the best of the incumbent and the pending points, so a
candidate next to a pending point is worth little.

``LogConditionalEI(model, best_f=...)`` without a baseline is BoTorch's analytic ``LogExpectedImprovement``
when nothing is pending.
"""

from __future__ import annotations

import math

import torch
from botorch.acquisition.acquisition import AcquisitionFunction
from botorch.acquisition.analytic import _log_ei_helper, log_Phi
from botorch.utils.sampling import draw_sobol_normal_samples
from torch import Tensor

from lightning_hpt.strategies._gp import LightGP, _cholesky, _sq_dist

__all__ = ["LogConditionalEI", "prune_baseline"]

_MAX_BASELINE = 32


class LogConditionalEI(AcquisitionFunction):
    """Log expected improvement over a sampled incumbent, evaluated in closed form per sample.

    Args:
        model: the fitted GP.
        baseline: ``k x d`` observed points whose latent values are sampled as the incumbent
            (noisy EI); ``None`` for plain EI over ``best_f``.
        best_f: a known incumbent on the model's outcome scale (plain EI); ignored when it is
            below a sampled one.
        samples: quasi-Monte-Carlo samples of the incumbent (only drawn when something is sampled).
        seed: seeds the samples.
        X_pending: ``m x d`` points being evaluated.
    """

    def __init__(
        self,
        model: LightGP,
        baseline: Tensor | None = None,
        best_f: float | None = None,
        samples: int = 128,
        seed: int = 0,
        X_pending: Tensor | None = None,
    ) -> None:
        super().__init__(model)
        if baseline is None and best_f is None:
            raise ValueError("LogConditionalEI needs a baseline or best_f")
        self.gp = model
        self.baseline = baseline
        self.best_f = None if best_f is None else (best_f - model.y_mean) / model.y_std
        self.samples = samples
        self.seed = seed
        self.set_X_pending(X_pending)

    def set_X_pending(self, X_pending: Tensor | None = None) -> None:
        """Condition on ``X_pending`` too: resample the joint incumbent over baseline and pending."""
        self.X_pending = X_pending
        parts = [p for p in (self.baseline, X_pending) if p is not None and len(p)]
        gp = self.gp
        if not parts:
            self._points = None
            self._best = torch.tensor([self.best_f], dtype=torch.float64)
            return
        self._points = torch.cat(parts)
        self._v_points, self._chol_points, self._z, draws = _joint_samples(gp, self._points, self.samples, self.seed)
        best = draws.max(0).values  # S
        if self.best_f is not None:
            best = best.clamp_min(self.best_f)
        self._best = best

    def _moments(self, x: Tensor) -> tuple[Tensor, ...]:
        """At ``b x d`` points: the conditional means ``b x S`` and variance ``b``, and the parts of their gradients."""
        gp = self.gp
        kx, dkx = _kernel_and_slope(gp, x, gp.train_x)  # b x n
        mean = kx @ gp._alpha
        v = torch.linalg.solve_triangular(gp._chol, kx.T, upper=False)  # n x b
        var = gp.outputscale - v.pow(2).sum(0)
        if self._points is None:
            return mean.unsqueeze(-1), var, v, dkx, None, None
        kp, dkp = _kernel_and_slope(gp, x, self._points)
        cross = kp - v.T @ self._v_points  # b x k: posterior covariance with the sampled points
        a = torch.linalg.solve_triangular(self._chol_points, cross.T, upper=False).T  # b x k
        return mean.unsqueeze(-1) + a @ self._z, var - a.pow(2).sum(-1), v, dkx, a, dkp

    def forward(self, X: Tensor) -> Tensor:
        """Acquisition values of ``b x 1 x d`` points, ``b``."""
        if X.shape[-2] != 1:
            raise ValueError(f"LogConditionalEI evaluates single points (b x 1 x d), got {tuple(X.shape)}")
        means, var, *_ = self._moments(X[..., 0, :])
        sigma = var.clamp_min(1e-12 * self.gp.outputscale).sqrt().unsqueeze(-1)
        log_ei = _log_ei_helper((means - self._best) / sigma) + sigma.log()
        return torch.logsumexp(log_ei, dim=-1) - math.log(log_ei.shape[-1]) + math.log(self.gp.y_std)

    @torch.no_grad()
    def value_and_grad(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Values ``b`` and their gradients ``b x d`` at ``b x d`` points, by hand.

        The same quantity as :meth:`forward`, differentiated in closed form (categorical
        dimensions get a zero gradient): a few matrix products instead of an autograd graph of a
        hundred small operations, which would cost most of an acquisition optimization.
        """
        gp = self.gp
        means, var, v, dkx, a, dkp = self._moments(x)
        floor = 1e-12 * gp.outputscale
        sigma = var.clamp_min(floor).sqrt().unsqueeze(-1)  # b x 1
        u = (means - self._best) / sigma  # b x S
        log_ei = _log_ei_helper(u)
        h = log_ei + sigma.log()
        value = torch.logsumexp(h, dim=-1) - math.log(h.shape[-1]) + math.log(gp.y_std)
        w = torch.softmax(h, dim=-1)
        g = torch.exp(log_Phi(u) - log_ei)  # d log_ei / du
        g1 = (w * g).sum(-1) / sigma[:, 0]  # b
        q = ((w * (1 - g * u)).sum(-1) / sigma[:, 0].pow(2)) * (var > floor)  # 2 d value / d var
        # d value = g1 dmean + gz . da + q/2 dvar, with dvar = -2 v.dv - 2 a.da and da, dv linear in dk
        coef_x = g1.unsqueeze(-1) * gp._alpha  # b x n, times dk(x, X)
        back = q.unsqueeze(-1) * v.T  # b x n, times dv
        grad = torch.zeros_like(x)
        if a is not None:
            gz = (w * g) @ self._z.T / sigma  # b x k
            beta = torch.linalg.solve_triangular(self._chol_points.T, (gz - q.unsqueeze(-1) * a).T, upper=True).T
            grad = grad + _slope_grad(gp, x, self._points, beta * dkp)
            back = back + beta @ self._v_points.T
        gamma = torch.linalg.solve_triangular(gp._chol.T, back.T, upper=True).T  # b x n
        grad = grad + _slope_grad(gp, x, gp.train_x, (coef_x - gamma) * dkx)
        return value, grad


def _kernel_and_slope(gp: LightGP, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """``k(x, y)`` (``b x m``) and ``-(5/3) s (1 + r) exp(-r)``, the factor of its gradient in ``x``."""
    # sqrt is not differentiable at 0 (forward may run under autograd); the kernel is, so keep off 0
    r = (5.0 * _sq_dist(x, y, gp.lengthscale, gp.cat_mask)).clamp_min(1e-30).sqrt()
    e = torch.exp(-r) * gp.outputscale
    return (1.0 + r + r.pow(2) / 3.0) * e, -(5.0 / 3.0) * (1.0 + r) * e


def _slope_grad(gp: LightGP, x: Tensor, y: Tensor, c: Tensor) -> Tensor:
    """``sum_j c_bj (x_b - y_j) / lengthscale^2`` over continuous dims (``b x d``; 0 on categorical ones)."""
    grad = (c.sum(-1, keepdim=True) * x - c @ y) / gp.lengthscale.pow(2)
    return grad.masked_fill(gp.cat_mask, 0.0)


def _joint_samples(gp: LightGP, points: Tensor, samples: int, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Quasi-random joint posterior draws of the latent function at ``k`` points.

    Returns ``L^-1 k(X, points)`` (``n x k``), the Cholesky factor of the posterior covariance
    (``k x k``), the standard normal draws ``z`` (``k x S``) and the draws themselves (``k x S``).
    """
    v = torch.linalg.solve_triangular(gp._chol, gp._k(gp.train_x, points), upper=False)
    mean = gp._k(points, gp.train_x) @ gp._alpha
    cov = gp._k(points, points) - v.T @ v
    chol = _cholesky(0.5 * (cov + cov.T) + 1e-9 * gp.outputscale * torch.eye(len(points)))
    z = draw_sobol_normal_samples(len(points), samples, dtype=torch.float64, seed=seed).T
    return v, chol, z, mean.unsqueeze(-1) + chol @ z


def prune_baseline(model: LightGP, x: Tensor, samples: int = 512, seed: int = 0) -> Tensor:
    """The observed points that are the best in at least one joint posterior sample (at most 32).

    Points that are certainly worse than another never hold the incumbent and only cost time.
    """
    winners = _joint_samples(model, x, samples, seed)[3].argmax(0)
    counts = torch.bincount(winners, minlength=len(x))
    keep = torch.argsort(counts, descending=True)[: min(_MAX_BASELINE, int((counts > 0).sum()))]
    return x[torch.sort(keep).values]
