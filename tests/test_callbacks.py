"""The project's own Lightning callbacks next to the search's: kept, never duplicated into a failure."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import FAST, TinyData, TinyModel
from lightning.pytorch.callbacks import (
    EarlyStopping,
    GradientAccumulationScheduler,
    LearningRateMonitor,
    ModelCheckpoint,
    ModelSummary,
    StochasticWeightAveraging,
    Timer,
    TQDMProgressBar,
)

from lightning_hpt import Float, HyperparameterSearch, TrialState
from lightning_hpt.lightning.callbacks import combine_callbacks

STANDARD = {
    "checkpoint on the monitored metric": lambda: [ModelCheckpoint(monitor="val_loss", mode="min")],
    "early stopping on the monitored metric": lambda: [EarlyStopping(monitor="val_loss", patience=1)],
    "both, and a learning-rate monitor": lambda: [
        ModelCheckpoint(monitor="val_loss", filename="{epoch}-{val_loss:.3f}"),
        EarlyStopping(monitor="val_loss"),
        LearningRateMonitor(),
    ],
    "last-only checkpoint and one in the other mode": lambda: [
        ModelCheckpoint(save_last=True),
        ModelCheckpoint(monitor="val_loss", mode="max"),
    ],
    "early stopping on another metric": lambda: [EarlyStopping(monitor="train_loss", mode="min", patience=1)],
    "a progress bar and a model summary": lambda: [TQDMProgressBar(), ModelSummary(max_depth=2)],
    "SWA, gradient accumulation and a timer": lambda: [
        StochasticWeightAveraging(swa_lrs=1e-2),
        GradientAccumulationScheduler({0: 2}),
        Timer(duration="00:00:05:00"),
    ],
}


def one_trial(tmp_path: Path, callbacks: list, **trainer) -> HyperparameterSearch:
    return HyperparameterSearch(
        TinyModel,
        TinyData,
        {"model.lr": Float(0.01, 0.1, log=True)},
        n_trials=1,
        trainer_kwargs={**FAST, "max_epochs": 3, "logger": None, "callbacks": callbacks, **trainer},
        root=str(tmp_path),
        verbose=False,
        seed=0,
    )


@pytest.mark.parametrize("name", list(STANDARD))
def test_standard_callbacks_never_make_a_trial_fail(tmp_path, name):
    search = one_trial(tmp_path, STANDARD[name]())
    (t,) = search.run().trials
    assert t.state is TrialState.COMPLETE, t.error
    assert t.checkpoint and Path(t.checkpoint).is_file()


def test_the_projects_checkpoint_on_the_metric_is_the_trials_best_checkpoint(tmp_path):
    search = one_trial(tmp_path, [ModelCheckpoint(monitor="val_loss", filename="mine-{epoch}")])
    (t,) = search.run().trials
    assert t.state is TrialState.COMPLETE and Path(t.checkpoint).name.startswith("mine-")
    assert not (tmp_path / "default" / "trial_0" / "checkpoints" / "best.ckpt").exists()  # the search's left out


def test_checkpointing_turned_off_by_the_project_stays_off(tmp_path):
    search = one_trial(tmp_path, [], enable_checkpointing=False)
    (t,) = search.run().trials
    assert t.state is TrialState.COMPLETE and t.checkpoint is None


def test_combine_keeps_the_projects_and_drops_only_the_searchs_clashing_ones():
    import lightning.pytorch as L

    mine = [EarlyStopping(monitor="val_loss"), ModelCheckpoint(monitor="val_acc", mode="max")]
    ours = [object(), EarlyStopping(monitor="val_loss", patience=5), ModelCheckpoint(monitor="val_loss")]
    out = combine_callbacks(L, mine, ours)
    assert out[0] is ours[0] and out[1:3] == mine and out[3:] == [ours[2]]
    assert combine_callbacks(L, [], ours, checkpointing=False)[1:] == [ours[1]]


def test_a_project_checkpoint_with_a_dirpath_of_its_own_writes_in_each_trials_directory(tmp_path):
    """A template's ModelCheckpoint(dirpath="logs/checkpoints") made every trial write into one directory:
    ``epoch_002-v1.ckpt`` names, pruned trials' files left behind, and parallel trials' version counters racing."""
    shared = tmp_path / "logs" / "checkpoints"
    ckpt = ModelCheckpoint(dirpath=str(shared), filename="epoch_{epoch:03d}", monitor="val_loss", save_last=True)
    search = one_trial(tmp_path / "runs", [ckpt])
    search.n_trials = 2
    result = search.run()
    assert [t.state for t in result.trials] == [TrialState.COMPLETE] * 2
    assert not shared.exists() and ckpt.dirpath == str(shared)  # the project's object is left as it was given
    for t in result.trials:
        files = sorted(p.name for p in (tmp_path / "runs" / "default" / f"trial_{t.number}" / "checkpoints").iterdir())
        assert "last.ckpt" in files and any(f.startswith("epoch_") for f in files), files
        assert not any("-v" in f for f in files)  # no version counter: each trial writes alone
        assert Path(t.checkpoint).parent == tmp_path / "runs" / "default" / f"trial_{t.number}" / "checkpoints"
