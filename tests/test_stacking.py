"""Stacked trials: members of one stacked model behave, and are stored, as ordinary trials."""

from __future__ import annotations

import csv
import gc
import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import weakref
from concurrent.futures import wait
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import lightning.pytorch as L
import pytest
import torch
import torchmetrics
from conftest import default_sigint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_hpt
from lightning_hpt import Categorical, Float, HyperparameterSearch, Int, LocalExecutor
from lightning_hpt.exceptions import ConfigurationError
from lightning_hpt.executors import EXECUTORS
from lightning_hpt.lightning.builder import TrialBuilder
from lightning_hpt.lightning.module_builder import ModuleTrialBuilder
from lightning_hpt.lightning.resume import Resume
from lightning_hpt.lightning.runner import TrialBuild, TrialJob, run_trial
from lightning_hpt.stacking import StackedExecutor, group_key, refusal, run_jobs
from lightning_hpt.stacking.module import _MemberDropout
from lightning_hpt.testing.executor import ExecutorContract
from lightning_hpt.trial import Direction, TrialState

INSTANCES: list[L.LightningModule] = []


class OrderedData(L.LightningDataModule):
    """Shuffled batches whose order comes from the loader's own generator: the same in every run."""

    def __init__(self, batch_size: int = 16) -> None:
        super().__init__()
        self.batch_size = batch_size

    def setup(self, stage: str | None = None) -> None:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(96, 4, generator=g)
        y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(96, generator=g)
        self.train_set = TensorDataset(x[:64], y[:64, None])
        self.val_set = TensorDataset(x[64:], y[64:, None])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_set, batch_size=self.batch_size, shuffle=True, generator=torch.Generator().manual_seed(1)
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=12)  # 32 points: batches of 12, 12 and 8 (a weighted mean)


class Regressor(L.LightningModule):
    """A small MLP; ``hidden`` is structural, the rest per member."""

    def __init__(self, lr: float = 0.05, weight_decay: float = 0.0, hidden: int = 8, dropout: float = 0.0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(4, hidden), nn.Tanh(), nn.Dropout(dropout), nn.Linear(hidden, 1))
        INSTANCES.append(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)


class SGDRegressor(Regressor):
    def __init__(self, lr: float = 0.05, momentum: float = 0.0, weight_decay: float = 0.0) -> None:
        super().__init__(lr=lr, weight_decay=weight_decay)
        self.save_hyperparameters()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        h = self.hparams
        return torch.optim.SGD(self.parameters(), lr=h.lr, momentum=h.momentum, weight_decay=h.weight_decay)


class WithBatchNorm(Regressor):
    def __init__(self, lr: float = 0.05, weight_decay: float = 0.0, hidden: int = 8, dropout: float = 0.0) -> None:
        super().__init__(lr, weight_decay, hidden, dropout)
        self.net = nn.Sequential(nn.Linear(4, hidden), nn.BatchNorm1d(hidden), nn.Tanh(), nn.Linear(hidden, 1))


class DataDependent(Regressor):
    """Branches on a tensor's value in training_step: vmap refuses it."""

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        return loss * 2 if loss > 1e6 else loss  # a Python branch on a tensor


class WithScheduler(Regressor):
    def configure_optimizers(self) -> tuple[list, list]:
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1)]


class TrainMetric(Regressor):
    """Updates a torchmetrics metric (state updated in place) inside training_step."""

    def __init__(self, lr: float = 0.05, weight_decay: float = 0.0, hidden: int = 8, dropout: float = 0.0) -> None:
        super().__init__(lr, weight_decay, hidden, dropout)
        self.train_mse = torchmetrics.MeanSquaredError()

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        out = self(x)
        self.train_mse(out, y)
        self.log("train_mse", self.train_mse)
        return nn.functional.mse_loss(out, y)


class TrainAccuracy(TrainMetric):
    """A classification metric updated in training_step and logged once an epoch, as Lightning's docs show it."""

    def __init__(self, lr: float = 0.05, weight_decay: float = 0.0, hidden: int = 8, dropout: float = 0.0) -> None:
        super().__init__(lr, weight_decay, hidden, dropout)
        self.train_acc = torchmetrics.classification.MulticlassAccuracy(num_classes=2)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        out = self(x)
        self.train_acc(torch.cat([-out, out], dim=-1), (y.squeeze(-1) > 0).long())
        self.log("train_acc", self.train_acc, on_step=False, on_epoch=True)
        return nn.functional.mse_loss(out, y)


SPACE = {
    "model.lr": Float(0.005, 0.1, log=True),
    "model.weight_decay": Float(1e-4, 1e-1, log=True),
    "model.hidden": Categorical([4, 8]),
    "trainer.max_epochs": Int(2, 4),
}
TRAINER = {"accelerator": "cpu", "devices": 1, "log_every_n_steps": 1}


