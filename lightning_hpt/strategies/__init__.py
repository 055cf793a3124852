"""Strategies propose configurations: grid, random, Sobol and Bayesian optimization."""

from __future__ import annotations

from typing import Any

from lightning_hpt.exceptions import ConfigurationError
from lightning_hpt.strategies.base import Strategy
from lightning_hpt.strategies.grid import GridStrategy
from lightning_hpt.strategies.random import RandomStrategy
from lightning_hpt.strategies.sobol import SobolStrategy

__all__ = ["STRATEGIES", "GridStrategy", "RandomStrategy", "SobolStrategy", "Strategy", "make_strategy"]

STRATEGIES = ("grid", "random", "sobol", "bayes")


def make_strategy(spec: str | Strategy, seed: int | None = None) -> Strategy:
    """A strategy from its name (``"grid" | "random" | "sobol" | "bayes"``) or a Strategy object."""
    if isinstance(spec, Strategy):
        return spec
    if spec == "grid":
        return GridStrategy(seed=seed)
    if spec == "random":
        return RandomStrategy(seed=seed)
    if spec == "sobol":
        return SobolStrategy(seed=seed)
    if spec in ("bayes", "bayesian"):
        from lightning_hpt.strategies.bayesian import BayesianStrategy  # BoTorch is imported only when used

        return BayesianStrategy(seed=seed)
    raise ConfigurationError(f"strategy must be one of {list(STRATEGIES)} or a Strategy object, got strategy={spec!r}")


def __getattr__(name: str) -> Any:
    if name == "BayesianStrategy":
        from lightning_hpt.strategies.bayesian import BayesianStrategy

        return BayesianStrategy
    raise AttributeError(name)
