"""The Strategy interface: what to try next, as a pure function of the stored history."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from lightning_hpt.exceptions import ConfigurationError
from lightning_hpt.trial import History, params_key

__all__ = ["Strategy", "params_key", "trial_rng"]


def trial_rng(seed: int | None, number: int, salt: int = 0) -> np.random.Generator:
    """The random generator of one trial number, derived from ``(seed, number, salt)``.

    A seeded search that is stopped and resumed therefore draws the same values for the same
    trial numbers, whatever happened in between. Unseeded (``seed=None``): fresh entropy.
    """
    if seed is None:
        return np.random.default_rng()
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(number), int(salt)])


class Strategy(ABC):
    """Proposes configurations.

    Implementations keep no state between calls that matters for the proposals: everything is
    derived from the :class:`~lightning_hpt.trial.History` (and the seed), so a resumed or
    parallel search asks again and gets consistent answers. Proposals are made for the trial
    numbers ``history.next_number, history.next_number + 1, ...``.
    """

    #: the name stored with the study (``"random"``, ``"grid"``, ...); for display and storage only.
    name: str = "strategy"
    #: True when the strategy enumerates a finite set and then returns ``[]`` (a grid): the search may
    #: run with ``n_trials=None`` until it is exhausted, and a configuration is never created twice.
    exhaustive: bool = False

    def __init__(self, seed: int | None = None) -> None:
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ConfigurationError(f"seed must be an integer or None, got seed={seed!r}")
        self.seed = seed

    def effective_seed(self, history: History) -> int | None:
        """The strategy's own seed if given, else the study's."""
        return self.seed if self.seed is not None else history.seed

    @abstractmethod
    def ask(self, history: History, n: int = 1) -> list[dict[str, Any]]:
        """Propose up to ``n`` new configurations.

        Args:
            history: every trial so far, RUNNING and QUEUED ones included.
            n: how many configurations are wanted (free worker slots).

        Returns:
            At most ``n`` configurations, each valid in ``history.space``; an empty list means the
            strategy is exhausted (a finished grid) and the search should end.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}(seed={self.seed!r})"
