"""Small, offline tuning tasks for the benchmarks: scikit-learn's bundled tabular datasets with an MLP."""

from __future__ import annotations

import lightning.pytorch as L
import torch
import torchmetrics
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_hpt import Categorical, Float, Int

LOADERS = {"digits": "load_digits", "cancer": "load_breast_cancer"}


class TabularData(L.LightningDataModule):
    """A bundled scikit-learn dataset, standardized, split 60/20/20 with a fixed seed."""

    def __init__(self, name: str = "digits", batch_size: int = 64) -> None:
        super().__init__()
        self.name, self.batch_size = name, batch_size

    def setup(self, stage: str | None = None) -> None:
        import sklearn.datasets

        x, y = getattr(sklearn.datasets, LOADERS[self.name])(return_X_y=True)
        x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.long)
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
        x, y = x[perm], y[perm]
        n_val = len(x) // 5
        n_train = len(x) - 2 * n_val
        mean, std = x[:n_train].mean(0), x[:n_train].std(0) + 1e-6
        x = (x - mean) / std
        self.train_set = TensorDataset(x[:n_train], y[:n_train])
        self.val_set = TensorDataset(x[n_train : n_train + n_val], y[n_train : n_train + n_val])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=1024)


class TabularMLP(L.LightningModule):
    def __init__(
        self,
        name: str = "digits",
        num_layers: int = 2,
        hidden_dim: int = 64,
        dropout: float = 0.1,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        in_dim, n_classes = {"digits": (64, 10), "cancer": (30, 2)}[name]
        layers: list[nn.Module] = []
        for _ in range(num_layers):
            layers += [nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout)]
            in_dim = hidden_dim
        self.net = nn.Sequential(*layers, nn.Linear(in_dim, n_classes))
        self.acc = torchmetrics.classification.MulticlassAccuracy(num_classes=n_classes, average="micro")

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        self.acc(logits, y)
        self.log("val_acc", self.acc)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)


def space() -> dict:
    """The tuned hyperparameters; epochs are fixed per benchmark so that pruning has room to act."""
    return {
        "model.lr": Float(1e-4, 1e-1, log=True),
        "model.num_layers": Int(1, 3),
        "model.hidden_dim": Int(16, 256, log=True),
        "model.dropout": Float(0.0, 0.5),
        "model.weight_decay": Float(1e-6, 1e-2, log=True),
        "data.batch_size": Categorical([32, 64, 128]),
    }


def factories(task: str):
    """(model factory, datamodule factory) for ``task``; factories keep the dataset name out of the space."""

    def model(cfg):
        return TabularMLP(name=task, **cfg["model"])

    def data(cfg):
        return TabularData(name=task, **cfg["data"])

    return model, data


def suggest(trial) -> tuple[dict, int]:
    """The same space for an Optuna trial: (model arguments, batch size)."""
    p = {
        "lr": trial.suggest_float("lr", 1e-4, 1e-1, log=True),
        "num_layers": trial.suggest_int("num_layers", 1, 3),
        "hidden_dim": trial.suggest_int("hidden_dim", 16, 256, log=True),
        "dropout": trial.suggest_float("dropout", 0.0, 0.5),
        "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True),
    }
    return p, trial.suggest_categorical("batch_size", [32, 64, 128])
