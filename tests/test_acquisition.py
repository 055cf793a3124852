"""The closed-form acquisition and the hand-written gradients of the Bayesian strategy's numerics."""

from __future__ import annotations

import math

import pytest
import torch
from botorch.acquisition.analytic import LogExpectedImprovement

from lightning_hpt.strategies import _gp
from lightning_hpt.strategies._acquisition import LogConditionalEI, prune_baseline

CAT = torch.tensor([False, False, True, False])


def data(n: int = 25, seed: int = 0, noise: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 4, generator=gen, dtype=torch.float64)
    x[:, 2] = torch.randint(3, (n,), generator=gen).double() / 2  # a categorical dim with 3 values
    y = -((x[:, 0] - 0.3) ** 2) - (x[:, 1] - 0.6) ** 2 - 0.5 * (x[:, 2] == 0.5).double() + torch.sin(5 * x[:, 3])
    return x, y + noise * torch.randn(n, generator=gen, dtype=torch.float64)


def candidates(m: int = 6, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(m, 4, generator=gen, dtype=torch.float64)
    x[:, 2] = torch.randint(3, (m,), generator=gen).double() / 2
    return x


@pytest.fixture(scope="module")
def model():
    x, y = data(noise=0.05)
    return _gp.fit_gp(x, y, CAT), x


def acquisitions(model, x):
    best = float(model.train_y.max())
    pending = candidates(3, seed=7)
    return {
        "nei": LogConditionalEI(model, prune_baseline(model, x)),
        "nei+pending": LogConditionalEI(model, prune_baseline(model, x), X_pending=pending),
        "ei": LogConditionalEI(model, best_f=best),
        "ei+pending": LogConditionalEI(model, best_f=best, X_pending=pending),
    }


@pytest.mark.parametrize("name", ["nei", "nei+pending", "ei", "ei+pending"])
def test_closed_form_gradient_matches_autograd(model, name):
    gp, x = model
    acq = acquisitions(gp, x)[name]
    points = torch.cat([candidates(), x[:2]])  # also exactly at observed points
    z = points.clone().requires_grad_(True)
    values = acq(z.unsqueeze(-2))
    (grad,) = torch.autograd.grad(values.sum(), z)
    values2, grad2 = acq.value_and_grad(points)
    torch.testing.assert_close(values2, values.detach(), rtol=1e-7, atol=1e-9)
    grad[:, CAT] = 0.0  # categorical dims are not optimized by gradient
    torch.testing.assert_close(grad2, grad, rtol=1e-6, atol=1e-9)


def test_without_baseline_or_pending_it_is_botorchs_analytic_log_ei(model):
    gp, _ = model
    best = float(gp.train_y.max())
    points = candidates(20).unsqueeze(-2)
    ours = LogConditionalEI(gp, best_f=best)(points)
    theirs = LogExpectedImprovement(gp, best_f=best)(points)
    # equal up to the 1e-8 jitter our posterior adds to its covariance (felt in the far tail)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)


def test_noisy_ei_is_ei_when_the_incumbent_is_certain():
    x, y = data(noise=0.0)
    gp = _gp.fit_gp(x, y, CAT)
    assert gp.noise < 1e-3
    points = candidates(20).unsqueeze(-2)
    nei = LogConditionalEI(gp, prune_baseline(gp, x))(points)
    ei = LogConditionalEI(gp, best_f=float(gp.train_y.max()))(points)
    assert int(nei.argmax()) == int(ei.argmax())
    promising = ei > ei.max() - 5.0  # in the far tail a tiny incumbent spread moves log values a lot
    assert int(promising.sum()) >= 2
    torch.testing.assert_close(nei[promising], ei[promising], rtol=0.0, atol=0.25)


def test_a_pending_point_makes_its_neighbourhood_worthless(model):
    gp, x = model
    base = prune_baseline(gp, x)
    free = LogConditionalEI(gp, base)
    point = candidates(1, seed=3)
    busy = LogConditionalEI(gp, base, X_pending=point)
    near = point + torch.tensor([[1e-3, -1e-3, 0.0, 1e-3]], dtype=torch.float64)
    far = candidates(1, seed=11)
    assert float(busy(near.unsqueeze(-2))) < float(free(near.unsqueeze(-2))) - 3.0
    assert float(busy(far.unsqueeze(-2))) == pytest.approx(float(free(far.unsqueeze(-2))), abs=0.5)


def test_baseline_keeps_the_points_that_can_be_best(model):
    gp, x = model
    base = prune_baseline(gp, x)
    assert 1 <= len(base) <= 32
    best = x[int(gp.train_y.argmax())]
    assert any(torch.equal(best, row) for row in base)


def test_marginal_likelihood_gradient_matches_finite_differences():
    x, y = data(noise=0.05)
    d2 = _gp._pair_sq_diffs(x, CAT)
    ys = (y - y.mean()) / y.std()
    theta = torch.tensor([-0.5, 0.2, 0.0, -1.0, math.log(1e-2), 0.1], dtype=torch.float64)
    _, grad = _gp._neg_log_posterior(theta, d2, ys, 1.0, 1.7)
    eps = 1e-6
    for i in range(len(theta)):
        step = torch.zeros_like(theta)
        step[i] = eps
        up, _ = _gp._neg_log_posterior(theta + step, d2, ys, 1.0, 1.7)
        down, _ = _gp._neg_log_posterior(theta - step, d2, ys, 1.0, 1.7)
        assert grad[i].item() == pytest.approx((up - down) / (2 * eps), rel=1e-5, abs=1e-7)
