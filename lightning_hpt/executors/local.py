"""In-process execution, one trial at a time: the default, and the simplest to debug."""

from __future__ import annotations

from concurrent.futures import Future

from lightning_hpt.exceptions import ConfigurationError
from lightning_hpt.executors._channel import failed_outcome, trial_launches_subprocesses
from lightning_hpt.executors.base import Executor
from lightning_hpt.lightning.monitor import TrialReporter
from lightning_hpt.lightning.runner import TrialBuild, TrialJob, TrialOutcome, run_trial

__all__ = ["LocalExecutor"]


class LocalExecutor(Executor):
    """Runs each trial in the calling process and thread; ``submit`` returns when the trial is done.

    Example:
        >>> executor = LocalExecutor()  # HyperparameterSearch(..., executor=executor)
    """

    @property
    def max_concurrency(self) -> int:
        return 1

    def start(self, build: TrialBuild) -> None:
        if build.builder.launches_subprocesses():
            raise ConfigurationError(
                f"{build.builder.describe_trainer()} train each trial on several processes (DDP), which Lightning"
                " starts by re-running the current command: in-process, that is this whole search on every rank. Run"
                " trials in worker processes: executor=ProcessExecutor(gpus_per_trial=k) (CPU: ProcessExecutor(devices=[]))"
            )

    def submit(self, job: TrialJob, reporter: TrialReporter) -> Future[TrialOutcome]:
        future: Future[TrialOutcome] = Future()
        refused = trial_launches_subprocesses(
            job, "the in-process LocalExecutor (every rank would run this whole search)"
        )
        future.set_result(failed_outcome(refused) if refused else run_trial(job, reporter))
        return future
