"""A space written as a function of the trial: ``python examples/script/tune_space_function.py``.

The depth, a width per layer, the optimizer and SGD's momentum (for SGD only) come from one
function with Python's own ``if`` and loop. The search traces it into a space with conditions when
it is made; in the loop the same function gives each trial's configuration.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import lightning.pytorch as L
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cli"))  # the digits project of examples/cli
from digits_project import DigitsData, DigitsMLP

from lightning_hpt import Categorical, Float, Int, ScriptSearch


def space(trial) -> dict:
    """The configuration of one trial: only the parameters its choices need are asked for."""
    n = trial.suggest("layers", Int(1, 3))
    widths = [trial.suggest(f"width{i}", Int(16, 256, log=True)) for i in range(n)]
    optimizer = trial.suggest("optimizer", Categorical(["sgd", "adam"]))
    momentum = trial.suggest("momentum", Float(0.0, 0.95)) if optimizer == "sgd" else 0.0
    lr = trial.suggest("lr", Float(1e-4, 1e-1, log=True))
    return {"widths": widths, "optimizer": optimizer, "momentum": momentum, "lr": lr}


class LayeredMLP(DigitsMLP):
    """The project's MLP with a width per layer and its own optimizer."""

    def __init__(self, widths: list[int], optimizer: str, momentum: float, lr: float) -> None:
        super().__init__()
        self.save_hyperparameters()
        layers: list[nn.Module] = []
        width = 64
        for w in widths:
            layers += [nn.Linear(width, w), nn.ReLU()]
            width = w
        self.net = nn.Sequential(*layers, nn.Linear(width, 10))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        h = self.hparams
        if h.optimizer == "sgd":
            return torch.optim.SGD(self.parameters(), lr=h.lr, momentum=h.momentum)
        return torch.optim.Adam(self.parameters(), lr=h.lr)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--root", default="hpt_runs")
    args = parser.parse_args(argv)

    search = ScriptSearch(
        space=space,
        monitor="val_acc",
        mode="max",
        strategy="bayes",
        n_trials=args.trials,
        root=args.root,
        study_name="digits_space_function",
        seed=0,
    )
    print(search.space)  # the traced space: width1 when layers is 2 or 3, momentum when optimizer is "sgd", ...
    for trial in search:
        L.seed_everything(trial.seed, workers=True)
        model = LayeredMLP(**space(trial))  # the same function: each trial.suggest gives this trial's value
        trainer = L.Trainer(
            max_epochs=args.epochs,
            accelerator="cpu",
            callbacks=[trial.callback()],
            logger=False,
            default_root_dir=trial.dir,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(model, datamodule=DigitsData(), ckpt_path=trial.ckpt_path)
    print(search.result())


if __name__ == "__main__":
    main()
