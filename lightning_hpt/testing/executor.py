"""The contract every :class:`~lightning_hpt.executors.base.Executor` must honour, as a reusable test class.

Subclass :class:`ExecutorContract` in a test module and override ``make_executor``; the subclass
inherits every test::

    class TestMyExecutor(ExecutorContract):
        isolates_trials = True          # trials run in other processes: crashes and pickling are tested

        def make_executor(self):
            return MyExecutor(workers=2)

One executor is built per test class and started once with :func:`contract_build`; the tests
submit :class:`~lightning_hpt.lightning.runner.TrialJob` objects directly, with a recording
reporter, and check what comes back. The model and data live in this module so that worker
processes (and Ray workers) can import them.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import wait
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from typing_extensions import override

from lightning_hpt.exceptions import TrialPickleError
from lightning_hpt.executors.base import Executor
from lightning_hpt.lightning.module_builder import ModuleTrialBuilder
from lightning_hpt.lightning.runner import TrialBuild, TrialJob, TrialOutcome
from lightning_hpt.trial import Direction, TrialState

__all__ = ["ContractData", "ContractModel", "ExecutorContract", "RecordingReporter", "contract_build"]

TRAINER = {
    "accelerator": "cpu",
    "devices": 1,
    "max_epochs": 2,
    "logger": False,
    "num_sanity_val_steps": 0,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}


class ContractData(L.LightningDataModule):
    """64 training and 32 validation points of a noisy linear function in 4-d."""

    def __init__(self, batch_size: int = 32) -> None:
        super().__init__()
        self.batch_size = batch_size

    @override
    def setup(self, stage: str | None = None) -> None:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(96, 4, generator=g)
        y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(96, generator=g)
        self.train_set, self.val_set = TensorDataset(x[:64], y[:64, None]), TensorDataset(x[64:], y[64:, None])

    @override
    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    @override
    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=32)


class ContractModel(L.LightningModule):
    """A small regressor that can misbehave on purpose, from its init arguments (so from trial params).

    Args:
        lr, hidden: tunable.
        fail_at_epoch: raise ``RuntimeError("boom")`` in training at that epoch.
        die_at_epoch: end the trial's process at that epoch without an exception, as ``die_how`` says:
            ``"exit"`` (``os._exit(3)``) or ``"sigkill"`` (as the OOM killer would).
        die_once: a file; die only if it does not exist yet (created just before dying), so a retry lives.
        hang_at_epoch: sleep ten minutes at that epoch.
        sleep: seconds to sleep per training step.
        marker: a file written with this process's id at the first training step.
        ctrl_c_at_end: a file; in the last epoch's validation, if it does not exist yet, create it and send
            SIGINT to ``ctrl_c_pid`` (Ctrl+C as the trial ends).
        ctrl_c_pid: the process ``ctrl_c_at_end`` signals (the search's driver); the parent process if not given.

    Besides ``val_loss`` it logs where it ran: ``pid``, ``threads`` (torch threads) and ``cuda_visible``
    (the first index in ``CUDA_VISIBLE_DEVICES``, -1 if none).
    """

    def __init__(
        self,
        lr: float = 0.05,
        hidden: int = 8,
        fail_at_epoch: int | None = None,
        die_at_epoch: int | None = None,
        die_how: str = "exit",
        die_once: str | None = None,
        hang_at_epoch: int | None = None,
        sleep: float = 0.0,
        marker: str | None = None,
        ctrl_c_at_end: str | None = None,
        ctrl_c_pid: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @override
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        h, epoch = self.hparams, self.current_epoch
        if h.marker and not os.path.exists(h.marker):
            Path(h.marker).write_text(str(os.getpid()))
        if h.sleep:
            time.sleep(h.sleep)
        if h.fail_at_epoch is not None and epoch >= h.fail_at_epoch:
            raise RuntimeError("boom: a bug in training_step")
        if h.die_at_epoch is not None and epoch >= h.die_at_epoch and not (h.die_once and os.path.exists(h.die_once)):
            if h.die_once is not None:
                Path(h.die_once).touch()
            if h.die_how == "sigkill":
                os.kill(os.getpid(), signal.SIGKILL)
            os._exit(3)
        if h.hang_at_epoch is not None and epoch >= h.hang_at_epoch:
            time.sleep(600)
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y))
        mark, last = self.hparams.ctrl_c_at_end, self.current_epoch == self.trainer.max_epochs - 1
        if mark and last and not os.path.exists(mark):  # a hook (on_fit_end) would keep it out of stacked groups
            Path(mark).touch()
            os.kill(self.hparams.ctrl_c_pid or os.getppid(), signal.SIGINT)
        visible = (os.environ.get("CUDA_VISIBLE_DEVICES") or "-1").split(",")[0]
        self.log_dict(
            {
                "pid": float(os.getpid()),
                "threads": float(torch.get_num_threads()),
                "cuda_visible": float(visible) if visible.lstrip("-").isdigit() else -2.0,
            }
        )

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def contract_build(**trainer: Any) -> TrialBuild:
    """The build every contract test runs: :class:`ContractModel` on :class:`ContractData`, CPU, 2 epochs."""
    builder = ModuleTrialBuilder(ContractModel, ContractData, {**TRAINER, **trainer})
    return TrialBuild(builder, "val_loss", Direction.MINIMIZE, None, True)


class RecordingReporter:
    """Records every report with the process and thread that received it; returns True (stop) from ``prune_at``."""

    #: reports wait for the answer (a test sets False, as a search without a pruner does)
    answers: bool = True

    def __init__(self, prune_at: int | None = None) -> None:
        self.prune_at = prune_at
        self.calls: list[tuple[int, float, int]] = []  # (step, value, pid)

    def report(self, step: int, value: float) -> bool:
        self.calls.append((step, value, os.getpid()))
        return self.prune_at is not None and step >= self.prune_at


class ExecutorContract:
    """Behaviour shared by all executors; override :meth:`make_executor`."""

    #: trials run in other processes: unpicklable code is refused, a dying process fails only its trial
    isolates_trials: bool = False

    def make_executor(self) -> Executor:
        raise NotImplementedError("override make_executor: it returns a new, unstarted executor")

    @pytest.fixture(scope="class")
    @classmethod
    def executor(cls) -> Iterator[Executor]:
        ex = cls().make_executor()
        ex.start(contract_build())
        yield ex
        ex.shutdown()

    @pytest.fixture(scope="class")
    @classmethod
    def root(cls, tmp_path_factory: pytest.TempPathFactory) -> Path:
        return tmp_path_factory.mktemp("executor")

    def job(self, root: Path, number: int, **params: Any) -> TrialJob:
        return TrialJob(
            contract_build(),
            number,
            {f"model.{k}" if "." not in k else k: v for k, v in params.items()},
            0,
            str(root / f"trial_{number}"),
        )

    def run(
        self, executor: Executor, job: TrialJob, reporter: RecordingReporter | None = None, timeout: float = 300.0
    ) -> TrialOutcome:
        outcome = executor.submit(job, reporter or RecordingReporter()).result(timeout=timeout)
        assert isinstance(outcome, TrialOutcome), outcome
        return outcome

    # ------------------------------------------------------------------ the tests
    def test_max_concurrency_is_a_positive_int(self, executor: Executor) -> None:
        n = executor.max_concurrency
        assert isinstance(n, int) and not isinstance(n, bool) and n >= 1

    def test_trial_completes_and_reports_reach_the_driver(self, executor: Executor, root: Path) -> None:
        reporter = RecordingReporter()
        out = self.run(executor, self.job(root, 0, lr=0.05), reporter)
        assert out.state is TrialState.COMPLETE, out.error
        assert [c[0] for c in reporter.calls] == [0, 1]
        assert {c[2] for c in reporter.calls} == {os.getpid()}  # the reporter runs in the driver process
        assert dict(out.intermediate) == pytest.approx({s: v for s, v, _ in reporter.calls})
        assert (
            out.value == pytest.approx(min(out.intermediate.values())) and out.intermediate[out.best_step] == out.value
        )
        assert out.checkpoint is not None and Path(out.checkpoint).is_file()
        assert Path(out.checkpoint).resolve().is_relative_to((root / "trial_0").resolve())
        assert (out.metrics["pid"] != os.getpid()) is self.isolates_trials

    def test_pruning_decision_stops_the_trial(self, executor: Executor, root: Path) -> None:
        reporter = RecordingReporter(prune_at=1)
        out = self.run(executor, self.job(root, 1, **{"trainer.max_epochs": 5}), reporter)
        assert out.state is TrialState.PRUNED, out.error
        assert sorted(out.intermediate) == [0, 1] and [c[0] for c in reporter.calls] == [0, 1]

    def test_reports_to_a_reporter_that_never_answers_stop(self, executor: Executor, root: Path) -> None:
        # answers=False (no pruner) lets a channel send reports without waiting for the answer; a value
        # may then arrive after the trial ended and be dropped, but the outcome carries every value
        reporter = RecordingReporter()
        reporter.answers = False
        out = self.run(executor, self.job(root, 3, lr=0.05, **{"trainer.max_epochs": 3}), reporter)
        assert out.state is TrialState.COMPLETE, out.error
        assert sorted(out.intermediate) == [0, 1, 2]
        steps = [c[0] for c in reporter.calls]
        assert steps == sorted(set(steps)) and set(steps) <= {0, 1, 2}  # in order, never twice
        assert all(out.intermediate[s] == pytest.approx(v) for s, v, _ in reporter.calls)

    def test_exception_in_the_trial_becomes_failed(self, executor: Executor, root: Path) -> None:
        out = self.run(executor, self.job(root, 2, fail_at_epoch=1))
        assert out.state is TrialState.FAILED and "RuntimeError: boom" in out.error
        assert sorted(out.intermediate) == [0]  # the epoch before the failure was reported and kept

    def test_concurrent_trials_all_complete(self, executor: Executor, root: Path) -> None:
        n = executor.max_concurrency + 1
        reporters = [RecordingReporter() for _ in range(n)]
        futures = [executor.submit(self.job(root, 10 + i, hidden=4 + i), r) for i, r in enumerate(reporters)]
        _, pending = wait(futures, timeout=600)
        assert not pending
        outcomes = [f.result() for f in futures]
        assert [o.state for o in outcomes] == [TrialState.COMPLETE] * n
        for i, (o, r) in enumerate(zip(outcomes, reporters, strict=True)):
            assert [c[0] for c in r.calls] == [0, 1]  # each trial's reports went to its own reporter
            assert dict(o.intermediate) == pytest.approx({s: v for s, v, _ in r.calls})
            assert Path(o.checkpoint).resolve().is_relative_to((root / f"trial_{10 + i}").resolve())

    def test_dying_trial_process_fails_only_its_trial(self, executor: Executor, root: Path) -> None:
        if not self.isolates_trials:
            pytest.skip("trials run in the driver process")
        out = self.run(executor, self.job(root, 3, die_at_epoch=1, die_how="exit"))
        assert out.state is TrialState.FAILED and out.error
        assert sorted(out.intermediate) == [] or sorted(out.intermediate) == [0]
        again = self.run(executor, self.job(root, 4))
        assert again.state is TrialState.COMPLETE, again.error

    def test_unpicklable_trial_code_is_refused_at_start(self) -> None:
        if not self.isolates_trials:
            pytest.skip("trials run in the driver process: nothing is pickled")
        lock = threading.Lock()

        def make_model(config: dict) -> ContractModel:
            with lock:
                return ContractModel(**config["model"])

        executor = self.make_executor()
        try:
            with pytest.raises(TrialPickleError, match=r"model=.*make_model.*cannot be pickled"):
                executor.start(TrialBuild(ModuleTrialBuilder(make_model, ContractData, TRAINER), "val_loss"))
        finally:
            executor.shutdown()

    def test_shutdown_twice_is_harmless(self) -> None:
        executor = self.make_executor()
        executor.shutdown()
        executor.shutdown()
