"""In-process execution, one trial at a time: the default, and the simplest to debug."""

from __future__ import annotations

from concurrent.futures import Future

from typing_extensions import override

from lightning_hpt.executors.base import Executor, done
from lightning_hpt.lightning.monitor import TrialReporter
from lightning_hpt.lightning.runner import TrialJob, TrialOutcome, run_trial

__all__ = ["LocalExecutor"]


class LocalExecutor(Executor):
    """Runs each trial in the calling process and thread; ``submit`` returns when the trial is done.

    Example:
        >>> executor = LocalExecutor()  # the default executor of a search
    """

    ddp_refusal = (
        "in-process, that is this whole search on every rank. Run trials in worker processes:"
        " executor=ProcessExecutor(gpus_per_trial=k) (CPU: ProcessExecutor(devices=[]))"
    )
    trial_kind = "the in-process LocalExecutor (every rank would run this whole search)"

    @property
    @override
    def max_concurrency(self) -> int:
        return 1

    @override
    def _submit(self, job: TrialJob, reporter: TrialReporter, answers: bool) -> Future[TrialOutcome]:
        return done(run_trial(job, reporter))
