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
import dataclasses
import functools
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_hpt.checks import check_bool
from lightning_hpt.define_by_run import answer
from lightning_hpt.driver import show_finished
from lightning_hpt.exceptions import ConfigurationError, SearchPreempted, StorageError
from lightning_hpt.lightning import compat
from lightning_hpt.lightning.builder import TrialBuilder, TrialParts
from lightning_hpt.lightning.loggers import TrialContext, make_logger
from lightning_hpt.lightning.monitor import monitor_class
from lightning_hpt.lightning.resume import checkpoint_to_resume, claim, discard, resume_callbacks
from lightning_hpt.lightning.runner import TrialJob, _describe, _outcome, end_resume, trial_seed
from lightning_hpt.proposals import next_trials
from lightning_hpt.recovery import ACTIVE, recover
from lightning_hpt.report import make_progress
from lightning_hpt.reporting import StudyReporter, record_outcome
from lightning_hpt.run_scope import heartbeat
from lightning_hpt.search import HyperparameterSearch
from lightning_hpt.space import Domain, SearchSpace
from lightning_hpt.trial import INTERRUPTED, PREEMPTED, TrialRecord, TrialState

__all__ = ["ScriptSearch", "ScriptTrial"]

log = logging.getLogger(__name__)

#: set by rank 0 before Lightning starts the other ranks of a DDP run, which inherit it.
GROUP_ENV = "LIGHTNING_HPT_SCRIPT_GROUP"


