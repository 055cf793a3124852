"""What a search found: the best trial, every trial, the best model, and its score on held-out data."""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lightning_hpt.checks import check_int
from lightning_hpt.exceptions import ConfigurationError, HPTError
from lightning_hpt.lightning.builder import TrialBuilder
from lightning_hpt.lightning.loading import load_first
from lightning_hpt.lightning.quiet import quiet_lightning
from lightning_hpt.lightning.refit import load_refit, train_refit
from lightning_hpt.lightning.schedule import validation_schedule
from lightning_hpt.masking import get_logger
from lightning_hpt.objectives import Objective
from lightning_hpt.storage import Storage, open_storage
from lightning_hpt.trial import Direction, TrialRecord, TrialState, best_trial, count_states, rank_trials

__all__ = ["SearchResult"]

log = get_logger(__name__)

#: relative gap between validation and test score above which the summary warns of overfitting the search.
GAP_WARNING = 0.05


@dataclass(frozen=True)
class SearchResult:
    """What a search found, as its ``run()`` returns it or as :meth:`load` reads it back from storage.

    Attributes:
        study: the study's name.
        monitor: the metric that was optimized.
        direction: minimized or maximized.
        trials: every trial of the study (not only this run's), by number.
        stopped_reason: why the search ended ("n_trials reached", "grid strategy exhausted", "timeout", ...).
        storage: where the study lives (:meth:`refit` and :meth:`test` record what they did there).
        builder: how the study's trials were built (:meth:`load_best_model`, :meth:`refit`, :meth:`test` need it).
        root: the directory of the study's files (``<root>/<study>/``; :meth:`refit` saves its model there).
        seed: the study's seed (:meth:`refit` seeds as the best trial did).
        objectives: with several objectives, all of them (``monitor`` and ``direction`` are the
            first's); ``()`` with one. See :attr:`pareto_trials`.

    Example:
        >>> result = SearchResult.load("runs/studies.db", "mnist", builder=builder, root="runs")  # doctest: +SKIP
        >>> model = result.load_best_model()  # doctest: +SKIP
    """

    study: str
    monitor: str
    direction: Direction
    trials: Sequence[TrialRecord]
    stopped_reason: str = ""
    storage: Storage | None = None
    builder: TrialBuilder | None = None
    root: str | os.PathLike | None = None
    seed: int | None = None
    _extra: dict[str, Any] = field(default_factory=dict)
    objectives: tuple[Objective, ...] = ()

    @classmethod
    def load(
        cls,
        storage: Storage | str | os.PathLike,
        study: str,
        *,
        builder: TrialBuilder | None = None,
        root: str | os.PathLike | None = None,
    ) -> SearchResult:
        """The result of a stored study, read back (another process may be running it).

        Args:
            storage: the study's storage, or its URL or ``.db`` path.
            study: the study's name.
            builder: how its trials were built; without it the result reads but cannot rebuild models.
            root: the directory of the study's files, for :meth:`refit`.
        """
        storage = open_storage(storage)
        info = storage.load_study(study)
        trials = tuple(storage.trials(study))
        if builder is None and any("script_group" in t.attrs for t in trials):  # a ScriptSearch's: refusals say so
            builder = importlib.import_module("lightning_hpt.script").ScriptBuilder()  # lazy: script imports this
        kept = {"storage": storage, "builder": builder, "root": root, "seed": info.seed, "objectives": info.objectives}
        return cls(study, info.monitor, info.direction, trials, "", **kept)

    @property
    def multi(self) -> bool:
        """Whether the study has several objectives (then it has a Pareto front, not one best trial)."""
        return len(self.objectives) > 1

    @property
    def pareto_trials(self) -> list[TrialRecord]:
        """The Pareto front: the COMPLETE, feasible trials that no other one beats in every objective, best first
        by the first objective; each has its ``params``, ``values`` and ``checkpoint``. With one objective:
        the best trial (``[]`` without one)."""
        if not self.multi:
            best = self.best_trial
            return [] if best is None else [best]
        from lightning_hpt.pareto import pareto_front

        return pareto_front(self.trials, self.objectives)

    @property
    def best_trial(self) -> TrialRecord | None:
        """The COMPLETE trial with the best finite value (lowest number on ties), or ``None``.

        A study with several objectives has no single best trial: this raises an error that says how to
        choose one (:meth:`best` with ``weights=`` or ``rule=``, or a trial of :attr:`pareto_trials`).
        """
        if self.multi:
            raise HPTError(self._which_point())
        return best_trial(self.trials, self.direction)

    def best(
        self,
        weights: Mapping[str, float] | Sequence[float] | None = None,
        rule: Callable[[TrialRecord], Any] | None = None,
    ) -> TrialRecord:
        """The best trial; with several objectives, the trial of the Pareto front that ``weights`` or ``rule`` prefers.

        Args:
            weights: one weight >= 0 per objective (``{"val_acc": 1.0, "n_params": 0.5}`` or a list): each
                objective is scaled over the front to [0, 1] (its worst to its best value there), and
                the trial with the largest weighted sum is chosen.
            rule: a function ``trial -> score`` (larger is better), e.g.
                ``lambda t: t.values[0] if t.values[1] < 1e6 else -inf``; applied to the front.

        Raises:
            HPTError: the study has no COMPLETE feasible trial yet.
            ConfigurationError: several objectives and neither (or both) of ``weights`` and ``rule``.
        """
        if not self.multi:
            return self._best()
        from lightning_hpt.pareto import choose

        front = self.pareto_trials
        if not front:
            raise HPTError(f"study {self.study!r} has no COMPLETE feasible trial yet; states: {self.counts()}")
        return choose(front, self.objectives, weights, rule)

    def _which_point(self) -> str:
        from lightning_hpt.objectives import describe

        front = [t.number for t in self.pareto_trials]
        example = ", ".join(f"{o.name!r}: 1.0" for o in self.objectives)
        return (
            f"study {self.study!r} has {len(self.objectives)} objectives ({describe(self.objectives)}), so no single"
            f" best trial: choose one with result.best(weights={{{example}}}) or result.best(rule=...), or take a"
            f" trial of result.pareto_trials (now trials {front}); then use result.load_model(trial),"
            " result.refit(trial=trial) or result.test(trial=trial)"
        )

    def _best(self, trial: TrialRecord | int | None = None) -> TrialRecord:
        """``trial`` (a record or a trial number) if given (it must be scored), else the best trial."""
        if trial is not None:
            number = trial if isinstance(trial, int) and not isinstance(trial, bool) else None
            found = trial if number is None else next((t for t in self.trials if t.number == number), None)
            if not isinstance(found, TrialRecord) or not found.scored:
                why = (
                    f"got {trial!r}"
                    if number is None and not isinstance(trial, TrialRecord)
                    else unscored(self, found, found.number if found is not None else number)
                )
                front = f" (trials {[t.number for t in self.pareto_trials]})" if self.multi else ""
                raise ConfigurationError(
                    f"trial must be a COMPLETE, feasible trial of this study, a TrialRecord or its number: {why};"
                    f" take one of result.pareto_trials{front} or of result.trials that is COMPLETE and feasible"
                )
            return found
        best = self.best_trial
        if best is None:
            broke = any(t.state.value == "COMPLETE" and not t.feasible for t in self.trials)
            what = "COMPLETE feasible trial (every COMPLETE one broke a constraint)" if broke else "COMPLETE trial"
            raise HPTError(f"study {self.study!r} has no {what} yet; states: {self.counts()}")
        return best

    @property
    def best_params(self) -> Mapping[str, Any]:
        return self._best().params

    @property
    def best_value(self) -> float:
        return self._best().value

    @property
    def best_checkpoint(self) -> str | None:
        """The best trial's best-epoch checkpoint (with cross-validation: the best fold's)."""
        return self._best().checkpoint

    @property
    def test_metrics(self) -> Mapping[str, float] | None:
        """The metrics of the last :meth:`test`, or those stored with the best trial."""
        if self.multi:
            return self._extra.get("test")
        return self._extra.get("test") or self._best().attrs.get("test") if self.best_trial else None

    @property
    def refit_model(self) -> Any:
        """The model of :meth:`refit` (a search created with ``refit=True`` calls it), else ``None``.

        A result read back later (:meth:`load`, or a search's ``result()``) loads the study's recorded
        refit from its file, when it can rebuild models and the file is there.
        """
        if "refit_model" not in self._extra:
            done = self._refit_done()
            trial = None if done is None else next((t for t in self.trials if t.number == done[0]), None)
            self._extra["refit_model"] = None if trial is None else load_refit(self.builder, trial, done[2])
        return self._extra["refit_model"]

    def _refit_done(self) -> tuple[int, int, str] | None:
        """The study's refit as ``(trial, epochs, checkpoint)``: this result's, or the one recorded in the study."""
        if "refit" not in self._extra:
            stored = None
            if self.storage is not None and self.study in self.storage.study_names():
                stored = self.storage.load_study(self.study).attrs.get("refit")
            ok = isinstance(stored, Mapping) and {"trial", "epochs", "checkpoint"} <= set(stored)
            self._extra["refit"] = (stored["trial"], stored["epochs"], stored["checkpoint"]) if ok else None
        return self._extra["refit"]

    def counts(self) -> dict[str, int]:
        """Number of trials per state."""
        return count_states(self.trials)

    def _builder(self, what: str) -> TrialBuilder:
        if self.builder is None:
            raise ConfigurationError(
                f"{what} needs the trials' builder: use the result that the search's run() returns; in a later"
                " session, make the same HyperparameterSearch(...) (same model, datamodule, root and study_name)"
                " and call its result(), which reads the study without running a trial; for a CLI study,"
                " SearchResult.load(storage, study, builder=CLITrialBuilder(...))"
            )
        return self.builder

    def _record(self, what: str) -> Storage:
        if self.storage is None or self.root is None:
            raise ConfigurationError(
                f"{what} needs the study's storage and root directory: use the result that the search's run() returns,"
                " or SearchResult.load(storage, study, builder=..., root=...)"
            )
        return self.storage

    def load_best_model(self, map_location: str = "cpu") -> Any:
        """Rebuild the best trial's model from its configuration and load its best checkpoint.

        The checkpoint is read with ``torch.load(weights_only=True)``: checkpoints are pickles, and
        nothing but tensors and plain data is ever unpickled. If the best trial's checkpoint is
        missing or unreadable (a truncated file, say), the next best trial's is used, with a warning.
        """
        builder = self._builder("load_best_model")
        self._best()
        return self._load((t for t in rank_trials(self.trials, self.direction) if t.scored), builder, map_location)

    def load_model(self, trial: TrialRecord | int, map_location: str = "cpu") -> Any:
        """Rebuild ``trial``'s model (one of :attr:`pareto_trials`, say, or its number) and load its best checkpoint.

        The checkpoint is read with ``torch.load(weights_only=True)``, as :meth:`load_best_model` reads it.
        """
        return self._load([self._best(trial)], self._builder("load_model"), map_location)

    def _load(self, candidates: Any, builder: TrialBuilder, map_location: str) -> Any:
        return load_first(candidates, builder, map_location)

    def _epochs(self, builder: TrialBuilder, best: TrialRecord) -> int:
        """Epochs that reached the best trial's best score (the mean over folds with cross-validation)."""
        runs = best.attrs.get("runs") or [{"best_step": best.best_step}]
        steps = sum((r.get("best_step") or 0) + 1 for r in runs) / len(runs)
        every, per_epoch = validation_schedule(builder.trainer_settings(best.params)) or (1, 1)
        return max(1, math.ceil(steps * every / per_epoch))

    def refit(self, max_epochs: int | None = None, trial: TrialRecord | int | None = None) -> Any:
        """Retrain the best configuration on training plus validation data and return the model.

        The DataModule must have ``cv_dataset()`` (the train+validation data; see
        :class:`~lightning_hpt.KFoldDataModule`). It trains for as many epochs as the best trial
        needed to reach its best score, unless ``max_epochs`` (an integer >= 1) is given, with no validation; the
        model is saved to ``<root>/<study>/refit/model.ckpt`` and recorded in the study. ``trial``:
        retrain that trial's configuration instead (one of :attr:`pareto_trials` with several objectives).
        """
        from lightning_hpt.lightning.runner import trial_seed

        if max_epochs is not None:  # 0 would save an untrained model, -1 (Lightning's "no limit") never end
            check_int(
                "refit",
                "max_epochs",
                max_epochs,
                1,
                "give max_epochs=None to train as many epochs as the best trial needed",
            )
        builder = self._builder("refit")
        best = self._best(trial)
        model, dm = builder.build_model(best.params), builder.build_datamodule(best.params)
        storage = self._record("refit")
        epochs = max_epochs or self._epochs(builder, best)
        path = os.path.join(os.fspath(self.root), self.study, "refit", "model.ckpt")
        train_refit(builder, best, model, dm, trial_seed(self.seed, best.number), epochs, path)
        storage.set_study_attrs(self.study, {"refit": {"trial": best.number, "epochs": epochs, "checkpoint": path}})
        self._extra["refit_model"] = model.eval()
        self._extra["refit"] = (best.number, epochs, path)
        return model

    def test(self, model: Any = None, trial: TrialRecord | int | None = None) -> dict[str, float]:
        """Run ``Trainer.test`` with the DataModule's test split and store the metrics with the best trial.

        Args:
            model: the model to test; by default the trial's refit model if there is one (also one
                recorded by an earlier session), else the best
                trial's best checkpoint (:meth:`load_best_model`).
            trial: the trial the metrics are stored with, and whose checkpoint is tested without a
                model (one of :attr:`pareto_trials` with several objectives); default: the best trial.

        Returns:
            The logged test metrics, e.g. ``{"test_acc": 0.97}``. A warning is logged when the
            test score is far from the validation score (the search overfit the validation set).
        """
        builder = self._builder("test")
        best = self._best(trial)
        dm = builder.build_datamodule(best.params)  # before the storage: a builder that cannot test says so first
        storage = self._record("test")
        done = self._refit_done()
        refit = self.refit_model if done is not None and done[0] == best.number else None  # of this trial only
        which = "given model" if model is not None else ("refit model" if refit is not None else "best checkpoint")
        if model is None:
            model = refit or (self.load_model(best) if trial is not None else self.load_best_model())
        if dm is None or not callable(getattr(dm, "test_dataloader", None)):
            raise ConfigurationError("test() needs a datamodule with a test_dataloader() (the held-out test split)")
        with quiet_lightning(True):
            trainer = builder.evaluation_trainer(best.params, logger=False, enable_checkpointing=False)
            out = trainer.test(model, datamodule=dm, verbose=False)
        metrics = {k: float(v) for k, v in (out[0] if out else {}).items()}
        storage.set_trial_attrs(self.study, best.number, {"test": metrics, "tested": which})
        self._extra["test"], self._extra["tested"] = metrics, which
        if not self.multi and self._overfit():
            log.warning("%s", self._gap_text())
        return metrics

    def _test_twin(self) -> tuple[str, float] | None:
        metrics = self.test_metrics or {}
        name = self.monitor.replace("val", "test", 1) if "val" in self.monitor else f"test_{self.monitor}"
        return (name, metrics[name]) if name in metrics else None

    def test_gap(self) -> float | None:
        """Relative gap ``|validation - test| / |validation|`` of the monitored metric, if tested."""
        twin = self._test_twin()
        if twin is None:
            return None
        val = self._best().value
        return abs(val - twin[1]) / max(abs(val), 1e-12)

    def _overfit(self) -> bool:
        """Whether the test value is worse than the validation value by more than ``GAP_WARNING`` (relative);
        a test value *better* than validation is no sign of overfitting the validation set."""
        twin = self._test_twin()
        gap = self.test_gap()
        return (
            twin is not None
            and gap is not None
            and gap > GAP_WARNING
            and self.direction.better(self.best_value, twin[1])
        )

    def _gap_text(self) -> str:
        name, test = self._test_twin()  # type: ignore[misc]
        return (
            f"warning: {self.monitor}={self.best_value:.4g} but {name}={test:.4g} ({100 * self.test_gap():.1f}% apart):"
            " the search may have overfit the validation set; consider cross-validation (cv=5) or more data"
        )

    def _front_lines(self) -> list[str]:
        front = self.pareto_trials
        if not front:
            return ["No COMPLETE feasible trial."]
        names = ", ".join(o.name for o in self.objectives)
        lines = [f"Pareto front ({len(front)} trials) of {names}:"]
        for t in front:
            values = ", ".join(f"{o.name}={v:.6g}" for o, v in zip(self.objectives, t.values or (), strict=False))
            lines.append(f"  #{t.number}: {values}  {dict(t.params)}")
        lines.append(
            "Choose one with result.best(weights={...}) or result.best(rule=...) in Python, or"
            f" lightning-hpt best {self.study} --weights NAME=W,... (or --trial N) on the command line."
        )
        return lines

    def to_dataframe(self) -> Any:
        """One row per trial: number, state, value, duration, params (``params.<name>``), error. Needs pandas.

        With several objectives, ``values.<name>`` per objective and ``pareto`` (on the front); with outcome
        constraints, ``feasible``.
        """
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("to_dataframe needs pandas: pip install 'lightning-hpt[pandas]'") from None
        rows = []
        front = {t.number for t in self.pareto_trials} if self.multi else set()
        for t in self.trials:
            row = {
                "number": t.number,
                "state": t.state.value,
                "value": t.value,
                "best_step": t.best_step,
                "steps": len(t.intermediate),
                "duration_s": t.duration,
            }
            if self.multi:
                row.update({f"values.{o.name}": v for o, v in zip(self.objectives, t.values or (), strict=False)})
                row["pareto"] = t.number in front
            if not t.feasible or "infeasible" in t.attrs:
                row["feasible"] = t.feasible
            row.update({f"params.{k}": v for k, v in t.params.items()})
            row["error"] = t.error
            rows.append(row)
        return pd.DataFrame(rows)

    def __repr__(self) -> str:
        """One line (the dataclass's own repr would print every trial): ``print(result)`` gives the summary."""
        counts = ", ".join(f"{n} {s.lower()}" for s, n in self.counts().items())
        return f"SearchResult(study={self.study!r}, monitor={self.monitor!r}, {len(self.trials)} trials: {counts})"

    def held_out_lines(self) -> list[str]:
        """The refit and the test score of the best trial, as the summary and ``lightning-hpt show`` print them."""
        lines = []
        done = self._refit_done()
        if done is not None:
            number, epochs, path = done
            lines.append(f"refit of trial #{number} on train+validation, {epochs} epoch{'s' * (epochs != 1)}: {path}")
        best = self._best()
        twin, tested = self._test_twin(), self._extra.get("tested") or best.attrs.get("tested")
        if twin is not None:
            on = f" ({tested})" if tested else ""
            lines.append(f"validation {self.monitor}={best.value:.4g} | test {twin[0]}={twin[1]:.4g}{on}")
            if self._overfit():
                lines.append(self._gap_text())
        elif self.test_metrics:
            lines.append("test: " + ", ".join(f"{k}={v:.4g}" for k, v in self.test_metrics.items()))
        return lines

    def __str__(self) -> str:
        counts = ", ".join(f"{n} {s.lower()}" for s, n in self.counts().items())
        many = f"{len(self.trials)} trial{'' if len(self.trials) == 1 else 's'}"
        lines = [f"Study {self.study!r}: {many} ({counts}); {self.stopped_reason}".rstrip("; ")]
        infeasible = sum(t.state is TrialState.COMPLETE and not t.feasible for t in self.trials)
        if infeasible:
            lines.append(f"{infeasible} COMPLETE trial{'s' if infeasible > 1 else ''} broke a constraint (infeasible).")
        if self.multi:
            return "\n".join(lines + self._front_lines())
        best = self.best_trial
        if best is None:
            lines.append("No COMPLETE feasible trial." if infeasible else "No COMPLETE trial.")
            return "\n".join(lines)
        lines.append(
            f"Best trial #{best.number}: {self.monitor}={best.value:.6g}{spread(best)} at step {best.best_step}"
        )
        lines += [f"  {k} = {v!r}" for k, v in best.params.items()]
        if best.checkpoint:
            lines.append(f"  checkpoint: {best.checkpoint}")
        lines += [f"  {line}" for line in self.held_out_lines()]
        return "\n".join(lines)


def spread(trial: TrialRecord) -> str:
    """`` (mean of 3 runs, std 0.012)`` for a trial scored over folds or repeats, else ``""``."""
    return f" (mean of {len(trial.attrs['runs'])} runs, std {trial.attrs['std']:.3g})" if "std" in trial.attrs else ""


def unscored(result: Any, trial: TrialRecord | None, number: int) -> str:
    """Why trial ``number`` of ``result`` counts for no best: absent, not COMPLETE, infeasible or not finite."""
    if trial is None:
        return f"study {result.study!r} has no trial {number} (it has {len(result.trials)})"
    if trial.state is not TrialState.COMPLETE:
        return f"trial {number} of study {result.study!r} is {trial.state.value}"
    if not trial.feasible:
        broken = trial.attrs.get("infeasible")
        why = f" ({'; '.join(broken)})" if isinstance(broken, list) and broken else ""
        return f"trial {number} of study {result.study!r} is COMPLETE but infeasible{why}"
    return f"trial {number} of study {result.study!r} is COMPLETE without finite values ({trial.objective_values})"
