"""Ctrl+C during a stacked group: its unfinished members are stored with every value they had reported, and
continue as they would have gone on: the pruner's decisions at the steps they had passed stand."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import lightning.pytorch as L
import pytest
import torch
from conftest import TinyData
from torch import nn

import lightning_hpt.reporting
from lightning_hpt import Float, HyperparameterSearch, Int, StackedExecutor
from lightning_hpt.trial import TrialState

STOP_AT = 3  # the group epoch in whose first step Ctrl+C comes (unless a test says another)
ARMED, PRESSED = threading.Event(), threading.Event()
AT = {"epoch": STOP_AT}


class PressesCtrlC(L.LightningModule):
    """A small regressor; its first training step of group epoch ``AT["epoch"]`` presses Ctrl+C (once, when armed)."""

    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.current_epoch == AT["epoch"] and ARMED.is_set() and not PRESSED.is_set():
            PRESSED.set()
            time.sleep(1.0)  # the driver records the members that ended before (a loaded machine is slow)
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


def _search(tmp_path, **kw: Any) -> HyperparameterSearch:
    return HyperparameterSearch(
        model=PressesCtrlC,
        datamodule=TinyData,
        space=kw.pop("space", {"model.lr": Float(0.01, 0.1, log=True)}),
        monitor="val_loss",
        mode="min",
        n_trials=kw.pop("n_trials", 3),
        seed=0,
        root=str(tmp_path),
        patience=None,
        trainer_kwargs={"accelerator": "cpu", "devices": 1, "max_epochs": 6, "logger": False},
        executor=kw.pop("executor", None) or StackedExecutor(stack=3, linger=0.2),
        verbose=False,
        **kw,
    )


def _press_ctrl_c(search: HyperparameterSearch, epoch: int, match: str | None = None) -> None:
    """Run ``search`` until Ctrl+C comes in the first step of its group epoch ``epoch``."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    AT["epoch"] = epoch
    ARMED.set()
    try:
        with pytest.raises(KeyboardInterrupt, match=match):
            search.run()
    finally:
        signal.signal(signal.SIGINT, previous)
        ARMED.clear()
        PRESSED.clear()


def test_ctrl_c_stores_the_values_the_members_reported_and_says_how_to_resume(tmp_path, monkeypatch):
    monkeypatch.setattr(lightning_hpt.reporting, "FLUSH_S", 1e9)  # values wait for the trial's end to be stored
    _press_ctrl_c(_search(tmp_path), STOP_AT, r"trials \[0, 1, 2\] are recorded as interrupted: run the same")
    trials = _search(tmp_path).result().trials
    for t in trials:
        assert t.state is TrialState.FAILED and t.error.startswith("interrupted"), t
        assert sorted(t.intermediate) == list(range(STOP_AT)), t.intermediate  # epochs 0 to 2 were validated
    resumed = _search(tmp_path).run().trials
    for t in resumed:
        assert t.state is TrialState.COMPLETE and t.attrs["resumed_at_step"] == STOP_AT
        assert sorted(t.intermediate) == list(range(6))


def test_a_continued_member_is_not_judged_again_at_a_rung_it_had_passed(tmp_path):
    """Trial 0 passes ASHA's first rung alone (trial 1 reports after it), trial 1 completes its one epoch,
    Ctrl+C comes in epoch 1: trial 0 continues and completes as in the uninterrupted run. Judged again at
    that rung against trial 1's better value, it was pruned on its rerun."""
    space = {"model.lr": Float(0.001, 0.5, log=True), "trainer.max_epochs": Int(1, 4)}
    first, second = {"model.lr": 0.002, "trainer.max_epochs": 4}, {"model.lr": 0.2, "trainer.max_epochs": 1}

    def search(name: str) -> HyperparameterSearch:
        return _search(tmp_path / name, space=space, n_trials=2, pruner="asha", enqueue=[first, second])

    alone = search("alone").run().trials
    _press_ctrl_c(search("stopped"), 1)
    stopped = search("stopped").run().trials  # the script run again
    assert alone[1].state is TrialState.COMPLETE and alone[1].value < alone[0].intermediate[0]  # the better at rung 0
    assert stopped[0].attrs["resumed_at_step"] == 1
    assert [t.state for t in stopped] == [t.state for t in alone] == [TrialState.COMPLETE] * 2
    assert sorted(stopped[0].intermediate) == sorted(alone[0].intermediate) == [0, 1, 2, 3]


class _CtrlCAsAMemberEnds(StackedExecutor):
    """Ctrl+C comes just as the group delivers a member that completed, before the driver can read it."""

    def _deliver(self, future: Any, outcome: Any) -> None:
        if outcome.state is TrialState.COMPLETE and ARMED.is_set() and not PRESSED.is_set():
            PRESSED.set()
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
            time.sleep(0.5)  # the driver handles Ctrl+C before this outcome is set
        super()._deliver(future, outcome)


def test_a_member_that_ends_as_ctrl_c_comes_is_recorded_as_it_ended(tmp_path, monkeypatch):
    monkeypatch.setitem(AT, "epoch", 10**6)  # the executor presses Ctrl+C here, not the model (another test set AT)
    space = {"model.lr": Float(0.01, 0.1, log=True), "trainer.max_epochs": Int(1, 8)}
    enqueue = [{"model.lr": 0.05, "trainer.max_epochs": 2}, {"model.lr": 0.02, "trainer.max_epochs": 8}]

    def search() -> HyperparameterSearch:
        executor = _CtrlCAsAMemberEnds(stack=2, linger=0.2)
        return _search(tmp_path, space=space, n_trials=2, enqueue=enqueue, executor=executor)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    ARMED.set()
    try:
        with pytest.raises(KeyboardInterrupt, match=r"trials \[1\] are recorded as interrupted"):
            search().run()
    finally:
        signal.signal(signal.SIGINT, previous)
        ARMED.clear()
        PRESSED.clear()
    trials = search().result().trials
    assert trials[0].state is TrialState.COMPLETE and sorted(trials[0].intermediate) == [0, 1]
    assert trials[1].state is TrialState.FAILED and trials[1].error.startswith("interrupted")
    again = search().run().trials  # the script run again: only the interrupted trial trains
    assert again[0].attempt == 1 and again[0].state is TrialState.COMPLETE
    assert again[1].attempt == 2 and again[1].attrs["resumed_at_step"] >= 1 and again[1].state is TrialState.COMPLETE
