"""The Executor interface, and the contract every executor keeps, enforced here.

An executor implements :meth:`Executor._start` and :meth:`Executor._submit`; the public
:meth:`~Executor.start` and :meth:`~Executor.submit` wrap them with what every executor owes
the driver:

- a trial whose Trainer starts its DDP ranks by re-running the current command is refused,
  unless trials run as their own command (:attr:`Executor.runs_ddp`): at ``start`` for the shared
  Trainer settings (``ConfigurationError``), at ``submit`` for one trial whose parameters make it
  DDP (a FAILED outcome with the reason);
- trial code sent elsewhere must pickle: ``start`` pickles the build with :meth:`Executor.dumps`
  and raises :class:`~lightning_hpt.exceptions.TrialPickleError` naming the part that cannot be;
- ``submit`` never raises: what goes wrong in handing over a trial is a FAILED outcome;
- the reporter's ``answers`` is handed to :meth:`Executor._submit`: False means no report needs to
  wait for an answer (the search has no active pruner).
"""

from __future__ import annotations

import signal
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, final

from lightning_hpt.exceptions import ConfigurationError
from lightning_hpt.executors._pickling import check_picklable
from lightning_hpt.lightning.monitor import TrialReporter
from lightning_hpt.lightning.runner import TrialBuild, TrialJob, TrialOutcome
from lightning_hpt.masking import get_logger
from lightning_hpt.trial import TrialState

__all__ = ["HALT_WAIT", "Executor", "describe_exit", "done", "failed_outcome"]

log = get_logger(__name__)

#: on Ctrl+C or SIGTERM, how long the driver waits in :meth:`Executor.halt` for outcomes of trials that are ending.
HALT_WAIT = 1.0


def failed_outcome(error: str) -> TrialOutcome:
    """A FAILED outcome decided by the executor (the trial itself could not tell: its process is gone)."""
    return TrialOutcome(TrialState.FAILED, error=error)


def done(outcome: TrialOutcome) -> Future[TrialOutcome]:
    """A future that already holds ``outcome``."""
    future: Future[TrialOutcome] = Future()
    future.set_result(outcome)
    return future


def describe_exit(returncode: int | None) -> str:
    """``"exit code 3"`` or ``"killed by signal SIGKILL (9)"`` for a ``Popen.returncode``."""
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "signal"
        return f"killed by signal {name} ({-returncode})"
    return f"exit code {returncode}"


class Executor(ABC):
    """Runs trials; the driver keeps at most ``max_concurrency`` of them submitted at once.

    ``submit`` never raises for what the trial does: the future's result is a
    :class:`~lightning_hpt.lightning.runner.TrialOutcome`, FAILED when the trial (or its worker) broke.
    See the module's docstring for the whole contract.
    """

    #: trials run as their own command (a worker module given the trial), so a DDP Trainer that re-runs
    #: the command for its other ranks re-runs that trial, which is right; otherwise DDP trials are refused.
    runs_ddp: bool = False
    #: the end of the message refusing DDP trials at ``start`` (what to do instead).
    ddp_refusal: str = "run DDP trials with executor=ProcessExecutor(gpus_per_trial=k)"
    #: how this executor is named in the refusal of one DDP trial.
    trial_kind: str = "this executor"
    #: where trial code is sent, for the pickling error (``None``: it stays in this process).
    sends_to: str | None = None

    @property
    @abstractmethod
    def max_concurrency(self) -> int:
        """How many trials can run at the same time."""

    def dumps(self) -> Callable[[Any], bytes] | None:
        """The pickler that sends trial code to the workers; ``None`` when trials run in this process."""
        return None

    @final
    def start(self, build: TrialBuild) -> None:
        """Called once before the first trial of a search: refuse what cannot run here, then start the workers.

        Raises:
            ConfigurationError: the shared Trainer settings start DDP ranks by re-running the command.
            TrialPickleError: the trial code cannot be sent to the workers (naming the part).
        """
        if not self.runs_ddp and build.builder.launches_subprocesses():
            raise ConfigurationError(
                f"{build.builder.describe_trainer()} start DDP ranks by re-running the current command,"
                f" one process per device: {self.ddp_refusal}"
            )
        dumps = self.dumps()
        data = check_picklable(build, dumps, self.sends_to or "the workers") if dumps is not None else None
        self._start(build, data)

    def _start(self, build: TrialBuild, data: bytes | None) -> None:  # noqa: B027  (nothing to start in-process)
        """Start the workers and check that they can load ``build`` (``data``: it pickled)."""

    @final
    def submit(self, job: TrialJob, reporter: TrialReporter) -> Future[TrialOutcome]:
        """Start ``job``; ``reporter.report`` is called (in the driver process) after each validation run.

        Never raises: a trial this executor cannot run, or fails to hand over, is a FAILED outcome.
        """
        if not self.runs_ddp and job.build.builder.trial_launches_subprocesses(job.params):
            trainer = {k: v for k, v in sorted(job.params.items()) if k.startswith("trainer.")}
            return done(
                failed_outcome(
                    f"trial {job.number}'s parameters {trainer} train it on several processes (DDP), which"
                    f" Lightning starts by re-running the current command; {self.trial_kind} cannot run such a"
                    " trial. Run DDP trials with executor=ProcessExecutor(gpus_per_trial=k) (CPU:"
                    " ProcessExecutor(devices=[], workers=cores // k)), or leave the strategy and devices out of"
                    " the search space"
                )
            )
        try:
            return self._submit(job, reporter, bool(reporter.answers))
        except Exception as e:  # the driver must go on: the trial fails, the search does not
            log.exception("%s could not start trial %d", type(self).__name__, job.number)
            return done(failed_outcome(f"{type(self).__name__} could not start the trial: {type(e).__name__}: {e}"))

    @abstractmethod
    def _submit(self, job: TrialJob, reporter: TrialReporter, answers: bool) -> Future[TrialOutcome]:
        """Start ``job`` (it may run before returning); ``answers``: whether reports wait for a decision."""

    def flush(self) -> None:  # noqa: B027  (an executor that starts each trial at once has nothing to flush)
        """The search has no more trials to submit for now: start any trial held back to be batched with others."""

    def halt(self) -> None:  # noqa: B027  (an executor whose trials stop with the driver's signal has nothing to do)
        """The search is stopping (Ctrl+C, SIGTERM): stop the trials that train on regardless, so that every
        submitted trial's outcome is set, or will be only as interrupted; the driver then records the trials
        that ended before the stop as they ended."""

    def shutdown(self) -> None:  # noqa: B027  (an executor without workers has nothing to stop)
        """Stop workers and release resources; running trials are ended."""
