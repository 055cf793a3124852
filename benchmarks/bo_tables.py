"""Write the tables behind the benchmark's surrogate-of-training problems (run once; kept in results/).

Every configuration of a small grid is trained once with Lightning on a bundled scikit-learn
dataset (digits, wine): an MLP with the given learning rate, hidden width and optimizer, a fixed
number of epochs, one torch thread, a fixed seed. The final validation loss of each configuration
is written to ``results/bo_table_<dataset>.json``; ``bo_problems.py`` interpolates these tables
(piecewise linear in log learning rate and log width) so a search runs in milliseconds per trial.

Usage::

    nice -n 19 python benchmarks/bo_tables.py            # both datasets (about 10 minutes on 1 core)
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from pathlib import Path

import lightning.pytorch as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _env import describe, quiet_single_thread

RESULTS = Path(__file__).resolve().parent / "results"
LRS = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1]
WIDTHS = [4, 16, 64, 256]
OPTIMIZERS = ["adam", "sgd", "rmsprop", "adagrad"]
EPOCHS = {"digits": 3, "wine": 10}


def _data(name: str) -> tuple[TensorDataset, TensorDataset]:
    import sklearn.datasets

    x, y = getattr(sklearn.datasets, f"load_{name}")(return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    n_val = len(x) // 4
    mean, std = x[n_val:].mean(0), x[n_val:].std(0)
    std[std < 1e-3] = 1.0  # digits has pixels that are constant in the training part
    x = (x - mean) / std
    return TensorDataset(x[n_val:], y[n_val:]), TensorDataset(x[:n_val], y[:n_val])


class MLP(L.LightningModule):
    """One hidden layer; the optimizer and learning rate are the tuned choices."""

    def __init__(self, n_in: int, n_out: int, width: int, lr: float, optimizer: str) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_in, width), nn.ReLU(), nn.Linear(width, n_out))
        self.lr, self.optimizer = lr, optimizer

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self.net(x), y))

    def configure_optimizers(self):
        cls = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD, "rmsprop": torch.optim.RMSprop}.get(
            self.optimizer, torch.optim.Adagrad
        )
        return cls(self.parameters(), lr=self.lr)


def train(name: str, train_set: TensorDataset, val_set: TensorDataset, width: int, lr: float, opt: str) -> float:
    L.seed_everything(0, verbose=False)
    n_in, n_out = train_set.tensors[0].shape[1], int(train_set.tensors[1].max()) + 1
    trainer = L.Trainer(
        max_epochs=EPOCHS[name],
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(
        MLP(n_in, n_out, width, lr, opt),
        DataLoader(train_set, batch_size=32, shuffle=True),
        DataLoader(val_set, batch_size=1024),
    )
    value = float(trainer.callback_metrics["val_loss"])
    return value if value == value and value < 10.0 else 10.0  # diverged runs are capped at 10


def main() -> None:
    quiet_single_thread()
    for name in EPOCHS:
        path = RESULTS / f"bo_table_{name}.json"
        if path.exists():
            continue
        train_set, val_set = _data(name)
        t0, rows = time.time(), []
        for lr, width, opt in itertools.product(LRS, WIDTHS, OPTIMIZERS):
            rows.append(
                {
                    "lr": lr,
                    "width": width,
                    "optimizer": opt,
                    "val_loss": train(name, train_set, val_set, width, lr, opt),
                }
            )
        meta = {"dataset": name, "epochs": EPOCHS[name], "seconds": round(time.time() - t0, 1), "machine": describe()}
        path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
        print(f"{path.name}: {len(rows)} runs in {meta['seconds']} s")


if __name__ == "__main__":
    main()
