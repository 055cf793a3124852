"""The in-trial callback: reporting per validation run, pruning through Lightning, metric types."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TinyData, TinyModel

from lightning_hpt import Categorical, HyperparameterSearch, Int, SearchFailedError, TrialState
from lightning_hpt.lightning.monitor import metric_value
from lightning_hpt.pruners import MedianPruner, SuccessiveHalvingPruner

CURVES = {"good": [0.5, 0.4, 0.3, 0.2], "mid": [0.8, 0.7, 0.6, 0.5], "bad": [2.0, 1.9, 1.8, 1.7]}


def curve_factory(cfg):
    kind = cfg["model"].pop("curve")
    return TinyModel(val_schedule=CURVES[kind], **cfg["model"])


def _search(tmp_path, fast_trainer, pruner, choices, **trainer):
    return HyperparameterSearch(
        curve_factory,
        TinyData,
        {"model.curve": Categorical(choices), "model.hidden": Int(4, 5)},
        strategy="grid",
        pruner=pruner,
        root=tmp_path,
        trainer_kwargs={**fast_trainer, "max_epochs": 4, **trainer},
        patience=None,
        verbose=False,
    )


def test_asha_prunes_bad_trials_during_training(tmp_path, fast_trainer):
    result = _search(
        tmp_path, fast_trainer, SuccessiveHalvingPruner(min_resource=1, reduction_factor=2), ["good", "mid", "bad"]
    ).run()
    by = {(t.params["model.curve"], t.params["model.hidden"]): t for t in result.trials}
    assert by[("good", 4)].state is TrialState.COMPLETE and len(by[("good", 4)].intermediate) == 4
    pruned = [t for t in result.trials if t.state is TrialState.PRUNED]
    assert pruned and all(t.params["model.curve"] != "good" for t in pruned)
    for t in pruned:  # cut short, with the best value so far and its step
        assert len(t.intermediate) < 4
        assert t.value == pytest.approx(min(t.intermediate.values())) and t.intermediate[t.best_step] == t.value
    assert result.best_trial.params["model.curve"] == "good"


def test_median_pruner_by_name_and_sanity_check_skipped(tmp_path, fast_trainer):
    result = _search(
        tmp_path, fast_trainer, MedianPruner(n_startup_trials=1), ["good", "bad"], num_sanity_val_steps=2
    ).run()
    good = [t for t in result.trials if t.params["model.curve"] == "good"]
    # the sanity check is not a step: steps are exactly the epochs' validation runs
    assert all(sorted(t.intermediate) == [0, 1, 2, 3] for t in good)
    assert [t.state for t in result.trials if t.params["model.curve"] == "bad"] == [TrialState.PRUNED] * 2


def test_several_validation_runs_per_epoch(tmp_path, fast_trainer):
    search = HyperparameterSearch(
        TinyModel,
        TinyData,
        {"model.hidden": Int(4, 5)},
        root=tmp_path,
        n_trials=1,
        trainer_kwargs={**fast_trainer, "val_check_interval": 0.5},
        verbose=False,
    )
    (t,) = search.run().trials
    assert sorted(t.intermediate) == [0, 1, 2, 3]  # 2 epochs x 2 validation runs


@pytest.mark.parametrize(
    ("value", "expected"),
    [(torch.tensor(0.5), 0.5), (torch.tensor([0.25]), 0.25), (np.float32(1.5), 1.5), (np.array([2.0]), 2.0), (3, 3.0)],
)
def test_metric_values_accepted(value, expected):
    """RELIABILITY row 12: one-element tensors and numpy scalars are numbers."""
    assert metric_value("val_acc", value) == expected


@pytest.mark.parametrize("value", ["0.5", torch.tensor([0.1, 0.2]), np.array(["a"]), None, True])
def test_metric_values_refused_with_name_and_type(value):
    with pytest.raises(TypeError, match=r"metric 'val_acc' must"):
        metric_value("val_acc", value)


def test_wrongly_typed_logged_metric_fails_the_trial_clearly(tmp_path, fast_trainer):
    class Stringy(TinyModel):
        def validation_step(self, batch, batch_idx):
            self.log("val_loss", torch.tensor([1.0, 2.0]))

    search = HyperparameterSearch(
        Stringy,
        TinyData,
        {"model.hidden": Int(4, 5)},
        root=tmp_path,
        n_trials=2,
        trainer_kwargs=fast_trainer,
        verbose=False,
    )
    with pytest.raises(SearchFailedError, match="no COMPLETE trial") as err:
        search.run()
    result = err.value.result
    assert [t.state for t in result.trials] == [TrialState.FAILED] * 2
    assert all("val_loss" in t.error for t in result.trials)


def test_monitor_state_is_saved_in_checkpoints_and_restored(tmp_path, fast_trainer):
    """Issue 14: TrialMonitor has a state_key and a state dict, so a checkpoint carries (and restores) its values."""
    import lightning.pytorch as L

    from lightning_hpt.lightning.curve import Curve
    from lightning_hpt.lightning.monitor import TrialMonitor
    from lightning_hpt.trial import Direction

    monitor = TrialMonitor(Curve("val_loss", Direction.MINIMIZE))
    ckpt = L.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="last", save_top_k=1, monitor="val_loss")
    trainer = L.Trainer(**{**fast_trainer, "max_epochs": 3}, callbacks=[monitor, ckpt], default_root_dir=tmp_path)
    trainer.fit(TinyModel(), datamodule=TinyData())
    assert monitor.state_key == "TrialMonitor{'monitor': 'val_loss'}"
    state = torch.load(ckpt.best_model_path, weights_only=True)["callbacks"][monitor.state_key]
    again = TrialMonitor(Curve("val_loss", Direction.MINIMIZE))
    again.load_state_dict(state)
    assert again.best_step == state["best_step"] and again.values == {
        k: v for k, v in monitor.values.items() if k in state["values"]
    }
    assert again.best_value == pytest.approx(min(again.values.values()))


def test_a_pytorch_lightning_module_gets_that_flavours_monitor(tmp_path, fast_trainer):
    """Issue 14: the pytorch_lightning monitor is a defined class (it was built with type() at run time);
    a module with its own loaders needs no datamodule."""
    pl = pytest.importorskip("pytorch_lightning")
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_hpt.lightning.monitor_pl import TrialMonitor as PLTrialMonitor

    class Flavoured(pl.LightningModule):
        def __init__(self, lr: float = 0.05) -> None:
            super().__init__()
            self.lr, self.net = lr, nn.Linear(4, 1)

        def _data(self):
            g = torch.Generator().manual_seed(0)
            x = torch.randn(32, 4, generator=g)
            return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=16)

        def train_dataloader(self):
            return self._data()

        def val_dataloader(self):
            return self._data()

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.mse_loss(self.net(x), y)

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", nn.functional.mse_loss(self.net(x), y))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.lr)

    from lightning_hpt.lightning.config import namespace_of
    from lightning_hpt.lightning.monitor import monitor_class

    assert namespace_of(Flavoured) is pl and monitor_class(pl) is PLTrialMonitor  # what the runner picks
    assert issubclass(PLTrialMonitor, pl.Callback)
    search = HyperparameterSearch(
        Flavoured,
        None,
        {"model.lr": Categorical([0.05])},
        n_trials=1,
        root=tmp_path,
        trainer_kwargs=fast_trainer,
        verbose=False,
    )
    (t,) = search.run().trials
    assert t.state is TrialState.COMPLETE and len(t.intermediate) == fast_trainer["max_epochs"], t.error


def test_a_trial_stopped_at_its_last_epoch_completes_instead_of_being_pruned(tmp_path, fast_trainer):
    """Searched epochs: a 1-epoch trial meets ASHA's first rung at its only step. It trained its whole budget,
    so it is COMPLETE (and not penalized as pruned); a 4-epoch trial as bad is pruned there."""
    search = HyperparameterSearch(
        curve_factory,
        TinyData,
        {"model.curve": Categorical(["good", "bad"]), "trainer.max_epochs": Categorical([4, 1])},
        strategy="grid",
        pruner=SuccessiveHalvingPruner(min_resource=1, reduction_factor=2),
        root=tmp_path,
        trainer_kwargs=fast_trainer,
        patience=None,
        verbose=False,
    )
    by = {(t.params["model.curve"], t.params["trainer.max_epochs"]): t for t in search.run().trials}
    assert by[("bad", 4)].state is TrialState.PRUNED and list(by[("bad", 4)].intermediate) == [0]
    assert by[("bad", 1)].state is TrialState.COMPLETE and by[("bad", 1)].value == CURVES["bad"][0]
    assert by[("good", 1)].state is TrialState.COMPLETE and by[("good", 4)].state is TrialState.COMPLETE


def test_the_random_states_a_checkpoint_keeps_are_restored_after_a_weights_only_load(tmp_path):
    """Python's, NumPy's and torch's generators go on after a save and a ``weights_only`` load as if never stopped."""
    import random

    from lightning_hpt.lightning.monitor import _get_rng, _set_rng

    def draw():
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    torch.save({"rng": _get_rng()}, tmp_path / "s.pt")
    expected = draw()
    draw(), draw()  # move every generator on
    _set_rng(torch.load(tmp_path / "s.pt", weights_only=True)["rng"])
    assert draw() == expected