def _search(tmp_path, name: str, executor=None, model=Regressor, n_trials: int = 6, **kw) -> HyperparameterSearch:
    return HyperparameterSearch(
        model=model,
        datamodule=OrderedData,
        space=kw.pop("space", SPACE),
        monitor="val_loss",
        mode="min",
        strategy="random",
        n_trials=n_trials,
        seed=3,
        root=str(tmp_path / name),
        trainer_kwargs=TRAINER,
        patience=None,
        executor=executor,
        verbose=False,
        **kw,
    )


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The same seeded study run as ordinary trials and as stacked groups of up to 6."""
    tmp = tmp_path_factory.mktemp("stack")
    solo = _search(tmp, "solo").run()
    stacked = _search(tmp, "stacked", executor=StackedExecutor(stack=6, linger=0.2)).run()
    return solo, stacked


def test_each_member_matches_its_trial_run_alone(pair):
    solo, stacked = pair
    assert len(stacked.trials) == len(solo.trials) == 6
    for a, b in zip(solo.trials, stacked.trials, strict=True):
        assert b.params == a.params and b.state is a.state is TrialState.COMPLETE
        assert sorted(b.intermediate) == sorted(a.intermediate) == list(range(a.params["trainer.max_epochs"]))
        for step, value in a.intermediate.items():
            assert b.intermediate[step] == pytest.approx(value, rel=1e-4, abs=1e-6)
        assert b.value == pytest.approx(a.value, rel=1e-4) and b.best_step == a.best_step
    assert stacked.best_trial.number == solo.best_trial.number


def test_groups_share_structural_parameters_only(pair):
    _, stacked = pair
    groups = {tuple(t.attrs["stacked"]["group"]) for t in stacked.trials}
    assert sum(len(g) for g in groups) == 6 and len(groups) == 2  # model.hidden takes both of its values
    by_number = {t.number: t for t in stacked.trials}
    for g in groups:
        assert len({by_number[n].params["model.hidden"] for n in g}) == 1
        assert len({by_number[n].params["model.lr"] for n in g}) == len(g)  # per-member values differ
    assert group_key({"model.lr": 0.1, "model.hidden": 4, "trainer.max_epochs": 3}) == group_key(
        {"model.lr": 0.2, "model.hidden": 4, "trainer.max_epochs": 5}
    )


def test_members_are_stored_and_loaded_as_ordinary_trials(pair):
    solo, stacked = pair
    best = stacked.best_trial
    assert best.checkpoint and os.path.exists(best.checkpoint)
    model = stacked.load_best_model()
    direct = Regressor.load_from_checkpoint(best.checkpoint)
    reference = torch.load(solo.best_trial.checkpoint, weights_only=True)["state_dict"]
    for k, v in model.state_dict().items():
        assert torch.allclose(v, reference[k], rtol=1e-4, atol=1e-6), k
        assert torch.equal(v, direct.state_dict()[k])
    assert direct.hparams.lr == best.params["model.lr"]
    assert "train_loss" in best.attrs["metrics"] and "val_loss" in best.attrs["metrics"]
    trial_dir = os.path.dirname(os.path.dirname(best.checkpoint))
    assert os.path.isdir(os.path.join(trial_dir, "tb")) is (importlib.util.find_spec("tensorboard") is not None)
    with open(os.path.join(trial_dir, "csv", "metrics.csv")) as f:  # where an ordinary trial's CSV log goes
        rows = list(csv.DictReader(f))
    steps = sorted(best.intermediate)
    assert len(steps) > 1
    assert [float(r["val_loss"]) for r in rows] == pytest.approx([best.intermediate[s] for s in steps])
    if importlib.util.find_spec("tensorboard") is not None:  # the TensorBoard log has every step's value too
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(os.path.join(trial_dir, "tb")).Reload()
        scalars = events.Scalars("val_loss")
        solo_dir = os.path.dirname(os.path.dirname(solo.best_trial.checkpoint))  # the same trial, alone
        alone = EventAccumulator(os.path.join(solo_dir, "tb")).Reload().Scalars("val_loss")
        assert [e.step for e in scalars] == [e.step for e in alone]  # at the trial's global steps, as alone
        assert [e.value for e in scalars] == pytest.approx([best.intermediate[s] for s in steps])


class ValMetric(Regressor):
    """Logs a torchmetrics metric (its state updated in place) in validation_step."""

    def __init__(self, lr: float = 0.05, weight_decay: float = 0.0, hidden: int = 8, dropout: float = 0.0) -> None:
        super().__init__(lr, weight_decay, hidden, dropout)
        self.val_mae = torchmetrics.MeanAbsoluteError()

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        x, y = batch
        self.val_mae(self(x), y)
        self.log("val_mae", self.val_mae)


class Manual(Regressor):
    def __init__(self, lr: float = 0.05) -> None:
        super().__init__(lr)
        self.automatic_optimization = False


class Hooked(Regressor):
    def on_train_epoch_start(self) -> None:
        self.seen_epochs = self.current_epoch


class Tied(Regressor):
    def __init__(self, lr: float = 0.05) -> None:
        super().__init__(lr)
        self.first = self.net[0]  # the same Linear reachable twice: its parameters are shared


@pytest.mark.parametrize(
    ("model", "trainer", "words"),
    [
        (Manual, {}, "uses manual optimization"),
        (Hooked, {}, "overrides on_train_epoch_start, which a stacked group does not call"),
        (Tied, {}, "shares (ties) parameters"),
        (Regressor, {"gradient_clip_val": 1.0}, "['gradient_clip_val'] act through automatic optimization"),
        (Regressor, {"accumulate_grad_batches": 2}, "['accumulate_grad_batches']"),
        (WithBatchNorm, {}, "'net.1' (BatchNorm1d) updates running statistics"),
        (Regressor, {"gradient_clip_val": None, "accumulate_grad_batches": 1}, None),
    ],
)
def test_a_refusal_names_what_a_stacked_group_cannot_honour(model, trainer, words):
    reason = refusal(model(), L.LightningModule, trainer)
    assert reason == words if words is None else words in reason


class ManualTiedClipped(Tied):
    def __init__(self, lr: float = 0.05) -> None:
        super().__init__(lr)
        self.automatic_optimization = False


def test_a_refusal_names_every_reason_at_once():
    """A user fixes them all in one go, not one per run."""
    reason = refusal(ManualTiedClipped(), L.LightningModule, {"gradient_clip_val": 1.0})
    assert reason.count("; ") == 2 and "manual optimization" in reason and "shares (ties)" in reason
    assert "['gradient_clip_val']" in reason


def test_per_member_names_the_arguments_that_may_differ_inside_a_group():
    a = {"model.lr": 0.1, "model.dropout": 0.1, "optimizer.betas": 0.9, "trainer.max_epochs": 3, "model.hidden": 4}
    b = {**a, "model.lr": 0.2, "model.dropout": 0.2, "optimizer.betas": 0.8, "trainer.max_epochs": 5}
    assert group_key(a) == group_key(b)
    assert group_key(a, per_member=("lr",)) != group_key(b, per_member=("lr",))  # dropout is structural then
    assert group_key(a) != group_key({**a, "model.hidden": 8})
    assert group_key(a) != group_key({**a, "trainer.gradient_clip_val": 1.0})


def test_repeats_and_trainer_callbacks_run_as_ordinary_trials_with_the_reason(tmp_path):
    params = [{"model.lr": lr, "trainer.max_epochs": 1} for lr in (0.01, 0.05)]
    for o in run_jobs([(j, None) for j in _jobs(tmp_path / "repeats", Regressor, params, repeats=2)]):
        assert o.state is TrialState.COMPLETE and len(o.attrs["runs"]) == 2
        assert "cross-validation and repeats" in o.attrs["stacked"]["refused"]
    jobs = _jobs(tmp_path / "callbacks", Regressor, params)
    builder = ModuleTrialBuilder(Regressor, OrderedData, {**TRAINER, "callbacks": [L.Callback()]})
    jobs = [replace(j, build=replace(j.build, builder=builder)) for j in jobs]
    for o in run_jobs([(j, None) for j in jobs]):
        assert o.state is TrialState.COMPLETE and "trainer_kwargs callbacks" in o.attrs["stacked"]["refused"]


def test_a_refusal_is_a_warning_once_per_executor(tmp_path, caplog):
    """Issue: every trial refused for the same reason (a LightningCLI project's) logged the same warning."""
    params = [{"model.lr": lr, "trainer.max_epochs": 1} for lr in (0.01, 0.02, 0.05)]
    builder = ModuleTrialBuilder(Regressor, OrderedData, {**TRAINER, "callbacks": [L.Callback()]})
    jobs = [replace(j, build=replace(j.build, builder=builder)) for j in _jobs(tmp_path, Regressor, params)]
    said: set[str] = set()
    with caplog.at_level(logging.WARNING, logger="lightning_hpt.stacking"):
        for job in jobs:  # one take of the executor each, as when trials arrive one at a time
            run_jobs([(job, None)], said=said)
    warnings = [r for r in caplog.records if "not stacked" in r.getMessage()]
    assert len(warnings) == 1 and "said once" in warnings[0].getMessage()


def test_each_member_drops_out_at_its_own_rate(tmp_path):
    params = [{"model.lr": 0.02, "model.dropout": p, "trainer.max_epochs": 2} for p in (0.0, 0.9)]
    jobs = _jobs(tmp_path, Regressor, params)
    stacked = run_jobs([(j, None) for j in jobs])
    no_dropout = [jobs[0], replace(jobs[1], params={**params[1], "model.dropout": 0.0})]
    alone = _alone(tmp_path, no_dropout)
    # without dropout, a member trains as alone: it did not take its neighbour's rate of 0.9
    assert list(stacked[0].intermediate.values()) == pytest.approx(list(alone[0].intermediate.values()), rel=1e-4)
    # with it, a member does not train as it would without
    assert list(stacked[1].intermediate.values()) != pytest.approx(list(alone[1].intermediate.values()), rel=1e-3)


def test_each_member_computes_its_own_torchmetrics(tmp_path):
    params = [{"model.lr": lr, "trainer.max_epochs": 2} for lr in (0.01, 0.05)]
    jobs = _jobs(tmp_path, ValMetric, params)
    stacked, alone = run_jobs([(j, None) for j in jobs]), _alone(tmp_path, jobs)
    assert stacked[0].metrics["val_mae"] != pytest.approx(stacked[1].metrics["val_mae"], rel=1e-3)
    for s, a in zip(stacked, alone, strict=True):
        assert s.metrics["val_mae"] == pytest.approx(a.metrics["val_mae"], rel=1e-4)
        assert list(s.intermediate.values()) == pytest.approx(list(a.intermediate.values()), rel=1e-4)


class _PruneAt:
    answers = True  # a driver's reporter says whether it may answer "stop" (Executor.submit reads it)

    def __init__(self, step: int | None) -> None:
        self.step, self.seen = step, []

    def report(self, step: int, value: float) -> bool:
        self.seen.append(step)
        return step == self.step


def _jobs(tmp_path, model, params_list, data=OrderedData, **build_kw) -> list[TrialJob]:
    build = TrialBuild(
        ModuleTrialBuilder(model, data, TRAINER),
        monitor="val_loss",
        direction=Direction.MINIMIZE,
        patience=None,
        **build_kw,
    )
    return [TrialJob(build, n, p, 0, str(tmp_path / f"trial_{n}")) for n, p in enumerate(params_list)]


def _alone(tmp_path, jobs: list[TrialJob]) -> list:
    return [run_trial(replace(j, trial_dir=str(tmp_path / "alone" / str(j.number)))) for j in jobs]


def test_sgd_momentum_and_weight_decay_per_member(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="lightning_hpt.stacking")
    params = [
        {"model.lr": 0.02, "model.momentum": 0.0, "model.weight_decay": 0.0, "trainer.max_epochs": 3},
        {"model.lr": 0.01, "model.momentum": 0.9, "model.weight_decay": 0.01, "trainer.max_epochs": 3},
        {"model.lr": 0.05, "model.momentum": 0.5, "model.weight_decay": 0.0, "trainer.max_epochs": 2},
    ]
    jobs = _jobs(tmp_path, SGDRegressor, params)
    stacked = run_jobs([(j, None) for j in jobs], per_member=("lr", "momentum", "weight_decay"))
    assert {tuple(o.attrs["stacked"]["group"]) for o in stacked} == {(0, 1, 2)}
    assert "3 members: one vectorized update" in caplog.text
    for a, b in zip(_alone(tmp_path, jobs), stacked, strict=True):
        assert list(b.intermediate) == list(a.intermediate)
        assert list(b.intermediate.values()) == pytest.approx(list(a.intermediate.values()), rel=1e-4, abs=1e-6)


def test_a_pruned_member_stops_while_the_others_go_on(tmp_path):
    params = [{"model.lr": lr, "trainer.max_epochs": 4} for lr in (0.01, 0.02, 0.05)]
    jobs = _jobs(tmp_path, Regressor, params)
    reporters = [_PruneAt(None), _PruneAt(0), _PruneAt(None)]
    del INSTANCES[:]
    outcomes = run_jobs(list(zip(jobs, reporters, strict=True)))
    assert [o.state for o in outcomes] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE]
    assert reporters[1].seen == [0] and reporters[0].seen == reporters[2].seen == [0, 1, 2, 3]
    assert list(outcomes[1].intermediate) == [0]
    pruned = INSTANCES[1]  # the member's own module: its parameters are views of its slice
    saved = torch.load(outcomes[1].checkpoint, weights_only=True)["state_dict"]
    assert all(torch.equal(v, saved[k]) for k, v in pruned.state_dict().items())  # no update after step 0
    kept = torch.load(outcomes[0].checkpoint, weights_only=True)["state_dict"]
    assert outcomes[0].best_step == 3
    assert all(torch.equal(v, kept[k]) for k, v in INSTANCES[0].state_dict().items())
    alone = _alone(tmp_path, jobs)  # the other members trained on as they would alone
    for i in (0, 2):
        assert list(outcomes[i].intermediate.values()) == pytest.approx(list(alone[i].intermediate.values()), rel=1e-4)


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        (WithBatchNorm, "running statistics"),
        (DataDependent, "vmap"),
        (TrainMetric, "unable to batch"),
        (TrainAccuracy, "such as a torchmetrics metric: compute training metrics with torchmetrics.functional"),
        (WithScheduler, "schedulers"),
    ],
)
def test_a_model_vmap_cannot_run_falls_back_to_ordinary_trials(tmp_path, model, reason):
    params = [{"model.lr": lr, "trainer.max_epochs": 2} for lr in (0.01, 0.05)]
    outcomes = run_jobs([(j, None) for j in _jobs(tmp_path, model, params)])
    for o in outcomes:
        assert o.state is TrialState.COMPLETE and sorted(o.intermediate) == [0, 1]
        assert reason in o.attrs["stacked"]["refused"]


