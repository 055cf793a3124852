"""HyperparameterSearch: the orchestrator users construct."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import gc
import inspect
import logging
import math
import os
import random
import signal
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path
from typing import Any

from lightning_hpt.exceptions import ConfigurationError, DuplicateTrialError, MetricNotFoundError, SearchPreempted
from lightning_hpt.executors import Executor, LocalExecutor
from lightning_hpt.lightning.config import check_keys, is_lightning_class, namespace_of
from lightning_hpt.lightning.folds import CrossValidation, require_cv
from lightning_hpt.lightning.runner import TrialBuild, TrialBuilder, TrialJob, TrialOutcome
from lightning_hpt.pruners import Pruner, make_pruner
from lightning_hpt.report.board import StudyBoard
from lightning_hpt.report.live import make_progress
from lightning_hpt.report.table import trials_table
from lightning_hpt.result import SearchResult
from lightning_hpt.space import Domain, SearchSpace, validate_name
from lightning_hpt.storage import Storage, StudyInfo, open_storage
from lightning_hpt.strategies import Strategy, make_strategy
from lightning_hpt.strategies.base import params_key
from lightning_hpt.trial import INTERRUPTED, PREEMPTED, Direction, History, TrialRecord, TrialState

__all__ = ["HyperparameterSearch"]

log = logging.getLogger(__name__)
HOST = socket.gethostname()
_ACTIVE: set[tuple[str, str, int]] = set()  # (storage url, study, number) of trials running in this process


class _Reporter:
    """Driver side of a trial's reporting channel: stores each value and asks the pruner."""

    def __init__(self, search: HyperparameterSearch, storage: Storage, number: int, progress: Any = None) -> None:
        self.search, self.storage, self.number, self.progress = search, storage, number, progress
        self.stored: set[int] = set()
        self.pending: dict[int, float] = {}  # without a pruner: values not stored yet (see flush)
        self._flushed = 0.0

    @property
    def answers(self) -> bool:
        """Whether :meth:`report` can answer "stop": only with a pruner (channels need not wait otherwise)."""
        return self.search.pruner.name != "none"

    def report(self, step: int, value: float) -> bool:
        self.pending[step] = value
        if self.answers or time.monotonic() - self._flushed >= _FLUSH_S:  # nothing waits on the rest: batches
            self.flush()
        if self.progress is not None:
            self.progress.trial_reported(self.number, step, value)
        pruner = self.search.pruner
        if pruner.name == "none":
            return False
        history = self.search._history(self.storage)
        trials = history.trials  # numbered from 0 without gaps: look there first, not through every trial
        trial = trials[self.number] if self.number < len(trials) else None
        if trial is None or trial.number != self.number:
            trial = next(t for t in trials if t.number == self.number)
        return bool(pruner.should_prune(history, trial))

    def flush(self) -> None:
        """Store the pending values in one transaction (``_finish`` stores what is left with the trial's end)."""
        if self.pending:
            self.storage.report_many(self.search.study_name, self.number, self.pending)
            self.stored.update(self.pending)
            self.pending = {}
        self._flushed = time.monotonic()


_FLUSH_S = 2.0  # without a pruner, a trial's values are stored at most this often (and at its end)
_BACKOFF = random.Random()  # its own generator: the pauses never touch the global random state


