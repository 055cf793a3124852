"""Build one trial from its configuration, fit it, and collect the outcome; runs wherever the trial runs."""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import signal
import threading
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lightning_hpt.exceptions import ConfigurationError, MetricNotFoundError, SearchPreempted
from lightning_hpt.lightning import compat
from lightning_hpt.lightning.builder import TrialBuilder
from lightning_hpt.lightning.callbacks import best_checkpoint
from lightning_hpt.lightning.curve import judge, value_failure
from lightning_hpt.lightning.folds import CrossValidation, fold_view
from lightning_hpt.lightning.loggers import finish_loggers
from lightning_hpt.lightning.monitor import TrialReporter, monitor_class
from lightning_hpt.lightning.quiet import quiet_lightning
from lightning_hpt.lightning.resume import Resume, checkpoint_to_resume, claim, discard, resume_callbacks
from lightning_hpt.masking import get_logger, mask_secrets
from lightning_hpt.trial import INTERRUPTED, PREEMPTED, Direction, TrialState

if TYPE_CHECKING:
    from lightning_hpt.constraints import OutcomeConstraint
    from lightning_hpt.objectives import Objective

__all__ = ["TrialBuild", "TrialJob", "TrialOutcome", "judge", "run_trial", "trial_seed", "value_failure"]

log = get_logger(__name__)
#: every validation run, removed when the trial ends
DEFAULT_RESUME = Resume()


def trial_seed(seed: int | None, number: int, repeat: int = 0) -> int:
    """The seed handed to ``seed_everything`` for trial ``number`` (and its ``repeat``): a pure function of them."""
    import numpy as np

    base = 0 if seed is None else int(seed) & 0xFFFFFFFF
    key = [base, number] if repeat == 0 else [base, number, repeat]
    return int(np.random.SeedSequence(key).generate_state(1)[0] % (2**31 - 1))


@dataclass(frozen=True)
class TrialBuild:
    """What every trial of a search is built from (the same for all trials); picklable if its builder is.

    Attributes:
        builder: makes each trial's model, datamodule and Trainer.
        monitor: the validation metric the search optimizes.
        direction: minimize or maximize ``monitor``.
        patience: ``EarlyStopping`` patience in validation runs; ``None`` disables early stopping.
        checkpoint: keep the best step's checkpoint (``<trial dir>/checkpoints/best.ckpt``).
        cv: k-fold cross-validation: each trial trains one run per fold (see ``lightning.folds``).
        repeats: runs per fold with different seeds, for noisy objectives; the score is the mean (of every
            objective's value, and of every constrained metric; see ``lightning.parts``).
        resume: when each trial writes its resumable checkpoint (see ``lightning.resume``); ``None``:
            none, an interrupted trial starts over.
        objectives: with several objectives, all of them (the first is ``monitor`` and ``direction``);
            every one is recorded at every step. ``()`` with one.
        constraints: the outcome constraints, judged on the metrics at the trial's best step (their mean
            over the runs with cv or repeats).
    """

    builder: TrialBuilder
    monitor: str = "val_loss"
    direction: Direction = Direction.MINIMIZE
    patience: int | None = 5
    checkpoint: bool = True
    cv: CrossValidation | None = None
    repeats: int = 1
    resume: Resume | None = DEFAULT_RESUME
    objectives: tuple[Objective, ...] = ()
    constraints: tuple[OutcomeConstraint, ...] = ()

    @property
    def runs(self) -> list[tuple[int, int]]:
        """The ``(fold, repeat)`` runs of one trial; ``[(0, 0)]`` without folds or repeats."""
        return [(f, r) for r in range(self.repeats) for f in range(self.cv.k if self.cv else 1)]


@dataclass(frozen=True)
class TrialJob:
    """One trial to run: its number, configuration, seed and directory.

    ``part`` is ``(fold, repeat)`` for one run of a cross-validated or repeated trial, else ``None``.
    ``attempt`` counts the starts of this trial number (a rerun continues from its checkpoint).
    """

    build: TrialBuild
    number: int
    params: Mapping[str, Any]
    seed: int | None
    trial_dir: str
    part: tuple[int, int] | None = None
    attempt: int = 1


