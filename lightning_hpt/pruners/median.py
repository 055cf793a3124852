"""Median stopping: prune a trial whose best value so far is worse than the median of the others."""

from __future__ import annotations

from lightning_hpt.checks import check_int
from lightning_hpt.pruners._common import is_finite, others, previous_step, score
from lightning_hpt.pruners._index import completed_others, index_of, median_of_others
from lightning_hpt.pruners._pareto import ahead, finite_vector, rivals_at
from lightning_hpt.pruners.base import Pruner
from lightning_hpt.trial import Direction, History, TrialRecord, TrialState

__all__ = ["MedianPruner"]


class MedianPruner(Pruner):
    """Prunes a trial whose best value so far is worse than the median, at the same step, of the others.

    The others are the COMPLETE, PRUNED and RUNNING trials that recorded a value at the step
    being judged (FAILED ones are ignored); their NaN or infinite values count as the worst
    possible. A NaN or infinite value of the judged trial prunes it at once, warm-up or not: a
    diverged run does not come back.

    With several objectives a trial is pruned when more than half of the others at the step rank
    before it by non-dominated sorting (see :mod:`._pareto`); its own vector is the one at the step.

    Args:
        n_startup_trials: no pruning until this many trials are COMPLETE.
        n_warmup_steps: no pruning before this step (steps are validation runs, counted from 0;
            one per epoch by default), so a trial is first judged at step ``n_warmup_steps``.
        interval_steps: judge at steps ``n_warmup_steps + k * interval_steps`` only; a trial that
            skipped such a step is judged at the first step it recorded after it.

    Example:
        >>> MedianPruner(n_startup_trials=5, n_warmup_steps=2)
        MedianPruner(n_startup_trials=5, n_warmup_steps=2, interval_steps=1)
    """

    name = "median"

    def __init__(self, n_startup_trials: int = 5, n_warmup_steps: int = 0, interval_steps: int = 1) -> None:
        cls = type(self).__name__
        self.n_startup_trials = check_int(cls, "n_startup_trials", n_startup_trials, 0, "use 0 to prune from the start")
        self.n_warmup_steps = check_int(cls, "n_warmup_steps", n_warmup_steps, 0, "use 0 to judge from the first step")
        self.interval_steps = check_int(cls, "interval_steps", interval_steps, 1, "use 1 to judge at every step")

    def should_prune(self, history: History, trial: TrialRecord) -> bool:
        step = trial.last_step
        if step is None:
            return False
        if not is_finite(trial.intermediate[step]) or (
            history.multi and not finite_vector(trial.intermediate_values.get(step))
        ):
            return True
        index = index_of(history)
        if index is not None:
            completed = completed_others(index, trial)
        else:
            completed = sum(t.state is TrialState.COMPLETE for t in others(history, trial))
        if completed < self.n_startup_trials or step < self.n_warmup_steps:
            return False
        # The judging step at or below ``step``; judge only if this is the first value recorded since it.
        due = step - (step - self.n_warmup_steps) % self.interval_steps
        if previous_step(trial, step) >= due:
            return False

        direction = history.direction
        if history.multi:
            rivals = rivals_at(others(history, trial), step, exact=True)
            return ahead(trial.intermediate_values[step], rivals, history.objectives) > len(rivals) // 2
        if index is not None:
            median = median_of_others(index, trial, step)
            return median is not None and direction.better(median, _best(trial, direction))
        rivals = sorted(
            score(t.intermediate[step], direction) for t in others(history, trial) if step in t.intermediate
        )
        if not rivals:
            return False
        half = len(rivals) // 2
        median = rivals[half] if len(rivals) % 2 else (rivals[half - 1] + rivals[half]) / 2
        return direction.better(median, _best(trial, direction))

    def __repr__(self) -> str:
        return (
            f"MedianPruner(n_startup_trials={self.n_startup_trials}, n_warmup_steps={self.n_warmup_steps},"
            f" interval_steps={self.interval_steps})"
        )


def _best(trial: TrialRecord, direction: Direction) -> float:
    # The best value so far, not the latest: one noisy validation run should not end a good trial.
    finite = [v for v in trial.intermediate.values() if is_finite(v)]
    return min(finite) if direction is Direction.MINIMIZE else max(finite)
