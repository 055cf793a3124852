"""The driver's end of a trial's report channel: store each value, ask the pruner, answer."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from lightning_hpt.pruners import Pruner
from lightning_hpt.storage import Storage
from lightning_hpt.trial import History, TrialRecord

__all__ = ["StudyReporter", "record_outcome"]

FLUSH_S = 2.0  # without an active pruner, a trial's values are stored at most this often (and at its end)


class StudyReporter:
    """A :class:`~lightning_hpt.lightning.monitor.TrialReporter` that the driver hands to an executor for one trial.

    With an active pruner each report is stored first (storage is the truth), then the pruner
    decides from the study's history, which then holds the new value. Without one nothing waits on
    the values, so they are stored in batches, at most every :data:`FLUSH_S` seconds (the driver
    stores what is left with the trial's end). Executors call it in the driver process only.

    Args:
        storage: the study's storage.
        study: the study's name.
        pruner: decides whether the trial stops.
        history: reads the study's current :class:`History` (called only when the pruner is active).
        number: the trial's number.
        progress: the live display, told of each value (every objective's, with several) (optional).
    """

    def __init__(
        self,
        storage: Storage,
        study: str,
        pruner: Pruner,
        history: Callable[[], History],
        number: int,
        progress: Any = None,
    ) -> None:
        self.storage, self.study, self.pruner, self.history = storage, study, pruner, history
        self.number, self.progress = number, progress
        #: steps stored through this reporter (the driver stores the others when the trial ends)
        self.stored: set[int] = set()
        #: values not stored yet (see :meth:`flush`)
        self.pending: dict[int, float | tuple[float, ...]] = {}
        self._flushed = 0.0  # the first value is stored at once: `show` sees the trial has started training

    @property
    def answers(self) -> bool:
        """Whether :meth:`report` can answer "stop": only with a pruner (channels need not wait otherwise)."""
        return self.pruner.active

    def report(self, step: int, value: float | tuple[float, ...]) -> bool:
        """Store ``value`` at ``step`` (every objective's value with several); True when the pruner stops the trial."""
        self.pending[step] = value
        if self.answers or time.monotonic() - self._flushed >= FLUSH_S:
            self.flush()
        if self.progress is not None:
            self.progress.trial_reported(self.number, step, value)
        if not self.answers:
            return False
        history = self.history()
        trials = history.trials  # numbered from 0 without gaps: look there first, not through every trial
        trial = trials[self.number] if self.number < len(trials) else None
        if trial is None or trial.number != self.number:
            trial = next(t for t in trials if t.number == self.number)
        return bool(self.pruner.should_prune(history, trial))

    def flush(self) -> None:
        """Store the pending values in one transaction."""
        if self.pending:
            self.storage.report_many(self.study, self.number, self.pending)
            self.stored.update(self.pending)
            self.pending = {}
        self._flushed = time.monotonic()


def record_outcome(
    storage: Storage, study: str, rec: TrialRecord, reporter: StudyReporter, outcome: Any
) -> TrialRecord:
    """Store a finished trial: the values not stored yet, then its end (``outcome``: a ``TrialOutcome``).

    Not stored yet are the reporter's last batch and the values the channel did not carry (it
    failed, or the executor batches); they go in the trial's end's transaction.
    """
    missing = {s: v for s, v in outcome.intermediate.items() if s not in reporter.stored}
    attrs = {**outcome.attrs, "metrics": dict(outcome.metrics)} if outcome.metrics or outcome.attrs else None
    return storage.finish_trial(
        study,
        rec.number,
        state=outcome.state,
        value=outcome.value,
        best_step=outcome.best_step,
        error=outcome.error,
        checkpoint=outcome.checkpoint,
        attrs=attrs,
        values=getattr(outcome, "values", None),
        steps={**reporter.pending, **missing},
    )
