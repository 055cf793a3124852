"""A running stacked group gives the slots of its ended members to waiting trials of the same structure."""

from __future__ import annotations

import time
from concurrent.futures import wait

import pytest
import torch
from test_stacking import TRAINER, OrderedData, Regressor, _alone, _jobs, _PruneAt
from torch.utils.data import DataLoader

from lightning_hpt import Float, HyperparameterSearch, Int
from lightning_hpt.stacking import StackedExecutor
from lightning_hpt.trial import TrialState


class FixedData(OrderedData):
    """The same batches in the same order every epoch: a member that joins late sees what it sees alone."""

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size)


class AdamOrSGD(Regressor):
    """AdamW, or SGD when ``momentum`` is set: a per-member argument that changes the optimizer's kind."""

    def __init__(self, lr: float = 0.05, momentum: float = 0.0, hidden: int = 8) -> None:
        super().__init__(lr=lr, hidden=hidden)
        self.save_hyperparameters()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        h = self.hparams
        if h.momentum:
            return torch.optim.SGD(self.parameters(), lr=h.lr, momentum=h.momentum)
        return torch.optim.AdamW(self.parameters(), lr=h.lr)


def _same_values(a, b) -> None:
    assert b.state is a.state is TrialState.COMPLETE
    assert list(b.intermediate) == list(a.intermediate)
    assert list(b.intermediate.values()) == pytest.approx(list(a.intermediate.values()), rel=1e-4, abs=1e-6)


def _run(executor: StackedExecutor, jobs, first: int, after_first_ends) -> list:
    """Submit ``jobs[:first]``; once the first of them ends, the rest (the driver refilling a freed slot)."""
    futures = [executor.submit(j, _PruneAt(None)) for j in jobs[:first]]
    wait(futures[:1], timeout=300)
    assert futures[0].result().state is TrialState.COMPLETE
    futures += [executor.submit(j, _PruneAt(None)) for j in jobs[first:]]
    after_first_ends(futures)
    return [f.result(timeout=300) for f in futures]


def test_a_trial_takes_the_slot_of_an_ended_member_and_trains_as_alone(tmp_path):
    params = [
        {"model.lr": 0.05, "trainer.max_epochs": 2},
        {"model.lr": 0.02, "trainer.max_epochs": 40},  # still training when trial 2 arrives
        {"model.lr": 0.08, "trainer.max_epochs": 3},
    ]
    jobs = _jobs(tmp_path, Regressor, params, data=FixedData)
    executor = StackedExecutor(stack=2, linger=0.2)
    executor.start(jobs[0].build)
    try:
        outcomes = _run(executor, jobs, 2, lambda futures: None)
    finally:
        executor.shutdown()
    assert outcomes[2].attrs["stacked"]["group"] == [0, 1, 2]  # it joined the running group
    assert outcomes[0].attrs["stacked"]["group"] == [0, 1]  # as it was when trial 0 ended
    for a, b in zip(_alone(tmp_path, jobs), outcomes, strict=True):
        _same_values(a, b)
    ckpt = torch.load(outcomes[2].checkpoint, weights_only=False)
    assert ckpt["epoch"] == outcomes[2].best_step  # its own epochs, not the group's
    assert Regressor.load_from_checkpoint(outcomes[2].checkpoint).hparams.lr == 0.08


def test_a_trial_whose_optimizer_the_group_cannot_follow_waits_for_the_next_group(tmp_path):
    params = [
        {"model.lr": 0.05, "trainer.max_epochs": 2},
        {"model.lr": 0.02, "trainer.max_epochs": 6},
        {"model.lr": 0.05, "model.momentum": 0.5, "trainer.max_epochs": 2},  # SGD: the group steps AdamW
    ]
    jobs = _jobs(tmp_path, AdamOrSGD, params, data=FixedData)
    executor = StackedExecutor(stack=2, linger=0.2)
    executor.start(jobs[0].build)
    try:
        outcomes = _run(executor, jobs, 2, lambda futures: futures[1].result(timeout=300))
    finally:
        executor.shutdown()
    assert outcomes[1].attrs["stacked"]["group"] == [0, 1]
    assert outcomes[2].attrs["stacked"]["group"] == [2]
    for a, b in zip(_alone(tmp_path, jobs), outcomes, strict=True):
        _same_values(a, b)


def test_refill_false_keeps_each_group_to_the_trials_it_started_with(tmp_path):
    params = [
        {"model.lr": 0.05, "trainer.max_epochs": 2},
        {"model.lr": 0.02, "trainer.max_epochs": 12},
        {"model.lr": 0.08, "trainer.max_epochs": 2},
    ]
    jobs = _jobs(tmp_path, Regressor, params, data=FixedData)
    executor = StackedExecutor(stack=2, linger=0.2, refill=False)
    executor.start(jobs[0].build)
    try:
        outcomes = _run(executor, jobs, 2, lambda futures: None)
    finally:
        executor.shutdown()
    assert [o.attrs["stacked"]["group"] for o in outcomes] == [[0, 1], [0, 1], [2]]


def test_a_search_with_more_trials_than_slots_gets_each_trials_values_as_alone(tmp_path):
    space = {"model.lr": Float(0.005, 0.1, log=True), "trainer.max_epochs": Int(1, 6)}

    def search(name: str, executor=None) -> HyperparameterSearch:
        return HyperparameterSearch(
            model=Regressor,
            datamodule=FixedData,
            space=space,
            monitor="val_loss",
            mode="min",
            strategy="random",
            n_trials=9,
            seed=5,
            root=str(tmp_path / name),
            trainer_kwargs=TRAINER,
            patience=None,
            executor=executor,
            verbose=False,
        )

    solo = search("solo").run()
    t0 = time.monotonic()
    stacked = search("stacked", StackedExecutor(stack=3, linger=0.2)).run()
    assert time.monotonic() - t0 < 300
    assert any(len(t.attrs["stacked"]["group"]) > 3 for t in stacked.trials)  # some trial joined a running group
    for a, b in zip(solo.trials, stacked.trials, strict=True):
        assert b.params == a.params
        _same_values(a, b)
        assert b.checkpoint and b.best_step == a.best_step


def test_refill_must_be_a_bool():
    with pytest.raises(Exception, match=r"refill must be True or False, got refill='yes'"):
        StackedExecutor(refill="yes")  # type: ignore[arg-type]
