"""Ctrl+C during a stacked group: its unfinished members are stored with every value they had reported."""

from __future__ import annotations

import signal
import threading
import time

import lightning.pytorch as L
import pytest
import torch
from conftest import TinyData
from torch import nn

import lightning_hpt.reporting
from lightning_hpt import Float, HyperparameterSearch, StackedExecutor
from lightning_hpt.trial import TrialState

STOP_AT = 3  # the group epoch in whose first step Ctrl+C comes
ARMED, PRESSED = threading.Event(), threading.Event()


class PressesCtrlC(L.LightningModule):
    """A small regressor; its first training step of epoch ``STOP_AT`` presses Ctrl+C (once, when armed)."""

    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.current_epoch == STOP_AT and ARMED.is_set() and not PRESSED.is_set():
            PRESSED.set()
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # Ctrl+C, in the driver's thread
        if PRESSED.is_set():
            time.sleep(1.0)  # the driver stops the group before its next validation run
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def _search(tmp_path) -> HyperparameterSearch:
    return HyperparameterSearch(
        model=PressesCtrlC,
        datamodule=TinyData,
        space={"model.lr": Float(0.01, 0.1, log=True)},
        monitor="val_loss",
        mode="min",
        n_trials=3,
        seed=0,
        root=str(tmp_path),
        patience=None,
        trainer_kwargs={"accelerator": "cpu", "devices": 1, "max_epochs": 6, "logger": False},
        executor=StackedExecutor(stack=3, linger=0.2),
        verbose=False,
    )


def test_ctrl_c_stores_the_values_the_members_reported_and_says_how_to_resume(tmp_path, monkeypatch):
    monkeypatch.setattr(lightning_hpt.reporting, "FLUSH_S", 1e9)  # values wait for the trial's end to be stored
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    ARMED.set()
    try:
        with pytest.raises(KeyboardInterrupt, match=r"trials \[0, 1, 2\] are recorded as interrupted: run the same"):
            _search(tmp_path).run()
    finally:
        signal.signal(signal.SIGINT, previous)
        ARMED.clear()
        PRESSED.clear()
    trials = _search(tmp_path).result().trials
    for t in trials:
        assert t.state is TrialState.FAILED and t.error.startswith("interrupted"), t
        assert sorted(t.intermediate) == list(range(STOP_AT)), t.intermediate  # epochs 0 to 2 were validated
    resumed = _search(tmp_path).run().trials
    for t in resumed:
        assert t.state is TrialState.COMPLETE and t.attrs["resumed_at_step"] == STOP_AT
        assert sorted(t.intermediate) == list(range(6))
