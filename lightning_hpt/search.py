"""HyperparameterSearch: the orchestrator users construct."""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_hpt.checks import check_bool, check_seed, check_writable_dir, known_keywords
from lightning_hpt.constraints import outcome_constraints
from lightning_hpt.constraints import param_constraints as param_constraints_of
from lightning_hpt.driver import StudyDriver
from lightning_hpt.exceptions import ConfigurationError, DuplicateTrialError, SearchFailedError, SearchSpaceError
from lightning_hpt.executors import Executor, LocalExecutor
from lightning_hpt.failures import no_complete_trial
from lightning_hpt.lightning.builder import TrialBuilder
from lightning_hpt.lightning.folds import CrossValidation
from lightning_hpt.lightning.resume import Resume
from lightning_hpt.lightning.runner import TrialBuild, judge
from lightning_hpt.masking import get_logger
from lightning_hpt.objectives import Objective, parse_objectives
from lightning_hpt.proposals import next_trials
from lightning_hpt.pruners import Pruner, StepIndex, make_pruner
from lightning_hpt.recovery import check_checkpoints, check_stale_after, recover
from lightning_hpt.report.board import StudyBoard
from lightning_hpt.report.live import make_progress
from lightning_hpt.report.table import trials_table
from lightning_hpt.result import SearchResult
from lightning_hpt.run_scope import frozen_gc, heartbeat, sigterm_raises
from lightning_hpt.search_args import (
    PEER_WORDS,
    check_feasible,
    check_function_kept,
    check_params,
    continued,
    max_steps_of,
    record_told,
    refit_one_objective,
    require_positive,
    resume_of,
    told,
    trial_builder,
)
from lightning_hpt.space import Domain, SearchSpace, validate_study_name
from lightning_hpt.storage import Storage, StudyInfo, open_storage, storage_spec
from lightning_hpt.strategies import Strategy, make_strategy
from lightning_hpt.strategies.base import params_key
from lightning_hpt.strategies.grid import planned_trials
from lightning_hpt.trial import Direction, History, TrialRecord, TrialState

__all__ = ["HyperparameterSearch"]

log = get_logger(__name__)


