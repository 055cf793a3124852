"""In-process execution, one trial at a time: the default, and the simplest to debug."""

from __future__ import annotations

from concurrent.futures import Future

from lightning_hpt.executors.base import Executor
from lightning_hpt.lightning.monitor import TrialReporter
from lightning_hpt.lightning.runner import TrialJob, TrialOutcome, run_trial

__all__ = ["LocalExecutor"]


class LocalExecutor(Executor):
    """Runs each trial in the calling process and thread; ``submit`` returns when the trial is done.

    Example:
        >>> executor = LocalExecutor()  # HyperparameterSearch(..., executor=executor)
    """

    @property
    def max_concurrency(self) -> int:
        return 1

    def submit(self, job: TrialJob, reporter: TrialReporter) -> Future[TrialOutcome]:
        future: Future[TrialOutcome] = Future()
        future.set_result(run_trial(job, reporter))
        return future
