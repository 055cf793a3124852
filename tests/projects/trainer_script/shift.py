"""A regressor validated on two sets (in-distribution and shifted): metric names get ``/dataloader_idx_N``."""

from __future__ import annotations

import lightning.pytorch as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

WEIGHTS = torch.tensor([1.5, -2.0, 0.5, 0.0, 1.0, -0.5])


def make_set(n: int, shift: float, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g) + shift
    y = torch.sin(x @ WEIGHTS) + 0.05 * torch.randn(n, generator=g)
    return TensorDataset(x, y.unsqueeze(-1))


class ShiftData(L.LightningDataModule):
    def __init__(self, batch_size: int = 32) -> None:
        super().__init__()
        self.batch_size = batch_size

    def setup(self, stage: str | None = None) -> None:
        self.train_set = make_set(512, 0.0, seed=0)
        self.val_sets = [make_set(128, 0.0, seed=1), make_set(128, 0.5, seed=2)]

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> list[DataLoader]:
        return [DataLoader(s, batch_size=128) for s in self.val_sets]


class Regressor(L.LightningModule):
    def __init__(self, lr: float = 1e-2, hidden: int = 32, depth: int = 2) -> None:
        super().__init__()
        self.save_hyperparameters()
        layers: list[nn.Module] = []
        width = 6
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.Tanh()]
            width = hidden
        self.net = nn.Sequential(*layers, nn.Linear(width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y))

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=1)
        return {
            "optimizer": opt,
            "lr_scheduler": {"scheduler": sched, "monitor": "val_loss/dataloader_idx_0", "interval": "epoch"},
        }
