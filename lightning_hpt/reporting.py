"""The driver's end of a trial's report channel: store each value, ask the pruner, answer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lightning_hpt.pruners import Pruner
from lightning_hpt.storage import Storage
from lightning_hpt.trial import History

__all__ = ["StudyReporter"]


class StudyReporter:
    """A :class:`~lightning_hpt.lightning.monitor.TrialReporter` that the driver hands to an executor for one trial.

    Each report is stored first (storage is the truth), then the pruner decides from the study's
    history, which then holds the new value. Executors call it in the driver process only.

    Args:
        storage: the study's storage.
        study: the study's name.
        pruner: decides whether the trial stops.
        history: reads the study's current :class:`History` (called only when the pruner is active).
        number: the trial's number.
        progress: the live display, told of each value (optional).
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

    @property
    def answers(self) -> bool:
        """Whether :meth:`report` can answer "stop": only with a pruner (channels need not wait otherwise)."""
        return self.pruner.active

    def report(self, step: int, value: float) -> bool:
        """Store ``value`` at ``step``; True when the pruner stops the trial."""
        self.storage.report(self.study, self.number, step, value)
        self.stored.add(step)
        if self.progress is not None:
            self.progress.trial_reported(self.number, step, value)
        if not self.answers:
            return False
        history = self.history()
        trial = next(t for t in history.trials if t.number == self.number)
        return bool(self.pruner.should_prune(history, trial))
