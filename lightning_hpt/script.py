"""Tune a training script that lightning-hpt does not build: the script asks for trials and trains them itself.

::

    search = ScriptSearch(space={"lr": Float(1e-4, 1e-1, log=True)}, monitor="val_acc", mode="max",
                          storage="runs/studies.db", study_name="mine", n_trials=20, pruner="median")
    for trial in search:
        model = MyModel(lr=trial.params["lr"])
        trainer = L.Trainer(callbacks=[trial.callback(), *my_callbacks], logger=trial.logger("tensorboard"))
        trainer.fit(model, datamodule=dm, ckpt_path=trial.ckpt_path)  # continues a pre-empted trial
    print(search.result())

The callback reports every validation run (the study's pruner answers), stops the Trainer when the
trial is pruned, and the trial is recorded when the loop moves on (or at ``trial.finish()``, or when
the process exits). Several copies of the script share one study. Under DDP (Lightning's launcher
or ``torchrun``) rank 0 asks and reports, the other ranks train the same trials and stop with it.

The callback also keeps the trial's resumable checkpoint (``<trial dir>/resume/latest.ckpt``, as
every trial of a search does); a pre-empted trial that runs again continues from it when the
script hands it to the fit: ``trainer.fit(model, datamodule=dm, ckpt_path=trial.ckpt_path)``.
Lightning picks the checkpoint to load before any callback runs, so this one argument is the
script's part.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from lightning_hpt.checks import check_bool, refuse_unknown_keywords
from lightning_hpt.driver import show_finished
from lightning_hpt.exceptions import ConfigurationError, HPTError, SearchFailedError, StorageError
from lightning_hpt.failures import fail_fast, no_complete_trial
from lightning_hpt.lightning.builder import TrialBuilder, TrialParts
from lightning_hpt.lightning.runner import TrialJob, _describe
from lightning_hpt.masking import get_logger
from lightning_hpt.proposals import next_trials
from lightning_hpt.recovery import ACTIVE, recover
from lightning_hpt.report import make_progress
from lightning_hpt.reporting import StudyReporter, record_outcome
from lightning_hpt.run_scope import heartbeat
from lightning_hpt.script_trial import ScriptTrial, TrialRecorder, rank
from lightning_hpt.search import HyperparameterSearch
from lightning_hpt.search_args import SCRIPT_WORDS
from lightning_hpt.space import Domain, SearchSpace
from lightning_hpt.trial import TrialRecord, TrialState

__all__ = ["ScriptSearch", "ScriptTrial"]

log = get_logger(__name__)

#: set by rank 0 before Lightning starts the other ranks of a DDP run, which inherit it.
GROUP_ENV = "LIGHTNING_HPT_SCRIPT_GROUP"


class ScriptBuilder(TrialBuilder):
    """The trial builder of a :class:`ScriptSearch`: the user's script builds each trial itself."""

    _WHY = "a ScriptSearch's trials are built by the script itself (for trial in search: ...)"

    @property
    def namespace(self) -> Any:
        import lightning.pytorch

        return lightning.pytorch

    def check(self, space: SearchSpace) -> None:
        """Any names: the script reads ``trial.params`` itself."""

    def build(self, params: Mapping[str, Any], *, seed: int, trial_dir: str, callbacks: Any) -> TrialParts:
        raise ConfigurationError(self._WHY)

    def build_model(self, params: Mapping[str, Any]) -> Any:
        raise ConfigurationError(
            f"{self._WHY}: build the best model with your own class and load result.best_checkpoint into it"
        )

    def build_datamodule(self, params: Mapping[str, Any]) -> Any:
        raise ConfigurationError(f"{self._WHY}: test the best model with your own Trainer and datamodule")

    def trainer_settings(self, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return {}

    def evaluation_trainer(self, params: Mapping[str, Any], **overrides: Any) -> Any:
        raise ConfigurationError(f"{self._WHY}: refit or test the best configuration with your own Trainer")


class ScriptSearch(HyperparameterSearch):
    """A study whose trials a user's own training script builds and trains.

    Args:
        space: ``{"lr": Float(1e-4, 1e-1, log=True), ...}``; names are free (``model.lr`` or ``lr``). A
            conditional entry (``Float(0, 0.99, when={"opt": "sgd"})``) is in ``trial.params`` only
            where its condition holds: read it with ``trial.params.get(name, default)``. Or a function
            of a trial that calls ``trial.suggest(name, domain)`` and branches with ``if``: it is
            traced into a space with conditions, and ``fn(trial)`` in the loop gets the trial's values.
        monitor, mode: the metric the callback reports and its direction; or lists of them, one
            direction per metric, for several objectives (``monitor=["val_loss", "n_params"]``,
            ``mode=["min", "min"]``), as :class:`~lightning_hpt.HyperparameterSearch` takes them.
        max_epochs: the most validation runs a trial has, for pruners that need it (ASHA, Hyperband);
            ``None``: the longest finished trial.
        verbose: a line for each recorded trial (``[done/n_trials] trial 3 COMPLETE ...``, as a search's
            plain display writes it; rank 0 only); ``False``: none.
        **kwargs: as :class:`~lightning_hpt.HyperparameterSearch`: ``constraints``, ``param_constraints``,
            ``strategy``, ``pruner``, ``n_trials``, ``storage``, ``study_name``, ``root``, ``seed``, ``timeout``,
            ``retry_interrupted``, ``retry_failed``, ``allow_changes``, ``enqueue``, ``stale_after``, ``resume``
            (each trial's resumable checkpoint, see :attr:`ScriptTrial.ckpt_path`). The loop stops as a search
            does when the trials that failed show that every trial would fail (a monitored metric never
            logged; see :mod:`lightning_hpt.failures`): the next ``ask()`` raises that error.
    """

    _SETTINGS = ("constraints", "param_constraints", "strategy", "pruner", "n_trials", "storage", "study_name")
    _SETTINGS += ("root", "seed", "timeout")
    _SETTINGS += ("retry_interrupted", "retry_failed", "allow_changes", "enqueue", "stale_after", "resume")

    def __init__(
        self,
        space: Mapping[str, Domain] | SearchSpace | Callable[[Any], Any],
        *,
        monitor: str | Sequence[str] = "val_loss",
        mode: str | Sequence[str] = "min",
        max_epochs: int | None = None,
        verbose: bool = True,
        **kwargs: Any,
    ) -> None:
        names = ("space", "monitor", "mode", "max_epochs", "verbose", *self._SETTINGS)
        refuse_unknown_keywords("ScriptSearch", kwargs, names, SCRIPT_WORDS)
        super().__init__(
            space=space,
            builder=ScriptBuilder(),
            monitor=monitor,
            mode=mode,
            patience=None,
            checkpoint=False,
            verbose=False,
            **kwargs,
        )
        if max_epochs is not None and (
            isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 1
        ):
            raise ConfigurationError(f"max_epochs must be a positive integer or None, got max_epochs={max_epochs!r}")
        self._max_epochs = max_epochs
        self._lines = make_progress("lines") if check_bool(verbose, "verbose") else None
        self._open_trials: dict[int, ScriptTrial] = {}
        self._asked = 0
        self._recovered = False
        self._t0 = time.monotonic()
        self._group = os.environ.get(GROUP_ENV) or _torchrun_group()
        self._leader = rank() == 0
        if self._leader and self._group is None:
            self._group = uuid.uuid4().hex  # the other ranks of a DDP run started from here inherit it
            os.environ[GROUP_ENV] = self._group
        self._beating = contextlib.ExitStack()
        self._live: set[int] = set()  # the numbers the heartbeat keeps alive
        self._told_checkpoint = False
        self._ended = ""  # why the last loop ended ("n_trials reached", "timeout"): result() says it
        self._stop: HPTError | None = None  # why every trial would fail: the next ask() raises it
        atexit.register(self._finish_open)

    @property
    def max_steps(self) -> int | None:
        return self._max_epochs

    def run(self) -> Any:
        raise ConfigurationError("a ScriptSearch runs in your script: `for trial in search:` (or search.ask())")

    def __iter__(self) -> Iterator[ScriptTrial]:
        trial: ScriptTrial | None = None
        try:
            while True:
                if trial is not None:
                    trial.finish()
                try:
                    trial = self.ask()
                except _Exhausted as ended:
                    reason = self._ended = ended.reason
                else:
                    yield trial
                    continue
                self._check_ended(reason)  # outside the except: the error is not "during handling" of the end
                return
        finally:
            # the loop stopped (a break, or an exception in its body, which a generator cannot see): a trial
            # that trained is recorded now; one that did not is recorded when the script ends, with the
            # exception that ended it, if one did (see _finish_open)
            if trial is not None and trial.trained:
                trial.finish()

    def result(self, stopped_reason: str = "") -> Any:
        """The study's current result; after a loop, it says why the loop ended (``n_trials reached``, ``timeout``)."""
        return super().result(stopped_reason or self._ended)

    def _check_ended(self, reason: str) -> None:
        """At the loop's end, as a search's: :class:`SearchFailedError` if the study has no COMPLETE trial (rank 0;
        not while another copy of the script still runs or holds queued trials of it)."""
        trials = self.trials if self._leader else []
        if any(t.state in (TrialState.RUNNING, TrialState.QUEUED) for t in trials):
            return
        failed = no_complete_trial(trials, reason) if trials else None
        if failed is not None:
            raise SearchFailedError(failed, self.result(reason))

    def ask(self) -> ScriptTrial:  # type: ignore[override]
        """Start the next trial: queued configurations first, then the strategy's proposal.

        On a DDP rank other than 0, the trial rank 0 started at the same point of the script.

        Raises:
            ConfigurationError: when ``n_trials`` is reached, the strategy is exhausted, or time is up.
        """
        index, self._asked = self._asked, self._asked + 1
        if not self._leader:
            try:
                return self._trial(self._follow(index), None)
            except NotADirectoryError:  # rank 0 recorded it FAILED and went on to the next one
                return self.ask()
        if self._stop is not None:
            self._end(index)
            raise self._stop
        storage = self.open()
        if not self._recovered:
            recover(storage, self.study_name, stale_after=self.stale_after, retry_interrupted=self.retry_interrupted)
            if self.retry_failed:
                storage.requeue_failed(self.study_name)
            for params in self._enqueue:
                self.enqueue(params)
            self._recovered, self._t0 = True, time.monotonic()
            storage.set_study_attrs(self.study_name, {f"script_end.{self._group}": None})  # a reused torchrun id
        if self.timeout is not None and time.monotonic() - self._t0 > self.timeout:
            self._end(index)
            raise _Exhausted("timeout")
        read = functools.partial(self._history, storage)
        recs, reason = next_trials(storage, self.study_name, self.strategy, self.n_trials, 1, read)
        if not recs:
            self._end(index)
            raise _Exhausted(reason)
        rec = recs[0]
        storage.set_trial_attrs(self.study_name, rec.number, {"script_group": self._group, "script_index": index})
        reporter = StudyReporter(storage, self.study_name, self.pruner, read, rec.number)
        try:
            trial = self._trial(rec, reporter)
        except NotADirectoryError as e:  # a file where the trial's directory goes: that trial fails, the loop goes on
            self._recorder(rec, reporter).finish(None, e)
            return self.ask()
        self._open_trials[rec.number] = trial
        ACTIVE.add(storage, self.study_name, rec.number)
        if not self._live:
            self._beating.enter_context(heartbeat(storage, self.study_name, self._live))
        self._live.add(rec.number)
        return trial

    def _trial(self, rec: TrialRecord, reporter: StudyReporter | None) -> ScriptTrial:
        return ScriptTrial(self._recorder(rec, reporter), self.space)

    def _recorder(self, rec: TrialRecord, reporter: StudyReporter | None) -> TrialRecorder:
        trial_dir = str(self.root / self.study_name / f"trial_{rec.number}")
        job = TrialJob(self.build, rec.number, dict(rec.params), self.seed, trial_dir, attempt=rec.attempt)
        return TrialRecorder(job, rec, self.study_name, reporter, self._record, self._close)

    def _record(
        self, rec: TrialRecord, reporter: StudyReporter, outcome: Any, hint: str | None = None, no_resume: bool = False
    ) -> TrialRecord:
        """Store a finished trial, then write its line; ``hint``: why it has no checkpoint (said once per script);
        ``no_resume``: its Trainer had ``enable_checkpointing=False``, so an interrupted trial starts over."""
        final = record_outcome(self.storage, self.study_name, rec, reporter, outcome)
        if hint is not None and not self._told_checkpoint:
            self._told_checkpoint = True
            log.warning("trial %d has no checkpoint: %s", rec.number, hint)
        history = self._history(self.storage)
        if self._lines is not None:
            show_finished(self._lines, history, final, self.build, self._planned)
        self._stop = self._stop or fail_fast(history.space, history.trials, final)
        if outcome.interrupted and self.retry_interrupted:
            how = (
                "; it starts over: its Trainer has enable_checkpointing=False, so no resumable checkpoint was written"
                if no_resume
                else " to continue it (from its resumable checkpoint when trainer.fit gets ckpt_path=trial.ckpt_path)"
            )
            log.warning("trial %d is recorded as %s: run the script again%s", final.number, outcome.interrupted, how)
        return final

    def _end(self, index: int) -> None:
        self.storage.set_study_attrs(self.study_name, {f"script_end.{self._group}": index})

    def _follow(self, index: int, timeout: float = 600.0) -> TrialRecord:
        """The trial rank 0 started as its ``index``-th: waits until rank 0 has created it."""
        storage, deadline = self.storage, time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                trials, attrs = storage.trials(self.study_name), storage.load_study(self.study_name).attrs
            except StorageError:  # rank 0 has not created the study yet
                trials, attrs = [], {}
            for t in trials:
                if t.attrs.get("script_group") == self._group and t.attrs.get("script_index") == index:
                    return t
            end = attrs.get(f"script_end.{self._group}")
            if end is not None and end <= index:
                raise _Exhausted("rank 0 has no more trials")
            time.sleep(0.2)
        raise ConfigurationError(f"rank {rank()} waited {timeout:.0f} s for rank 0's trial {index}; is rank 0 running?")

    def _close(self, number: int) -> None:
        self._open_trials.pop(number, None)
        self._live.discard(number)
        ACTIVE.discard(self.storage, self.study_name, number)
        if not self._live:
            self._beating.close()

    def _finish_open(self) -> None:
        """At exit: record the trials the script asked for and did not finish (from what their callbacks saw).

        A script that dies of an exception has it in ``sys.last_value`` by now: a trial that never trained
        is recorded FAILED with it (and its traceback in ``error.txt``), not with a missing metric.
        """
        ended_by = getattr(sys, "last_value", None)
        for trial in list(self._open_trials.values()):
            try:
                trial.finish(reason="the script ended before the trial trained", error=ended_by)
            except Exception as e:  # the interpreter is exiting: say why instead of raising
                print(f"lightning-hpt: trial {trial.number} could not be recorded at exit: {_describe(e)}")


class _Exhausted(ConfigurationError):
    """No trial to ask for (``n_trials`` reached, strategy exhausted, time up, rank 0 done): ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"no trial to ask for: {reason}")
        self.reason = reason


def _torchrun_group() -> str | None:
    """A name every rank of one ``torchrun`` launch shares (``None`` outside torchrun)."""
    if "TORCHELASTIC_RUN_ID" not in os.environ or "RANK" not in os.environ:
        return None
    parts = [os.environ.get(k, "") for k in ("MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")]
    return "torchrun:" + ":".join(parts)
