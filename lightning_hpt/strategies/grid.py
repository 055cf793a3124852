"""Grid search: every combination of the domains' grid values, each tried once."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from lightning_hpt.checks import check_bool
from lightning_hpt.exceptions import ConfigurationError
from lightning_hpt.masking import get_logger
from lightning_hpt.space import SearchSpace
from lightning_hpt.strategies.base import Strategy, allowed, params_key
from lightning_hpt.trial import History

__all__ = ["GridStrategy", "planned_trials"]

log = get_logger(__name__)


class GridStrategy(Strategy):
    """Proposes the full product of the domains' grids, in a fixed order, skipping tried points.

    A conditional parameter multiplies only the branches where it is active: the grid is the sum
    over the branches of their products (:meth:`SearchSpace.grid`).

    Configurations of every existing trial (finished, running or queued) are skipped, so a
    resumed or shared search continues the grid; ``ask`` returns ``[]`` once every point has
    a trial, which ends the search even if ``n_trials`` is larger. Points that break a parameter
    constraint are skipped too: they are not part of the grid.

    Args:
        points: grid points for continuous ``Float`` domains: one number for all, or a dict per
            name. Discrete domains (``Int``, stepped ``Float``, ``Categorical``) use all their values
            unless a number is given for them in the dict.
        shuffle: visit the grid in a random order drawn from ``seed`` (useful with a budget
            smaller than the grid).
        seed: the shuffle's seed; the study's seed when ``None``.

    Example:
        >>> from lightning_hpt import Categorical, Int, SearchSpace
        >>> from lightning_hpt.trial import Direction, History
        >>> h = History(SearchSpace({"model.n": Int(1, 2), "data.bs": Categorical([32, 64])}), Direction.MAXIMIZE)
        >>> GridStrategy().ask(h, 3)
        [{'model.n': 1, 'data.bs': 32}, {'model.n': 1, 'data.bs': 64}, {'model.n': 2, 'data.bs': 32}]
    """

    name = "grid"
    exhaustive = True

    def __init__(self, points: int | Mapping[str, int] | None = None, shuffle: bool = False, seed: int | None = None):
        super().__init__(seed)
        if (points is not None and not isinstance(points, Mapping)) and (
            isinstance(points, bool) or not isinstance(points, int) or points < 1
        ):
            raise ConfigurationError(
                f"GridStrategy: points must be a positive int or a dict of them, got points={points!r}"
            )
        self.points = dict(points) if isinstance(points, Mapping) else points
        self.shuffle = check_bool(shuffle, "shuffle", owner="GridStrategy")

    def grid(self, history: History) -> list[dict[str, Any]]:
        """The whole grid in visiting order."""
        grid = history.space.grid(self.points)
        if self.shuffle:
            seed = self.effective_seed(history)
            order = np.random.default_rng(seed).permutation(len(grid))
            grid = [grid[i] for i in order]
        return grid

    def ask(self, history: History, n: int = 1) -> list[dict[str, Any]]:
        tried = {params_key(dict(t.params)) for t in history.trials}
        out = []
        for params in self.grid(history):
            if len(out) == n:
                break
            if params_key(params) not in tried and allowed(history, params):
                out.append(params)
        return out

    def __repr__(self) -> str:
        return f"GridStrategy(points={self.points!r}, shuffle={self.shuffle!r}, seed={self.seed!r})"


def planned_trials(strategy: Strategy, space: SearchSpace, n_trials: int | None) -> int | None:
    """How many trials a search will run: ``n_trials``, or fewer when a grid has fewer points.

    Warns when ``n_trials`` stops an unshuffled grid early: the grid's first parameters vary
    slowest, so the trials would all share their first values.
    """
    if not isinstance(strategy, GridStrategy):
        return n_trials
    size = len(space.grid(strategy.points))
    if n_trials is not None and n_trials < size and not strategy.shuffle:
        log.warning(
            "n_trials=%d runs %d of the grid's %d points in its order, where the first parameter varies slowest:"
            " most values of the first parameters are never tried; GridStrategy(shuffle=True) (strategy: {name:"
            " grid, shuffle: true}) spreads the trials over the grid, or give n_trials=%d",
            n_trials,
            n_trials,
            size,
            size,
        )
    return size if n_trials is None else min(n_trials, size)