def test_dropout_rate_is_each_members_own():
    drop = _MemberDropout(0.0).train()
    rates = torch.tensor([0.0, 0.25, 0.75])
    x = torch.ones(20000)

    def run(p: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(drop, {"p": p}, (x,))

    out = torch.func.vmap(run, randomness="different")(rates)
    zeros = (out == 0).float().mean(1)
    assert zeros.tolist() == pytest.approx([0.0, 0.25, 0.75], abs=0.02)
    kept = out.sum(1) / len(x)  # inverted dropout keeps the expected value
    assert kept.tolist() == pytest.approx([1.0, 1.0, 1.0], abs=0.05)
    assert not torch.equal(out[1] == 0, out[2][: len(x)] == 0)


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"stack": 0}, "stack"),
        ({"stack": 2.5}, "stack"),
        ({"linger": -1}, "linger"),
        ({"per_member": [1]}, "per_member"),
    ],
)
def test_bad_arguments_are_refused(kwargs, word):
    with pytest.raises(ConfigurationError, match=word):
        StackedExecutor(**kwargs)


class TestStackedExecutorContract(ExecutorContract):
    """The suite every executor passes; each trial here is a group of its own (their structures differ)."""

    def make_executor(self) -> StackedExecutor:
        return StackedExecutor(stack=2, linger=0.05)


