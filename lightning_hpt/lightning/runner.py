"""Build one trial from its configuration, fit it, and collect the outcome; runs wherever the trial runs."""

from __future__ import annotations

import contextlib
import copy
import gc
import inspect
import logging
import math
import os
import shutil
import signal
import threading
import traceback
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from lightning_hpt.exceptions import ConfigurationError, MetricNotFoundError, SearchPreempted
from lightning_hpt.lightning.config import is_lightning_class, namespace_of, patch_optimizer, split_params
from lightning_hpt.lightning.folds import CrossValidation, MeanReporter, fold_view
from lightning_hpt.lightning.monitor import TrialReporter, monitor_class
from lightning_hpt.trial import INTERRUPTED, PREEMPTED, Direction, TrialState

__all__ = ["TrialBuild", "TrialBuilder", "TrialJob", "TrialOutcome", "build_parts", "run_trial", "trial_seed"]

log = logging.getLogger(__name__)
_QUIET_LOGGERS = ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric")


def trial_seed(seed: int | None, number: int, repeat: int = 0) -> int:
    """The seed handed to ``seed_everything`` for trial ``number`` (and its ``repeat``): a pure function of them."""
    import numpy as np

    base = 0 if seed is None else int(seed) & 0xFFFFFFFF
    key = [base, number] if repeat == 0 else [base, number, repeat]
    return int(np.random.SeedSequence(key).generate_state(1)[0] % (2**31 - 1))


@runtime_checkable
class TrialBuilder(Protocol):
    """Builds a whole trial itself (model, datamodule and Trainer), e.g. through a project's LightningCLI.

    Passed as ``HyperparameterSearch(model=builder)``; parameter names are then the builder's own
    (config paths), and it must add ``callbacks`` (the search's monitor, EarlyStopping, checkpoint)
    to the Trainer it makes.
    """

    namespace: Any  # lightning.pytorch or pytorch_lightning

    def build_trial(self, job: TrialJob, callbacks: list[Any]) -> tuple[Any, Any, Any]:
        """``(model, datamodule, trainer)`` for ``job``."""
        ...


@dataclass(frozen=True)
class TrialBuild:
    """What every trial of a search is built from (the same for all trials); picklable if its parts are.

    Attributes:
        model: a LightningModule class (``model.*`` parameters are its init arguments) or a
            factory ``config -> LightningModule`` where ``config`` is ``{"model": {...}, "data": {...},
            "trainer": {...}, "optimizer": {...}}``.
        datamodule: a LightningDataModule class, a factory ``config -> LightningDataModule``, an
            instance (then no ``data.*`` parameters), or ``None`` (the module has its own loaders).
        trainer_kwargs: passed to every trial's Trainer (``trainer.*`` parameters override them).
        monitor: the validation metric the search optimizes.
        direction: minimize or maximize ``monitor``.
        patience: ``EarlyStopping`` patience in validation runs; ``None`` disables early stopping.
        checkpoint: keep the best step's checkpoint (``<trial dir>/checkpoints/best.ckpt``).
        quiet: silence Lightning's progress bar, model summary and info logs inside the trial.
        cv: k-fold cross-validation: each trial trains one run per fold (see ``lightning.folds``).
        repeats: runs per fold with different seeds, for noisy objectives; the score is the mean.
    """

    model: Any
    datamodule: Any = None
    trainer_kwargs: Mapping[str, Any] = field(default_factory=dict)
    monitor: str = "val_loss"
    direction: Direction = Direction.MINIMIZE
    patience: int | None = 5
    checkpoint: bool = True
    quiet: bool = True
    cv: CrossValidation | None = None
    repeats: int = 1

    @property
    def runs(self) -> list[tuple[int, int]]:
        """The ``(fold, repeat)`` runs of one trial; ``[(0, 0)]`` without folds or repeats."""
        return [(f, r) for r in range(self.repeats) for f in range(self.cv.k if self.cv else 1)]


@dataclass(frozen=True)
class TrialJob:
    """One trial to run: its number, configuration, seed and directory.

    ``part`` is ``(fold, repeat)`` for one run of a cross-validated or repeated trial, else ``None``.
    """

    build: TrialBuild
    number: int
    params: Mapping[str, Any]
    seed: int | None
    trial_dir: str
    part: tuple[int, int] | None = None


