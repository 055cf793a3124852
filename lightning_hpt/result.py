"""What a search found: the best trial, every trial, the best model, and its score on held-out data."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lightning_hpt.exceptions import ConfigurationError, HPTError
from lightning_hpt.lightning.builder import TrialBuilder
from lightning_hpt.lightning.quiet import quiet_lightning
from lightning_hpt.lightning.schedule import validation_schedule
from lightning_hpt.objectives import Objective
from lightning_hpt.storage import Storage, open_storage
from lightning_hpt.trial import Direction, TrialRecord, best_trial, count_states, rank_trials

__all__ = ["SearchResult"]

log = logging.getLogger(__name__)

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
        kept = {"storage": storage, "builder": builder, "root": root, "seed": info.seed, "objectives": info.objectives}
        return cls(study, info.monitor, info.direction, trials, "", **kept)

    @property
    def best_trial(self) -> TrialRecord | None:
        """The COMPLETE trial with the best finite value (lowest number on ties), or ``None``."""
        return best_trial(self.trials, self.direction)

    def _best(self) -> TrialRecord:
        best = self.best_trial
        if best is None:
            raise HPTError(f"study {self.study!r} has no COMPLETE trial yet; states: {self.counts()}")
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
        return self._extra.get("test") or self._best().attrs.get("test") if self.best_trial else None

    @property
    def refit_model(self) -> Any:
        """The model of :meth:`refit` (a search created with ``refit=True`` calls it), else ``None``."""
        return self._extra.get("refit_model")

    def counts(self) -> dict[str, int]:
        """Number of trials per state."""
        return count_states(self.trials)

    def _builder(self, what: str) -> TrialBuilder:
        if self.builder is None:
            raise ConfigurationError(
                f"{what} needs the trials' builder: use the result that the search's run() returns, or"
                " SearchResult.load(storage, study, builder=...)"
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
        import torch

        builder = self._builder("load_best_model")
        self._best()
        problems = []
        for t in (t for t in rank_trials(self.trials, self.direction) if t.scored):
            if not t.checkpoint:
                problems.append(f"trial {t.number}: no checkpoint kept")
                continue
            try:
                ckpt = torch.load(t.checkpoint, map_location=map_location, weights_only=True)
                model = builder.build_model(t.params)
                model.load_state_dict(ckpt["state_dict"])
            except Exception as e:
                problems.append(f"trial {t.number}: cannot load {t.checkpoint!r}: {type(e).__name__}: {e}")
                log.warning("%s; falling back to the next best trial", problems[-1])
                continue
            return model.eval()
        raise HPTError(
            "no COMPLETE trial has a readable checkpoint: "
            + "; ".join(problems)
            + ". Keep checkpoints with checkpoint=True, or rebuild the winner with result.refit()"
        )

    def _epochs(self, builder: TrialBuilder, best: TrialRecord) -> int:
        """Epochs that reached the best trial's best score (the mean over folds with cross-validation)."""
        runs = best.attrs.get("runs") or [{"best_step": best.best_step}]
        steps = sum((r.get("best_step") or 0) + 1 for r in runs) / len(runs)
        every, per_epoch = validation_schedule(builder.trainer_settings(best.params)) or (1, 1)
        return max(1, math.ceil(steps * every / per_epoch))

    def refit(self, max_epochs: int | None = None) -> Any:
        """Retrain the best configuration on training plus validation data and return the model.

        The DataModule must have ``cv_dataset()`` (the train+validation data; see
        :class:`~lightning_hpt.KFoldDataModule`). It trains for as many epochs as the best trial
        needed to reach its best score, unless ``max_epochs`` is given, with no validation; the
        model is saved to ``<root>/<study>/refit/model.ckpt`` and recorded in the study.
        """
        from lightning.fabric.utilities.seed import seed_everything

        from lightning_hpt.lightning.folds import full_view
        from lightning_hpt.lightning.runner import trial_seed

        builder = self._builder("refit")
        storage = self._record("refit")
        best = self._best()
        model, dm = builder.build_model(best.params), builder.build_datamodule(best.params)
        seed_everything(trial_seed(self.seed, best.number), workers=True, verbose=False)
        view = full_view(dm)
        epochs = max_epochs or self._epochs(builder, best)
        out_dir = os.path.join(os.fspath(self.root), self.study, "refit")
        path = os.path.join(out_dir, "model.ckpt")
        with quiet_lightning(True):
            trainer = builder.evaluation_trainer(
                best.params,
                max_epochs=epochs,
                logger=False,
                enable_checkpointing=False,
                num_sanity_val_steps=0,
                limit_val_batches=0,
                default_root_dir=out_dir,
            )
            trainer.fit(model, datamodule=view)
            trainer.save_checkpoint(path)
        storage.set_study_attrs(self.study, {"refit": {"trial": best.number, "epochs": epochs, "checkpoint": path}})
        self._extra["refit_model"] = model.eval()
        self._extra["refit_checkpoint"] = path
        return model

    def test(self, model: Any = None) -> dict[str, float]:
        """Run ``Trainer.test`` with the DataModule's test split and store the metrics with the best trial.

        Args:
            model: the model to test; by default the refit model if there is one, else the best
                trial's best checkpoint (:meth:`load_best_model`).

        Returns:
            The logged test metrics, e.g. ``{"test_acc": 0.97}``. A warning is logged when the
            test score is far from the validation score (the search overfit the validation set).
        """
        builder = self._builder("test")
        storage = self._record("test")
        best = self._best()
        which = (
            "given model"
            if model is not None
            else ("refit model" if self.refit_model is not None else "best checkpoint")
        )
        model = model if model is not None else (self.refit_model or self.load_best_model())
        dm = builder.build_datamodule(best.params)
        if dm is None or not callable(getattr(dm, "test_dataloader", None)):
            raise ConfigurationError("test() needs a datamodule with a test_dataloader() (the held-out test split)")
        with quiet_lightning(True):
            trainer = builder.evaluation_trainer(best.params, logger=False, enable_checkpointing=False)
            out = trainer.test(model, datamodule=dm, verbose=False)
        metrics = {k: float(v) for k, v in (out[0] if out else {}).items()}
        storage.set_trial_attrs(self.study, best.number, {"test": metrics, "tested": which})
        self._extra["test"] = metrics
        gap = self.test_gap()
        if gap is not None and gap > GAP_WARNING:
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

    def _gap_text(self) -> str:
        name, test = self._test_twin()  # type: ignore[misc]
        return (
            f"warning: {self.monitor}={self.best_value:.4g} but {name}={test:.4g} ({100 * self.test_gap():.1f}% apart):"
            " the search may have overfit the validation set; consider cross-validation (cv=5) or more data"
        )

    def to_dataframe(self) -> Any:
        """One row per trial: number, state, value, duration, params (``params.<name>``), error. Needs pandas."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("to_dataframe needs pandas: pip install 'lightning-hpt[pandas]'") from None
        rows = []
        for t in self.trials:
            row = {
                "number": t.number,
                "state": t.state.value,
                "value": t.value,
                "best_step": t.best_step,
                "steps": len(t.intermediate),
                "duration_s": t.duration,
            }
            row.update({f"params.{k}": v for k, v in t.params.items()})
            row["error"] = t.error
            rows.append(row)
        return pd.DataFrame(rows)

    def __str__(self) -> str:
        counts = ", ".join(f"{n} {s.lower()}" for s, n in self.counts().items())
        lines = [f"Study {self.study!r}: {len(self.trials)} trials ({counts}); {self.stopped_reason}".rstrip("; ")]
        best = self.best_trial
        if best is None:
            lines.append("No COMPLETE trial.")
            return "\n".join(lines)
        spread = (
            f" (mean of {len(best.attrs['runs'])} runs, std {best.attrs['std']:.3g})" if "std" in best.attrs else ""
        )
        lines.append(f"Best trial #{best.number}: {self.monitor}={best.value:.6g}{spread} at step {best.best_step}")
        lines += [f"  {k} = {v!r}" for k, v in best.params.items()]
        if best.checkpoint:
            lines.append(f"  checkpoint: {best.checkpoint}")
        twin = self._test_twin()
        if twin is not None:
            lines.append(f"  validation {self.monitor}={best.value:.4g} | test {twin[0]}={twin[1]:.4g}")
            if (self.test_gap() or 0) > GAP_WARNING:
                lines.append("  " + self._gap_text())
        elif self.test_metrics:
            lines.append("  test: " + ", ".join(f"{k}={v:.4g}" for k, v in self.test_metrics.items()))
        return "\n".join(lines)