def test_shutdown_ends_the_running_group_as_interrupted(tmp_path):
    from lightning_hpt.testing.executor import ContractModel, RecordingReporter, contract_build

    executor = StackedExecutor(stack=2, linger=0.05)
    executor.start(contract_build())
    marker = tmp_path / "started"
    params = {"model.sleep": 0.2, "model.marker": str(marker), "trainer.max_epochs": 50}
    jobs = [
        TrialJob(contract_build(), n, {**params, "model.lr": 0.01 * (n + 1)}, 0, str(tmp_path / f"t{n}"))
        for n in (0, 1)
    ]
    futures = [executor.submit(j, RecordingReporter()) for j in jobs]
    deadline = time.monotonic() + 120
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists() and ContractModel
    t0 = time.monotonic()
    executor.shutdown()
    assert time.monotonic() - t0 < 30  # the group stopped at its next step, not after 50 epochs
    outcomes = [f.result(timeout=1) for f in futures]
    assert all(o.state is TrialState.FAILED and o.interrupted == "interrupted" for o in outcomes)


@pytest.mark.slow
def test_an_executor_passed_in_has_its_thread_joined_before_the_interpreter_ends(tmp_path):
    # its group's last clean-up once ran while the interpreter ended: "terminate called", exit status -6
    code = f"""
import atexit, sys, threading
sys.path.insert(0, {str(Path(__file__).parent)!r})
atexit.register(lambda: print("ALIVE", [t.name for t in threading.enumerate() if "stacked" in t.name]))
from conftest import FAST, TinyData, TinyModel
from lightning_hpt import Float, HyperparameterSearch, StackedExecutor
space = {{"model.lr": Float(0.01, 0.1, log=True)}}
HyperparameterSearch(TinyModel, TinyData, space, executor=StackedExecutor(stack=2, linger=0.05), n_trials=2,
                     root={str(tmp_path)!r}, verbose=False, trainer_kwargs=FAST).run()
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ALIVE []" in out.stdout, out.stdout  # atexit runs last-registered first: the executor's came before


def test_a_driver_slow_to_refill_the_slots_still_gets_full_groups(tmp_path):
    # as the search does: it reads the outcomes that are done, records each (slowly, here), then
    # refills the freed slots; a wait may return only part of a finished group. The next group
    # waits for every slot to be refilled, even when recording takes longer than ``linger``
    jobs = _jobs(tmp_path, Regressor, [{"model.lr": 0.01 * (n + 1), "trainer.max_epochs": 1} for n in range(6)])
    executor = StackedExecutor(stack=3, linger=0.5)
    executor.start(jobs[0].build)
    try:
        first = [executor.submit(j, _PruneAt(None)) for j in jobs[:3]]
        wait(first, timeout=300)
        assert first[0].result().state is TrialState.COMPLETE  # the first wait returned one outcome
        second = [executor.submit(jobs[3], _PruneAt(None))]
        for f in first[1:]:  # the next wait returned the other two
            time.sleep(1.0)  # recording the trial before, slowly
            assert f.result().state is TrialState.COMPLETE
        second += [executor.submit(j, _PruneAt(None)) for j in jobs[4:]]
        groups = {tuple(f.result(timeout=300).attrs["stacked"]["group"]) for f in second}
        assert groups == {(3, 4, 5)}
    finally:
        executor.shutdown()


def test_early_stopping_ends_each_member_as_it_ends_its_trial_alone(tmp_path):
    lrs = (0.3, 0.6, 0.02)  # large steps make the validation loss stop improving early
    params = [{"model.lr": lr, "model.hidden": 4, "trainer.max_epochs": 8} for lr in lrs]
    jobs = _jobs(tmp_path, Regressor, params)
    jobs = [replace(j, build=replace(j.build, patience=1)) for j in jobs]
    stacked = run_jobs([(j, None) for j in jobs])
    alone = _alone(tmp_path, jobs)
    assert any(len(o.intermediate) < 8 for o in alone)  # EarlyStopping did end a trial early
    for a, b in zip(alone, stacked, strict=True):
        assert b.state is a.state is TrialState.COMPLETE
        assert list(b.intermediate) == list(a.intermediate)
        assert list(b.intermediate.values()) == pytest.approx(list(a.intermediate.values()), rel=1e-4, abs=1e-6)


class NaNAtLargeLR(Regressor):
    """Logs a NaN validation loss when its learning rate is large: its trial fails "non-finite"."""

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("val_loss", loss * float("nan") if self.hparams.lr > 0.5 else loss)


class LogsAnotherMetric(Regressor):
    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_mse", nn.functional.mse_loss(self(x), y))


def test_a_member_fails_for_the_reasons_and_with_the_words_of_an_ordinary_trial(tmp_path):
    params = [{"model.lr": lr, "trainer.max_epochs": 2} for lr in (0.01, 0.9)]
    jobs = _jobs(tmp_path, NaNAtLargeLR, params)
    stacked, alone = run_jobs([(j, None) for j in jobs]), _alone(tmp_path, jobs)
    assert [o.state for o in stacked] == [o.state for o in alone] == [TrialState.COMPLETE, TrialState.FAILED]
    assert stacked[1].error == alone[1].error == "non-finite: val_loss was nan at step 0"
    assert not stacked[1].fatal and "group" in stacked[1].attrs["stacked"]
    jobs = _jobs(tmp_path / "missing", LogsAnotherMetric, params)
    stacked, alone = run_jobs([(j, None) for j in jobs]), _alone(tmp_path / "missing", jobs)
    for s, a in zip(stacked, alone, strict=True):
        assert s.state is a.state is TrialState.FAILED and s.fatal and a.fatal
        assert s.error == a.error and "'val_loss' was not logged" in s.error and "'train_loss', 'val_mse'" in s.error


class OwnBuilder(TrialBuilder):
    """A builder of its own (as a LightningCLI project's is): it makes each trial's Trainer itself."""

    def __init__(self, inner: ModuleTrialBuilder) -> None:
        self.inner = inner

    namespace = property(lambda self: self.inner.namespace)

    def check(self, space):
        self.inner.check(space)

    def build(self, params, *, seed, trial_dir, callbacks):
        return self.inner.build(params, seed=seed, trial_dir=trial_dir, callbacks=callbacks)

    def build_model(self, params):
        return self.inner.build_model(params)

    def build_datamodule(self, params):
        return self.inner.build_datamodule(params)

    def trainer_settings(self, params=None):
        return self.inner.trainer_settings(params)

    def evaluation_trainer(self, params, **overrides):
        return self.inner.evaluation_trainer(params, **overrides)


def test_trials_of_another_builder_run_as_ordinary_trials_with_the_reason(tmp_path):
    params = [{"model.lr": lr, "trainer.max_epochs": 2} for lr in (0.01, 0.05)]
    jobs = _jobs(tmp_path, Regressor, params)
    jobs = [replace(j, build=replace(j.build, builder=OwnBuilder(j.build.builder))) for j in jobs]
    for o in run_jobs([(j, None) for j in jobs]):
        assert o.state is TrialState.COMPLETE and sorted(o.intermediate) == [0, 1]
        assert "built by OwnBuilder" in o.attrs["stacked"]["refused"]


def test_flush_starts_the_last_group_without_waiting_for_more_trials(tmp_path):
    jobs = _jobs(tmp_path, Regressor, [{"model.lr": 0.01 * (n + 1), "trainer.max_epochs": 1} for n in range(2)])
    executor = StackedExecutor(stack=4, linger=600)  # without flush, a group of 2 would wait 10 minutes
    executor.start(jobs[0].build)
    try:
        futures = [executor.submit(j, _PruneAt(None)) for j in jobs]
        executor.flush()
        done, _ = wait(futures, timeout=240)
        assert len(done) == 2
        assert {tuple(f.result().attrs["stacked"]["group"]) for f in futures} == {(0, 1)}
    finally:
        executor.shutdown()
    assert LocalExecutor().flush() is None  # the other executors start every trial at once: nothing to flush


def test_a_search_names_the_stacked_executor():
    assert EXECUTORS.get("stacked") is StackedExecutor and lightning_hpt.StackedExecutor is StackedExecutor


# --- resume: an interrupted group's members continue, each from its own checkpoint ----------------


class FixedOrderData(OrderedData):
    """The same batches in the same order in every epoch: a member continued in another group sees what it
    would have seen, so that its values can be compared with an uninterrupted run's."""

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=False)


