"""``python tune.py --trials 8``: tunes train.py's model with lightning-hpt, pruning hopeless trials.

Several copies may run at once (terminals, a SLURM array): they share one study.
"""

from __future__ import annotations

import argparse

import lightning.pytorch as L
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from shift import Regressor, ShiftData
from train import MONITOR

from lightning_hpt import Float, Int, ScriptSearch


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--max_epochs", type=int, default=3)
    parser.add_argument("--storage", default="tune/studies.db")
    parser.add_argument("--pruner", default="median")
    args = parser.parse_args(argv)

    search = ScriptSearch(
        space={"lr": Float(1e-3, 0.3, log=True), "hidden": Int(8, 64, log=True), "batch_size": Int(16, 64, step=16)},
        monitor=MONITOR,
        mode="min",
        n_trials=args.trials,
        pruner=args.pruner,
        storage=args.storage,
        study_name="shift",
        root="tune",
        seed=0,
        max_epochs=args.max_epochs,
    )
    for trial in search:
        L.seed_everything(trial.number)
        model = Regressor(lr=trial.params["lr"], hidden=trial.params["hidden"])
        trainer = L.Trainer(
            max_epochs=args.max_epochs,
            accelerator="cpu",
            callbacks=[
                trial.callback(),
                ModelCheckpoint(dirpath=f"{trial.dir}/checkpoints", monitor=MONITOR, mode="min"),
                EarlyStopping(monitor=MONITOR, patience=3),
            ],
            logger=trial.logger("csv"),
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(model, datamodule=ShiftData(batch_size=trial.params["batch_size"]))
    print(search.result())


if __name__ == "__main__":
    main()
