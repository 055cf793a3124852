"""Which RUNNING trials a starting driver takes for dead: a live driver on this host keeps its trials."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import lightning.pytorch as L
import pytest
from conftest import TinyData, TinyModel

from lightning_hpt.recovery import HOST, recover
from lightning_hpt.storage import SQLStorage
from lightning_hpt.storage import sql as sql_module
from lightning_hpt.testing.storage import PARAMS, study_info
from lightning_hpt.trial import TrialState


@pytest.fixture
def live_process():
    """Another live process of this host (a driver still training)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def _running(storage: SQLStorage, pid: int, started_at: float | None = None, monkeypatch=None) -> int:
    """A trial RUNNING under ``pid`` of this host (its start time set to ``started_at`` when given)."""
    study = study_info().name
    storage.create_trial(study, PARAMS, state=TrialState.QUEUED)
    if started_at is not None:
        monkeypatch.setattr(sql_module.time, "time", lambda: started_at)
    t = storage.claim_queued(study, host=HOST, pid=pid)
    if started_at is not None:
        monkeypatch.undo()
    return t.number


def test_a_live_drivers_trial_is_not_taken_whatever_stale_after(tmp_path: Path, live_process) -> None:
    """stale_after shorter than the heartbeat interval: the live driver's trial stays RUNNING (it was taken and
    run twice, and the live driver then crashed recording it)."""
    storage = SQLStorage(f"sqlite:///{tmp_path / 's.db'}")
    storage.open_study(study_info())
    time.sleep(1.5)  # the trial starts well after its driver process did
    number = _running(storage, live_process.pid)
    time.sleep(0.2)
    recover(storage, study_info().name, stale_after=0.1, retry_interrupted=True)
    assert storage.trials(study_info().name)[number].state is TrialState.RUNNING


def test_a_reused_pid_does_not_keep_a_dead_drivers_trial(tmp_path: Path, live_process, monkeypatch) -> None:
    """The pid is alive, but its process started after the trial: another process reused it; the trial is requeued."""
    storage = SQLStorage(f"sqlite:///{tmp_path / 's.db'}")
    storage.open_study(study_info())
    number = _running(storage, live_process.pid, started_at=time.time() - 600, monkeypatch=monkeypatch)
    recover(storage, study_info().name, stale_after=300, retry_interrupted=True)
    t = storage.trials(study_info().name)[number]
    assert t.state is TrialState.QUEUED and t.attrs["attempts"][0]["error"].startswith("interrupted")


def test_stale_after_below_two_heartbeats_is_allowed_with_a_warning(caplog) -> None:
    from lightning_hpt.exceptions import ConfigurationError
    from lightning_hpt.recovery import check_stale_after

    assert check_stale_after(300) == 300.0 and "heartbeat" not in caplog.text
    assert check_stale_after(10) == 10.0 and "stale_after=10 s is under two heartbeats" in caplog.text
    with pytest.raises(ConfigurationError, match=r"a positive number of seconds, got stale_after=0"):
        check_stale_after(0)


class LockAtTheEnd(L.Callback):
    """Once per study, holds the database's write lock from another connection for ``seconds`` from the end of
    a trial's fit: the driver's record of that trial waits past its lock timeout."""

    def __init__(self, db: Path, seconds: float) -> None:
        self.db, self.seconds = db, seconds

    def on_fit_end(self, trainer, pl_module) -> None:
        marker = self.db.with_suffix(".locked")
        if marker.exists():
            return
        marker.touch()
        ready = threading.Event()

        def hold() -> None:
            conn = sqlite3.connect(self.db, timeout=30, isolation_level=None)
            conn.execute("BEGIN IMMEDIATE")
            ready.set()
            time.sleep(self.seconds)
            conn.execute("COMMIT")
            conn.close()

        threading.Thread(target=hold, daemon=True).start()
        ready.wait()


def test_a_trial_whose_record_meets_a_locked_database_runs_again_on_resume(tmp_path: Path, fast_trainer) -> None:
    """The database locked past lock_timeout as a finished trial is recorded: the search stops with
    DatabaseLockedError, and the trial, which the database could not take, is recorded as interrupted (its record
    written once the lock is gone) and runs again on resume; it was FAILED for good, its trained result lost and
    the study one COMPLETE trial short."""
    from lightning_hpt import DatabaseLockedError, Float, HyperparameterSearch
    from lightning_hpt.storage import open_storage

    db = tmp_path / "studies.db"

    def search() -> HyperparameterSearch:
        return HyperparameterSearch(
            TinyModel,
            TinyData,
            {"model.lr": Float(0.01, 0.1, log=True)},
            monitor="val_loss",
            n_trials=2,
            seed=0,
            root=tmp_path,
            storage=open_storage(db, lock_timeout=1.0),
            trainer_kwargs={**fast_trainer, "callbacks": [LockAtTheEnd(db, 1.6)]},
            verbose=False,
        )

    with pytest.raises(DatabaseLockedError, match="finish trial 0"):
        search().run()
    (stopped,) = SQLStorage(f"sqlite:///{db}", create=False).trials("default")
    assert stopped.state is TrialState.FAILED and stopped.error.startswith("interrupted"), stopped.error
    result = search().run()
    assert [(t.number, t.state) for t in result.trials] == [(0, TrialState.COMPLETE), (1, TrialState.COMPLETE)]
    assert result.trials[0].attrs["attempts"][0]["error"].startswith("interrupted")