class RMSRegressor(Regressor):
    """An optimizer the stacked update does not vectorize: each member's own optimizer steps."""

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.RMSprop(self.parameters(), lr=self.hparams.lr, momentum=0.5)


class _Stops:
    """A reporter that sets ``stop`` (as the executor's shutdown does) when its trial reports ``stop_at``."""

    answers = True

    def __init__(self, stop: threading.Event, stop_at: int | None = None, prune_at: int | None = None) -> None:
        self.stop, self.stop_at, self.prune_at, self.seen = stop, stop_at, prune_at, []

    def report(self, step: int, value: float) -> bool:
        self.seen.append(step)
        if step == self.stop_at:
            self.stop.set()
        return step == self.prune_at


def _own_storage(t: torch.Tensor) -> bool:
    """Whether ``t`` was saved on its own, not as a view of a larger (the group's) tensor."""
    return t.untyped_storage().nbytes() == t.numel() * t.element_size()


RESUMED = [(Regressor, {}), (SGDRegressor, {"model.momentum": 0.9}), (RMSRegressor, {})]


@pytest.mark.parametrize(("model", "extra"), RESUMED, ids=["adamw", "sgd-momentum", "rmsprop"])
def test_an_interrupted_group_continues_each_unfinished_member_from_its_checkpoint(tmp_path, model, extra):
    per = ("lr", "momentum")
    configs = [{"model.lr": lr, "trainer.max_epochs": n, **extra} for lr, n in ((0.01, 2), (0.02, 6), (0.03, 6))]
    jobs = _jobs(tmp_path / "run", model, configs, data=FixedOrderData)
    stop = threading.Event()
    done: list[int] = []
    reporters = [_Stops(stop), _Stops(stop, prune_at=1), _Stops(stop, stop_at=3)]
    jobs.append(replace(jobs[2], number=3, params={**configs[2], "model.lr": 0.04}, trial_dir=str(tmp_path / "t3")))
    reporters.append(_Stops(stop))
    first = run_jobs(list(zip(jobs, reporters, strict=True)), per, stop, lambda pos, o: done.append(pos))
    # the pruned member (step 1) and the one done after its 2 epochs were handed over as they ended, and stay
    assert done == [1, 0, 2, 3]
    assert [o.state for o in first[:2]] == [TrialState.COMPLETE, TrialState.PRUNED]
    for o, j in zip(first[:2], jobs, strict=False):
        assert not os.path.exists(os.path.join(j.trial_dir, "resume")) and os.path.exists(o.checkpoint)
    assert all(o.interrupted == "interrupted" for o in first[2:])
    saved = torch.load(os.path.join(jobs[2].trial_dir, "resume", "member.ckpt"), weights_only=True)
    assert saved["epoch"] == 3 and sorted(saved["member"]["values"]) == [0, 1, 2]  # the end of epoch 2
    assert not os.path.exists(os.path.join(jobs[2].trial_dir, "checkpoints"))  # the best one is in member.ckpt

    # the member's own slice and its own optimizer's state, as its trial alone has them after 3 epochs
    assert len(saved["optimizer_states"]) == 1
    moments = [t for s in saved["optimizer_states"][0]["state"].values() for t in s.values() if t.dim()]
    assert moments and all(_own_storage(t) for t in [*saved["state_dict"].values(), *moments])
    keep = Resume(keep=True)
    alone_job = replace(jobs[2], params={**configs[2], "trainer.max_epochs": 3}, trial_dir=str(tmp_path / "alone"))
    run_trial(replace(alone_job, build=replace(alone_job.build, resume=keep)))
    alone = torch.load(tmp_path / "alone" / "resume" / "latest.ckpt", weights_only=True)
    for k, v in alone["state_dict"].items():
        assert torch.allclose(saved["state_dict"][k], v, rtol=1e-4, atol=1e-6), k
    mine, theirs = saved["optimizer_states"][0]["state"], alone["optimizer_states"][0]["state"]
    assert sorted(mine) == sorted(theirs)
    for idx, state in theirs.items():
        assert sorted(mine[idx]) == sorted(state)
        for name, v in state.items():
            assert torch.allclose(mine[idx][name].float(), v.float(), rtol=1e-4, atol=1e-6), (idx, name)

    # the rerun: the interrupted members with a new trial in one group, each at its own epoch
    fresh = replace(jobs[2], number=4, params={**configs[2], "model.lr": 0.05, "trainer.max_epochs": 3})
    fresh = replace(fresh, trial_dir=str(tmp_path / "t4"))
    again_jobs = [replace(j, attempt=2) for j in jobs[2:]] + [fresh]
    again_reporters = [_Stops(stop) for _ in again_jobs]
    stop.clear()
    again = run_jobs(list(zip(again_jobs, again_reporters, strict=True)), per, stop)
    uninterrupted = [replace(j, trial_dir=j.trial_dir + "_ref", attempt=1) for j in again_jobs]
    reference = run_jobs([(j, None) for j in uninterrupted], per)
    for o, ref, rep in zip(again, reference, again_reporters, strict=True):
        assert o.state is ref.state is TrialState.COMPLETE and o.best_step == ref.best_step
        assert list(o.intermediate) == list(ref.intermediate)
        assert list(o.intermediate.values()) == pytest.approx(list(ref.intermediate.values()), rel=1e-4, abs=1e-6)
        assert rep.seen == list(ref.intermediate)  # the earlier steps reported again, then the new ones
        best, best_ref = (torch.load(x.checkpoint, weights_only=True)["state_dict"] for x in (o, ref))
        assert all(torch.allclose(best[k], v, rtol=1e-4, atol=1e-6) for k, v in best_ref.items())
    assert [o.attrs.get("resumed_at_step") for o in again] == [3, 3, None]
    assert not any(os.path.exists(os.path.join(j.trial_dir, "resume")) for j in again_jobs)  # removed at the end


