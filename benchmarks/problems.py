"""Synthetic test problems with known optima, for the strategy benchmarks.

Each problem has a search space, a function of a configuration (to minimize) and its known
minimum, so the simple regret of a search is ``best value found - optimum``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from lightning_hpt.space import Categorical, Float, Int, SearchSpace

__all__ = ["PROBLEMS", "Problem", "branin", "hartmann6", "mixed"]


@dataclass(frozen=True)
class Problem:
    """A named function to minimize on a search space, with its known minimum."""

    name: str
    space: SearchSpace
    fn: Callable[[dict[str, Any]], float]
    optimum: float

    def __call__(self, params: dict[str, Any]) -> float:
        return float(self.fn(params))


def _branin(x1: float, x2: float) -> float:
    a, b, c = 1.0, 5.1 / (4 * math.pi**2), 5 / math.pi
    r, s, t = 6.0, 10.0, 1 / (8 * math.pi)
    return a * (x2 - b * x1**2 + c * x1 - r) ** 2 + s * (1 - t) * math.cos(x1) + s


BRANIN_MIN = 0.397887357729738


def branin() -> Problem:
    """Branin on [-5, 10] x [0, 15]: three global minima, 0.397887."""
    space = SearchSpace({"x1": Float(-5.0, 10.0), "x2": Float(0.0, 15.0)})
    return Problem("branin", space, lambda p: _branin(p["x1"], p["x2"]), BRANIN_MIN)


_H6_ALPHA = np.array([1.0, 1.2, 3.0, 3.2])
_H6_A = np.array(
    [[10, 3, 17, 3.5, 1.7, 8], [0.05, 10, 17, 0.1, 8, 14], [3, 3.5, 1.7, 10, 17, 8], [17, 8, 0.05, 10, 0.1, 14]]
)
_H6_P = 1e-4 * np.array(
    [
        [1312, 1696, 5569, 124, 8283, 5886],
        [2329, 4135, 8307, 3736, 1004, 9991],
        [2348, 1451, 3522, 2883, 3047, 6650],
        [4047, 8828, 8732, 5743, 1091, 381],
    ]
)


def _hartmann6(x: np.ndarray) -> float:
    return float(-(_H6_ALPHA * np.exp(-(_H6_A * (x - _H6_P) ** 2).sum(-1))).sum())


def hartmann6() -> Problem:
    """Hartmann-6 on [0, 1]^6: one global minimum, -3.32237."""
    space = SearchSpace({f"x{i}": Float(0.0, 1.0) for i in range(6)})
    return Problem(
        "hartmann6", space, lambda p: _hartmann6(np.array([p[f"x{i}"] for i in range(6)])), -3.322368011391339
    )


# Mixed: a continuous Branin valley, a log-scale "learning rate", an integer whose best value
# depends on the category, and a category that shifts the whole function.
_CAT_OFFSET = {"adam": 0.0, "sgd": 1.0, "rmsprop": 0.5, "adagrad": 2.0}
_CAT_BEST_K = {"adam": 6, "sgd": 3, "rmsprop": 9, "adagrad": 12}


def _mixed(p: dict[str, Any]) -> float:
    c = p["opt"]
    value = _branin(p["x1"], p["x2"]) / 10.0
    value += 0.5 * (math.log10(p["lr"]) + 2.5) ** 2
    value += 0.1 * (p["layers"] - _CAT_BEST_K[c]) ** 2
    return value + _CAT_OFFSET[c]


def mixed() -> Problem:
    """Mixed 5-d: Branin / 10 + lr term + integer term + category offset; minimum 0.0397887."""
    space = SearchSpace(
        {
            "x1": Float(-5.0, 10.0),
            "x2": Float(0.0, 15.0),
            "lr": Float(1e-5, 1e-1, log=True),
            "layers": Int(1, 16),
            "opt": Categorical(["sgd", "adam", "rmsprop", "adagrad"]),
        }
    )
    return Problem("mixed", space, _mixed, BRANIN_MIN / 10.0)


PROBLEMS: dict[str, Callable[[], Problem]] = {"branin": branin, "hartmann6": hartmann6, "mixed": mixed}
