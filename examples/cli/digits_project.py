"""A small LightningCLI project: an MLP on scikit-learn's bundled digits data (no download).

Train it as any LightningCLI project (from this directory)::

    python train.py fit --config fit.yaml

and tune it without changing any code::

    lightning-hpt search --config fit.yaml --config search.yaml
"""

from __future__ import annotations

import lightning.pytorch as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class DigitsData(L.LightningDataModule):
    """8x8 digit images as 64 standardized features; fixed train/validation split (80/20).

    Args:
        batch_size: training batch size.
        seed: the seed of the split.
    """

    def __init__(self, batch_size: int = 64, seed: int = 0) -> None:
        super().__init__()
        self.batch_size, self.seed = batch_size, seed

    def setup(self, stage: str | None = None) -> None:
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        x = torch.tensor(x, dtype=torch.float32)
        y = torch.tensor(y, dtype=torch.long)
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.seed))
        x, y = x[perm], y[perm]
        n_train = len(x) * 4 // 5
        mean, std = x[:n_train].mean(0), x[:n_train].std(0) + 1e-6
        x = (x - mean) / std
        self.train_set = TensorDataset(x[:n_train], y[:n_train])
        self.val_set = TensorDataset(x[n_train:], y[n_train:])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=512)


class DigitsMLP(L.LightningModule):
    """A multi-layer perceptron; its optimizer comes from the config's ``optimizer:`` section.

    Args:
        hidden_dim: neurons per hidden layer.
        num_layers: hidden layers.
        dropout: dropout probability after each hidden layer.
    """

    def __init__(self, hidden_dim: int = 64, num_layers: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.save_hyperparameters()
        layers: list[nn.Module] = []
        width = 64
        for _ in range(num_layers):
            layers += [nn.Linear(width, hidden_dim), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden_dim
        layers.append(nn.Linear(width, 10))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(-1) == y).float().mean())
