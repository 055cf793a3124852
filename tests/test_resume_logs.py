"""A continued trial's CSV log holds its whole curve: the earlier attempt's rows, then the new ones.

Lightning's ``CSVLogger`` deletes a ``metrics.csv`` it finds in its folder; a trial continued from its
resumable checkpoint logs into the same ``csv/`` folder. The search tests run one-trial searches of
tiny real models twice: stopped at epoch ``K`` (a failure kept for ``retry_failed`` by
``Resume(failed=True)``, or Ctrl+C), then continued; the logger tests drive the trial's CSV logger
itself through the attempts a trial may have.
"""

from __future__ import annotations

import csv
import functools
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FAST, TinyData, TinyModel
from jsonargparse import Namespace
from torch import nn

from lightning_hpt import Float, HyperparameterSearch, Resume, TrialLogger, TrialState
from lightning_hpt.exceptions import SearchFailedError
from lightning_hpt.lightning.loggers import (
    EARLIER_METRICS,
    ContinuedCSVLogger,
    TrialContext,
    config_loggers,
    make_logger,
    trial_loggers,
)

EPOCHS, K = 6, 3  # 4 training steps an epoch (64 points, batches of 16)


class StepLog(TinyModel):
    """Appends each training step's epoch to ``log`` and sleeps ``pause`` s (a test kills it in a known epoch)."""

    def __init__(self, log: str, pause: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.log_path, self.pause = log, pause

    def training_step(self, batch, batch_idx):
        with open(self.log_path, "a") as f:
            f.write(f"{self.current_epoch}\n")
        time.sleep(self.pause)
        return super().training_step(batch, batch_idx)


class StopOnce(TinyModel):
    """Logs ``train_loss`` every step (and each epoch's mean); at epoch ``K``'s second step, fails or is interrupted
    once (when ``marker`` does not exist yet; made then)."""

    def __init__(self, marker: str | None = None, interrupt: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.marker, self.interrupt = marker, interrupt

    def training_step(self, batch, batch_idx):
        if self.current_epoch == K and batch_idx == 1 and self.marker and not os.path.exists(self.marker):
            Path(self.marker).touch()
            raise KeyboardInterrupt if self.interrupt else RuntimeError("boom: the trial fails once")
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        return loss


class SmallBatches(TinyData):
    def __init__(self) -> None:
        super().__init__(batch_size=16)


def _stop_once(marker: str | None, interrupt: bool, cfg: dict) -> StopOnce:
    return StopOnce(marker, interrupt, **cfg["model"])


def _step_log(log: str, pause: float, cfg: dict) -> StepLog:
    return StepLog(log, pause, **cfg["model"])


def _search(root: Path, marker: str | None = None, interrupt: bool = False, model=None, **kw) -> HyperparameterSearch:
    """The one-trial search of :class:`StopOnce` (stopped once when given a ``marker``), or of another ``model``."""
    return HyperparameterSearch(
        model or functools.partial(_stop_once, marker, interrupt),
        SmallBatches,
        {"model.lr": Float(0.01, 0.1, log=True)},
        root=str(root),
        n_trials=1,
        seed=0,
        resume=Resume(failed=True),
        trainer_kwargs={**FAST, "max_epochs": EPOCHS, "logger": None, "log_every_n_steps": 1},
        verbose=False,
        **kw,
    )


def _csv(root: Path) -> tuple[str, list[dict[str, str]]]:
    """The trial's CSV log: its header line and its rows."""
    path = root / "default" / "trial_0" / "csv" / "metrics.csv"
    text = path.read_text()
    return text.splitlines()[0], list(csv.DictReader(text.splitlines()))


def _kinds(rows: list[dict[str, str]]) -> list[tuple[int, tuple[str, ...]]]:
    """Each row's step and the metrics it holds."""
    return [(int(r["step"]), tuple(sorted(k for k, v in r.items() if v and k not in ("step", "epoch")))) for r in rows]


@pytest.mark.slow
def test_a_retried_trial_continued_from_its_checkpoint_logs_the_same_csv_as_an_uninterrupted_one(tmp_path):
    """The failed attempt logged epochs 0..K-1 and a step of epoch K after its checkpoint (epoch K-1's end); the
    continued log holds the earlier rows before that step, once, then the new ones: the same file as an
    uninterrupted run's (an epoch-end resume is exact), header included, and nothing left aside."""
    ref = _search(tmp_path / "ref").run().trials[0]
    reference_header, reference = _csv(tmp_path / "ref")
    assert ref.state is TrialState.COMPLETE and len(reference) == EPOCHS * 4 + 2 * EPOCHS  # steps, val and epoch rows

    root, marker = tmp_path / "run", str(tmp_path / "failed_once")
    with pytest.raises(SearchFailedError):
        _search(root, marker).run()
    _, first = _csv(root)
    assert max(int(r["step"]) for r in first) == K * 4  # a row after the checkpoint's step (K * 4): trained again
    t = _search(root, marker, retry_failed=True).run().trials[0]
    assert t.state is TrialState.COMPLETE and t.attempt == 2 and t.attrs["resumed_at_step"] == K

    header, rows = _csv(root)
    assert header == reference_header == "epoch,step,train_loss_epoch,train_loss_step,val_loss"
    assert rows == reference
    assert rows[: len(first) - 1] == first[:-1]  # the earlier attempt's own rows, kept as written
    assert sorted(os.listdir(root / "default" / "trial_0" / "csv")) == ["hparams.yaml", "metrics.csv"]


@pytest.mark.slow
def test_a_trial_interrupted_mid_epoch_keeps_its_rows_before_the_continued_ones_without_duplicates(tmp_path):
    """Ctrl+C at epoch K's second step: the checkpoint is the state at the interruption (mid-epoch). The rerun's
    log holds every row the interrupted attempt wrote, then the continued attempt's, each step's metrics once,
    steps in order, through the last epoch's validation row."""
    root, marker = tmp_path / "run", str(tmp_path / "interrupted_once")
    with pytest.raises(KeyboardInterrupt):
        _search(root, marker, interrupt=True).run()
    _, first = _csv(root)
    t = _search(root, marker, interrupt=True).run().trials[0]
    assert t.state is TrialState.COMPLETE and t.attrs["resumed_at_step"] == K

    _, rows = _csv(root)
    assert rows[: len(first)] == first
    kinds = _kinds(rows)
    assert len(set(kinds)) == len(kinds) and [s for s, _ in kinds] == sorted(s for s, _ in kinds)
    assert sum(1 for _, keys in kinds if keys == ("val_loss",)) == EPOCHS and kinds[-2][1] == ("val_loss",)


def _step_log_search(root: Path, pause: float) -> HyperparameterSearch:
    return _search(root, model=functools.partial(_step_log, f"{root}.log", pause))


@pytest.mark.slow
def test_a_trial_whose_driver_is_killed_continues_its_csv_log_byte_for_byte(tmp_path):
    """SIGKILL of the driver (this module run as a script) once epoch K has trained a step, logged after epoch
    K-1's checkpoint: the rerun continues the trial, and its ``metrics.csv`` is the uninterrupted run's, byte for
    byte."""
    assert _step_log_search(tmp_path / "ref", 0.0).run().trials[0].state is TrialState.COMPLETE
    root = tmp_path / "run"
    cmd = [sys.executable, __file__, str(root), "0.3"]
    proc, t0 = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True), time.monotonic()
    log = Path(f"{root}.log")
    while not (log.exists() and log.read_text().splitlines().count(str(K)) >= 2):  # epoch K's second step
        assert proc.poll() is None and time.monotonic() - t0 < 120, proc.stdout.read() if proc.stdout else ""
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    _, first = _csv(root)
    assert int(first[-1]["step"]) >= K * 4  # a row after the checkpoint: trained again, written once
    t = _step_log_search(root, 0.0).run().trials[0]
    assert t.state is TrialState.COMPLETE and t.attempt == 2 and t.attrs["resumed_at_step"] == K
    path = Path("default", "trial_0", "csv", "metrics.csv")
    assert (root / path).read_bytes() == (tmp_path / "ref" / path).read_bytes()


def _logger(tmp_path: Path) -> ContinuedCSVLogger:
    """The CSV logger a trial in ``tmp_path`` gets (the search's default loggers)."""
    loggers = trial_loggers(None, None, TrialContext("s", 0, str(tmp_path)))
    return next(lg for lg in loggers if isinstance(lg, ContinuedCSVLogger))


def _attempt(tmp_path: Path, steps: range, **extra: float) -> None:
    lg = _logger(tmp_path)
    for s in steps:
        lg.log_metrics({"loss": float(s), **extra}, step=s)
    lg.finalize("success")


def test_an_attempt_stopped_before_its_first_row_leaves_the_earlier_rows_for_the_next(tmp_path):
    """Attempt 2 is made (the earlier file moves aside) and killed before it logs; attempt 3 continues from step 3
    with a new metric: rows 0..2 of attempt 1, then its own, under one header with every metric."""
    log_dir = tmp_path / "csv"
    _attempt(tmp_path, range(6))
    _logger(tmp_path)  # attempt 2: stopped before its first row
    assert sorted(os.listdir(log_dir)) == [EARLIER_METRICS]
    _attempt(tmp_path, range(3, 5), acc=0.5)
    header, rows = _csv_at(log_dir)
    assert header == "acc,loss,step"
    assert [(r["step"], r["loss"], r["acc"]) for r in rows] == [
        ("0", "0.0", ""),
        ("1", "1.0", ""),
        ("2", "2.0", ""),
        ("3", "3.0", "0.5"),
        ("4", "4.0", "0.5"),
    ]
    assert sorted(os.listdir(log_dir)) == ["metrics.csv"]


def test_an_attempt_that_logs_nothing_keeps_every_earlier_row_and_a_later_file_wins_over_one_left_aside(tmp_path):
    """An attempt that ends without a row keeps the log whole. A ``metrics.csv`` beside a file left aside (an
    attempt stopped between writing it and removing the other) holds the file's rows: it is the one continued."""
    log_dir = tmp_path / "csv"
    _attempt(tmp_path, range(4))
    _attempt(tmp_path, range(0))
    assert [r["step"] for r in _csv_at(log_dir)[1]] == ["0", "1", "2", "3"]
    (log_dir / EARLIER_METRICS).write_text("loss,step\n0.0,0\n")
    _attempt(tmp_path, range(4, 5))
    assert [r["step"] for r in _csv_at(log_dir)[1]] == ["0", "1", "2", "3", "4"]


def test_a_new_fit_from_step_0_replaces_the_earlier_rows_and_an_unreadable_file_is_said_and_dropped(tmp_path, caplog):
    """A later ``fit`` in the same folder (a script trial's) starts at step 0: its rows replace the earlier ones,
    as Lightning's logger does. An earlier file that is not a CSV log is named in a warning and not kept."""
    log_dir = tmp_path / "csv"
    _attempt(tmp_path, range(5))
    _attempt(tmp_path, range(2))
    assert [r["step"] for r in _csv_at(log_dir)[1]] == ["0", "1"]
    (log_dir / "metrics.csv").write_text("loss,epoch\n1.0,0\n")  # no step column
    with caplog.at_level(logging.WARNING, logger="lightning_hpt.lightning.loggers"):
        _attempt(tmp_path, range(7, 8))
    assert "cannot be read" in caplog.text and EARLIER_METRICS in caplog.text
    assert [r["step"] for r in _csv_at(log_dir)[1]] == ["7"] and sorted(os.listdir(log_dir)) == ["metrics.csv"]


def test_every_way_of_naming_lightnings_csv_logger_gives_the_continuing_one(tmp_path):
    """``"csv"``, the class, a ``TrialLogger`` and a LightningCLI config's ``class_path`` give a trial the
    :class:`ContinuedCSVLogger` in its ``csv/`` folder; a project's own subclass stays as it is."""
    from lightning.pytorch.loggers import CSVLogger

    class Own(CSVLogger):
        pass

    ctx = TrialContext("s", 0, str(tmp_path))
    for spec in ("csv", CSVLogger, TrialLogger(CSVLogger, flush_logs_every_n_steps=5)):
        made = trial_loggers(None, [spec, spec], ctx)
        assert [type(lg) for lg in made] == [ContinuedCSVLogger] * 2
        assert made[0].log_dir == str(tmp_path / "csv") and made[1].log_dir == str(tmp_path / "csv_1"), spec
    assert type(make_logger(Own, ctx)) is Own
    item = Namespace(class_path="lightning.pytorch.loggers.CSVLogger", init_args=Namespace(save_dir="logs"))
    out = config_loggers(item, ctx)
    assert out["class_path"] == "lightning_hpt.lightning.loggers.ContinuedCSVLogger"
    assert out["init_args"]["version"] == "csv" and item["class_path"] == "lightning.pytorch.loggers.CSVLogger"


def _csv_at(log_dir: Path) -> tuple[str, list[dict[str, str]]]:
    text = (log_dir / "metrics.csv").read_text()
    return text.splitlines()[0], list(csv.DictReader(text.splitlines()))


if __name__ == "__main__":  # the SIGKILL test's driver: the search of StepLog in ROOT, PAUSE s a step
    _step_log_search(Path(sys.argv[1]), float(sys.argv[2])).run()