@pytest.mark.parametrize(("resume", "epoch"), [(None, None), (Resume(every_n_epochs=2), 2)])
def test_members_write_their_checkpoint_at_the_interval_of_resume(tmp_path, resume, epoch):
    stop = threading.Event()
    jobs = _jobs(tmp_path, Regressor, [{"model.lr": lr, "trainer.max_epochs": 6} for lr in (0.01, 0.02)])
    jobs = [replace(j, build=replace(j.build, resume=resume)) for j in jobs]
    out = run_jobs([(jobs[0], _Stops(stop, stop_at=3)), (jobs[1], None)], stop=stop)
    assert all(o.interrupted for o in out)
    path = os.path.join(jobs[0].trial_dir, "resume", "member.ckpt")
    assert (torch.load(path, weights_only=True)["epoch"] if os.path.exists(path) else None) == epoch
    rerun = run_jobs([(replace(j, attempt=2), None) for j in jobs])
    assert [o.attrs.get("resumed_at_step") for o in rerun] == [epoch, epoch]
    assert all(sorted(o.intermediate) == list(range(6)) for o in rerun)


@pytest.mark.parametrize(("write_every", "written"), [(0.0, [False, True, True, True]), (3600.0, [False] * 4)])
def test_members_states_are_written_at_most_every_write_every_seconds_and_when_stopped(tmp_path, write_every, written):
    stop = threading.Event()
    jobs = _jobs(tmp_path, Regressor, [{"model.lr": 0.01, "trainer.max_epochs": 6}])
    path = os.path.join(jobs[0].trial_dir, "resume", "member.ckpt")
    on_disk: list[bool] = []

    class Looks(_Stops):
        def report(self, step: int, value: float) -> bool:
            on_disk.append(os.path.exists(path))  # at validation run k, epoch k-1's state was taken
            return super().report(step, value)

    out = run_jobs([(jobs[0], Looks(stop, stop_at=3))], stop=stop, write_every=write_every)
    assert out[0].interrupted and on_disk == written
    assert torch.load(path, weights_only=True)["epoch"] == 3  # the held state of epoch 2's end, written at the stop
    rerun = run_jobs([(replace(jobs[0], attempt=2), None)])
    assert rerun[0].attrs.get("resumed_at_step") == 3 and sorted(rerun[0].intermediate) == list(range(6))
    assert not os.path.exists(path)  # removed when the trial ended


