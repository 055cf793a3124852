"""DDP inside a trial (RELIABILITY row 24): every rank trains the same configuration, one record per trial,
and a pruning decision stops every rank. CPU, gloo backend, 2 processes per trial.

A trial whose Trainer starts ranks by re-running the current command must run as its own command:
the ProcessExecutor's worker module is re-run for rank 1 with the same arguments and asks the driver
for the trial its rank 0 runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from lightning_hpt import Categorical, Float, HyperparameterSearch, TrialState
from lightning_hpt.exceptions import ConfigurationError
from lightning_hpt.executors import LocalExecutor, ProcessExecutor
from lightning_hpt.pruners.base import Pruner
from lightning_hpt.testing.executor import TRAINER, ContractData, ContractModel

pytestmark = pytest.mark.slow
DDP = {**TRAINER, "strategy": "ddp", "devices": 2, "max_epochs": 4}


class RankModel(ContractModel):
    """Writes, from every rank, the configuration it trained and its epochs to ``<out_dir>/rank<k>_<lr>.json``."""

    def __init__(self, out_dir: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.out_dir = out_dir
        self.epochs = 0

    def on_train_epoch_start(self) -> None:
        self.epochs += 1

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y), sync_dist=True)

    def on_train_end(self) -> None:
        record = {
            "lr": self.hparams.lr,
            "hidden": self.hparams.hidden,
            "epochs": self.epochs,
            "pid": os.getpid(),
            "world_size": self.trainer.world_size,
            "weight_sum": float(sum(p.detach().sum() for p in self.parameters())),
        }
        Path(self.out_dir, f"rank{self.global_rank}_{self.hparams.lr}.json").write_text(json.dumps(record))


class PruneOddAtStep1(Pruner):
    """Stops trial 1 once it has reported step 1; the others run to the end."""

    name = "prune-odd"

    def should_prune(self, history, trial) -> bool:
        return trial.number == 1 and max(trial.intermediate) >= 1


def _ranks(out: Path, lr: float) -> list[dict]:
    return [json.loads((out / f"rank{k}_{lr}.json").read_text()) for k in (0, 1)]


def test_ddp_trials_train_one_configuration_on_every_rank(tmp_path):
    out = tmp_path / "ranks"
    out.mkdir()
    space = {"model.lr": Categorical([0.05, 0.02]), "model.out_dir": Categorical([str(out)])}
    search = HyperparameterSearch(
        RankModel,
        ContractData,
        space,
        monitor="val_loss",
        strategy="grid",
        root=tmp_path,
        seed=0,
        trainer_kwargs=DDP,
        pruner=PruneOddAtStep1(),
        patience=None,
        verbose=False,
        executor=ProcessExecutor(workers=1, devices=[]),
    )
    result = search.run()
    search.executor.shutdown()
    assert [t.number for t in result.trials] == [0, 1]  # one record per trial, not one per rank
    full, pruned = result.trials
    assert full.state is TrialState.COMPLETE and sorted(full.intermediate) == [0, 1, 2, 3]
    assert pruned.state is TrialState.PRUNED and sorted(pruned.intermediate) == [0, 1]
    for trial, epochs in ((full, 4), (pruned, 2)):
        r0, r1 = _ranks(out, trial.params["model.lr"])
        assert r0["world_size"] == r1["world_size"] == 2 and r0["pid"] != r1["pid"]
        assert (r0["lr"], r0["hidden"]) == (r1["lr"], r1["hidden"]) == (trial.params["model.lr"], 8)
        assert r0["epochs"] == r1["epochs"] == epochs  # the pruning decision stopped rank 1 too
        assert r0["weight_sum"] == pytest.approx(r1["weight_sum"])  # DDP kept the replicas equal
    assert Path(full.checkpoint).is_file()
    ckpt = torch.load(full.checkpoint, weights_only=True)
    assert ckpt["epoch"] == full.best_step


def test_ddp_is_recognised_for_the_local_executor(tmp_path):
    """With LocalExecutor a DDP trial would re-run the user's script on every rank: it is recognised."""
    search = HyperparameterSearch(
        RankModel, ContractData, {"model.lr": Float(0.01, 0.1)}, root=tmp_path, trainer_kwargs=DDP, verbose=False
    )
    assert search.build.builder.launches_subprocesses()
    assert not (
        HyperparameterSearch(
            RankModel, ContractData, {"model.lr": Float(0.01, 0.1)}, root=tmp_path, trainer_kwargs=TRAINER
        ).build.builder.launches_subprocesses()
    )


def test_local_executor_refuses_ddp(tmp_path):
    # only start() is called: running the trial in this process is the very thing to avoid (pytest would rerun)
    search = HyperparameterSearch(
        RankModel, ContractData, {"model.lr": Float(0.01, 0.1)}, root=tmp_path, trainer_kwargs=DDP, verbose=False
    )
    with pytest.raises(ConfigurationError, match="ProcessExecutor"):
        LocalExecutor().start(search.build)


def test_ddp_from_the_search_space_fails_that_trial_in_process(tmp_path):
    # trainer_kwargs are single-process, but trainer.devices=2 makes one trial DDP: that trial is FAILED
    # with the reason before it starts (in-process, every rank would rerun this test), the other trains

    space = {"model.lr": Categorical([0.05]), "trainer.devices": Categorical([1, 2])}
    search = HyperparameterSearch(
        ContractModel,
        ContractData,
        space,
        root=tmp_path,
        strategy="grid",
        n_trials=None,
        trainer_kwargs=TRAINER,
        executor=LocalExecutor(),
        verbose=False,
    )
    builder = search.build.builder
    assert builder.trial_launches_subprocesses({"model.lr": 0.05, "trainer.devices": 2})
    assert not builder.trial_launches_subprocesses({"model.lr": 0.05, "trainer.devices": 1})
    assert not builder.trial_launches_subprocesses({"model.lr": 0.05})  # shared settings: judged at start
    trials = {t.params["trainer.devices"]: t for t in search.run().trials}
    assert trials[1].state is TrialState.COMPLETE, trials[1].error
    assert trials[2].state is TrialState.FAILED and "train it on several processes (DDP)" in trials[2].error
    assert not Path(trials[2].checkpoint or tmp_path / "none").exists()
