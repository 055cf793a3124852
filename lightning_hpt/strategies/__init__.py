"""Strategies propose configurations: grid, random, Sobol and Bayesian optimization."""

from __future__ import annotations

from typing import Any

from lightning_hpt.exceptions import ConfigurationError
from lightning_hpt.registry import Registry
from lightning_hpt.strategies.base import Strategy
from lightning_hpt.strategies.grid import GridStrategy
from lightning_hpt.strategies.random import RandomStrategy
from lightning_hpt.strategies.sobol import SobolStrategy

__all__ = ["STRATEGIES", "GridStrategy", "RandomStrategy", "SobolStrategy", "Strategy", "make_strategy"]

#: the strategies reachable by name (``HyperparameterSearch(strategy="sobol")``, the CLI's ``search.strategy``).
STRATEGIES: Registry[Strategy] = Registry("strategy", Strategy)
STRATEGIES.register("grid", GridStrategy)
STRATEGIES.register("random", RandomStrategy)
STRATEGIES.register("sobol", SobolStrategy)
STRATEGIES.register("bayes", "lightning_hpt.strategies.bayesian:BayesianStrategy")  # BoTorch only when used
STRATEGIES.register("bayesian", "lightning_hpt.strategies.bayesian:BayesianStrategy")


def make_strategy(spec: str | Strategy, seed: int | None = None) -> Strategy:
    """A strategy from its registered name (``"grid" | "random" | "sobol" | "bayes"``) or a Strategy object."""
    if isinstance(spec, Strategy):
        return spec
    cls = STRATEGIES.get(spec) if isinstance(spec, str) else None
    if cls is None:
        names = [n for n in STRATEGIES if n != "bayesian"]
        raise ConfigurationError(f"strategy must be one of {names} or a Strategy object, got strategy={spec!r}")
    return cls(seed=seed)


def __getattr__(name: str) -> Any:
    if name == "BayesianStrategy":
        return STRATEGIES.get("bayes")
    raise AttributeError(name)