class _ScriptBuilder(TrialBuilder):
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
        return None

    def trainer_settings(self, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return {}

    def evaluation_trainer(self, params: Mapping[str, Any], **overrides: Any) -> Any:
        raise ConfigurationError(f"{self._WHY}: refit or test the best configuration with your own Trainer")


def _rank() -> int:
    """This process's rank in a DDP run, as torchrun or Lightning's launcher set it (0 without DDP).

    Lightning's launcher sets ``LOCAL_RANK`` and ``NODE_RANK`` in the processes it starts; torchrun
    sets ``RANK``. A SLURM array task is not a DDP rank: every task of an array is a rank 0.
    """
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    return int(os.environ.get("LOCAL_RANK", "0")) + int(os.environ.get("NODE_RANK", "0"))


class ScriptTrial:
    """One trial of a :class:`ScriptSearch`, trained by the user's own code.

    Attributes:
        number: the trial's number in the study.
        params: its configuration, the space's names as keys.
        dir: its directory, ``<root>/<study>/trial_<number>/`` (a ``Path``).
        study: the study's name.
        finished: it is recorded.
        seed: the seed a search would give this trial (a function of the study's seed and the trial's
            number): ``L.seed_everything(trial.seed, workers=True)`` before building the model makes a
            trial's value reproducible, as a :class:`HyperparameterSearch` trial's is.
        ckpt_path: the checkpoint this trial continues from, for ``trainer.fit(..., ckpt_path=trial.ckpt_path)``:
            a rerun of a pre-empted trial's resumable checkpoint, ``None`` for a trial that starts
            (also for a later fit of one trial: only its first fit continues).
    """

    def __init__(self, recorder: _Recorder, space: SearchSpace) -> None:
        rec, job = recorder.record, recorder.job
        self._space = space
        self.number, self.params, self.study = rec.number, dict(rec.params), recorder.study
        self.dir = Path(recorder.dir)
        self.seed = trial_seed(job.seed, rec.number)
        self.finished = False
        self._recorder = recorder
        self._callback: Any = None
        self._resume = job.build.resume
        self.ckpt_path = checkpoint_to_resume(job) if self._resume else None
        Path(self.dir).mkdir(parents=True, exist_ok=True)
        if self._resume:
            claim(job)

    def __repr__(self) -> str:
        return f"ScriptTrial(number={self.number}, params={self.params})"

    @property
    def pruned(self) -> bool:
        """The study's pruner stopped this trial."""
        return bool(self._callback is not None and self._callback.pruned)

    def suggest(self, name: str, domain: Domain) -> Any:
        """The trial's value of ``name``: what a space function (``ScriptSearch(space=fn)``) asks with.

        ``fn(trial)`` then runs as it was traced, with this trial's values (see :mod:`lightning_hpt.define_by_run`).

        Raises:
            SearchSpaceError: ``name`` is not in the search space, has another domain there, or is
                inactive in this trial.
        """
        return answer(self._space, self.params, name, domain, "trial")

    def section(self, prefix: str) -> dict[str, Any]:
        """The parameters under ``prefix.`` without it: ``trial.section("model")`` -> ``{"lr": ...}``."""
        head = prefix.rstrip(".") + "."
        return {k[len(head) :]: v for k, v in self.params.items() if k.startswith(head)}

    def callback(self, namespace: Any = None) -> Any:
        """The Lightning callback for this trial's Trainer.

        It reports the monitored value (every objective's, with several) after every validation run
        (steps continue across several fits of one trial), records the metrics of outcome
        constraints, stops the Trainer when the study's pruner says so (on every DDP rank), and
        keeps an exception raised by the fit as the trial's failure. In the trial's first fit
        it also writes the resumable checkpoint that :attr:`ckpt_path` names on a rerun (unless the
        Trainer has checkpointing turned off, or the search ``resume=False``).

        Args:
            namespace: ``pytorch_lightning`` for a Trainer of that package; ``lightning.pytorch`` by default.
        """
        if namespace is None:
            import lightning.pytorch as namespace
        cls = type("ScriptTrialCallback", (_FitEnd, monitor_class(namespace)), {})
        cb = cls.of(self._recorder.job.build, self._recorder.reporter)
        previous = self._callback
        if previous is not None:  # a later fit of the same trial continues its steps and its best value
            cb.curve.load_state_dict(previous.curve.state_dict())
            cb.fit_error = previous.fit_error
            if self._resume is not None and _rank() == 0:
                discard(str(self.dir))  # the first fit's state: a later fit does not continue from it
            self.ckpt_path = None
        elif self._resume is not None:
            cb.writers = resume_callbacks(namespace, self._resume, str(self.dir))
            cb.expected = self.ckpt_path
        self._callback = cb
        return cb

    def logger(self, kind: Any = "tensorboard", **kwargs: Any) -> Any:
        """A logger whose run is this trial's own: ``trial.logger("csv")``, ``trial.logger(WandbLogger, project=...)``.

        TensorBoard and CSV write under the trial's directory; W&B runs are named ``trial_<n>`` in
        the group of the study; MLflow runs are named ``trial_<n>`` in the experiment of the study.
        The trial's parameters are logged as hyperparameters under their full names.
        """
        lg = make_logger(kind, TrialContext(self.study, self.number, str(self.dir), self.params), **kwargs)
        lg.log_hyperparams(dict(self.params))
        return lg

    @property
    def trained(self) -> bool:
        """A fit with the trial's callback ended (finished or raised)."""
        cb = self._callback
        return cb is not None and (cb.trainer is not None or cb.fit_error is not None)

    def finish(self, reason: str | None = None, error: BaseException | None = None) -> TrialRecord | None:
        """Record the trial from what its callback saw (COMPLETE, PRUNED or FAILED); once. Rank 0 writes.

        Args:
            reason: the failure to record if the trial never trained with its callback.
            error: the exception that stopped the script before the trial trained, recorded instead.
        """
        if self.finished:
            return None
        self.finished = True
        cb = self._callback
        if not self.trained and error is None:
            error = ConfigurationError(
                reason or "the trial ended without a fit using its callback: pass callbacks=[trial.callback(), ...]"
            )
        return self._recorder.finish(cb, cb.fit_error if self.trained else error)


class _FitEnd:
    """Keeps what a fit ended with: its Trainer, and the exception it raised, if any; adds the resumable checkpoint.

    Attributes:
        writers: the callbacks that write the trial's resumable checkpoint, added to the Trainer when
            the fit sets up (the script made the Trainer; Lightning calls ``setup`` once its callback
            list is final). ``ResumeCheckpoint`` goes last, so it saves once every other callback has
            updated its state.
        expected: the checkpoint the fit should continue from (:attr:`ScriptTrial.ckpt_path`).
    """

    fit_error: BaseException | None = None
    trainer: Any = None
    writers: tuple[Any, ...] | list[Any] = ()
    expected: str | None = None

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        writers, self.writers = self.writers, ()
        # no checkpoint callback at all: the script turned checkpointing off (enable_checkpointing=False)
        if stage != "fit" or not writers or not trainer.checkpoint_callbacks:
            return
        trainer.callbacks = [*trainer.callbacks, *writers]  # a new list: Lightning's loop over the old one goes on
        for cb in writers:
            cb.setup(trainer, pl_module, stage)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        super().on_train_start(trainer, pl_module)  # type: ignore[misc]
        if self.expected and getattr(self, "resumed_at", None) is None:
            log.warning(
                "the trial could continue from %s but its fit starts over: pass ckpt_path=trial.ckpt_path to"
                " trainer.fit",
                self.expected,
            )

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self.trainer = trainer

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.trainer = trainer
        if self.fit_error is None:
            self.fit_error = exception
        if compat.is_interrupt_exit(exception) and getattr(exception, "code", 0) is None:
            # Lightning's SIGTERMException has no code, so the script would exit with status 0, as if it
            # had finished; a pre-empted script exits as a search does (SearchPreempted: 128 + SIGTERM)
            exception.code = SearchPreempted().code  # type: ignore[attr-defined]


class _Recorder:
    """Writes one trial's result to the study (rank 0 only); what a :class:`ScriptTrial` gets from its search."""

    def __init__(self, job: TrialJob, record: TrialRecord, study: str, reporter: Any, write: Any, close: Any) -> None:
        self.job, self.record, self.study, self.dir = job, record, study, job.trial_dir
        self.reporter, self._write, self._close = reporter, write, close

    def finish(self, cb: Any, error: BaseException | None) -> TrialRecord | None:
        self._close(self.record.number)
        if self.reporter is None:  # a DDP rank other than 0: rank 0 records the trial
            return None
        interrupted = None
        if error is not None and type(error).__name__ == "SIGTERMException":
            interrupted = PREEMPTED
        elif isinstance(error, KeyboardInterrupt):
            interrupted = INTERRUPTED
        trainer = cb.trainer if cb is not None else None
        outcome = _outcome(self.job, cb, trainer, error, interrupted)
        ckpt = getattr(trainer, "checkpoint_callback", None)
        best = getattr(ckpt, "best_model_path", "") if ckpt is not None else ""
        if outcome.state is not TrialState.FAILED and best and getattr(ckpt, "monitor", None) == self.job.build.monitor:
            outcome = dataclasses.replace(outcome, checkpoint=best)  # the script's own checkpoint of the best epoch
        end_resume(self.job, outcome)
        return self._write(self.record, self.reporter, outcome)


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
            ``retry_interrupted``, ``allow_changes``, ``enqueue``, ``stale_after``, ``resume`` (each
            trial's resumable checkpoint, see :attr:`ScriptTrial.ckpt_path`).
    """

    _SETTINGS = ("constraints", "param_constraints", "strategy", "pruner", "n_trials", "storage", "study_name")
    _SETTINGS += ("root", "seed", "timeout")
    _SETTINGS += ("retry_interrupted", "allow_changes", "enqueue", "stale_after", "resume")

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
        unknown = sorted(set(kwargs) - set(self._SETTINGS))
        if unknown:
            raise ConfigurationError(
                f"ScriptSearch does not take {unknown}: the script builds its own Trainer;"
                f" it takes {list(self._SETTINGS)}"
            )
        super().__init__(
            space=space,
            builder=_ScriptBuilder(),
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
        self._leader = _rank() == 0
        if self._leader and self._group is None:
            self._group = uuid.uuid4().hex  # the other ranks of a DDP run started from here inherit it
            os.environ[GROUP_ENV] = self._group
        self._beating = contextlib.ExitStack()
        self._live: set[int] = set()  # the numbers the heartbeat keeps alive
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
                except _Exhausted:
                    return
                yield trial
        finally:
            # the loop stopped (a break, or an exception in its body, which a generator cannot see): a trial
            # that trained is recorded now; one that did not is recorded when the script ends, with the
            # exception that ended it, if one did (see _finish_open)
            if trial is not None and trial.trained:
                trial.finish()

    def ask(self) -> ScriptTrial:  # type: ignore[override]
        """Start the next trial: queued configurations first, then the strategy's proposal.

        On a DDP rank other than 0, the trial rank 0 started at the same point of the script.

        Raises:
            ConfigurationError: when ``n_trials`` is reached, the strategy is exhausted, or time is up.
        """
        index, self._asked = self._asked, self._asked + 1
        if not self._leader:
            return self._trial(self._follow(index), None)
        storage = self.open()
        if not self._recovered:
            recover(storage, self.study_name, stale_after=self.stale_after, retry_interrupted=self.retry_interrupted)
            for params in self._enqueue:
                self.enqueue(params)
            self._recovered, self._t0 = True, time.monotonic()
            storage.set_study_attrs(self.study_name, {f"script_end.{self._group}": None})  # a reused torchrun id
        if self.timeout is not None and time.monotonic() - self._t0 > self.timeout:
            self._end(index)
            raise _Exhausted("no trial to ask for: timeout")
        read = functools.partial(self._history, storage)
        recs, reason = next_trials(storage, self.study_name, self.strategy, self.n_trials, 1, read)
        if not recs:
            self._end(index)
            raise _Exhausted(f"no trial to ask for: {reason}")
        rec = recs[0]
        storage.set_trial_attrs(self.study_name, rec.number, {"script_group": self._group, "script_index": index})
        reporter = StudyReporter(storage, self.study_name, self.pruner, read, rec.number)
        trial = self._trial(rec, reporter)
        self._open_trials[rec.number] = trial
        ACTIVE.add(storage, self.study_name, rec.number)
        if not self._live:
            self._beating.enter_context(heartbeat(storage, self.study_name, self._live))
        self._live.add(rec.number)
        return trial

    def _trial(self, rec: TrialRecord, reporter: StudyReporter | None) -> ScriptTrial:
        trial_dir = str(self.root / self.study_name / f"trial_{rec.number}")
        job = TrialJob(self.build, rec.number, dict(rec.params), self.seed, trial_dir, attempt=rec.attempt)
        return ScriptTrial(_Recorder(job, rec, self.study_name, reporter, self._record, self._close), self.space)

    def _record(self, rec: TrialRecord, reporter: StudyReporter, outcome: Any) -> TrialRecord:
        """Store a finished trial, then write its line."""
        final = record_outcome(self.storage, self.study_name, rec, reporter, outcome)
        if self._lines is not None:  # the study's history is read only for the line
            show_finished(self._lines, self._history(self.storage), final, self.build, self.n_trials)
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
                raise _Exhausted("no trial to ask for: rank 0 has no more trials")
            time.sleep(0.2)
        raise ConfigurationError(
            f"rank {_rank()} waited {timeout:.0f} s for rank 0's trial {index}; is rank 0 running?"
        )

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
    """No trial to ask for (``n_trials`` reached, strategy exhausted, time up, or rank 0 done)."""


def _torchrun_group() -> str | None:
    """A name every rank of one ``torchrun`` launch shares (``None`` outside torchrun)."""
    if "TORCHELASTIC_RUN_ID" not in os.environ or "RANK" not in os.environ:
        return None
    parts = [os.environ.get(k, "") for k in ("MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")]
    return "torchrun:" + ":".join(parts)
