"""Wine classifier whose sizes come from the data through ``link_arguments`` in a LightningCLI subclass."""

from __future__ import annotations

import lightning.pytorch as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class WineData(L.LightningDataModule):
    """scikit-learn's bundled wine table: 178 rows, 13 features, 3 classes."""

    def __init__(self, batch_size: int = 16, seed: int = 7) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.seed = seed

    @property
    def num_features(self) -> int:
        return 13

    @property
    def num_classes(self) -> int:
        return 3

    def setup(self, stage: str | None = None) -> None:
        from sklearn.datasets import load_wine

        x, y = load_wine(return_X_y=True)
        x = torch.tensor(x, dtype=torch.float32)
        x = (x - x.mean(0)) / x.std(0)
        y = torch.tensor(y)
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.seed))
        train, val = perm[:130], perm[130:]
        self.train_ds, self.val_ds = TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_ds, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_ds, batch_size=64)


class WineClassifier(L.LightningModule):
    """Reads its settings back through ``self.hparams``, as many projects do."""

    def __init__(
        self, num_features: int, num_classes: int, hidden_dim: int = 32, lr: float = 1e-2, weight_decay: float = 0.0
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = nn.Sequential(
            nn.Linear(self.hparams.num_features, self.hparams.hidden_dim),
            nn.ReLU(),
            nn.Linear(self.hparams.hidden_dim, self.hparams.num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train/loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y), prog_bar=True)
        self.log("val_acc", (logits.argmax(1) == y).float().mean(), prog_bar=True)

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=2)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val_loss"}}
