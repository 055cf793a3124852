"""Guards against overfitting the search: cross-validation, repeated seeds, held-out test, refit."""

from __future__ import annotations

import io
import logging
import os
import re
import statistics

import pytest
import torch
from conftest import TinyData, TinyModel
from test_objectives import SizedModel, make
from torch.utils.data import TensorDataset

from lightning_hpt import ConfigurationError, Float, HyperparameterSearch, Int, TrialState
from lightning_hpt.cli.main import main
from lightning_hpt.lightning.folds import CrossValidation, KFoldDataModule, fold_view
from lightning_hpt.lightning.module_builder import ModuleTrialBuilder
from lightning_hpt.lightning.resume import Resume
from lightning_hpt.lightning.runner import TrialBuild, TrialJob, run_trial, trial_seed
from lightning_hpt.pruners import MedianPruner
from lightning_hpt.trial import Direction

SPACE = {"model.lr": Float(0.01, 0.2, log=True), "model.hidden": Int(4, 16)}


def test_splits_partition_the_data():
    for train, val in CrossValidation(k=4, seed=1).splits(22):
        assert not set(train) & set(val) and sorted(train + val) == list(range(22))
    vals = [v for _, v in CrossValidation(k=4, seed=1).splits(22)]
    assert sorted(i for v in vals for i in v) == list(range(22))
    assert CrossValidation(k=4, seed=1).splits(22) == CrossValidation(k=4, seed=1).splits(22)
    assert CrossValidation(k=4, seed=1).splits(22) != CrossValidation(k=4, seed=2).splits(22)


def test_stratified_folds_keep_class_shares():
    targets = [0] * 30 + [1] * 10
    for _, val in CrossValidation(k=5, stratify=True).splits(40, targets):
        assert sum(targets[i] for i in val) == 2 and len(val) == 8


@pytest.mark.parametrize(
    ("cv", "match"), [(1, "k must be an integer >= 2"), ("5", "cv must be None, a number of folds")]
)
def test_bad_cv(cv, match):
    with pytest.raises(ConfigurationError, match=match):
        CrossValidation.parse(cv)


def test_cross_validated_trials_score_the_mean(tmp_path, fast_trainer):
    result = HyperparameterSearch(
        TinyModel, TinyData, SPACE, root=tmp_path, n_trials=2, cv=3, seed=0, trainer_kwargs=fast_trainer, verbose=False
    ).run()
    for t in result.trials:
        runs = t.attrs["runs"]
        assert [r["fold"] for r in runs] == [0, 1, 2] and t.state is TrialState.COMPLETE
        assert t.value == pytest.approx(statistics.fmean(r["value"] for r in runs))
        assert t.attrs["std"] == pytest.approx(statistics.stdev(r["value"] for r in runs))
        assert sorted(t.intermediate) == list(range(6))  # 3 folds x 2 epochs, steps continue
        assert t.intermediate[5] == pytest.approx(t.value)  # the last report is the mean over folds
        assert all(os.path.isdir(tmp_path / "default" / f"trial_{t.number}" / f"fold_{f}") for f in range(3))
    assert "mean of 3 runs" in str(result)


def test_folds_differ_and_repeats_use_different_seeds(tmp_path, fast_trainer):
    result = HyperparameterSearch(
        TinyModel,
        TinyData,
        SPACE,
        root=tmp_path,
        n_trials=1,
        repeats=3,
        seed=0,
        trainer_kwargs=fast_trainer,
        verbose=False,
    ).run()
    values = [r["value"] for r in result.trials[0].attrs["runs"]]
    assert len(values) == 3 and len(set(values)) == 3
    assert result.trials[0].value == pytest.approx(statistics.fmean(values))


