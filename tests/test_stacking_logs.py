"""A stacked member's training logs: named and reduced over the epoch as its trial alone logs them."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_hpt import Float, HyperparameterSearch
from lightning_hpt.stacking import StackedExecutor


class Data(L.LightningDataModule):
    """40 training points in batches of 16, 16 and 8 (an epoch mean is weighted), the same order every run."""

    def setup(self, stage: str | None = None) -> None:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(56, 4, generator=g)
        y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(56, generator=g)
        self.train_set, self.val_set = TensorDataset(x[:40], y[:40, None]), TensorDataset(x[40:], y[40:, None])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=16)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=16)


class Logs(L.LightningModule):
    """Logs its training loss as Lightning's docs do: per step and per epoch, and a few other ways."""

    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        self.log("epoch_loss", loss, on_step=False, on_epoch=True)
        self.log("step_loss", loss)
        self.log("loss_sum", loss, on_step=False, on_epoch=True, reduce_fx="sum")
        self.log("loss_max", loss, on_step=False, on_epoch=True, reduce_fx=torch.max)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


NAMES = ("train_loss_epoch", "epoch_loss", "loss_sum", "loss_max", "val_loss")


def _run(root: Path, executor: StackedExecutor | None):
    return HyperparameterSearch(
        model=Logs,
        datamodule=Data,
        space={"model.lr": Float(0.01, 0.1, log=True)},
        monitor="val_loss",
        mode="min",
        n_trials=3,
        seed=0,
        root=str(root),
        trainer_kwargs={"accelerator": "cpu", "max_epochs": 3, "log_every_n_steps": 1},
        patience=None,
        executor=executor,
        verbose=False,
    ).run()


def _epoch_rows(trial_dir: Path) -> dict[int, dict[str, float]]:
    """``{epoch: {name: value}}`` of the epoch-level columns of a trial's CSV log, with the row's ``step``."""
    rows: dict[int, dict[str, float]] = {}
    with open(trial_dir / "csv" / "metrics.csv") as f:
        for row in csv.DictReader(f):
            at = rows.setdefault(int(row["epoch"]), {})
            at.update({k: float(v) for k, v in row.items() if k in NAMES and v != ""})
            if row.get("val_loss"):  # the validation run's row: at the trial's global step
                at["step"] = float(row["step"])
    return rows


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("logs")
    return tmp, _run(tmp / "alone", None), _run(tmp / "stacked", StackedExecutor(stack=3, linger=0.2))


def test_epoch_level_training_logs_are_the_epochs_reduction_as_alone(runs):
    _, alone, stacked = runs
    assert [t.attrs["stacked"]["group"] for t in stacked.trials] == [[0, 1, 2]] * 3
    for n in range(3):
        own = _epoch_rows(Path(alone.root) / alone.study / f"trial_{n}")
        member = _epoch_rows(Path(stacked.root) / stacked.study / f"trial_{n}")
        assert sorted(own) == sorted(member) == [0, 1, 2]
        for epoch in own:
            assert set(member[epoch]) == set(own[epoch]) == {*NAMES, "step"}, (member[epoch], own[epoch])
            for name in (*NAMES, "step"):
                assert member[epoch][name] == pytest.approx(own[epoch][name], rel=1e-4), (n, epoch, name)


def test_a_members_final_metrics_are_those_of_its_trial_alone(runs):
    _, alone, stacked = runs
    for a, b in zip(alone.trials, stacked.trials, strict=True):
        own, member = a.attrs["metrics"], b.attrs["metrics"]
        for name in ("train_loss", "train_loss_epoch", "train_loss_step", "epoch_loss", "step_loss", "loss_sum"):
            assert member[name] == pytest.approx(own[name], rel=1e-4), (a.number, name, own, member)
