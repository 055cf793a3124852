"""Hyperband: several successive-halving brackets, from aggressive to none at all."""

from __future__ import annotations

import dataclasses
import hashlib
import math

from lightning_hpt.checks import check_int
from lightning_hpt.exceptions import ConfigurationError
from lightning_hpt.pruners._common import is_finite
from lightning_hpt.pruners._index import index_of
from lightning_hpt.pruners.base import Pruner
from lightning_hpt.pruners.successive_halving import SuccessiveHalvingPruner
from lightning_hpt.trial import History, TrialRecord, TrialState

__all__ = ["HyperbandPruner"]


class HyperbandPruner(Pruner):
    """Hyperband (Li et al., 2018, JMLR 18(185)) run as asynchronous successive-halving brackets.

    Bracket ``b`` is a :class:`SuccessiveHalvingPruner` whose first rung is at ``min_resource *
    reduction_factor ** b`` steps; the last bracket prunes nothing. There are
    ``floor(log_eta(max_resource / min_resource)) + 1`` brackets, and each trial competes only
    with the trials of its own bracket. A trial's bracket is drawn from a hash of ``(seed, trial
    number)`` with weights proportional to each bracket's budget of trials, so it depends on
    nothing else: a resumed search, or another worker, puts the trial in the same bracket.

    Args:
        min_resource: steps (validation runs) before the most aggressive bracket first judges.
        max_resource: the most steps a trial runs. ``None``: ``history.max_steps``
            (``trainer.max_epochs``); when that is unknown too, the most steps a COMPLETE trial
            ran, and nothing is pruned before a trial completes. Brackets, and so the bracket of
            a trial, are only stable once this is known: pass it when you can.
        reduction_factor: ``eta`` of every bracket; an integer >= 2.

    Example:
        >>> HyperbandPruner(min_resource=1, max_resource=27, reduction_factor=3).budgets(27)
        [27, 12, 6, 4]
    """

    name = "hyperband"

    def __init__(self, min_resource: int = 1, max_resource: int | None = None, reduction_factor: int = 3) -> None:
        self.min_resource = check_int(
            "HyperbandPruner", "min_resource", min_resource, 1, "give the validation runs of the shortest bracket"
        )
        self.reduction_factor = check_int(
            "HyperbandPruner", "reduction_factor", reduction_factor, 2, "3 is the usual choice"
        )
        if max_resource is not None:
            max_resource = check_int(
                "HyperbandPruner", "max_resource", max_resource, 1, "give trainer.max_epochs, or None"
            )
            if max_resource < self.min_resource:
                raise ConfigurationError(
                    f"HyperbandPruner: max_resource must be >= min_resource, got {max_resource=} and"
                    f" min_resource={self.min_resource}; lower min_resource or raise max_resource"
                )
        self.max_resource = max_resource

    def resolve_max_resource(self, history: History) -> int | None:
        """The maximum resource in steps: given, else ``history.max_steps``, else the longest COMPLETE trial."""
        if self.max_resource is not None:
            return self.max_resource
        if history.max_steps is not None:
            return history.max_steps
        index = index_of(history)
        if index is not None:
            return index.longest_complete()
        steps = [t.last_step + 1 for t in history.with_state(TrialState.COMPLETE) if t.last_step is not None]
        return max(steps, default=None)

    def budgets(self, max_resource: int) -> list[int]:
        """The relative number of trials of each bracket (``n`` of Hyperband's algorithm 1), most aggressive first."""
        n_brackets = 1
        while self.min_resource * self.reduction_factor**n_brackets <= max_resource:
            n_brackets += 1
        # Bracket b spends about as much as any other: many short trials or a few long ones.
        return [math.ceil(n_brackets * self.reduction_factor**s / (s + 1)) for s in reversed(range(n_brackets))]

    def bracket_of(self, history: History, number: int) -> int | None:
        """The bracket of trial ``number`` (0: most aggressive), or ``None`` while the maximum resource is unknown."""
        max_resource = self.resolve_max_resource(history)
        return None if max_resource is None else _bracket(history.seed, number, self.budgets(max_resource))

    def should_prune(self, history: History, trial: TrialRecord) -> bool:
        step = trial.last_step
        if step is None:
            return False
        if not is_finite(trial.intermediate[step]):
            return True
        max_resource = self.resolve_max_resource(history)
        if max_resource is None:
            return False
        budgets = self.budgets(max_resource)
        bracket = _bracket(history.seed, trial.number, budgets)
        halving = SuccessiveHalvingPruner(self.min_resource, self.reduction_factor, min_early_stopping_rate=bracket)
        if index_of(history) is not None and not history.multi:  # the bracket's rivals from the history's index
            return halving.decide(history, trial, max_resource, _Bracket(history.seed, tuple(budgets), bracket))
        mates = tuple(t for t in history.trials if _bracket(history.seed, t.number, budgets) == bracket)
        return halving.decide(dataclasses.replace(history, trials=mates), trial, max_resource)

    def __repr__(self) -> str:
        return (
            f"HyperbandPruner(min_resource={self.min_resource}, max_resource={self.max_resource},"
            f" reduction_factor={self.reduction_factor})"
        )


@dataclasses.dataclass(frozen=True)
class _Bracket:
    """The trials of one bracket, as a predicate on trial numbers (a key of the history's index)."""

    seed: int | None
    budgets: tuple[int, ...]
    bracket: int

    def __call__(self, number: int) -> bool:
        return _bracket(self.seed, number, list(self.budgets)) == self.bracket


def _bracket(seed: int | None, number: int, budgets: list[int]) -> int:
    # A stable hash (not ``hash()``, which is salted per process) so every process agrees.
    digest = hashlib.blake2b(f"{seed}:{number}".encode(), digest_size=8).digest()
    ticket = int.from_bytes(digest, "big") % sum(budgets)
    for bracket, budget in enumerate(budgets):
        ticket -= budget
        if ticket < 0:
            return bracket
    raise AssertionError("unreachable: the ticket is below the sum of the budgets")
