"""Asynchronous successive halving (ASHA): keep the top ``1 / reduction_factor`` at every rung.

Rung values are read from the trials' intermediate values each time, never stored, so the
decision is a pure function of the history. A history read from the SQL storage carries them as
sorted lists kept up to date (:mod:`._index`), which give the same decision without a pass over
every trial.
"""

from __future__ import annotations

from collections.abc import Hashable

from lightning_hpt.checks import check_int
from lightning_hpt.exceptions import ConfigurationError
from lightning_hpt.pruners._common import is_finite, others, previous_step, score, value_from
from lightning_hpt.pruners._index import index_of, promotable
from lightning_hpt.pruners._pareto import ahead, finite_vector, rivals_at
from lightning_hpt.pruners.base import Pruner
from lightning_hpt.trial import Direction, History, TrialRecord

__all__ = ["SuccessiveHalvingPruner"]


class SuccessiveHalvingPruner(Pruner):
    """Asynchronous successive halving (Li et al., 2018, arXiv:1810.05934).

    Resource is counted in steps (validation runs, one per epoch by default): a trial at step
    ``s`` has used ``s + 1``. Rung ``k`` sits at resource ``min_resource * reduction_factor **
    (min_early_stopping_rate + k)``, below ``max_resource``. When a trial first reaches a rung,
    its value there is ranked against the values every other trial had when it reached that rung
    (COMPLETE, PRUNED and RUNNING trials; FAILED ones are ignored, and NaN or infinite values
    count as the worst). The trial goes on iff it is in the top ``n // reduction_factor`` of the
    ``n`` values, itself included; with fewer than ``reduction_factor`` values, only the best goes
    on, since a trial cannot be paused until more arrive. Ties go on. A trial is judged once
    per rung, and a NaN or infinite value of its own prunes it at once. With several objectives the
    trials at a rung are ranked by non-dominated sorting, then crowding distance (see :mod:`._pareto`).

    Args:
        min_resource: steps every trial gets before its first judgement (``r`` in the paper).
        reduction_factor: ``eta``: one in ``eta`` trials reaches the next rung; an integer >= 2.
        min_early_stopping_rate: ``s``: shifts the first rung to ``min_resource * eta ** s``.
        max_resource: the most steps a trial runs (``R``); no rung is placed at or past it, since
            a trial that got there is finished anyway. ``None``: ``history.max_steps``
            (``trainer.max_epochs``), and no limit when that is unknown too.

    Example:
        >>> SuccessiveHalvingPruner(min_resource=1, reduction_factor=3).rung_steps(max_resource=27)
        [0, 2, 8]
    """

    name = "asha"

    def __init__(
        self,
        min_resource: int = 1,
        reduction_factor: int = 3,
        min_early_stopping_rate: int = 0,
        max_resource: int | None = None,
    ) -> None:
        cls = type(self).__name__
        self.min_resource = check_int(
            cls, "min_resource", min_resource, 1, "give the validation runs every trial gets before it is judged"
        )
        self.reduction_factor = check_int(cls, "reduction_factor", reduction_factor, 2, "3 or 4 are usual choices")
        self.min_early_stopping_rate = check_int(
            cls, "min_early_stopping_rate", min_early_stopping_rate, 0, "use 0 to place the first rung at min_resource"
        )
        first_rung = self.min_resource * self.reduction_factor**self.min_early_stopping_rate
        if max_resource is not None:
            max_resource = check_int(
                cls, "max_resource", max_resource, 1, "give trainer.max_epochs, or None to read it from the search"
            )
            if max_resource <= first_rung:
                raise ConfigurationError(
                    f"{cls}: max_resource must exceed the first rung min_resource * reduction_factor **"
                    f" min_early_stopping_rate = {first_rung}, or nothing is ever pruned; got {max_resource=}."
                    " Lower min_resource or min_early_stopping_rate, or raise max_resource."
                )
        self.max_resource = max_resource

    def rung_steps(self, max_resource: int | None, until_step: int | None = None) -> list[int]:
        """The steps (0-based) at which trials are judged, for trials of ``max_resource`` steps.

        Args:
            max_resource: the most steps a trial runs; ``None``: unbounded, then ``until_step`` is required.
            until_step: leave out rungs past this step.
        """
        # Rung resources stay below ``max_resource`` and at most ``until_step + 1``.
        bounds = [b for b in (max_resource, None if until_step is None else until_step + 2) if b is not None]
        if not bounds:
            raise ConfigurationError(
                "rung_steps: give max_resource or until_step; the rungs of an unbounded search never end"
            )
        limit = min(bounds)
        steps = []
        resource = self.min_resource * self.reduction_factor**self.min_early_stopping_rate
        while resource < limit:
            steps.append(resource - 1)
            resource *= self.reduction_factor
        return steps

    def should_prune(self, history: History, trial: TrialRecord) -> bool:
        return self.decide(history, trial, self.max_resource if self.max_resource is not None else history.max_steps)

    def decide(self, history: History, trial: TrialRecord, max_resource: int | None, group: Hashable = None) -> bool:
        """:meth:`should_prune` with the maximum resource given (Hyperband gives each bracket's).

        ``group``: only with an indexed history, the predicate on trial numbers of the trials that compete.
        """
        step = trial.last_step
        if step is None:
            return False
        value = trial.intermediate[step]
        vector = trial.intermediate_values.get(step) if history.multi else None
        if not is_finite(value) or (history.multi and not finite_vector(vector)):
            return True
        # Rungs reached since the previous report; earlier ones were passed already (ASHA never demotes).
        since = previous_step(trial, step)
        due = [r for r in self.rung_steps(max_resource, until_step=step) if r > since]
        if history.multi and due:  # several objectives: non-dominated sorting over every trial at the rung
            rivals = others(history, trial)
            for rung_step in due:
                vectors = rivals_at(rivals, rung_step, exact=False)
                if ahead(vector, vectors, history.objectives) >= max((len(vectors) + 1) // self.reduction_factor, 1):
                    return True
            return False
        index = index_of(history)
        if index is not None:  # the same rule on lists kept up to date, not rebuilt from every trial
            return not all(promotable(index, trial, value, r, self.reduction_factor, group) for r in due)
        rivals = others(history, trial) if due else []
        for rung_step in due:
            reached = [v for t in rivals if (v := value_from(t.intermediate, rung_step)) is not None]
            values = [score(v, history.direction) for v in reached]
            if not _promotable(value, values, self.reduction_factor, history.direction):
                return True
        return False

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(min_resource={self.min_resource}, reduction_factor={self.reduction_factor},"
            f" min_early_stopping_rate={self.min_early_stopping_rate}, max_resource={self.max_resource})"
        )


def _promotable(value: float, rivals: list[float], reduction_factor: int, direction: Direction) -> bool:
    """Whether ``value`` is among the best ``max(n // reduction_factor, 1)`` of itself and ``rivals``."""
    ranked = sorted([value, *rivals], reverse=direction is Direction.MAXIMIZE)
    keep = max((len(rivals) + 1) // reduction_factor, 1)
    return not direction.better(ranked[keep - 1], value)