def test_a_member_that_ends_is_recorded_while_its_group_trains_on(tmp_path):
    jobs = _jobs(tmp_path, Regressor, [{"model.lr": 0.01, "trainer.max_epochs": n} for n in (1, 6)])
    executor = StackedExecutor(stack=2, linger=0.05)
    executor.start(jobs[0].build)
    seen_done: list[bool] = []

    class WaitsForTheOther(_PruneAt):
        def report(self, step: int, value: float) -> bool:
            if step == 2:  # the short member ended at epoch 1: its outcome is out while this one trains
                seen_done.append(wait([futures[0]], timeout=60).done != set())
            return super().report(step, value)

    try:
        futures = [executor.submit(jobs[0], _PruneAt(None)), executor.submit(jobs[1], WaitsForTheOther(None))]
        assert [f.result(timeout=300).state for f in futures] == [TrialState.COMPLETE] * 2
    finally:
        executor.shutdown()
    assert seen_done == [True]


def test_best_checkpoint_is_the_members_own_slice_without_optimizer_state(tmp_path):
    params = [{"model.lr": 0.01 * (n + 1), "model.hidden": 64, "trainer.max_epochs": 1} for n in range(4)]
    sizes = []
    for k in (1, 4):
        out = run_jobs([(j, None) for j in _jobs(tmp_path / f"k{k}", Regressor, params[:k])])
        ckpt = torch.load(out[0].checkpoint, weights_only=True)
        assert ckpt["optimizer_states"] == [] and all(_own_storage(t) for t in ckpt["state_dict"].values())
        assert Regressor.load_from_checkpoint(out[0].checkpoint).hparams.hidden == 64
        sizes.append(os.path.getsize(out[0].checkpoint))
    assert sizes[0] == sizes[1]  # a member of 4 writes what a member of 1 writes


