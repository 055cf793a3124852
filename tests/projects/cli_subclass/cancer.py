"""Breast-cancer classifier in LightningCLI subclass mode (``class_path``/``init_args`` in the config)."""

from __future__ import annotations

import lightning.pytorch as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import BinaryAccuracy


class CancerDataModule(L.LightningDataModule):
    """scikit-learn's bundled breast-cancer table (569 rows, 30 features), standardized."""

    def __init__(self, batch_size: int = 32, val_fraction: float = 0.25, num_workers: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        from sklearn.datasets import load_breast_cancer
        from sklearn.model_selection import train_test_split
        from sklearn.preprocessing import StandardScaler

        x, y = load_breast_cancer(return_X_y=True)
        x_tr, x_va, y_tr, y_va = train_test_split(x, y, test_size=self.hparams.val_fraction, random_state=0, stratify=y)
        scaler = StandardScaler().fit(x_tr)
        self.train_ds = TensorDataset(torch.tensor(scaler.transform(x_tr), dtype=torch.float32), torch.tensor(y_tr))
        self.val_ds = TensorDataset(torch.tensor(scaler.transform(x_va), dtype=torch.float32), torch.tensor(y_va))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_ds, batch_size=self.hparams.batch_size, shuffle=True, num_workers=self.hparams.num_workers
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_ds, batch_size=256, num_workers=self.hparams.num_workers)


class MLPClassifier(L.LightningModule):
    """A small MLP; the optimizer and lr scheduler come from the config (LightningCLI adds them)."""

    def __init__(self, hidden_dim: int = 32, num_layers: int = 1, dropout: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        layers: list[nn.Module] = []
        width = 30
        for _ in range(num_layers):
            layers += [nn.Linear(width, hidden_dim), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden_dim
        self.net = nn.Sequential(*layers, nn.Linear(width, 1))
        self.train_acc = BinaryAccuracy()
        self.val_acc = BinaryAccuracy()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, y.float())
        self.train_acc(logits, y)
        self.log("train_loss", loss, prog_bar=True)
        self.log("train_acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.val_acc(logits, y)
        self.log("val_loss", nn.functional.binary_cross_entropy_with_logits(logits, y.float()), prog_bar=True)
        self.log("val_acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True)