@dataclass(frozen=True)
class TrialOutcome:
    """What a finished trial sends back to the driver; plain data only.

    Attributes:
        state: COMPLETE, PRUNED or FAILED.
        value: the best finite monitored value (``None`` when FAILED).
        best_step: the step (validation run) of ``value``.
        intermediate: every reported value ``{step: value}`` (with several objectives, the tuple of
            every objective's value).
        values: with several objectives, every objective's value at ``best_step``.
        checkpoint: path of the best step's checkpoint, if kept.
        error: why it failed.
        fatal: every further trial would fail the same way (the metric is never logged).
        interrupted: ``"interrupted"`` (Ctrl+C) or ``"pre-empted"`` (SIGTERM) if the trial was stopped
            from outside; the driver records it and stops the search.
        metrics: the last logged metrics, as floats.
        attrs: extra data stored with the trial (per-fold values, ...).
    """

    state: TrialState
    value: float | None = None
    best_step: int | None = None
    intermediate: Mapping[int, float] = field(default_factory=dict)
    checkpoint: str | None = None
    error: str | None = None
    fatal: bool = False
    interrupted: str | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    attrs: Mapping[str, Any] = field(default_factory=dict)
    values: tuple[float, ...] | None = None


def _log_params(trainer: Any, params: Mapping[str, Any]) -> None:
    """Log the trial's parameters to each of its loggers, once, under their full names.

    Builders turn Lightning's own logging of the model's init arguments off
    (``enable_autolog_hparams=False``), which would log the same values again under short names.
    """
    for lg in trainer.loggers:
        lg.log_hyperparams(dict(params))


def _log_hparams(trainer: Any, params: Mapping[str, Any], monitor: Any) -> None:
    """Give TensorBoard's HParams view each trial's parameters with its best value (every objective's, at its step)."""
    best = {f"hp/{name}": value for name, value in monitor.curve.best_metrics().items()}
    if not best:
        return
    for lg in trainer.loggers:
        if compat.is_tensorboard_logger(lg):
            try:
                lg.log_hyperparams(dict(params), best)
                lg.finalize("success")
            except Exception:  # logging must not fail a finished trial
                log.warning("could not write the trial's hyperparameters to TensorBoard", exc_info=True)


def _describe(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}"
    if isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower():
        return f"out of memory: {text}"
    return text


#: the file in a trial's directory that keeps the traceback of the error it failed with
ERROR_FILE = "error.txt"


def _keep_traceback(job: TrialJob, error: BaseException) -> dict[str, str]:
    """Write ``error``'s traceback to ``<trial dir>/error.txt`` (the record keeps its last line); its path as attrs.

    Only the exception and the source lines of its frames are written, never their local values, and
    the password fields of what they quote are masked.
    """
    path = os.path.join(job.trial_dir, ERROR_FILE)
    if _file_in_place(job.trial_dir):  # left alone: no error.txt
        log.warning("trial %d failed with %s", job.number, _describe(error))
        return {}
    try:
        os.makedirs(job.trial_dir, exist_ok=True)
        with open(path, "w") as f:
            f.write(mask_secrets("".join(traceback.format_exception(error))))
    except OSError as e:
        msg = "trial %d failed with %s; its traceback could not be written to %s (%s)"
        log.warning(msg, job.number, _describe(error), path, e)
        return {}
    log.warning("trial %d failed with %s; its traceback is in %s", job.number, _describe(error), path)
    return {"traceback": path}


@dataclass
class _Live:
    """What one run of a trial has built so far; the outcome reads it, then the runner drops it."""

    monitor: Any = None
    trainer: Any = None
    model: Any = None
    datamodule: Any = None


