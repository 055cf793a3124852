"""A plain training script: ``python train.py --lr 0.01 --hidden 32``."""

from __future__ import annotations

import argparse

import lightning.pytorch as L
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from shift import Regressor, ShiftData

MONITOR = "val_loss/dataloader_idx_0"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log_dir", default="logs")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    L.seed_everything(args.seed)
    model = Regressor(lr=args.lr, hidden=args.hidden, depth=args.depth)
    trainer = L.Trainer(
        max_epochs=args.max_epochs,
        accelerator="cpu",
        logger=CSVLogger(args.log_dir, name="shift"),
        callbacks=[ModelCheckpoint(monitor=MONITOR, mode="min"), EarlyStopping(monitor=MONITOR, patience=3)],
        enable_progress_bar=False,
    )
    trainer.fit(model, datamodule=ShiftData(batch_size=args.batch_size))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    print(metrics)
    return metrics


if __name__ == "__main__":
    main()
