"""Tiny real Lightning models and data for tests: a few batches, CPU, seconds per search."""

from __future__ import annotations

import os
from typing import Any

import lightning.pytorch as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.set_num_threads(1)


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, each worker gets its own PostgreSQL database: the tests drop and create schemas."""
    worker, url = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("HPT_TEST_POSTGRES_URL")
    if not worker or not url:
        return
    import sqlalchemy as sa

    base = sa.engine.make_url(url)
    name = f"{base.database or 'postgres'}_{worker}"
    engine = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            found = conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).scalar()
            if not found:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    os.environ["HPT_TEST_POSTGRES_URL"] = base.set(database=name).render_as_string(hide_password=False)


RAY_TESTS = ("::TestRay", "::test_ray_", "::test_dead_ray_")  # how a test that starts Ray is named


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Under pytest-xdist (``--dist loadgroup``, set in pyproject.toml): every test that starts Ray (named as
    :data:`RAY_TESTS` says) runs on one worker, one at a time, and a test class's tests run together.

    Two Ray clusters starting at once on a small machine make each other's health checks late; a class's
    (or module's) fixture, such as a started executor or Ray, is then set up once, not again each time
    another test ran between two of its tests. pytest-xdist's own ``xdist_group`` marks do not group with
    pytest 9 (xdist renames the tests' ids, which pytest 9 no longer reads), so the grouping is done here,
    where the controller splits the tests into units, from the tests' ids.
    """
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class Grouped(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if any(name in nodeid for name in RAY_TESTS):
                return "ray"
            path, _, rest = nodeid.partition("::")
            cls, sep, _ = rest.partition("::")
            return f"{path}::{cls}" if sep else super()._split_scope(nodeid)

    return Grouped(config, log)


class TinyData(L.LightningDataModule):
    """64 training and 32 validation points of a noisy linear function."""

    def __init__(self, batch_size: int = 32, n: int = 64) -> None:
        super().__init__()
        self.batch_size, self.n = batch_size, n

    def setup(self, stage: str | None = None) -> None:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(self.n + 32, 4, generator=g)
        y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(self.n + 32, generator=g)
        self.train_set = TensorDataset(x[: self.n], y[: self.n, None])
        self.val_set = TensorDataset(x[self.n :], y[self.n :, None])
        self.all_set = TensorDataset(x, y[:, None])
        xt = torch.randn(32, 4, generator=g)
        self.test_set = TensorDataset(xt, (xt @ torch.tensor([1.0, -2.0, 0.5, 3.0]))[:, None])

    def cv_dataset(self):
        """Training plus validation data, for cross-validation and refitting."""
        return self.all_set

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=32)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=32)


class TinyModel(L.LightningModule):
    """A small regressor; the keyword arguments after ``hidden`` make it misbehave on purpose.

    Args:
        lr, hidden: tunable.
        val_schedule: log these fixed val_loss values, one per epoch, instead of the real loss.
        fail_at_epoch: raise RuntimeError in training_step at that epoch.
        nan_at_epoch: the logged val_loss is NaN from that epoch on.
        interrupt_at_epoch: raise KeyboardInterrupt in training_step at that epoch.
        oom_at_epoch: raise torch.cuda.OutOfMemoryError in training_step at that epoch.
        log_name: name under which the validation loss is logged.
        marker: a file written at the first training step (lets a test know a trial is running).
        sleep: seconds to sleep per training step (lets a test kill it mid-trial).
        test_penalty: added to the test loss (a model that does much worse on the test split).
    """

    def __init__(
        self,
        lr: float = 0.05,
        hidden: int = 8,
        val_schedule: list | None = None,
        fail_at_epoch: int | None = None,
        nan_at_epoch: int | None = None,
        interrupt_at_epoch: int | None = None,
        oom_at_epoch: int | None = None,
        log_name: str = "val_loss",
        marker: str | None = None,
        sleep: float = 0.0,
        test_penalty: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        h, epoch = self.hparams, self.current_epoch
        if h.marker and not os.path.exists(h.marker):
            open(h.marker, "w").close()
        if h.sleep:
            import time

            time.sleep(h.sleep)
        if h.fail_at_epoch is not None and epoch >= h.fail_at_epoch:
            raise RuntimeError("boom: a bug in training_step")
        if h.interrupt_at_epoch is not None and epoch >= h.interrupt_at_epoch:
            raise KeyboardInterrupt
        if h.oom_at_epoch is not None and epoch >= h.oom_at_epoch:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        h, epoch = self.hparams, self.current_epoch
        if h.val_schedule is not None:
            loss = torch.tensor(float(h.val_schedule[min(epoch, len(h.val_schedule) - 1)]))
        if h.nan_at_epoch is not None and epoch >= h.nan_at_epoch:
            loss = torch.tensor(float("nan"))
        self.log(h.log_name, loss)

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_loss", nn.functional.mse_loss(self(x), y) + self.hparams.get("test_penalty", 0.0))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def default_sigint() -> None:
    """``preexec_fn`` for driver subprocesses: Ctrl+C raises KeyboardInterrupt there, even when the tests run
    where SIGINT is ignored (a shell's background job inherits SIG_IGN, and Python then keeps it)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


FAST = {"accelerator": "cpu", "devices": 1, "max_epochs": 2, "logger": False, "num_sanity_val_steps": 0}


@pytest.fixture
def fast_trainer() -> dict:
    """Trainer arguments for quick CPU trials (no loggers: they are tested separately)."""
    return dict(FAST)
