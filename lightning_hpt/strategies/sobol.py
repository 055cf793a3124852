"""Quasi-random search on a scrambled Sobol sequence: covers the space more evenly than random."""

from __future__ import annotations

import itertools
from typing import Any

import torch

from lightning_hpt.strategies.base import Strategy, first_allowed, trial_rng
from lightning_hpt.trial import History

__all__ = ["SobolStrategy"]

_SALT = 0x50B0


class SobolStrategy(Strategy):
    """Trial number ``k`` gets point ``k`` of a scrambled Sobol sequence decoded by the space.

    The scrambling is seeded (the study's seed when the strategy has none), so the sequence is
    reproducible and a resumed search continues it. A point that breaks a parameter constraint is
    replaced by seeded uniform draws until one keeps them.

    Example:
        >>> from lightning_hpt import Int, SearchSpace
        >>> from lightning_hpt.trial import Direction, History
        >>> h = History(SearchSpace({"model.num_layers": Int(1, 4)}), Direction.MAXIMIZE, seed=0)
        >>> len(SobolStrategy().ask(h, 4))
        4
    """

    name = "sobol"

    def ask(self, history: History, n: int = 1) -> list[dict[str, Any]]:
        seed = self.effective_seed(history)
        if seed is None:  # unseeded: one fresh scramble per call is still a valid design
            seed = int(trial_rng(None, 0).integers(2**31))
        engine = torch.quasirandom.SobolEngine(history.space.dim, scramble=True, seed=seed)
        engine.fast_forward(history.next_number)
        points = engine.draw(n, dtype=torch.float64)
        out = []
        for i, x in enumerate(points):
            k, space = history.next_number + i, history.space
            redraws = (space.sample(trial_rng(seed, k, _SALT + j)) for j in itertools.count())
            out.append(first_allowed(history, itertools.chain([space.from_unit(x)], redraws), k))
        return out