class HyperparameterSearch:
    """Tune a LightningModule's hyperparameters with real Lightning trials, stored in a study that resumes.

    Args:
        model: a LightningModule class (``model.*`` parameters are its init arguments) or a factory
            ``config -> LightningModule`` receiving ``{"model": {...}, "data": {...}, "trainer": {...},
            "optimizer": {...}}``; not an instance (every trial builds its own).
        datamodule: a LightningDataModule class (``data.*`` parameters are its init arguments), a
            factory ``config -> LightningDataModule``, an instance (no ``data.*`` parameters), or ``None``.
        space: ``{"model.lr": Float(1e-4, 1e-1, log=True), ...}``. Keys start with ``model.``, ``data.``,
            ``trainer.`` (Trainer arguments, e.g. ``trainer.max_epochs``) or ``optimizer.`` (the trial's
            optimizer: ``optimizer.lr``, ``optimizer.weight_decay``, ``optimizer.class_path``). Or a function
            of a trial that calls ``trial.suggest(name, domain)`` and branches with ``if``, traced into a
            space with conditions (:mod:`lightning_hpt.define_by_run`).
        monitor: the validation metric to optimize, as logged with ``self.log``; or a list of metrics
            to optimize together (several objectives, e.g. ``["val_acc", "val_latency_ms"]``): every
            trial records each one, and the result has a Pareto front (:attr:`SearchResult.pareto_trials`).
            The first one chooses a trial's best step (its checkpoint and ``EarlyStopping``); the
            trial's values are every objective's at that step.
        mode: ``"min"`` or ``"max"``; with several objectives a list, one per objective.
        constraints: bounds on metrics the trials log, ``{"n_params": ("<=", 2e6)}`` (``"<="`` or
            ``">="``), judged at a trial's best step; a trial that breaks one is recorded infeasible
            (``attrs["infeasible"]``), never best and never on the Pareto front.
        param_constraints: rules on the parameters alone, checked before a trial runs, so a
            configuration that breaks one never runs (the strategy is asked again): expressions such
            as ``"model.width * model.depth <= 4096"`` or functions ``config -> bool``.
        strategy: ``"grid" | "random" | "sobol" | "bayes"`` or a Strategy object.
        pruner: ``None | "median" | "asha" | "hyperband"`` or a Pruner object.
        n_trials: trials in the whole study (a resumed study counts those it has); ``None`` with a
            grid runs the whole grid, with ``timeout`` it runs until the time is up.
        trainer_kwargs: arguments of every trial's Trainer (accelerator, devices, precision, ...).
        builder: how every trial is built, instead of ``model``, ``datamodule`` and ``trainer_kwargs``
            (which make a :class:`ModuleTrialBuilder`): e.g. a ``CLITrialBuilder`` for a LightningCLI project.
        storage: a SQLAlchemy URL, a ``.db`` path or a Storage; default ``<root>/studies.db`` (SQLite).
        study_name: the study; running the same name again resumes it.
        root: directory of the trials' files: ``<root>/<study_name>/trial_<number>/``.
        seed: makes the search reproducible: proposals and each trial's ``seed_everything`` derive
            from ``(seed, trial number)``; an integer from 0 to 2**32 - 1. A stored study resumed with
            another seed is refused like a changed space (``allow_changes=True`` keeps the stored one).
        patience: ``EarlyStopping`` patience inside each trial, in validation runs; ``None`` disables it.
        checkpoint: keep each trial's best-epoch checkpoint.
        executor: where trials run; in-process, one at a time, by default. An executor passed in keeps
            its workers after ``run()`` (for another run); call its ``shutdown()`` when done. A stopped
            search (Ctrl+C, SIGTERM, an error) always shuts it down.
        timeout: seconds after which no new trial starts (the running ones finish); the search ends
            with the reason ``"timeout"``.
        retry_interrupted: rerun, under the same number, trials stopped by Ctrl+C, SIGTERM or a
            killed driver (else they stay FAILED).
        retry_failed: rerun every FAILED trial of the study under its number (after fixing what made
            them fail); safe while other drivers run the study: each is rerun once.
        allow_changes: continue a stored study even if the space, monitor, direction, strategy or
            seed given here differ (the stored definition wins).
        enqueue: configurations to try first (known good ones); each is added once per study.
        cv: k-fold cross-validation (a number of folds or a :class:`CrossValidation`): each trial trains
            one run per fold of the DataModule's ``cv_dataset()`` and scores the mean.
        repeats: runs per configuration (per fold) with different seeds; the score is their mean.
        refit: after the search, retrain the best configuration on training plus validation data
            (``result.refit()``); the model is ``result.refit_model``.
        verbose: ``True``/``"auto"``: a live display on a terminal, a line per finished trial otherwise
            (CI logs, ``nohup``); ``"live"``/``"lines"`` force one; ``False``: silent.
        stale_after: seconds without heartbeat after which another host's RUNNING trial counts as dead.
        resume: each trial keeps a resumable checkpoint of its latest state (every validation run by
            default; a :class:`Resume` sets the interval, keeps it after the trial, or keeps a FAILED
            trial's for ``retry_failed``), and a rerun of an interrupted trial continues from it;
            ``False``: interrupted trials start over.

    Example:
        >>> search = HyperparameterSearch(MyModel, MyDataModule, {"model.lr": Float(1e-4, 1e-1, log=True)},
        ...                               monitor="val_acc", mode="max", n_trials=20)  # doctest: +SKIP
        >>> result = search.run()  # doctest: +SKIP
    """

    @known_keywords("HyperparameterSearch", PEER_WORDS)
    def __init__(
        self,
        model: Any = None,
        datamodule: Any = None,
        space: Mapping[str, Domain] | SearchSpace | Callable[[Any], Any] | None = None,
        *,
        builder: TrialBuilder | None = None,
        monitor: str | Sequence[str] = "val_loss",
        mode: str | Sequence[str] = "min",
        constraints: Mapping[str, tuple[str, float]] | None = None,
        param_constraints: Sequence[str | Callable[[Mapping[str, Any]], bool]] | None = None,
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
        retry_failed: bool = False,
        allow_changes: bool = False,
        enqueue: Sequence[Mapping[str, Any]] = (),
        cv: int | CrossValidation | None = None,
        repeats: int = 1,
        refit: bool = False,
        verbose: bool | str = True,
        stale_after: float = 300.0,
        resume: Resume | bool = True,
    ) -> None:
        if space is None:
            raise ConfigurationError("space is required: a dict such as {'model.lr': Float(1e-4, 1e-1, log=True)}")
        self.space = SearchSpace(space)
        self._traced = self.space if callable(space) and not isinstance(space, (Mapping, SearchSpace, type)) else None
        self.study_name = validate_study_name(study_name)
        objectives = parse_objectives(monitor, mode)
        outcome = outcome_constraints(constraints, [o.name for o in objectives])
        self.param_constraints = param_constraints_of(param_constraints, list(self.space))
        builder = trial_builder(model, datamodule, trainer_kwargs, builder)
        builder.check(self.space)
        self.seed = check_seed(seed)
        for name, flag in (("checkpoint", checkpoint), ("retry_interrupted", retry_interrupted), ("refit", refit)):
            check_bool(flag, name)
        self.retry_failed = check_bool(retry_failed, "retry_failed")
        self.allow_changes = check_bool(allow_changes, "allow_changes")
        self.strategy = make_strategy(strategy, seed=None)
        self.strategy.check(self.space, objectives)
        self._strategy_by_name = isinstance(strategy, str)
        self.pruner = make_pruner(pruner)
        require_positive("timeout", timeout, integer=False, optional=True)
        self.timeout = timeout
        if n_trials is None and timeout is None and not self.strategy.exhaustive:
            raise ConfigurationError(
                f"n_trials=None (run until exhausted) needs an exhaustive strategy such as 'grid', not"
                f" {self.strategy.name!r}, or a timeout; give a number, or timeout=SECONDS"
            )
        require_positive("n_trials", n_trials, optional=True, none_means="")
        self.n_trials = n_trials
        self._planned = planned_trials(self.strategy, self.space, n_trials)  # a grid without points fails here
        require_positive("patience", patience, optional=True, none_means=" or None (no early stopping)")
        if not isinstance(root, (str, os.PathLike)):
            raise ConfigurationError(f"root must be a directory path (str or Path), got root={root!r}")
        self.root = Path(root).resolve()
        require_positive("repeats", repeats)
        self.cv = CrossValidation.parse(cv)
        if self.cv is not None or refit:
            builder.check_cv("cv=..." if self.cv is not None else "refit=True")
        refit_one_objective(objectives, refit)
        self.refit = refit
        first, several = objectives[0], objectives if len(objectives) > 1 else ()
        runs = (self.cv, repeats, resume_of(resume), several, outcome)
        self.build = TrialBuild(builder, first.name, first.direction, patience, checkpoint, *runs)
        if executor is not None and not isinstance(executor, Executor):
            raise ConfigurationError(
                "executor must be an Executor (LocalExecutor(), ProcessExecutor(...), RayExecutor(...)) or None,"
                f" got {executor!r}"
            )
        self._owns_executor = executor is None
        self.executor = executor or LocalExecutor()
        self.retry_interrupted = retry_interrupted
        if isinstance(enqueue, Mapping) or not all(isinstance(p, Mapping) for p in enqueue):
            raise ConfigurationError(
                f"enqueue must be a list of configurations (dicts), got enqueue={enqueue!r}; wrap one in [...]"
            )
        self._enqueue = [dict(p) for p in enqueue]
        for i, p in enumerate(self._enqueue):
            try:
                self._check_params(p)
            except (ConfigurationError, SearchSpaceError) as e:
                raise type(e)(f"enqueue[{i}]: {e}") from None
        check_feasible(self.space, self.param_constraints)
        make_progress(verbose)  # validates it
        self.verbose = verbose
        self.stale_after = check_stale_after(stale_after)
        self._storage_spec = storage_spec(storage) if storage is not None else f"sqlite:///{self.root / 'studies.db'}"
        self._storage: Storage | None = None
        self._opened = False

    @property
    def monitor(self) -> str:
        """The metric the search optimizes (the stored study's, once opened)."""
        return self.build.monitor

    @property
    def direction(self) -> Direction:
        """Whether :attr:`monitor` is minimized or maximized (the stored study's, once opened)."""
        return self.build.direction

    @property
    def objectives(self) -> tuple[Objective, ...]:
        """Every objective (one for a study of one metric: :attr:`monitor` and :attr:`direction`)."""
        return self.build.objectives or (Objective(self.monitor, self.direction),)

    @property
    def constraints(self) -> tuple[Any, ...]:
        """The study's outcome constraints, then its parameter constraints."""
        return (*self.build.constraints, *self.param_constraints)

    # --- storage ------------------------------------------------------------------------------
    @property
    def storage(self) -> Storage:
        if self._storage is None:
            self._storage = open_storage(self._storage_spec)
        return self._storage

    def open(self) -> Storage:
        """Create the study, or open the stored one and check it; once per search object.

        A stored study with another space, monitor, direction or strategy is refused
        (:class:`StudyMismatchError`), unless ``allow_changes``: then the stored space, monitor and
        direction are adopted (trials must stay comparable). :meth:`run`, :meth:`ask`, :meth:`tell`
        and :meth:`enqueue` call it; reading (:attr:`trials`, :meth:`result`) never does.

        Returns:
            The storage, with the study in it.
        """
        storage = self.storage
        if self._opened:
            return storage
        info = StudyInfo(
            self.study_name,
            self.space,
            self.direction,
            self.monitor,
            self.strategy.name,
            self.seed,
            objectives=self.build.objectives,
            constraints=self.constraints,
        )
        stored = storage.open_study(info, allow_changes=self.allow_changes)
        if self._traced is not None:  # allow_changes: the stored space must answer what the function asks
            check_function_kept(self._traced, stored.space, self.study_name)
        self.build, self.param_constraints, self.strategy = continued(
            stored, self.build, self.param_constraints, self.strategy, self._strategy_by_name, self.study_name
        )
        self.space, self.seed = stored.space, stored.seed
        self._opened = True
        return storage

    @property
    def max_steps(self) -> int | None:
        """The most steps (validation runs) a trial can have, if known: ``trainer.max_epochs`` (its highest
        value if searched), times the validation runs per epoch, times the runs (folds x repeats) of a trial."""
        return max_steps_of(self.build, self.space)

    def _history(self, storage: Storage) -> History:
        history = storage.history(self.study_name, self.max_steps, StepIndex if self.pruner.active else None)
        return (
            dataclasses.replace(history, param_constraints=self.param_constraints)
            if self.param_constraints
            else history
        )

    def _check_params(self, params: Mapping[str, Any]) -> None:
        check_params(self.space, self.param_constraints, params)

    def enqueue(self, params: Mapping[str, Any]) -> TrialRecord | None:
        """Add a configuration to try before the strategy's proposals (once: a known one is not added again)."""
        self._check_params(params)
        storage = self.open()
        if any(params_key(dict(t.params)) == params_key(dict(params)) for t in storage.trials(self.study_name)):
            return None
        try:  # another driver may enqueue the same configuration at the same moment
            return storage.create_trial(self.study_name, params, state=TrialState.QUEUED, unique=True)
        except DuplicateTrialError:
            return None

    # --- running ------------------------------------------------------------------------------
    def run(self) -> SearchResult:
        """Run (or resume) the study until ``n_trials`` trials are finished, the grid is exhausted or time is up.

        Returns:
            The study's :class:`SearchResult`.

        Raises:
            KeyboardInterrupt: after Ctrl+C, once the running trials are recorded as FAILED ("interrupted").
            SearchPreempted: after SIGTERM, likewise ("pre-empted"); exits with status 143 if uncaught.
            MetricNotFoundError: when the first trials never log ``monitor``.
            SearchFailedError: when the first trials fail with the same error over different
                configurations (see :mod:`lightning_hpt.failures`), or when the search ends with no
                COMPLETE trial (then ``.result`` holds the result); each error is shown once.

        While it runs it changes process-wide state, and restores it when it returns (see
        :mod:`lightning_hpt.run_scope`): SIGTERM raises :class:`SearchPreempted` in the main thread,
        the objects alive at the start are frozen out of garbage collection (``gc.freeze``), and a
        heartbeat thread keeps this run's trials alive in storage. The trials it runs are listed in
        the process-wide :data:`lightning_hpt.recovery.ACTIVE`.
        """
        self.executor.start(self.build)  # refuses unpicklable trial code before anything is written
        check_writable_dir(self.root / self.study_name, f"the trials' directory (root={str(self.root)!r})")
        storage = self.open()
        recover(storage, self.study_name, stale_after=self.stale_after, retry_interrupted=self.retry_interrupted)
        if self.retry_failed:
            storage.requeue_failed(self.study_name)
        check_checkpoints(storage.trials(self.study_name))
        for params in self._enqueue:
            self.enqueue(params)
        progress = make_progress(self.verbose)
        board = StudyBoard(self.root / self.study_name / "tensorboard", self.monitor, [o.name for o in self.objectives])
        trials = storage.trials(self.study_name)
        finished = sum(t.state.is_finished for t in trials)
        progress.start(self.study_name, self._planned, finished, storage.url, monitor=self.monitor, trials=trials)
        driver = StudyDriver(
            storage,
            self.study_name,
            self.build,
            self.executor,
            self.strategy,
            self.pruner,
            n_trials=self.n_trials,
            planned=self._planned,
            timeout=self.timeout,
            root=self.root,
            seed=self.seed,
            read_history=functools.partial(self._history, storage),
            progress=progress,
            board=board,
        )
        try:
            with sigterm_raises(), frozen_gc(), heartbeat(storage, self.study_name, driver.started):
                reason = driver.loop()
        except BaseException:
            self.executor.shutdown()  # no worker outlives a stopped search
            raise
        finally:
            board.close()
            progress.close()
            if self._owns_executor:  # an executor passed in is the caller's: it can serve another run()
                self.executor.shutdown()
        result = self.result(reason)
        if self.refit and not result.multi and result.best_trial is not None:
            result.refit()
        table = trials_table(result.trials, self.monitor, self.direction, top=10, objectives=self.build.objectives)
        progress.end(str(result), table)
        failed = no_complete_trial(result.trials, reason or "done")
        if failed is not None:
            raise SearchFailedError(failed, result)
        return result

    # --- results and ask/tell -------------------------------------------------------------------
    @property
    def trials(self) -> list[TrialRecord]:
        """Every trial of the study, as stored now (a read: ``[]`` before the study is created)."""
        storage = self.storage
        return storage.trials(self.study_name) if self.study_name in storage.study_names() else []

    def result(self, stopped_reason: str = "") -> SearchResult:
        """The study's current result (also while another process runs it)."""
        return SearchResult(
            self.study_name,
            self.monitor,
            self.direction,
            tuple(self.trials),
            stopped_reason,
            storage=self.storage,
            builder=self.build.builder,
            root=self.root,
            seed=self.seed,
            objectives=self.build.objectives,
        )

    def ask(self) -> TrialRecord:
        """Start a trial without running it: queued configurations first, then the strategy's proposal.

        Raises:
            ConfigurationError: when ``n_trials`` is reached or the strategy is exhausted.
        """
        storage = self.open()
        read = functools.partial(self._history, storage)
        recs, reason = next_trials(storage, self.study_name, self.strategy, self.n_trials, 1, read)
        if not recs:
            raise ConfigurationError(f"no trial to ask for: {reason}")
        return recs[0]

    def tell(
        self,
        number: int,
        value: float | Sequence[float] | None = None,
        *,
        state: TrialState = TrialState.COMPLETE,
        error: str | None = None,
        intermediate: Mapping[int, float | Sequence[float]] | None = None,
        metrics: Mapping[str, float] | None = None,
    ) -> TrialRecord:
        """Record the result of a trial started with :meth:`ask`.

        Args:
            number: the trial's number.
            value: its value; with several objectives, the list of every objective's value.
            state: COMPLETE (the default), PRUNED or FAILED.
            error: why it failed.
            intermediate: values per step (lists with several objectives).
            metrics: the values of the outcome constraints' metrics, which the trial is judged on.
        """
        return record_told(
            self.open(),
            self.study_name,
            number,
            told(value, len(self.objectives), "value"),
            {int(st): told(v, len(self.objectives), f"intermediate[{st}]") for st, v in (intermediate or {}).items()},
            state=state,
            error=error,
            attrs=judge(self.build.constraints, metrics or {}) if self.build.constraints else None,
            objectives=self.objectives,
        )
