"""Tune an MLP on scikit-learn's bundled digits data (no download): a real search in about a minute.

Run:
    python examples/digits.py                    # 12 trials, random search
    python examples/digits.py --strategy bayes --n-trials 20 --pruner asha
    python examples/digits.py --cv 5 --test     # 5-fold cross-validation, then the winner on the test split
"""

from __future__ import annotations

import argparse
import sys

import lightning.pytorch as L
import torch
import torchmetrics
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_hpt import Categorical, CrossValidation, Float, HyperparameterSearch, Int


class DigitsDataModule(L.LightningDataModule):
    """8x8 digit images as 64 standardized features; fixed train/val/test splits (60/20/20)."""

    def __init__(self, batch_size: int = 64, seed: int = 0) -> None:
        super().__init__()
        self.batch_size, self.seed = batch_size, seed

    def setup(self, stage: str | None = None) -> None:
        x, y = load_digits(return_X_y=True)
        x = torch.tensor(x, dtype=torch.float32) / 16.0
        y = torch.tensor(y, dtype=torch.long)
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.seed))
        x, y = x[perm], y[perm]
        n_val = n_test = len(x) // 5
        n_train = len(x) - n_val - n_test
        mean, std = x[:n_train].mean(0), x[:n_train].std(0) + 1e-6
        x = (x - mean) / std
        self.train_set = TensorDataset(x[:n_train], y[:n_train])
        self.val_set = TensorDataset(x[n_train : n_train + n_val], y[n_train : n_train + n_val])
        self.test_set = TensorDataset(x[n_train + n_val :], y[n_train + n_val :])
        self.cv_set = TensorDataset(x[: n_train + n_val], y[: n_train + n_val])

    def cv_dataset(self) -> TensorDataset:
        """Training plus validation data: folds for cross-validation, all of it for a refit."""
        return self.cv_set

    def cv_targets(self) -> torch.Tensor:
        return self.cv_set.tensors[1]

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=512)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=512)


class DigitsMLP(L.LightningModule):
    """A multi-layer perceptron whose depth, width, dropout, learning rate and weight decay are tunable."""

    def __init__(
        self,
        num_layers: int = 2,
        hidden_dim: int = 64,
        dropout: float = 0.1,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        layers: list[nn.Module] = []
        width = 64
        for _ in range(num_layers):
            layers += [nn.Linear(width, hidden_dim), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden_dim
        layers.append(nn.Linear(width, 10))
        self.net = nn.Sequential(*layers)
        self.val_acc = torchmetrics.classification.MulticlassAccuracy(num_classes=10, average="micro")
        self.test_acc = torchmetrics.classification.MulticlassAccuracy(num_classes=10, average="micro")

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
        self.val_acc(logits, y)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        self.log("val_acc", self.val_acc)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.test_acc(self(x), y)
        self.log("test_acc", self.test_acc)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)


SPACE = {
    "model.lr": Float(1e-4, 1e-1, log=True),
    "model.num_layers": Int(1, 3),
    "model.hidden_dim": Int(16, 256, log=True),
    "model.dropout": Float(0.0, 0.5),
    "model.weight_decay": Float(1e-6, 1e-2, log=True),
    "data.batch_size": Categorical([32, 64, 128]),
    "trainer.max_epochs": Int(3, 12),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--strategy", default="random", help="grid | random | sobol | bayes")
    p.add_argument("--pruner", default=None, help="median | asha | hyperband (default: none)")
    p.add_argument("--n-trials", type=int, default=12)
    p.add_argument("--study", default="digits")
    p.add_argument("--root", default="hpt_runs")
    p.add_argument("--storage", default=None, help="SQLAlchemy URL (default: SQLite under --root)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cv", type=int, default=None, help="k-fold cross-validation inside each trial")
    p.add_argument("--test", action="store_true", help="refit the winner on train+val and score it on the test split")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # tiny model: one thread is fastest and leaves the other cores free
    search = HyperparameterSearch(
        model=DigitsMLP,
        datamodule=DigitsDataModule,
        space=SPACE,
        monitor="val_acc",
        mode="max",
        strategy=args.strategy,
        pruner=args.pruner,
        n_trials=args.n_trials,
        seed=args.seed,
        study_name=args.study,
        root=args.root,
        storage=args.storage,
        trainer_kwargs={"accelerator": "cpu", "devices": 1, "log_every_n_steps": 5},
        patience=3,
        cv=args.cv and CrossValidation(args.cv, stratify=True),
        refit=args.test,
    )
    result = search.run()
    best = result.best_trial
    print(f"\nbest val_acc {best.value:.4f} (trial {best.number}); checkpoint: {best.checkpoint}")
    if args.test:
        print(f"test_acc of the refit winner: {result.test()['test_acc']:.4f}")
        print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