def _fit(job: TrialJob, reporter: TrialReporter | None, live: _Live) -> None:
    """Seed, build through the builder (with the search's callbacks), and fit one run of a trial."""
    from lightning.fabric.utilities.seed import seed_everything

    check_trial_dir(job.trial_dir)
    b = job.build
    ckpt = checkpoint_to_resume(job) if b.resume is not None else None
    if ckpt is None:
        _clean_dir(job.trial_dir)
    if b.resume is not None:
        claim(job)
    with quiet_lightning(b.builder.quiet, resumed=None if ckpt is None else job.trial_dir):
        fold, repeat = job.part or (0, 0)
        seed = trial_seed(job.seed, job.number, repeat)
        seed_everything(seed, workers=True, verbose=False)

        def callbacks(pl: Any) -> list[Any]:
            live.monitor = monitor_class(pl).of(b, reporter, final_run=job.part in (None, b.runs[-1]))
            return search_callbacks(pl, b, job, live.monitor)

        live.model, live.datamodule, live.trainer = b.builder.build(
            job.params, seed=seed, trial_dir=job.trial_dir, callbacks=callbacks
        )
        if b.cv is not None:
            live.datamodule = fold_view(live.datamodule, fold, b.cv)
        _log_params(live.trainer, job.params)
        live.trainer.fit(live.model, datamodule=live.datamodule, ckpt_path=ckpt)
        _log_hparams(live.trainer, job.params, live.monitor)


def run_trial(job: TrialJob, reporter: TrialReporter | None = None) -> TrialOutcome:
    """Build the model, datamodule and Trainer of one trial, fit, and return its outcome.

    Never raises for what the trial does: exceptions (``SystemExit`` included), out-of-memory and
    non-finite metrics become a FAILED outcome with the reason. A Ctrl+C or SIGTERM becomes an
    outcome with ``interrupted`` set, after restoring the SIGINT handler Lightning replaces.
    """
    if job.part is None and len(job.build.runs) > 1:
        from lightning_hpt.lightning.parts import run_parts  # each of its runs is a run_trial

        return run_parts(job, reporter)
    sigint = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    live = _Live()
    error: BaseException | None = None
    interrupted: str | None = None
    try:
        _fit(job, reporter, live)
    except SearchPreempted as e:
        interrupted, error = PREEMPTED, e
    except (KeyboardInterrupt, SystemExit) as e:
        # Lightning turns Ctrl+C into SystemExit(1) raised while it handles the KeyboardInterrupt, and
        # SIGTERM into SIGTERMException; any other SystemExit (sys.exit in user code) is a failure
        if compat.is_interrupt_exit(e):
            interrupted = PREEMPTED
        elif isinstance(e, KeyboardInterrupt) or isinstance(e.__context__, KeyboardInterrupt):
            interrupted = INTERRUPTED
        # Ctrl+C is recorded as the KeyboardInterrupt it was, not as Lightning's SystemExit
        error = e.__context__ if interrupted == INTERRUPTED and isinstance(e, SystemExit) else e
    except Exception as e:
        error = e
    finally:
        if sigint is not None:
            signal.signal(signal.SIGINT, sigint)  # Lightning leaves SIGINT ignored after an interrupt
        if live.trainer is not None:
            with contextlib.suppress(Exception):  # a W&B run left open would be reused by the next trial
                finish_loggers(live.trainer.loggers)
    outcome = _outcome(job, live.monitor, live.trainer, error, interrupted)
    end_resume(job, outcome)
    if error is not None:  # its traceback holds the trial's frames, and so the model, in a reference cycle
        traceback.clear_frames(error.__traceback__)
    del live, error
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    return outcome


def keeps_resume(job: TrialJob, outcome: TrialOutcome) -> bool:
    """Whether the trial's resumable checkpoint stays when it ends so: kept by option, or it was interrupted."""
    r = job.build.resume
    return r is not None and bool(r.keep or outcome.interrupted or (outcome.state is TrialState.FAILED and r.failed))


def end_resume(job: TrialJob, outcome: TrialOutcome) -> None:
    """Remove the trial's resumable checkpoint when it ended, unless :func:`keeps_resume`."""
    if job.build.resume is None or keeps_resume(job, outcome):
        return
    if int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0:
        discard(job.trial_dir)


def _file_in_place(trial_dir: str) -> bool:
    """Something other than a directory stands where the trial's directory goes (the user's file: left alone)."""
    return os.path.lexists(trial_dir) and not os.path.isdir(trial_dir)


