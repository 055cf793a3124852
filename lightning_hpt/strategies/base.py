"""The Strategy interface: what to try next, as a pure function of the stored history."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from lightning_hpt.checks import check_seed
from lightning_hpt.exceptions import ConfigurationError
from lightning_hpt.trial import History, params_key

if TYPE_CHECKING:
    from lightning_hpt.objectives import Objective
    from lightning_hpt.space import SearchSpace

__all__ = ["MAX_DRAWS", "Strategy", "allowed", "first_allowed", "params_key", "trial_rng"]

#: configurations drawn for one trial before the parameter constraints are declared unsatisfiable.
MAX_DRAWS = 1000


def allowed(history: History, params: Mapping[str, Any]) -> bool:
    """Whether ``params`` keeps every parameter constraint of the study (``history.param_constraints``)."""
    return all(rule.holds(params) for rule in history.param_constraints)


def first_allowed(history: History, draws: Iterable[dict[str, Any]], number: int) -> dict[str, Any]:
    """The first of ``draws`` that :func:`allowed` accepts, among at most :data:`MAX_DRAWS`.

    Raises:
        ConfigurationError: none of them is allowed: the constraints leave (almost) no feasible point.
    """
    for i, params in enumerate(draws):
        if allowed(history, params):
            return params
        if i + 1 >= MAX_DRAWS:
            break
    raise no_feasible_point(history, number)


def no_feasible_point(history: History, number: int) -> ConfigurationError:
    """The error of a space whose parameter constraints no drawn configuration keeps."""
    rules = [str(r) for r in history.param_constraints]
    return ConfigurationError(
        f"param_constraints: none of {MAX_DRAWS} configurations drawn for trial {number} keeps {rules}; the space"
        " has no (or almost no) feasible point: loosen the constraints or widen the space"
    )


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
        self.seed = check_seed(seed)  # refused here, not when the first proposal is made

    def effective_seed(self, history: History) -> int | None:
        """The strategy's own seed if given, else the study's."""
        return self.seed if self.seed is not None else history.seed

    def check(self, space: SearchSpace, objectives: Sequence[Objective]) -> None:
        """Refuse settings that cannot work for a study of ``space`` and ``objectives``, before anything is written.

        A search calls it when it is made; the default accepts everything.

        Raises:
            ConfigurationError: naming the setting, the rule, the value and the fix.
        """
        return None

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