@dataclass(frozen=True)
class TrialOutcome:
    """What a finished trial sends back to the driver; plain data only.

    Attributes:
        state: COMPLETE, PRUNED or FAILED.
        value: the best finite monitored value (``None`` when FAILED).
        best_step: the step (validation run) of ``value``.
        intermediate: every reported value ``{step: value}``.
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


def _build(factory: Any, kwargs: dict[str, Any], config: dict[str, Any], kind: str, arg: str) -> Any:
    if is_lightning_class(factory, kind):
        try:
            return factory(**kwargs)
        except TypeError as e:
            params = inspect.signature(factory).parameters
            raise ConfigurationError(
                f"{arg}={factory.__name__} cannot be built with {sorted(kwargs)}: {e}; its init arguments are {list(params)}"
            ) from e
    obj = factory(config)
    if not is_lightning_class(type(obj), kind):
        raise ConfigurationError(f"the {arg} factory must return a {kind}, got {type(obj).__name__}")
    return obj


def build_parts(b: TrialBuild, params: Mapping[str, Any]) -> tuple[Any, Any]:
    """The model (with the trial's ``optimizer.*`` settings) and the datamodule of one configuration."""
    sections = split_params(params)
    config = {k: dict(v) for k, v in sections.items()}
    model = _build(b.model, sections["model"], config, "LightningModule", "model")
    if b.datamodule is not None and not is_lightning_class(type(b.datamodule), "LightningDataModule"):
        dm = _build(b.datamodule, sections["data"], config, "LightningDataModule", "datamodule")
    else:
        dm = b.datamodule
    patch_optimizer(model, sections["optimizer"])
    return model, dm


@contextlib.contextmanager
def quiet_lightning(enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    loggers = [logging.getLogger(n) for n in _QUIET_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*(number of training batches|log_every_n_steps).*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        try:
            yield
        finally:
            for lg, lv in zip(loggers, levels):
                lg.setLevel(lv)


def _loggers(pl: Any, trial_dir: str, params: Mapping[str, Any]) -> list:
    loggers = [pl.loggers.CSVLogger(save_dir=trial_dir, name="", version="")]
    with contextlib.suppress(ImportError, ModuleNotFoundError):
        import tensorboard  # noqa: F401  (TensorBoard logs only when it is installed)

        loggers.append(pl.loggers.TensorBoardLogger(save_dir=trial_dir, name="", version="tb", default_hp_metric=False))
    for lg in loggers:
        lg.log_hyperparams(dict(params))
    return loggers


def _log_hparams(trainer: Any, params: Mapping[str, Any], monitor: str, best: float | None) -> None:
    """Give TensorBoard's HParams view each trial's parameters with its best value."""
    if best is None:
        return
    for lg in trainer.loggers:
        if type(lg).__name__ == "TensorBoardLogger":
            try:
                lg.log_hyperparams(dict(params), {f"hp/{monitor}": best})
                lg.finalize("success")
            except Exception:  # logging must not fail a finished trial
                log.warning("could not write the trial's hyperparameters to TensorBoard", exc_info=True)


def _describe(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}"
    if isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower():
        return f"out of memory: {text}"
    return text


def run_trial(job: TrialJob, reporter: TrialReporter | None = None) -> TrialOutcome:
    """Build the model, datamodule and Trainer of one trial, fit, and return its outcome.

    Never raises for what the trial does: exceptions (``SystemExit`` included), out-of-memory and
    non-finite metrics become a FAILED outcome with the reason. A Ctrl+C or SIGTERM becomes an
    outcome with ``interrupted`` set, after restoring the SIGINT handler Lightning replaces.
    """
    b = job.build
    if job.part is None and len(b.runs) > 1:
        return run_parts(job, reporter)
    sigint = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    monitor = None
    trainer = model = dm = None
    error: BaseException | None = None
    interrupted: str | None = None
    try:
        _clean_dir(job.trial_dir)
        with quiet_lightning(b.quiet):
            pl = namespace_of(b.model) if inspect.isclass(b.model) else None
            from lightning.fabric.utilities.seed import seed_everything

            fold, repeat = job.part or (0, 0)
            seed_everything(trial_seed(job.seed, job.number, repeat), workers=True, verbose=False)
            if isinstance(b.model, TrialBuilder):  # the builder makes the whole trial (LightningCLI projects)
                pl = b.model.namespace
                monitor = monitor_class(pl)(b.monitor, b.direction, reporter)
                model, dm, trainer = b.model.build_trial(job, search_callbacks(pl, b, job, monitor))
            else:
                model, dm = build_parts(b, job.params)
                pl = pl or namespace_of(model)
                if b.cv is not None:
                    dm = fold_view(dm, fold, b.cv)
                monitor = monitor_class(pl)(b.monitor, b.direction, reporter)
                trainer = _make_trainer(pl, b, job, split_params(job.params)["trainer"], monitor)
            trainer.fit(model, datamodule=dm)
            _log_hparams(trainer, job.params, b.monitor, monitor.best_value)
    except SearchPreempted as e:
        interrupted, error = PREEMPTED, e
    except (KeyboardInterrupt, SystemExit) as e:
        # Lightning turns Ctrl+C into SystemExit(1) raised while it handles the KeyboardInterrupt, and
        # SIGTERM into SIGTERMException; any other SystemExit (sys.exit in user code) is a failure
        if type(e).__name__ == "SIGTERMException":
            interrupted = PREEMPTED
        elif isinstance(e, KeyboardInterrupt) or isinstance(e.__context__, KeyboardInterrupt):
            interrupted = INTERRUPTED
        error = e
    except Exception as e:
        error = e
        log.debug("trial %d raised:\n%s", job.number, traceback.format_exc())
    finally:
        if sigint is not None:
            signal.signal(signal.SIGINT, sigint)  # Lightning leaves SIGINT ignored after an interrupt
    outcome = _outcome(job, monitor, trainer, error, interrupted)
    if error is not None:  # its traceback holds this frame, and so the model, in a reference cycle
        traceback.clear_frames(error.__traceback__)
    del trainer, model, dm, monitor, error
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    return outcome


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


def _make_trainer(pl: Any, b: TrialBuild, job: TrialJob, overrides: dict[str, Any], monitor: Any) -> Any:
    kwargs: dict[str, Any] = {"enable_progress_bar": not b.quiet, "enable_model_summary": not b.quiet}
    kwargs.update(b.trainer_kwargs)
    kwargs.update(overrides)
    user_callbacks = kwargs.pop("callbacks", None) or []
    if not isinstance(user_callbacks, (list, tuple)):
        user_callbacks = [user_callbacks]
    # each trial gets its own copies: callbacks keep state (EarlyStopping's wait count, ...)
    monitor, *ours = search_callbacks(pl, b, job, monitor)
    callbacks = [monitor, *copy.deepcopy(list(user_callbacks)), *ours]
    kwargs.setdefault("enable_checkpointing", b.checkpoint)
    if "logger" not in kwargs:
        kwargs["logger"] = _loggers(pl, job.trial_dir, job.params)
    kwargs["default_root_dir"] = job.trial_dir
    try:
        return pl.Trainer(callbacks=callbacks, **kwargs)
    except TypeError as e:
        raise ConfigurationError(
            f"the Trainer rejected trainer_kwargs/trainer.* parameters {sorted(kwargs)}: {e}"
        ) from e


def _outcome(
    job: TrialJob, monitor: Any, trainer: Any, error: BaseException | None, interrupted: str | None
) -> TrialOutcome:
    values = dict(monitor.values) if monitor is not None else {}
    metrics: dict[str, float] = {}
    if trainer is not None:
        for k, v in trainer.callback_metrics.items():
            with contextlib.suppress(Exception):
                metrics[k] = float(v)
    ckpt = os.path.join(job.trial_dir, "checkpoints", "best.ckpt")
    ckpt = ckpt if os.path.exists(ckpt) else None
    common = {"intermediate": values, "metrics": metrics}
    if interrupted:
        return TrialOutcome(
            TrialState.FAILED, error=f"{interrupted}: {type(error).__name__}", interrupted=interrupted, **common
        )
    if monitor is not None and monitor.error is not None:
        error = monitor.error
    if error is not None:
        # every trial would fail the same way: a missing metric, or arguments the model/Trainer refuse
        fatal = (
            isinstance(error, (MetricNotFoundError, ConfigurationError))
            or type(error).__name__ == "MisconfigurationException"
        )
        return TrialOutcome(TrialState.FAILED, error=_describe(error), fatal=fatal, **common)
    if not values:
        logged = sorted(metrics)
        err = MetricNotFoundError(
            f"the monitored metric {job.build.monitor!r} was never logged in a validation run; the metrics logged are"
            f" {logged}. Log it with self.log({job.build.monitor!r}, ...) in validation_step"
        )
        return TrialOutcome(TrialState.FAILED, error=_describe(err), fatal=True, **common)
    bad = [(s, v) for s, v in values.items() if not math.isfinite(v)]
    if bad:
        s, v = bad[0]
        return TrialOutcome(TrialState.FAILED, error=f"non-finite: {job.build.monitor} was {v} at step {s}", **common)
    state = TrialState.PRUNED if monitor.pruned else TrialState.COMPLETE
    return TrialOutcome(state, value=monitor.best_value, best_step=monitor.best_step, checkpoint=ckpt, **common)


def run_parts(job: TrialJob, reporter: TrialReporter | None) -> TrialOutcome:
    """Run every fold/repeat of a trial in turn; the trial's value is the mean of the runs' best values.

    Steps continue across runs and carry the running mean (see :class:`MeanReporter`), so pruning
    acts on the mean so far; a pruned or failed run ends the trial.
    """
    import statistics
    from dataclasses import replace

    b = job.build
    done: list[float] = []
    runs: list[dict[str, Any]] = []
    sent: dict[int, float] = {}
    last: TrialOutcome | None = None
    for fold, repeat in b.runs:
        name = (
            f"fold_{fold}"
            if b.repeats == 1
            else (f"repeat_{repeat}" if b.cv is None else f"fold_{fold}_repeat_{repeat}")
        )
        channel = MeanReporter(reporter, done, len(sent), b.direction)
        last = run_trial(replace(job, part=(fold, repeat), trial_dir=os.path.join(job.trial_dir, name)), channel)
        sent.update(channel.sent)
        runs.append(
            {
                "fold": fold,
                "repeat": repeat,
                "state": last.state.value,
                "value": last.value,
                "best_step": last.best_step,
                "steps": len(last.intermediate),
                "checkpoint": last.checkpoint,
            }
        )
        if last.state is not TrialState.COMPLETE:
            break
        done.append(last.value)
    attrs = {"runs": runs}
    if len(done) > 1:
        attrs["std"] = statistics.stdev(done)
    assert last is not None
    common = {"intermediate": sent, "metrics": last.metrics, "attrs": attrs}
    if last.state is TrialState.FAILED:
        where = f"run {len(runs) - 1} (fold {runs[-1]['fold']}, repeat {runs[-1]['repeat']})"
        # an interrupted trial's error starts with the reason, so that a resumed search retries it
        error = f"{last.interrupted}: {where}: {last.error}" if last.interrupted else f"{where}: {last.error}"
        return TrialOutcome(TrialState.FAILED, error=error, fatal=last.fatal, interrupted=last.interrupted, **common)
    finite = [(s, v) for s, v in sent.items() if math.isfinite(v)]
    best_step, value = (
        min(finite, key=lambda sv: sv[1] if b.direction is Direction.MINIMIZE else -sv[1]) if finite else (None, None)
    )
    if last.state is TrialState.PRUNED:
        return TrialOutcome(TrialState.PRUNED, value=value, best_step=best_step, **common)
    best_run = min(
        (r for r in runs if r["value"] is not None),
        key=lambda r: r["value"] if b.direction is Direction.MINIMIZE else -r["value"],
    )
    return TrialOutcome(
        TrialState.COMPLETE,
        value=statistics.fmean(done),
        best_step=max(sent) if sent else None,
        checkpoint=best_run["checkpoint"],
        **common,
    )