STACKED_SCRIPT = Path(__file__).parent / "scripts" / "stacked_search.py"
KILL_AT = 4  # the group epoch during which the driver is stopped (of 8)


def _stacked_search(root: Path, sleep: float, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, str(STACKED_SCRIPT), str(root), f"{root}.log", str(sleep), *extra]
    return subprocess.Popen(cmd, preexec_fn=default_sigint, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _group_epochs(root: Path) -> list[tuple[int, int]]:
    log = Path(f"{root}.log")
    return [tuple(map(int, x.split())) for x in log.read_text().splitlines()] if log.exists() else []


def _stacked_trials(root: Path) -> dict[int, tuple]:
    """Run the search to its end; ``{number: (state, attempt, value, resumed at step, curve)}``."""
    proc = _stacked_search(root, 0.0)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    trials = {}
    for line in out.splitlines():
        if line.startswith("TRIAL "):
            _, number, state, attempt, value, resumed, curve = line.split(" ", 6)
            steps = {int(k): v for k, v in json.loads(curve).items()}
            at = None if resumed == "None" else int(resumed)
            trials[int(number)] = (state, int(attempt), float(value), at, steps)
    return trials


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[int, tuple]:
    return _stacked_trials(tmp_path_factory.mktemp("stacked_ref") / "run")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_a_stopped_stacked_search_continues_each_unfinished_member(tmp_path, uninterrupted, how):
    """The driver stopped in group epoch 4: the member done after 2 epochs stays; the others continue.

    A hard kill leaves what was written: with ``write_every=0``, every epoch's state. A SIGTERM stops the
    group, which writes the states it holds (the default ``write_every`` wrote none before).
    """
    root = tmp_path / "run"
    proc = _stacked_search(root, 0.3, *(["0"] if how == "SIGKILL" else []))
    deadline = time.monotonic() + 120
    while not any(e == KILL_AT for _, e in _group_epochs(root)) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.05)
    time.sleep(0.2)  # inside the epoch
    proc.send_signal(getattr(signal, how))
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == (-9 if how == "SIGKILL" else 143), out
    before = len(_group_epochs(root))
    trials = _stacked_trials(root)
    assert trials[0] == uninterrupted[0] and trials[0][1] == 1  # recorded when it ended, not run again
    for n in (1, 2):
        state, attempt, value, resumed, curve = trials[n]
        assert state == "COMPLETE" and attempt == 2 and resumed in (KILL_AT, KILL_AT + 1), trials[n]
        ref_curve = uninterrupted[n][4]
        assert sorted(curve) == sorted(ref_curve)  # no step missing or repeated
        assert list(curve.values()) == pytest.approx(list(ref_curve.values()), rel=1e-5)
        assert value == pytest.approx(uninterrupted[n][2], rel=1e-5)
    assert len(_group_epochs(root)) - before == 8 - trials[1][3]  # only the epochs after the checkpoint


class CountedRegressor(Regressor):
    """Notes, as each member is built, how many members of earlier groups a full collection cannot free."""

    made: ClassVar[list[weakref.ref]] = []
    alive_at_build: ClassVar[list[int]] = []

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        INSTANCES.remove(self)  # a strong reference, kept for other tests
        gc.collect()
        type(self).alive_at_build.append(sum(r() is not None for r in self.made))
        type(self).made.append(weakref.ref(self))


def test_a_finished_group_is_freed_while_the_search_goes_on(tmp_path):
    """The driver records members while their group trains in the same process: nothing it does may keep
    a group's models (and their tensors) from being collected once the group ends."""
    CountedRegressor.made, CountedRegressor.alive_at_build = [], []
    result = _search(tmp_path, "freed", StackedExecutor(stack=2, linger=0.2), model=CountedRegressor).run()
    assert len(result.trials) == 6 and len(CountedRegressor.made) == 6
    # the members of a group (of at most 2) are built together: at most the group's own earlier member is alive
    assert max(CountedRegressor.alive_at_build) <= 1, CountedRegressor.alive_at_build


def test_a_member_told_to_stop_at_its_last_epoch_completes(tmp_path):
    params = [{"model.lr": 0.02, "trainer.max_epochs": 1}, {"model.lr": 0.02, "trainer.max_epochs": 3}]
    jobs = _jobs(tmp_path, Regressor, params)
    outcomes = run_jobs([(j, _PruneAt(0)) for j in jobs])
    assert {tuple(o.attrs["stacked"]["group"]) for o in outcomes} == {(0, 1)}
    assert [o.state for o in outcomes] == [TrialState.COMPLETE, TrialState.PRUNED]  # the first trained its budget
    assert [list(o.intermediate) for o in outcomes] == [[0], [0]]