def _pid_alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While the search runs, SIGTERM raises :class:`SearchPreempted` (exit status 143) in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise SearchPreempted()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class HyperparameterSearch:
    """Tune a LightningModule's hyperparameters with real Lightning trials, stored in a study that resumes.

    Args:
        model: a LightningModule class (``model.*`` parameters are its init arguments) or a factory
            ``config -> LightningModule`` receiving ``{"model": {...}, "data": {...}, "trainer": {...},
            "optimizer": {...}}``.
        datamodule: a LightningDataModule class (``data.*`` parameters are its init arguments), a
            factory ``config -> LightningDataModule``, an instance (no ``data.*`` parameters), or ``None``.
        space: ``{"model.lr": Float(1e-4, 1e-1, log=True), ...}``. Keys start with ``model.``, ``data.``,
            ``trainer.`` (Trainer arguments, e.g. ``trainer.max_epochs``) or ``optimizer.`` (the trial's
            optimizer: ``optimizer.lr``, ``optimizer.weight_decay``, ``optimizer.class_path``).
        monitor: the validation metric to optimize, as logged with ``self.log``.
        mode: ``"min"`` or ``"max"``.
        strategy: ``"grid" | "random" | "sobol" | "bayes"`` or a Strategy object.
        pruner: ``None | "median" | "asha" | "hyperband"`` or a Pruner object.
        n_trials: trials in the whole study (a resumed study counts those it has); ``None`` with a
            grid runs the whole grid.
        trainer_kwargs: arguments of every trial's Trainer (accelerator, devices, precision, ...).
        storage: a SQLAlchemy URL, a ``.db`` path or a Storage; default ``<root>/studies.db`` (SQLite).
        study_name: the study; running the same name again resumes it.
        root: directory of the trials' files: ``<root>/<study_name>/trial_<number>/``.
        seed: makes the search reproducible: proposals and each trial's ``seed_everything`` derive
            from ``(seed, trial number)``.
        patience: ``EarlyStopping`` patience inside each trial, in validation runs; ``None`` disables it.
        checkpoint: keep each trial's best-epoch checkpoint.
        executor: where trials run; in-process, one at a time, by default. An executor passed in keeps
            its workers after ``run()`` (for another run); call its ``shutdown()`` when done. A stopped
            search (Ctrl+C, SIGTERM, an error) always shuts it down.
        timeout: seconds after which no new trial starts.
        retry_interrupted: rerun, under the same number, trials stopped by Ctrl+C, SIGTERM or a
            killed driver (else they stay FAILED).
        allow_changes: continue a stored study even if the space, monitor, direction or strategy
            given here differ (the stored definition wins).
        enqueue: configurations to try first (known good ones); each is added once per study.
        cv: k-fold cross-validation (a number of folds or a :class:`CrossValidation`): each trial trains
            one run per fold of the DataModule's ``cv_dataset()`` and scores the mean.
        repeats: runs per configuration (per fold) with different seeds; the score is their mean.
        refit: after the search, retrain the best configuration on training plus validation data
            (``result.refit()``); the model is ``result.refit_model``.
        verbose: ``True``/``"auto"``: a live display on a terminal, a line per finished trial otherwise
            (CI logs, ``nohup``); ``"live"``/``"lines"`` force one; ``False``: silent.
        stale_after: seconds without heartbeat after which another host's RUNNING trial counts as dead.

    Example:
        >>> search = HyperparameterSearch(MyModel, MyDataModule, {"model.lr": Float(1e-4, 1e-1, log=True)},
        ...                               monitor="val_acc", mode="max", n_trials=20)  # doctest: +SKIP
        >>> result = search.run()  # doctest: +SKIP
    """

    def __init__(
        self,
        model: Any,
        datamodule: Any = None,
        space: Mapping[str, Domain] | SearchSpace | None = None,
        *,
        monitor: str = "val_loss",
        mode: str = "min",
        strategy: str | Strategy = "random",
        pruner: str | Pruner | None = None,
        n_trials: int | None = 20,
        trainer_kwargs: Mapping[str, Any] | None = None,
        storage: str | os.PathLike | Storage | None = None,
        study_name: str = "default",
        root: str | os.PathLike = "hpt_runs",
        seed: int | None = None,
        patience: int | None = 5,
        checkpoint: bool = True,
        executor: Executor | None = None,
        timeout: float | None = None,
        retry_interrupted: bool = True,
        allow_changes: bool = False,
        enqueue: Sequence[Mapping[str, Any]] = (),
        cv: int | CrossValidation | None = None,
        repeats: int = 1,
        refit: bool = False,
        verbose: bool | str = True,
        stale_after: float = 300.0,
    ) -> None:
        if space is None:
            raise ConfigurationError("space is required: a dict such as {'model.lr': Float(1e-4, 1e-1, log=True)}")
        self.space = SearchSpace(space)
        builds_trials = isinstance(model, TrialBuilder)  # a whole-trial builder checks its own keys
        if not builds_trials:
            check_keys(self.space)
        self.study_name = validate_name(study_name, "study_name")
        self.direction = Direction.parse(mode)
        if not isinstance(monitor, str) or not monitor:
            raise ConfigurationError(
                f"monitor must be the name of a logged metric such as 'val_loss', got monitor={monitor!r}"
            )
        self.monitor = monitor
        self._check_model(model, datamodule)
        self.model, self.datamodule = model, datamodule
        if trainer_kwargs is not None and not isinstance(trainer_kwargs, Mapping):
            raise ConfigurationError(
                f"trainer_kwargs must be a dict of Trainer arguments, got {type(trainer_kwargs).__name__}: {trainer_kwargs!r}"
            )
        self.trainer_kwargs = dict(trainer_kwargs or {})
        self._check_init_keys(model, "model", "LightningModule")
        self._check_init_keys(datamodule, "data", "LightningDataModule")
        if not builds_trials:
            self._check_trainer_keys(model)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ConfigurationError(f"seed must be an integer or None, got seed={seed!r}")
        self.seed = seed
        self.strategy = make_strategy(strategy, seed=None)
        self.pruner = make_pruner(pruner)
        if n_trials is None and self.strategy.name != "grid":
            raise ConfigurationError(
                "n_trials=None (run until exhausted) only works with strategy='grid'; give a number"
            )
        if n_trials is not None and (isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1):
            raise ConfigurationError(f"n_trials must be a positive integer, got n_trials={n_trials!r}")
        self.n_trials = n_trials
        if patience is not None and (isinstance(patience, bool) or not isinstance(patience, int) or patience < 1):
            raise ConfigurationError(
                f"patience must be a positive integer or None (no early stopping), got patience={patience!r}"
            )
        if timeout is not None and (
            isinstance(timeout, bool) or not (isinstance(timeout, (int, float)) and timeout > 0)
        ):
            raise ConfigurationError(f"timeout must be a positive number of seconds or None, got timeout={timeout!r}")
        self.timeout = timeout
        if not isinstance(root, (str, os.PathLike)):
            raise ConfigurationError(f"root must be a directory path (str or Path), got root={root!r}")
        self.root = Path(root).resolve()
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise ConfigurationError(f"repeats must be a positive integer, got repeats={repeats!r}")
        self.cv = CrossValidation.parse(cv)
        if self.cv is not None or refit:
            if datamodule is None:
                raise ConfigurationError(
                    "cv and refit need a datamodule with a cv_dataset() method; datamodule is None"
                )
            if inspect.isclass(datamodule) or is_lightning_class(type(datamodule), "LightningDataModule"):
                require_cv(
                    datamodule, "cv=..." if self.cv is not None else "refit=True"
                )  # a factory: checked when built
        self.refit = refit
        self.build = TrialBuild(
            model,
            datamodule,
            self.trainer_kwargs,
            monitor,
            self.direction,
            patience,
            checkpoint,
            True,
            self.cv,
            repeats,
        )
        if executor is not None and not isinstance(executor, Executor):
            raise ConfigurationError(
                f"executor must be an Executor (LocalExecutor(), ProcessExecutor(...), RayExecutor(...)) or None, got {executor!r}"
            )
        self._owns_executor = executor is None
        self.executor = executor or LocalExecutor()
        self.retry_interrupted = retry_interrupted
        self.allow_changes = allow_changes
        if isinstance(enqueue, Mapping) or not all(isinstance(p, Mapping) for p in enqueue):
            raise ConfigurationError(
                f"enqueue must be a list of configurations (dicts), got enqueue={enqueue!r}; wrap one in [...]"
            )
        self._enqueue = [dict(p) for p in enqueue]
        for p in self._enqueue:
            self.space.validate(p)
        make_progress(verbose)  # validates it
        self.verbose = verbose
        if isinstance(stale_after, bool) or not (isinstance(stale_after, (int, float)) and stale_after > 0):
            raise ConfigurationError(
                f"stale_after must be a positive number of seconds, got stale_after={stale_after!r}"
            )
        self.stale_after = stale_after
        self._storage_spec = storage if storage is not None else f"sqlite:///{self.root / 'studies.db'}"
        self._storage: Storage | None = None

    # --- validation -------------------------------------------------------------------------
    def _check_model(self, model: Any, datamodule: Any) -> None:
        if not (is_lightning_class(model, "LightningModule") or (callable(model) and not inspect.isclass(model))):
            raise ConfigurationError(
                f"model must be a LightningModule class or a factory function config -> LightningModule, got {model!r}"
            )
        has_data = any(k.startswith("data.") for k in self.space)
        if is_lightning_class(type(datamodule), "LightningDataModule") and has_data:
            keys = [k for k in self.space if k.startswith("data.")]
            raise ConfigurationError(
                f"datamodule is an instance, so it cannot take the data.* parameters {keys}; pass the DataModule class"
                " (or a factory config -> DataModule) instead"
            )
        if datamodule is None and has_data:
            raise ConfigurationError("data.* parameters need a datamodule class or factory; datamodule is None")
        if datamodule is not None and not (
            is_lightning_class(type(datamodule), "LightningDataModule")
            or is_lightning_class(datamodule, "LightningDataModule")
            or callable(datamodule)
        ):
            raise ConfigurationError(
                f"datamodule must be a LightningDataModule class, instance or factory, got {datamodule!r}"
            )

    def _check_init_keys(self, cls: Any, section: str, kind: str) -> None:
        """``model.*`` / ``data.*`` names must be init arguments of a class (unless it takes ``**kwargs``)."""
        if not is_lightning_class(cls, kind):
            return  # factories receive the whole config and check it themselves
        params = inspect.signature(cls.__init__).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return
        valid = [n for n in params if n != "self"]
        for key in self.space:
            head, _, rest = key.partition(".")
            name = rest.split(".")[0]
            if head == section and name not in valid:
                near = difflib.get_close_matches(name, valid, n=3)
                raise ConfigurationError(
                    f"{key!r}: {name!r} is not an init argument of {cls.__name__}; its arguments are {valid}"
                    + (f" (did you mean {near}?)" if near else "")
                )

    def _check_trainer_keys(self, model: Any) -> None:
        pl = namespace_of(model) if inspect.isclass(model) else namespace_of(object)
        valid = set(inspect.signature(pl.Trainer.__init__).parameters) - {"self"}
        given = list(self.trainer_kwargs) + [k.split(".")[1] for k in self.space if k.startswith("trainer.")]
        for key in given:
            if key not in valid:
                near = difflib.get_close_matches(key, valid, n=3)
                raise ConfigurationError(
                    f"{key!r} is not an argument of Trainer (in trainer_kwargs or trainer.*); did you mean {near}?"
                )

    # --- storage ------------------------------------------------------------------------------
    @property
    def storage(self) -> Storage:
        if self._storage is None:
            self._storage = open_storage(self._storage_spec)
        return self._storage

    def _open(self) -> Storage:
        storage = self.storage
        info = StudyInfo(self.study_name, self.space, self.direction, self.monitor, self.strategy.name, self.seed)
        stored = storage.open_study(info, allow_changes=self.allow_changes)
        if (stored.monitor, stored.direction) != (self.monitor, self.direction):  # allow_changes: the stored study wins
            self.build = dataclasses.replace(self.build, monitor=stored.monitor, direction=stored.direction)
        if stored.strategy != self.strategy.name:
            self.strategy = make_strategy(stored.strategy)
        self.space, self.direction, self.seed, self.monitor = (
            stored.space,
            stored.direction,
            stored.seed,
            stored.monitor,
        )
        return storage

    @property
    def max_steps(self) -> int | None:
        """The most steps (validation runs) a trial can have, if known: ``trainer.max_epochs`` (its highest
        value if searched), times the validation runs per epoch, times the runs (folds x repeats) of a trial."""
        dom = self.space.get("trainer.max_epochs")
        if dom is not None and dom.values() is not None:
            epochs = int(max(dom.values()))
        else:
            epochs = self.trainer_kwargs.get("max_epochs")
            if not (isinstance(epochs, int) and epochs > 0):
                return None
        every = self.trainer_kwargs.get("check_val_every_n_epoch", 1) or 1
        interval = self.trainer_kwargs.get("val_check_interval", 1.0)
        per_epoch = math.ceil(1 / interval) if isinstance(interval, float) and 0 < interval < 1 else 1
        if not isinstance(every, int) or (isinstance(interval, int) and interval > 1):
            return None  # validation every k batches: the count of validation runs is not known here
        # steps continue across the folds and repeats of one trial
        return max(1, epochs // every) * per_epoch * len(self.build.runs)

    def _history(self, storage: Storage) -> History:
        return storage.history(self.study_name, self.max_steps)

    def _recover(self, storage: Storage) -> None:
        """Trials left RUNNING by a dead driver become FAILED ("interrupted"); interrupted ones are requeued."""
        now = time.time()
        for t in storage.trials(self.study_name):
            if t.state is TrialState.RUNNING:
                beat = storage.last_heartbeat(self.study_name, t.number)
                stale = beat is None or now - beat > self.stale_after  # also catches a reused pid
                if t.host == HOST and t.pid == os.getpid():
                    dead = (storage.url, self.study_name, t.number) not in _ACTIVE
                elif t.host == HOST:
                    dead = not _pid_alive(t.pid) or stale
                else:
                    dead = stale
                if not dead:
                    continue
                log.warning(
                    "trial %d was left RUNNING by a process that is gone (%s pid %s): interrupted",
                    t.number,
                    t.host,
                    t.pid,
                )
                t = storage.finish_trial(
                    self.study_name,
                    t.number,
                    state=TrialState.FAILED,
                    error=f"{INTERRUPTED}: the driver process ({t.host} pid {t.pid}) died",
                )
            if (
                self.retry_interrupted
                and t.state is TrialState.FAILED
                and (t.error or "").startswith((INTERRUPTED, PREEMPTED))
            ):
                log.info("trial %d was interrupted (%s): it runs again with the same configuration", t.number, t.error)
                storage.requeue_trial(self.study_name, t.number)

    @staticmethod
    def _check_checkpoints(trials: Sequence[TrialRecord]) -> None:
        """Warn (never fail) about finished trials whose checkpoint is missing or truncated."""
        import zipfile

        for t in trials:
            if (
                t.state is TrialState.COMPLETE
                and t.checkpoint
                and not (os.path.exists(t.checkpoint) and zipfile.is_zipfile(t.checkpoint))
            ):
                log.warning(
                    "the checkpoint of trial %d (%s) is missing or truncated; load_best_model() skips it",
                    t.number,
                    t.checkpoint,
                )

    def enqueue(self, params: Mapping[str, Any]) -> TrialRecord | None:
        """Add a configuration to try before the strategy's proposals (once: a known one is not added again)."""
        self.space.validate(params)
        storage = self._open()
        if any(params_key(dict(t.params)) == params_key(dict(params)) for t in storage.trials(self.study_name)):
            return None
        try:  # another driver may enqueue the same configuration at the same moment
            return storage.create_trial(self.study_name, params, state=TrialState.QUEUED, unique=True)
        except DuplicateTrialError:
            return None

    # --- running ------------------------------------------------------------------------------
    def _next_trials(
        self, storage: Storage, k: int, history: History | None = None
    ) -> tuple[list[TrialRecord], str | None]:
        """Up to ``k`` trials to start now (queued first, then new proposals), and why there are none.

        ``history``: the study as just read, if it was (saves reading it again); a stale one only
        costs a refused proposal, made again from a fresh read.
        """
        out: list[TrialRecord] = []
        while len(out) < k:
            rec = storage.claim_queued(self.study_name, host=HOST, pid=os.getpid())
            if rec is None:
                break
            out.append(rec)
        if len(out) == k:
            return out, None
        # Another driver sharing the study may add a trial between our read and our write: then the proposal
        # (made for the number that trial took, e.g. the same seeded random draw, a grid point it now has, or
        # a model blind to it) is refused and made again from the new history. Every refusal means another
        # driver made progress, so this ends; a short random pause after each breaks up drivers in lockstep.
        unique = self.strategy.name == "grid"
        refusals = 0
        while True:
            history = history if history is not None and not refusals else self._history(storage)
            if self.n_trials is not None and len(history.trials) >= self.n_trials:
                return out, "n_trials reached"
            want = k - len(out)
            if self.n_trials is not None:
                want = min(want, self.n_trials - len(history.trials))
            proposals = self.strategy.ask(history, want)
            if not proposals:
                return out, f"{self.strategy.name} strategy exhausted"
            for i, params in enumerate(proposals):
                try:
                    rec = storage.create_trial(
                        self.study_name,
                        params,
                        max_trials=self.n_trials,
                        host=HOST,
                        pid=os.getpid(),
                        unique=unique,
                        number=history.next_number + i,
                    )
                except DuplicateTrialError:
                    refusals += 1
                    time.sleep(_BACKOFF.uniform(0.0, min(0.05 * refusals, 0.5)))
                    break
                if rec is None:
                    return out, "n_trials reached"
                out.append(rec)
            else:
                return out, None
            if len(out) == k:
                return out, None

    def _job(self, rec: TrialRecord) -> TrialJob:
        trial_dir = self.root / self.study_name / f"trial_{rec.number}"
        return TrialJob(self.build, rec.number, dict(rec.params), self.seed, str(trial_dir))

    def _finish(self, storage: Storage, rec: TrialRecord, reporter: _Reporter, outcome: TrialOutcome) -> TrialRecord:
        # not stored yet: the channel's last batch, and what it did not carry (it failed, or the executor batches)
        missing = {s: v for s, v in outcome.intermediate.items() if s not in reporter.stored}
        storage.report_many(self.study_name, rec.number, {**reporter.pending, **missing})
        attrs = {**outcome.attrs, "metrics": dict(outcome.metrics)} if outcome.metrics or outcome.attrs else None
        return storage.finish_trial(
            self.study_name,
            rec.number,
            state=outcome.state,
            value=outcome.value,
            best_step=outcome.best_step,
            error=outcome.error,
            checkpoint=outcome.checkpoint,
            attrs=attrs,
        )

    def run(self) -> SearchResult:
        """Run (or resume) the study until ``n_trials`` trials are finished, the grid is exhausted or time is up.

        Returns:
            The study's :class:`SearchResult`.

        Raises:
            KeyboardInterrupt: after Ctrl+C, once the running trials are recorded as FAILED ("interrupted").
            SearchPreempted: after SIGTERM, likewise ("pre-empted"); exits with status 143 if uncaught.
            MetricNotFoundError: when the first trials never log ``monitor``.
        """
        self.executor.start(self.build)  # refuses unpicklable trial code before anything is written
        storage = self._open()
        self._recover(storage)
        self._check_checkpoints(storage.trials(self.study_name))
        for params in self._enqueue:
            self.enqueue(params)
        progress = make_progress(self.verbose)
        board = StudyBoard(self.root / self.study_name / "tensorboard", self.monitor)
        trials = storage.trials(self.study_name)
        progress.start(
            self.study_name,
            self.n_trials,
            sum(t.state.is_finished for t in trials),
            storage.url,
            monitor=self.monitor,
            trials=trials,
        )
        history: History | None = None  # the study as read after the last finished trial
        t0 = time.monotonic()
        running: dict[Future, tuple[TrialRecord, _Reporter]] = {}
        reason: str | None = None
        started: set[int] = set()  # numbers this run started and has not recorded yet
        handling = False  # recording an interrupted trial: another Ctrl+C or SIGTERM must end the driver at once
        stop_beat = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(storage, started, stop_beat), daemon=True)
        beat.start()
        # Objects that exist now (imported libraries) outlive the search: keep them out of the full
        # collection after each trial, which otherwise costs ~0.25 s a trial with torch and Lightning loaded.
        gc.collect()
        gc.freeze()
        try:
            with _sigterm_raises():
                while True:
                    if reason is None and self.timeout is not None and time.monotonic() - t0 > self.timeout:
                        reason = "timeout"
                    free = self.executor.max_concurrency - len(running)
                    if reason is None and free > 0:
                        recs, reason = self._next_trials(storage, free, history)
                        history = None
                        for rec in recs:
                            reporter = _Reporter(self, storage, rec.number, progress)
                            _ACTIVE.add((storage.url, self.study_name, rec.number))
                            started.add(rec.number)
                            progress.trial_started(rec)  # before submit: the in-process executor blocks
                            running[self.executor.submit(self._job(rec), reporter)] = (rec, reporter)
                    if not running:
                        break
                    done, _ = wait(list(running), timeout=1.0, return_when=FIRST_COMPLETED)
                    for fut in done:
                        rec, reporter = running.pop(fut)
                        outcome = fut.result()
                        handling = outcome.interrupted is not None
                        final = self._finish(storage, rec, reporter, outcome)
                        handling = False
                        _ACTIVE.discard((storage.url, self.study_name, rec.number))
                        started.discard(rec.number)
                        history = self._history(storage)  # one read serves the display and the next proposals
                        progress.trial_finished(
                            final,
                            history.best(),
                            self.monitor,
                            sum(t.state.is_finished for t in history.trials),
                            self.n_trials,
                        )
                        board.trial_finished(final, history.best())
                        gc.freeze()  # what outlived this trial (lazy imports, caches) stays out of the next collections
                        if outcome.interrupted == PREEMPTED:
                            raise SearchPreempted()
                        if outcome.interrupted:
                            raise KeyboardInterrupt
                        if outcome.fatal and not history.completed:
                            raise MetricNotFoundError(
                                f"trial {rec.number} failed and every trial would: {outcome.error}"
                            )
        except BaseException as e:
            running.clear()
            if not (handling and isinstance(e, (KeyboardInterrupt, SearchPreempted))):
                self._abandon(storage, started, e)  # a second Ctrl+C here also ends it at once
            self.executor.shutdown()  # no worker outlives a stopped search
            raise
        finally:
            stop_beat.set()
            board.close()
            progress.close()
            if self._owns_executor:  # an executor passed in is the caller's: it can serve another run()
                self.executor.shutdown()
            gc.unfreeze()
        result = self.result(reason or "done")
        if self.refit and result.best_trial is not None:
            result.refit()
        progress.end(str(result), trials_table(result.trials, self.monitor, self.direction, top=10))
        return result

    def _abandon(self, storage: Storage, started: set[int], error: BaseException) -> None:
        """Record the trials this run started and did not finish, so none stays RUNNING."""
        if isinstance(error, (KeyboardInterrupt, SearchPreempted)):  # these trials run again on resume
            why = f"{PREEMPTED if isinstance(error, SearchPreempted) else INTERRUPTED}: the search stopped ({type(error).__name__})"
        else:  # a driver error is not retried forever: the trial keeps the real reason
            why = f"the search stopped on an error in the driver: {type(error).__name__}: {error}"
        for number in sorted(started):
            with contextlib.suppress(Exception):
                storage.finish_trial(self.study_name, number, state=TrialState.FAILED, error=why)
            _ACTIVE.discard((storage.url, self.study_name, number))
        started.clear()

    def _heartbeat(self, storage: Storage, started: set[int], stop: threading.Event, every: float = 30.0) -> None:
        # ``started`` is filled before submit, so an in-process trial (submit blocks) is kept alive too
        while not stop.wait(every):
            numbers = sorted(started)
            if numbers:
                with contextlib.suppress(Exception):
                    storage.heartbeat(self.study_name, numbers)

    # --- results and ask/tell -------------------------------------------------------------------
    @property
    def trials(self) -> list[TrialRecord]:
        """Every trial of the study, as stored now."""
        return self._open().trials(self.study_name)

    def result(self, stopped_reason: str = "") -> SearchResult:
        """The study's current result (also while another process runs it)."""
        return SearchResult(self.study_name, self.monitor, self.direction, tuple(self.trials), stopped_reason, self)

    def ask(self) -> TrialRecord:
        """Start a trial without running it: queued configurations first, then the strategy's proposal.

        Raises:
            ConfigurationError: when ``n_trials`` is reached or the strategy is exhausted.
        """
        storage = self._open()
        recs, reason = self._next_trials(storage, 1)
        if not recs:
            raise ConfigurationError(f"no trial to ask for: {reason}")
        return recs[0]

    def tell(
        self,
        number: int,
        value: float | None = None,
        *,
        state: TrialState = TrialState.COMPLETE,
        error: str | None = None,
        intermediate: Mapping[int, float] | None = None,
    ) -> TrialRecord:
        """Record the result of a trial started with :meth:`ask`."""
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ConfigurationError(
                f"tell: value must be a number or None, got value={value!r} of type {type(value).__name__}"
            )
        storage = self._open()
        for step, v in sorted((intermediate or {}).items()):
            storage.report(self.study_name, number, step, v)
        if state is TrialState.COMPLETE and (value is None or not math.isfinite(value)):
            state, error = TrialState.FAILED, error or f"non-finite: value={value!r}"
            value = None
        finite = [(st, v) for st, v in (intermediate or {}).items() if math.isfinite(v)]
        best_step = None
        if finite:  # the step of the best value, under the study's direction
            best_step = (min if self.direction is Direction.MINIMIZE else max)(finite, key=lambda sv: sv[1])[0]
        return storage.finish_trial(self.study_name, number, state=state, value=value, best_step=best_step, error=error)
