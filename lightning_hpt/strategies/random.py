"""Random search: each trial's configuration drawn independently from the space."""

from __future__ import annotations

import itertools
from typing import Any

from lightning_hpt.strategies.base import Strategy, first_allowed, trial_rng
from lightning_hpt.trial import History

__all__ = ["RandomStrategy"]


class RandomStrategy(Strategy):
    """Draws each configuration uniformly (log-uniformly on log domains).

    The draw for trial number ``k`` depends only on ``(seed, k)``, so a resumed seeded search
    continues the same sequence it would have produced uninterrupted. A draw that breaks a
    parameter constraint is drawn again (from ``(seed, k, 1)``, ``(seed, k, 2)``, ...).

    Example:
        >>> from lightning_hpt import Float, SearchSpace
        >>> from lightning_hpt.trial import Direction, History
        >>> h = History(SearchSpace({"model.lr": Float(1e-4, 1e-1, log=True)}), Direction.MAXIMIZE, seed=0)
        >>> RandomStrategy().ask(h, 2) == RandomStrategy().ask(h, 2)
        True
    """

    name = "random"

    def ask(self, history: History, n: int = 1) -> list[dict[str, Any]]:
        seed = self.effective_seed(history)
        start = history.next_number
        space = history.space
        return [
            first_allowed(history, (space.sample(trial_rng(seed, k, j)) for j in itertools.count()), k)
            for k in range(start, start + n)
        ]
