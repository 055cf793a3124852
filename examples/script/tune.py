"""Tune a training script that builds its own Trainer: ``python examples/script/tune.py``.

The script keeps its own callbacks and Trainer set-up; lightning-hpt only hands it each trial's
parameters and a callback that reports, prunes and records. Start it several times at once (or
as a SLURM array) and the copies share the study.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import lightning.pytorch as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cli"))  # the digits project of examples/cli
from digits_project import DigitsData, DigitsMLP

from lightning_hpt import Float, Int, ScriptSearch


class TunedMLP(DigitsMLP):
    """The project's model with its own optimizer (under LightningCLI the config gives it)."""

    def __init__(self, lr: float = 3e-3, **kwargs) -> None:
        super().__init__(**kwargs)
        self.lr = lr

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--root", default="hpt_runs")
    args = parser.parse_args(argv)

    search = ScriptSearch(
        space={
            "lr": Float(1e-4, 3e-2, log=True),
            "hidden_dim": Int(16, 256, log=True),
            "dropout": Float(0.0, 0.5),
            "batch_size": Int(32, 128, step=32),
        },
        monitor="val_acc",
        mode="max",
        n_trials=args.trials,
        pruner="median",
        root=args.root,
        study_name="digits_script",
        seed=0,
        max_epochs=args.epochs,
    )
    for trial in search:
        L.seed_everything(trial.seed, workers=True)
        p = trial.params
        model = TunedMLP(lr=p["lr"], hidden_dim=p["hidden_dim"], dropout=p["dropout"])
        trainer = L.Trainer(
            max_epochs=args.epochs,
            accelerator="cpu",
            callbacks=[
                trial.callback(),
                ModelCheckpoint(monitor="val_acc", mode="max"),
                EarlyStopping(monitor="val_acc", mode="max", patience=3),
            ],
            logger=trial.logger("tensorboard"),
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        # a trial pre-empted in an earlier run of this script continues from its checkpoint
        trainer.fit(model, datamodule=DigitsData(batch_size=p["batch_size"]), ckpt_path=trial.ckpt_path)
    print(search.result())


if __name__ == "__main__":
    main()
