"""The Executor interface: runs trial jobs somewhere and carries their reports back."""

from __future__ import annotations

from abc import ABC, abstractmethod
from concurrent.futures import Future

from lightning_hpt.lightning.monitor import TrialReporter
from lightning_hpt.lightning.runner import TrialBuild, TrialJob, TrialOutcome

__all__ = ["Executor"]


class Executor(ABC):
    """Runs trials; the driver keeps at most ``max_concurrency`` of them submitted at once.

    ``submit`` never raises for what the trial does: the future's result is a
    :class:`~lightning_hpt.lightning.runner.TrialOutcome`, FAILED when the trial (or its worker) broke.
    """

    @property
    @abstractmethod
    def max_concurrency(self) -> int:
        """How many trials can run at the same time."""

    def start(self, build: TrialBuild) -> None:
        """Called once before the first trial of a search: check that ``build`` can reach the workers
        (e.g. that it pickles) and start them. Raises ``ConfigurationError`` before any trial runs."""

    @abstractmethod
    def submit(self, job: TrialJob, reporter: TrialReporter) -> Future[TrialOutcome]:
        """Start ``job``; ``reporter.report`` is called (in the driver process) after each validation run."""

    def shutdown(self) -> None:
        """Stop workers and release resources; running trials are ended."""
