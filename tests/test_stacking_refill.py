"""A running stacked group gives the slots of its ended members to waiting trials of the same structure."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import wait
from dataclasses import replace

import pytest
import torch
from conftest import FAST, TinyData, TinyModel
from test_stacking import TRAINER, Regressor, _alone, _jobs, _PruneAt, _Stops
from test_stacking import FixedOrderData as FixedData  # the same batches every epoch: a late member sees them

from lightning_hpt import Float, HyperparameterSearch, Int
from lightning_hpt.exceptions import ConfigurationError
from lightning_hpt.lightning.runner import run_trial
from lightning_hpt.stacking import StackedExecutor, group_key, run_jobs
from lightning_hpt.stacking.grouping import PER_MEMBER
from lightning_hpt.trial import TrialState


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
        {"model.lr": 0.02, "trainer.max_epochs": 100},  # still training when trial 2 arrives
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


class _Waiting:
    """A source of waiting trials (as the executor is): hands ``items`` over at the first call, and keeps what
    comes back."""

    def __init__(self, items) -> None:
        self.items, self.calls, self.back = list(items), [], []

    def take(self, n, key):
        self.calls.append((n, key))
        taken, self.items = self.items[:n], self.items[n:]
        return taken

    def give_back(self, items) -> None:
        self.back += items


def test_an_interrupted_trial_continues_from_its_checkpoint_in_a_slot_it_joins(tmp_path):
    configs = [{"model.lr": 0.03, "trainer.max_epochs": 6}, {"model.lr": 0.01, "trainer.max_epochs": 6}]
    first_jobs = _jobs(tmp_path, Regressor, configs, data=FixedData)
    stop = threading.Event()
    # stopped as trial 0 reports step 2: the epoch cut short does not count, so it continues at step 2
    first = run_jobs([(first_jobs[0], _Stops(stop, stop_at=2)), (first_jobs[1], _Stops(stop))], stop=stop)
    assert all(o.interrupted for o in first)
    assert os.path.exists(os.path.join(first_jobs[0].trial_dir, "resume", "member.ckpt"))

    configs = [{"model.lr": 0.05, "trainer.max_epochs": n} for n in (2, 9)]
    others = [replace(j, number=10 + j.number) for j in _jobs(tmp_path / "others", Regressor, configs, data=FixedData)]
    resumed = replace(first_jobs[0], attempt=2)
    got = []
    source = _Waiting([(resumed, _Stops(threading.Event()), got.append)])
    stop.clear()
    run_jobs([(j, None) for j in others], stop=stop, source=source)
    assert source.calls[0] == (1, group_key(others[0].params, PER_MEMBER))  # at the end of trial 10's 2 epochs
    (joined,) = got
    assert joined.attrs["resumed_at_step"] == 2 and joined.attrs["stacked"]["group"] == [10, 11, 0]
    alone = run_trial(replace(first_jobs[0], trial_dir=str(tmp_path / "alone")))
    _same_values(alone, joined)
    assert not os.path.exists(os.path.join(first_jobs[0].trial_dir, "resume"))  # removed at its end


def test_a_trial_that_cannot_join_is_given_back(tmp_path):
    jobs = _jobs(tmp_path, AdamOrSGD, [{"model.lr": 0.05, "trainer.max_epochs": n} for n in (1, 3)], data=FixedData)
    sgd = _jobs(tmp_path / "sgd", AdamOrSGD, [{"model.lr": 0.05, "model.momentum": 0.5, "trainer.max_epochs": 2}])
    item = (replace(sgd[0], number=5, build=jobs[0].build), None, lambda outcome: None)
    source = _Waiting([item])
    outcomes = run_jobs([(j, None) for j in jobs], source=source)
    assert [o.state for o in outcomes] == [TrialState.COMPLETE] * 2
    assert source.back == [item] and outcomes[1].attrs["stacked"]["group"] == [0, 1]


@pytest.mark.parametrize("names", [("model.lr",), ["dropout", "optimizer.weight_decay"]])
def test_per_member_names_with_their_section_are_refused_with_the_names_to_use(names):
    # a full parameter name ('model.lr') once left 'lr' structural: every trial its own group, silently
    fixed = tuple(n.split(".", 1)[-1] for n in names)
    with pytest.raises(ConfigurationError, match=r"without their section \('lr', not 'model.lr'") as info:
        StackedExecutor(per_member=names)
    assert f"got per_member={names!r}: use per_member={fixed!r}" in str(info.value)
    assert StackedExecutor(per_member=("lr", "backbone.dropout")).per_member == ("lr", "backbone.dropout")


def test_a_per_member_name_that_is_not_an_init_argument_is_refused_before_anything_is_written(tmp_path):
    # "lrr" let nothing differ inside a group: every trial ran alone, silently
    search = HyperparameterSearch(
        TinyModel, TinyData, {"model.lr": Float(0.01, 0.1, log=True)}, executor=StackedExecutor(per_member=("lrr",)),
        n_trials=2, root=tmp_path, verbose=False, trainer_kwargs=FAST,
    )  # fmt: skip
    with pytest.raises(ConfigurationError, match=r"per_member names \['lrr'\], which is not an init argument") as info:
        search.run()
    assert "of TinyModel (['lr', 'hidden'," in str(info.value) and "did you mean 'lr' for 'lrr'?" in str(info.value)
    assert list(tmp_path.iterdir()) == []