@pytest.mark.parametrize("monitor", ["val_loss", ["val_loss", "n_params"]])
def test_pruning_acts_on_the_running_mean(tmp_path, fast_trainer, monitor):
    def factory(cfg):
        return SizedModel(val_schedule=[5.0] if cfg["model"]["hidden"] == 16 else [0.1], **cfg["model"])

    search = HyperparameterSearch(
        factory,
        TinyData,
        {"model.hidden": Int(4, 16, step=12)},
        strategy="grid",
        root=tmp_path,
        cv=3,
        monitor=monitor,
        mode="min" if isinstance(monitor, str) else ["min", "min"],
        pruner=MedianPruner(n_startup_trials=1),
        trainer_kwargs=fast_trainer,
        verbose=False,
    )
    good, bad = search.run().trials
    assert good.state is TrialState.COMPLETE and bad.state is TrialState.PRUNED
    assert len(bad.attrs["runs"]) == 1 and len(bad.intermediate) < len(good.intermediate)
    if isinstance(monitor, list):  # a pruned trial's values are its running means at its best step, as its value
        assert bad.values == bad.intermediate_values[bad.best_step] == (5.0, 6 * 16 + 1)


def _tested_search(tmp_path, fast_trainer, test_penalty: float, n_trials: int):
    """A search of models whose test loss is off by ``test_penalty`` from what they would score."""
    return HyperparameterSearch(
        lambda cfg: TinyModel(test_penalty=test_penalty, **cfg["model"]),
        TinyData,
        SPACE,
        root=tmp_path,
        n_trials=n_trials,
        trainer_kwargs=fast_trainer,
        verbose=False,
    ).run()


def test_a_test_value_better_than_validation_is_no_overfitting_warning(tmp_path, fast_trainer, caplog):
    result = _tested_search(tmp_path, fast_trainer, test_penalty=-100.0, n_trials=1)
    with caplog.at_level(logging.WARNING):
        metrics = result.test()
    assert metrics["test_loss"] < result.best_value and result.test_gap() > 0.5  # far apart, but better
    assert "overfit" not in caplog.text and "overfit" not in str(result)


def test_held_out_test_and_overfit_warning(tmp_path, fast_trainer, caplog):
    result = _tested_search(tmp_path, fast_trainer, test_penalty=100.0, n_trials=2)
    with caplog.at_level(logging.WARNING):
        metrics = result.test()
    assert set(metrics) == {"test_loss"} and metrics["test_loss"] > 100
    assert "overfit the validation set" in caplog.text and "overfit the validation set" in str(result)
    assert f"test test_loss={metrics['test_loss']:.4g} (best checkpoint)" in str(result)
    assert "refit" not in str(result)
    stored = next(
        t
        for t in HyperparameterSearch(TinyModel, TinyData, SPACE, root=tmp_path, n_trials=2).trials
        if t.number == result.best_trial.number
    )
    assert stored.attrs["test"] == metrics and stored.attrs["tested"] == "best checkpoint"


def test_refit_on_train_plus_validation(tmp_path, fast_trainer):
    seen = []

    class Counting(TinyModel):
        def on_train_epoch_start(self):
            seen.append(sum(len(b[0]) for b in self.trainer.train_dataloader))

    result = HyperparameterSearch(
        Counting, TinyData, SPACE, root=tmp_path, n_trials=1, refit=True, trainer_kwargs=fast_trainer, verbose=False
    ).run()
    assert seen[:2] == [64, 64] and seen[-1] == 96  # trials train on 64 items; the refit on all 96
    assert isinstance(result.refit_model, Counting)
    assert os.path.exists(tmp_path / "default" / "refit" / "model.ckpt")
    assert result.test()["test_loss"] >= 0 and result.test_metrics is not None
    # the summary says that a refit model exists, where, and that the test score is that model's
    summary = str(result)
    best = result.best_trial
    epochs = best.best_step + 1
    assert f"refit of trial #{best.number} on train+validation, {epochs} epoch{'s' * (epochs != 1)}: " in summary
    assert str(tmp_path / "default" / "refit" / "model.ckpt") in summary
    assert f"test test_loss={result.test_metrics['test_loss']:.4g} (refit model)" in summary


