"""The loop of one run: keep the executor busy with trials, record each outcome, stop when done."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path
from typing import Any

from lightning_hpt.exceptions import SearchPreempted
from lightning_hpt.executors import Executor
from lightning_hpt.failures import fail_fast
from lightning_hpt.lightning.runner import TrialBuild, TrialJob, TrialOutcome
from lightning_hpt.pareto import pareto_front
from lightning_hpt.proposals import next_trials
from lightning_hpt.pruners import Pruner
from lightning_hpt.recovery import ACTIVE, abandon
from lightning_hpt.reporting import StudyReporter, record_outcome
from lightning_hpt.storage import Storage
from lightning_hpt.strategies import Strategy
from lightning_hpt.trial import PREEMPTED, History, TrialRecord

__all__ = ["StudyDriver", "show_finished"]


class StudyDriver:
    """Runs a study's trials through an executor until ``n_trials`` are finished, the strategy runs out or time is up.

    Args:
        storage, study: the opened study (the driver is its only writer in this process).
        build: what every trial is built from.
        executor: where trials run.
        strategy, pruner: what to try next, and when a running trial stops.
        n_trials: trials in the whole study, or ``None`` (until the strategy runs out).
        planned: the trials the display counts towards: ``n_trials``, or a grid's size when smaller or
            when ``n_trials`` is ``None`` (``None``: unknown).
        timeout: seconds after which no new trial starts, or ``None``.
        root: trials run in ``<root>/<study>/trial_<number>/``.
        seed: the study's seed, handed to every trial.
        read_history: reads the study's current history (with the search's ``max_steps``).
        progress, board: the live display and the study's TensorBoard board, told of each trial.
    """

    def __init__(
        self,
        storage: Storage,
        study: str,
        build: TrialBuild,
        executor: Executor,
        strategy: Strategy,
        pruner: Pruner,
        *,
        n_trials: int | None,
        planned: int | None,
        timeout: float | None,
        root: Path,
        seed: int | None,
        read_history: Callable[[], History],
        progress: Any,
        board: Any,
    ) -> None:
        self.storage, self.study, self.build, self.executor = storage, study, build, executor
        self.strategy, self.pruner, self.n_trials, self.timeout = strategy, pruner, n_trials, timeout
        self.planned = planned
        self.root, self.seed, self.read_history = root, seed, read_history
        self.progress, self.board = progress, board
        #: numbers this run started and has not recorded yet (the heartbeat keeps them alive)
        self.started: set[int] = set()
        self._running: dict[Future, tuple[TrialRecord, StudyReporter]] = {}
        self._history: History | None = None  # the study as read after the last finished trial

    def loop(self) -> str:
        """Run until done; returns why it stopped. Re-raises Ctrl+C, SIGTERM and driver errors after
        recording this run's unfinished trials as FAILED."""
        t0 = time.monotonic()
        reason: str | None = None
        handling = False  # recording an interrupted trial: another Ctrl+C or SIGTERM must end the driver at once
        try:
            while True:
                if reason is None and self.timeout is not None and time.monotonic() - t0 > self.timeout:
                    reason = "timeout"
                free = self.executor.max_concurrency - len(self._running)
                if reason is None and free > 0:
                    reason = self._start(free)
                    if reason is not None:  # no more trials: one held back to be batched need not wait
                        self.executor.flush()
                if not self._running:
                    return reason or "done"
                done, _ = wait(list(self._running), timeout=1.0, return_when=FIRST_COMPLETED)
                for fut in done:
                    rec, reporter = self._running.pop(fut)
                    outcome = fut.result()
                    handling = outcome.interrupted is not None
                    final = self._finish(rec, reporter, outcome)
                    handling = False
                    self._recorded(final, outcome)
        except BaseException as e:
            if not handling and isinstance(e, (KeyboardInterrupt, SearchPreempted)):
                self._record_ended()
            running, self._running = list(self._running.values()), {}
            if not (handling and isinstance(e, (KeyboardInterrupt, SearchPreempted))):
                for _, reporter in running:  # the values reported so far, before the trials are recorded as stopped
                    with contextlib.suppress(Exception):
                        reporter.flush()
                numbers = sorted(self.started)
                abandon(self.storage, self.study, numbers, e)  # a second Ctrl+C here also ends it at once
                self.started.clear()
                if type(e) is KeyboardInterrupt and numbers and not e.args:
                    raise KeyboardInterrupt(
                        f"trials {numbers} are recorded as interrupted: run the same search to resume"
                    ) from None
            raise

    def _record_ended(self) -> None:
        """On Ctrl+C or SIGTERM: the trials that ended before it are recorded as they ended, not as interrupted.

        The executor is halted first: a stacked group trains on until it is, and a member that ends as the
        signal comes is delivered then (its resumable checkpoint already removed: recorded as interrupted,
        it would start over).
        """
        self.executor.halt()
        for fut, (rec, reporter) in list(self._running.items()):
            outcome = fut.result() if fut.done() else None
            if outcome is not None and outcome.interrupted is None:
                del self._running[fut]
                self._forget(self._finish(rec, reporter, outcome).number)

    def _start(self, free: int) -> str | None:
        recs, reason = next_trials(
            self.storage, self.study, self.strategy, self.n_trials, free, self.read_history, self._history
        )
        self._history = None
        for rec in recs:
            reporter = StudyReporter(
                self.storage, self.study, self.pruner, self.read_history, rec.number, self.progress
            )
            ACTIVE.add(self.storage, self.study, rec.number)
            self.started.add(rec.number)
            self.progress.trial_started(rec)  # before submit: the in-process executor blocks
            self._running[self.executor.submit(self._job(rec), reporter)] = (rec, reporter)
        return reason

    def _job(self, rec: TrialRecord) -> TrialJob:
        trial_dir = self.root / self.study / f"trial_{rec.number}"
        return TrialJob(self.build, rec.number, dict(rec.params), self.seed, str(trial_dir), attempt=rec.attempt)

    def _forget(self, number: int) -> None:
        """Trial ``number`` is recorded: no longer this run's to keep alive or to record as interrupted."""
        ACTIVE.discard(self.storage, self.study, number)
        self.started.discard(number)

    def _recorded(self, final: TrialRecord, outcome: TrialOutcome) -> None:
        """After a trial is stored: update the display, and stop the run if the trial says so."""
        self._forget(final.number)
        history = self._history = self.read_history()  # one read serves the display and the next proposals
        best, front = show_finished(self.progress, history, final, self.build, self.planned)
        self.board.trial_finished(final, best, front)
        if outcome.interrupted == PREEMPTED:
            raise SearchPreempted()
        if outcome.interrupted:
            raise KeyboardInterrupt(f"trial {final.number} is recorded as interrupted: run the same search to resume")
        stop = fail_fast(history.space, history.trials, final)
        if stop is not None:
            raise stop

    def _finish(self, rec: TrialRecord, reporter: StudyReporter, outcome: TrialOutcome) -> TrialRecord:
        return record_outcome(self.storage, self.study, rec, reporter, outcome)


def show_finished(
    progress: Any, history: History, final: TrialRecord, build: Any, planned: int | None
) -> tuple[TrialRecord | None, list[TrialRecord] | None]:
    """Tell ``progress`` that ``final`` was recorded (``planned``: the trials it counts towards); the study's
    best trial and, with several objectives, its front."""
    finished = sum(t.state.is_finished for t in history.trials)
    names = ", ".join(o.name for o in build.objectives) or build.monitor
    front = pareto_front(history.trials, history.objectives) if history.multi else None
    best = history.best()
    progress.trial_finished(final, best, names, finished, planned, front)
    return best, front
