"""Iris classifier with a torchmetrics MetricCollection, logging to several experiment trackers at once."""

from __future__ import annotations

import os

import lightning.pytorch as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score


class IrisData(L.LightningDataModule):
    def __init__(self, batch_size: int = 16) -> None:
        super().__init__()
        self.batch_size = batch_size

    def setup(self, stage: str | None = None) -> None:
        from sklearn.datasets import load_iris

        x, y = load_iris(return_X_y=True)
        x = torch.tensor(x, dtype=torch.float32)
        x = (x - x.mean(0)) / x.std(0)
        y = torch.tensor(y)
        perm = torch.randperm(150, generator=torch.Generator().manual_seed(3))
        self.train_ds = TensorDataset(x[perm[:110]], y[perm[:110]])
        self.val_ds = TensorDataset(x[perm[110:]], y[perm[110:]])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_ds, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_ds, batch_size=64)


class LitClassifier(L.LightningModule):
    def __init__(self, hidden_dim: int = 16, learning_rate: float = 1e-2) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(4, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, 3))
        metrics = MetricCollection({"acc": MulticlassAccuracy(num_classes=3), "f1": MulticlassF1Score(num_classes=3)})
        self.val_metrics = metrics.clone(prefix="val/")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val/loss", nn.functional.cross_entropy(logits, y))
        self.val_metrics.update(logits, y)
        self.log_dict(self.val_metrics, on_step=False, on_epoch=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.learning_rate)


def make_loggers(save_dir: str = "logs", offline: bool = True) -> list:
    """Every tracker the project logs to; W&B and MLflow only when installed."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    loggers = [TensorBoardLogger(save_dir, name="iris"), CSVLogger(save_dir, name="iris")]
    try:
        import wandb  # noqa: F401
        from lightning.pytorch.loggers import WandbLogger

        loggers.append(WandbLogger(project="iris", save_dir=save_dir, offline=offline))
    except ImportError:
        pass
    try:
        import mlflow  # noqa: F401
        from lightning.pytorch.loggers import MLFlowLogger

        os.makedirs(save_dir, exist_ok=True)

        loggers.append(MLFlowLogger(experiment_name="iris", tracking_uri=f"sqlite:///{save_dir}/mlflow.db"))
    except ImportError:
        pass
    return loggers
