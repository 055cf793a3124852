"""Trial builders and the Lightning helpers they share: real Lightning runs on tiny data."""

from __future__ import annotations

import lightning.pytorch as L
import pytest
from conftest import FAST, TinyData, TinyModel

from lightning_hpt.lightning.schedule import validation_schedule


class CountValidations(L.Callback):
    def __init__(self) -> None:
        self.runs = 0

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.runs += 1


@pytest.mark.parametrize("interval", [0.25, 0.3, 0.4, 0.5, 1.0])
def test_validation_runs_per_epoch_match_lightning(tmp_path, interval):
    """Issue 14: one helper counts validation runs per epoch; it was ceil(1/x) in one place and 1/x in another.

    Lightning validates after each fraction x of the epoch: floor(1/x) times (0.3: at 30%, 60% and 90%).
    """
    counter = CountValidations()
    trainer = L.Trainer(
        **{**FAST, "max_epochs": 1}, val_check_interval=interval, callbacks=[counter], default_root_dir=tmp_path
    )
    trainer.fit(TinyModel(), datamodule=TinyData(batch_size=4, n=80))  # 20 training batches
    assert validation_schedule({"val_check_interval": interval}) == (1, counter.runs)


def test_validation_schedule_by_batches_is_unknown():
    assert validation_schedule({"val_check_interval": 50}) is None
    assert validation_schedule({"check_val_every_n_epoch": 3}) == (3, 1)