def test_a_later_sessions_result_has_the_studys_refit_and_tests_that_model(tmp_path, fast_trainer):
    """Read back later, the study's refit is in the summary, loaded as refit_model, and what test() tests."""
    kw = {"root": tmp_path, "n_trials": 2, "trainer_kwargs": fast_trainer, "verbose": False}
    HyperparameterSearch(TinyModel, TinyData, SPACE, refit=True, **kw).run()
    later = HyperparameterSearch(TinyModel, TinyData, SPACE, **kw).result()  # another session: nothing runs
    best = later.best_trial
    assert f"refit of trial #{best.number} on train+validation" in str(later)
    saved = torch.load(tmp_path / "default" / "refit" / "model.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(v, later.refit_model.state_dict()[k]) for k, v in saved.items())
    later.test()
    other = next(t for t in later.trials if t.number != best.number)
    later.test(trial=other.number)  # the refit is of the best trial: another trial's test is of its checkpoint
    tested = {t.number: t.attrs["tested"] for t in HyperparameterSearch(TinyModel, TinyData, SPACE, **kw).trials}
    assert tested == {best.number: "refit model", other.number: "best checkpoint"}
    out = io.StringIO()  # lightning-hpt show: the best trial's refit and test score too
    assert main(["show", "--root", str(tmp_path)], stdout=out, stderr=io.StringIO()) == 0
    shown = out.getvalue()
    assert f"refit of trial #{best.number} on train+validation" in shown
    assert re.search(r"validation val_loss=\S+ \| test test_loss=\S+ \(refit model\)", shown), shown


def test_refit_and_test_keep_working_with_the_projects_checkpoint_and_early_stopping(tmp_path, fast_trainer):
    """A project's ModelCheckpoint and EarlyStopping in trainer_kwargs (as the README recommends) do not break them."""
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    callbacks = [ModelCheckpoint(monitor="val_loss"), EarlyStopping(monitor="val_loss", patience=3)]
    result = HyperparameterSearch(
        TinyModel,
        TinyData,
        SPACE,
        root=tmp_path,
        n_trials=2,
        trainer_kwargs={**fast_trainer, "callbacks": callbacks},
        verbose=False,
    ).run()
    assert result.test()["test_loss"] >= 0
    assert isinstance(result.refit(max_epochs=1), TinyModel)
    assert result.test()["test_loss"] >= 0  # the refit model


@pytest.mark.parametrize("epochs", [0, -1, 2.5, True, "3"])
def test_refit_refuses_a_bad_max_epochs_before_training_or_recording(tmp_path, fast_trainer, epochs):
    """0 would save an untrained model as the refit, -1 train forever (no validation stops it), 2.5 a bare assert."""
    result = HyperparameterSearch(
        TinyModel, TinyData, SPACE, root=tmp_path, n_trials=1, trainer_kwargs=fast_trainer, verbose=False
    ).run()
    with pytest.raises(ConfigurationError, match=r"refit: max_epochs must be an integer >= 1, got max_epochs=.*; "):
        result.refit(max_epochs=epochs)
    assert not (tmp_path / "default" / "refit").exists() and result.refit_model is None
    assert "refit" not in result.storage.load_study("default").attrs


def test_an_iterable_cv_dataset_is_refused_with_the_rule_and_the_fix(tmp_path, fast_trainer):
    """Folds and refit index the items: a streaming dataset failed with a bare "has no len()" TypeError."""

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter([])

    class Streaming(TinyData):
        def cv_dataset(self):
            return Stream()

    rule = r"cv_dataset\(\) must return a map-style dataset \(with __len__ and __getitem__\), got Stream"
    with pytest.raises(ConfigurationError, match=rule + r".*TensorDataset"):
        fold_view(Streaming(), 0, CrossValidation(k=3))
    result = HyperparameterSearch(
        TinyModel, Streaming, SPACE, root=tmp_path, n_trials=1, trainer_kwargs=fast_trainer, verbose=False
    ).run()
    with pytest.raises(ConfigurationError, match=rule):
        result.refit()


def test_refit_needs_cv_dataset(tmp_path, fast_trainer):
    class NoCV(TinyData):
        cv_dataset = None

    result = HyperparameterSearch(
        TinyModel, NoCV, SPACE, root=tmp_path, n_trials=1, trainer_kwargs=fast_trainer, verbose=False
    ).run()
    with pytest.raises(ConfigurationError, match="refit needs a DataModule with a cv_dataset"):
        result.refit()
    # asked for up front, a class or an instance without cv_dataset() is refused before any trial
    for data in (NoCV, NoCV()):
        for kwargs, what in (({"refit": True}, "refit=True"), ({"cv": 3}, "cv=...")):
            with pytest.raises(ConfigurationError, match=rf"{re.escape(what)} needs a DataModule .* \(got NoCV\)"):
                HyperparameterSearch(
                    TinyModel, data, SPACE, root=tmp_path / "up_front", n_trials=1, verbose=False, **kwargs
                )
    assert not (tmp_path / "up_front").exists()


def test_kfold_datamodule_wraps_any_dataset(tmp_path, fast_trainer):
    x = torch.randn(60, 4)
    ds = TensorDataset(x, x.sum(1, keepdim=True))

    def data(cfg):
        return KFoldDataModule(ds, test_dataset=ds, **cfg["data"])

    result = HyperparameterSearch(
        TinyModel,
        data,
        {"data.batch_size": Int(8, 16, step=8)},
        strategy="grid",
        cv=2,
        root=tmp_path,
        trainer_kwargs=fast_trainer,
        verbose=False,
    ).run()
    assert [t.state for t in result.trials] == [TrialState.COMPLETE] * 2
    assert result.test()["test_loss"] >= 0


class FoldMetrics(SizedModel):
    """Logs, next to the validation loss, a second metric that differs from fold to fold and one that differs
    from repeat to repeat: the seed its run was built with (``seed_everything`` sets it before the model)."""

    def __init__(self, interrupt_fold_1: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.interrupt_fold_1, self.seed = interrupt_fold_1, float(torch.initial_seed() % 1000)

    def on_fit_start(self):
        FITS.append(os.path.basename(self.trainer.default_root_dir))

    def training_step(self, batch, batch_idx):
        if self.interrupt_fold_1 and self.current_epoch >= 1 and self.trainer.default_root_dir.endswith("fold_1"):
            raise KeyboardInterrupt
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        super().validation_step(batch, batch_idx)
        x, y = batch
        self.log("val_mae", torch.nn.functional.l1_loss(self(x), y))
        self.log("seed", self.seed)


FITS: list[str] = []


def _fold_scores(root, number: int, params, k: int) -> list[tuple[float, float]]:
    """``(val_loss, val_mae)`` of each fold's kept best checkpoint on that fold's validation data, computed here."""
    scores = []
    for fold in range(k):
        model = FoldMetrics(lr=params["model.lr"], hidden=params["model.hidden"])
        ckpt = torch.load(root / "default" / f"trial_{number}" / f"fold_{fold}" / "checkpoints" / "best.ckpt")
        model.load_state_dict(ckpt["state_dict"])
        batches = list(fold_view(TinyData(), fold, CrossValidation(k=k)).val_dataloader())
        x, y = (torch.cat(b) for b in zip(*batches, strict=True))  # an epoch logs the mean over items
        with torch.no_grad():
            out = model(x)
        scores.append((float(torch.nn.functional.mse_loss(out, y)), float(torch.nn.functional.l1_loss(out, y))))
    return scores


def test_cv_with_two_objectives_scores_each_by_its_mean_over_folds(tmp_path, fast_trainer):
    result = make(
        tmp_path, fast_trainer, model=FoldMetrics, monitor=["val_loss", "val_mae"], n_trials=2, cv=3, patience=None
    ).run()
    for t in result.trials:
        assert t.state is TrialState.COMPLETE
        folds = _fold_scores(tmp_path, t.number, t.params, 3)
        assert len(set(folds)) == 3  # the folds differ: the mean means something
        assert t.values == pytest.approx([statistics.fmean(f[i] for f in folds) for i in range(2)], rel=1e-5)
        stored = [v for r in t.attrs["runs"] for v in r["values"]]  # each fold's own, as a single run records them
        assert stored == pytest.approx([v for f in folds for v in f], rel=1e-5)
        assert sorted(t.intermediate_values) == list(range(6)) and t.intermediate_values[t.best_step] == t.values
    again = make(tmp_path, fast_trainer, model=FoldMetrics, monitor=["val_loss", "val_mae"], n_trials=2, cv=3).trials
    assert [t.values for t in again] == [t.values for t in result.trials]  # stored and read back
    assert result.pareto_trials


def test_repeats_judge_an_outcome_constraint_on_the_mean_of_the_runs(tmp_path, fast_trainer):
    seeds = {n: [trial_seed(0, n, r) % 1000 for r in range(3)] for n in (0, 1)}  # the seed each run logs
    means = {n: statistics.fmean(s) for n, s in seeds.items()}
    low, high = sorted(means, key=means.get)
    bound = (means[low] + means[high]) / 2
    assert min(seeds[high]) < bound  # a run of the infeasible trial alone keeps the bound: only its mean breaks it
    result = make(
        tmp_path,
        fast_trainer,
        model=FoldMetrics,
        monitor="val_loss",
        mode="min",
        n_trials=2,
        repeats=3,
        constraints={"seed": ("<=", bound)},
    ).run()
    by = {t.number: t for t in result.trials}
    assert all(t.state is TrialState.COMPLETE for t in result.trials)
    assert [r["constraint_values"]["seed"] for r in by[high].attrs["runs"]] == seeds[high]
    assert by[high].attrs["constraint_values"] == {"seed": pytest.approx(means[high])}
    assert not by[high].feasible and by[high].attrs["infeasible"] == [f"seed = {means[high]:g}, not <= {bound:g}"]
    assert by[low].feasible and result.best_trial.number == low
    assert "1 COMPLETE trial broke a constraint (infeasible)." in str(result)


@pytest.mark.parametrize("monitor", ["val_loss", ["val_loss", "val_mae"]])
def test_interrupted_cross_validated_trial_keeps_its_finished_folds(tmp_path, fast_trainer, monitor):
    def search(interrupt: bool):
        def model(cfg):
            return FoldMetrics(interrupt_fold_1=interrupt, **cfg["model"])

        mode = "min" if isinstance(monitor, str) else ["min", "min"]
        return make(tmp_path, fast_trainer, model=model, monitor=monitor, mode=mode, n_trials=1, cv=2, patience=None)

    FITS.clear()
    first = search(True)
    with pytest.raises(KeyboardInterrupt):
        first.run()
    assert first.trials[0].error.startswith("interrupted") and FITS == ["fold_0", "fold_1"]
    (t,) = search(False).run().trials
    assert t.state is TrialState.COMPLETE and t.attempt == 2
    assert FITS == ["fold_0", "fold_1", "fold_1"]  # fold 0 is kept, fold 1 continues
    folds = _fold_scores(tmp_path, t.number, t.params, 2)
    assert t.value == pytest.approx(statistics.fmean(f[0] for f in folds), rel=1e-5)
    if isinstance(monitor, list):  # every objective of the kept fold, and of the continued one
        assert t.values == pytest.approx([statistics.fmean(f[i] for f in folds) for i in range(2)], rel=1e-5)
        assert sorted(t.intermediate_values) == [0, 1, 2, 3] and t.intermediate_values[3] == t.values
    else:
        assert t.values is None and "values" not in t.attrs["runs"][0]


def test_a_trial_whose_runs_all_finished_before_it_was_recorded_is_scored_without_training(tmp_path, fast_trainer):
    """Stopped after the last run was kept in ``runs.json``, before the trial was recorded: the rerun trains nothing."""
    builder = ModuleTrialBuilder(FoldMetrics, TinyData, fast_trainer)
    build = TrialBuild(builder, "val_loss", Direction.MINIMIZE, cv=CrossValidation(k=2), resume=Resume(keep=True))
    job = TrialJob(build, 0, {"model.lr": 0.05}, 0, str(tmp_path / "trial_0"))
    FITS.clear()
    first = run_trial(job)
    assert first.state is TrialState.COMPLETE and FITS == ["fold_0", "fold_1"]
    again = run_trial(TrialJob(build, 0, {"model.lr": 0.05}, 0, str(tmp_path / "trial_0"), attempt=2))
    assert FITS == ["fold_0", "fold_1"]  # nothing retrained
    assert (again.state, again.value, again.best_step) == (first.state, first.value, first.best_step)
    assert again.checkpoint == first.checkpoint and again.attrs["runs"] == first.attrs["runs"]
