"""A refit: the chosen configuration trained again on training plus validation data, saved, and read back."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from lightning_hpt.exceptions import HPTError
from lightning_hpt.lightning.loading import load_first
from lightning_hpt.lightning.quiet import quiet_lightning
from lightning_hpt.masking import get_logger
from lightning_hpt.trial import TrialRecord

__all__ = ["load_refit", "train_refit"]

log = get_logger(__name__)


def train_refit(builder: Any, trial: TrialRecord, model: Any, dm: Any, seed: int, epochs: int, path: str) -> None:
    """Train ``model`` (``trial``'s configuration) ``epochs`` epochs on ``dm``'s training plus validation data,
    seeded with ``seed``, with no validation, and save it to ``path``."""
    from lightning.fabric.utilities.seed import seed_everything

    from lightning_hpt.lightning.folds import full_view

    seed_everything(seed, workers=True, verbose=False)
    view = full_view(dm)
    with quiet_lightning(True):
        trainer = builder.evaluation_trainer(
            trial.params,
            max_epochs=epochs,
            logger=False,
            enable_checkpointing=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
            default_root_dir=os.path.dirname(path),
        )
        trainer.fit(model, datamodule=view)
        trainer.save_checkpoint(path)


def load_refit(builder: Any, trial: TrialRecord, path: str) -> Any:
    """The refit model of ``trial`` saved at ``path``, read as a trial's checkpoint is; ``None`` (with a warning
    if the file is there but unreadable) when it cannot be rebuilt or loaded."""
    if builder is None or not os.path.isfile(path):
        return None
    try:
        return load_first([dataclasses.replace(trial, checkpoint=path)], builder, "cpu")
    except HPTError as e:  # a test then tests the trial's best checkpoint, and records that it did
        log.warning("the study's refit model %r cannot be loaded: %s", path, e)
        return None