def check_trial_dir(trial_dir: str) -> None:
    """A trial's directory may be missing or a directory; a file in its place is left alone, and the trial fails."""
    if _file_in_place(trial_dir):
        raise NotADirectoryError(
            f"the trial's directory {trial_dir} is a file, not a directory; move or delete that file"
            " (it is left as it is); retry_failed=True runs the trial again"
        )


def _clean_dir(trial_dir: str) -> None:
    """A retried trial starts in an empty directory; only the first process of a DDP trial clears it."""
    if int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0:
        shutil.rmtree(trial_dir, ignore_errors=True)
    Path(trial_dir).mkdir(parents=True, exist_ok=True)


def search_callbacks(pl: Any, b: TrialBuild, job: TrialJob, monitor: Any) -> list[Any]:
    """The callbacks every trial gets from the search: its monitor, EarlyStopping and the best-step checkpoint."""
    callbacks = [monitor]
    mode = "min" if b.direction is Direction.MINIMIZE else "max"
    if b.patience is not None:
        callbacks.append(
            pl.callbacks.EarlyStopping(b.monitor, patience=b.patience, mode=mode, strict=False, check_finite=True)
        )
    if b.resume is not None:
        callbacks.extend(resume_callbacks(pl, b.resume, job.trial_dir))
    if b.checkpoint:
        callbacks.append(
            pl.callbacks.ModelCheckpoint(
                dirpath=os.path.join(job.trial_dir, "checkpoints"),
                filename="best",
                monitor=b.monitor,
                mode=mode,
                save_top_k=1,
                save_last=False,
                enable_version_counter=False,
            )
        )
    return callbacks


def _outcome(
    job: TrialJob,
    monitor: Any,
    trainer: Any,
    error: BaseException | None,
    interrupted: str | None,
    logged: Mapping[str, Any] | None = None,
) -> TrialOutcome:
    """``logged``: the metrics the fit ended with, if the Trainer ran more since (a script's ``trainer.test``)."""
    values = monitor.curve.intermediate() if monitor is not None else {}
    metrics: dict[str, float] = {}
    if trainer is not None:
        for k, v in (trainer.callback_metrics if logged is None else logged).items():
            with contextlib.suppress(Exception):
                metrics[k] = float(v)
    ckpt = os.path.join(job.trial_dir, "checkpoints", "best.ckpt")
    mode = "min" if job.build.direction is Direction.MINIMIZE else "max"
    # the project's own ModelCheckpoint on the monitored metric replaces the search's (lightning.callbacks)
    ckpt = ckpt if os.path.exists(ckpt) else best_checkpoint(trainer, job.build.monitor, mode)
    common: dict[str, Any] = {"intermediate": values, "metrics": metrics}
    if monitor is not None:
        common["attrs"] = {"train_seconds": round(monitor.trained_seconds, 3)}
        if monitor.resumed_at is not None:
            common["attrs"]["resumed_at_step"] = monitor.resumed_at
    if interrupted:
        return TrialOutcome(
            TrialState.FAILED, error=f"{interrupted}: {type(error).__name__}", interrupted=interrupted, **common
        )
    if monitor is not None and monitor.error is not None:
        error = monitor.error
    elif error is not None:
        common.setdefault("attrs", {}).update(_keep_traceback(job, error))
    if error is not None:
        # every trial would fail the same way: a missing metric, or arguments the model/Trainer refuse
        fatal = isinstance(error, (MetricNotFoundError, ConfigurationError)) or compat.is_misconfiguration(error)
        return TrialOutcome(TrialState.FAILED, error=_describe(error), fatal=fatal, **common)
    # a builder that never asked for the search's callbacks has no monitor: nothing was logged to it
    failure = monitor.curve.failure(metrics) if monitor is not None else value_failure(job.build.monitor, {}, metrics)
    if failure is not None:
        return TrialOutcome(TrialState.FAILED, error=failure[0], fatal=failure[1], **common)
    state = TrialState.PRUNED if monitor.pruned else TrialState.COMPLETE
    common["attrs"].update(monitor.curve.judgement())  # the outcome constraints, at the best step
    return TrialOutcome(state, checkpoint=ckpt, **monitor.curve.scores(), **common)
