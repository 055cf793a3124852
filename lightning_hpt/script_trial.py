"""One trial of a :class:`~lightning_hpt.ScriptSearch`: its parameters, callback, logger and record.

The script trains the trial itself; :class:`ScriptTrial` gives it the Lightning callback that reports
every validation run, stops a pruned fit, writes the resumable checkpoint, and keeps what the fit
ended with, and records the trial from that when the loop moves on (:class:`TrialRecorder`).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from lightning_hpt.define_by_run import answer
from lightning_hpt.exceptions import ConfigurationError, SearchPreempted
from lightning_hpt.lightning import compat
from lightning_hpt.lightning.callbacks import checkpointing_off, missing_checkpoint_hint
from lightning_hpt.lightning.loggers import TrialContext, make_logger
from lightning_hpt.lightning.monitor import monitor_class
from lightning_hpt.lightning.resume import checkpoint_to_resume, claim, discard, resume_callbacks
from lightning_hpt.lightning.runner import TrialJob, _outcome, check_trial_dir, end_resume, trial_seed
from lightning_hpt.masking import get_logger
from lightning_hpt.space import Domain, SearchSpace
from lightning_hpt.trial import INTERRUPTED, PREEMPTED, Direction, TrialRecord, TrialState

__all__ = ["ScriptTrial", "TrialRecorder", "rank"]

log = get_logger(__name__)


def rank() -> int:
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

    def __init__(self, recorder: TrialRecorder, space: SearchSpace) -> None:
        rec, job = recorder.record, recorder.job
        self._space = space
        self.number, self.params, self.study = rec.number, dict(rec.params), recorder.study
        self.dir = Path(recorder.dir)
        self.seed = trial_seed(job.seed, rec.number)
        self.finished = False
        check_trial_dir(recorder.dir)
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
            if self._resume is not None and rank() == 0:
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
        elif cb is None and isinstance(error, Exception) and _raised_by_trainer(error):
            cause, error = (
                error,
                ConfigurationError(
                    f"the trial's Trainer ran without the trial's callback (trial.callback() was never called) and"
                    f" raised {type(error).__name__}: {error}; pass callbacks=[trial.callback(), ...] to the Trainer"
                    " (a call: trial.callback is a method)"
                ),
            )
            error.__cause__ = cause
        return self._recorder.finish(cb, cb.fit_error if self.trained else error)


_TRAINER_MODULES = ("lightning.pytorch.trainer", "pytorch_lightning.trainer")


def _raised_by_trainer(error: BaseException) -> bool:
    """``error`` went through a Lightning Trainer's own code (``lightning.pytorch`` or ``pytorch_lightning``)."""
    tb = error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_globals.get("__name__", "").startswith(_TRAINER_MODULES):
            return True
        tb = tb.tb_next
    return False


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
    fit_metrics: Any = None  # what the fit logged last: a trainer.test() after it replaces the Trainer's
    writers: tuple[Any, ...] | list[Any] = ()
    expected: str | None = None

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        writers, self.writers = self.writers, ()
        # no checkpoint callback at all: the script turned checkpointing off (enable_checkpointing=False)
        if stage != "fit" or not writers or not trainer.checkpoint_callbacks:
            return
        trainer.callbacks = [*trainer.callbacks, *writers]  # a new list: Lightning's loop over the old one goes on
        with warnings.catch_warnings():
            # a continued trial's resume/ holds the checkpoint it continues from: Lightning's warning is no news
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* is not empty")
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
        self.trainer, self.fit_metrics = trainer, dict(trainer.callback_metrics)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.trainer, self.fit_metrics = trainer, dict(trainer.callback_metrics)
        if self.fit_error is None:
            self.fit_error = exception
        if compat.is_interrupt_exit(exception) and getattr(exception, "code", 0) is None:
            # Lightning's SIGTERMException has no code, so the script would exit with status 0, as if it
            # had finished; a pre-empted script exits as a search does (SearchPreempted: 128 + SIGTERM)
            exception.code = SearchPreempted().code  # type: ignore[attr-defined]


class TrialRecorder:
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
        # the checkpoint is the best file of the script's own ModelCheckpoint on the monitor, in the study's mode
        outcome = _outcome(self.job, cb, trainer, error, interrupted, getattr(cb, "fit_metrics", None))
        hint = None
        if outcome.state is not TrialState.FAILED and not outcome.checkpoint:
            mode = "min" if self.job.build.direction is Direction.MINIMIZE else "max"
            hint = missing_checkpoint_hint(trainer, self.job.build.monitor, mode)
        end_resume(self.job, outcome)
        return self._write(self.record, self.reporter, outcome, hint, checkpointing_off(trainer))
