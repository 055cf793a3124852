"""The driver is killed or signalled mid-trial in a real subprocess (RELIABILITY rows 1, 2, 3)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import default_sigint

from lightning_hpt.storage import open_storage
from lightning_hpt.trial import TrialState

SCRIPT = Path(__file__).parent / "scripts" / "slow_search.py"
pytestmark = pytest.mark.slow


def _trials(root: Path):
    db = root / "studies.db"
    if not db.exists():
        return []
    try:
        return open_storage(f"sqlite:///{db}").trials("default")
    except Exception:  # the study is not created yet
        return []


def _start(root: Path, n_trials: int, sleep: float = 0.1) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), str(root), str(n_trials), str(sleep)],
        preexec_fn=default_sigint,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_running(root: Path, proc: subprocess.Popen, min_complete: int = 0, limit: float = 120.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        trials = _trials(root)
        done = sum(t.state is TrialState.COMPLETE for t in trials)
        if done >= min_complete and any(t.state is TrialState.RUNNING and t.intermediate for t in trials):
            return
        if proc.poll() is not None:
            raise AssertionError(f"the search ended before it could be signalled:\n{proc.stdout.read()}")
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("no trial was running in time")


def test_sigkill_then_resume(tmp_path):
    """Row 1: completed trials kept, the killed trial rerun under its number, n_trials counts the whole study."""
    proc = _start(tmp_path, 4)
    _wait_running(tmp_path, proc, min_complete=1)
    proc.kill()
    proc.wait()
    before = _trials(tmp_path)
    running = [t for t in before if t.state is TrialState.RUNNING]
    complete = {t.number: t.value for t in before if t.state is TrialState.COMPLETE}
    assert len(running) == 1 and complete
    proc = _start(tmp_path, 4, sleep=0.0)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    after = _trials(tmp_path)
    assert [t.number for t in after] == [0, 1, 2, 3]
    assert all(t.state is TrialState.COMPLETE for t in after)
    assert {n: v for n, v in ((t.number, t.value) for t in after) if n in complete} == complete
    retried = after[running[0].number]
    assert retried.params == running[0].params and retried.attempt == 2
    assert retried.attrs["attempts"][0]["error"].startswith("interrupted")


@pytest.mark.parametrize(
    ("sig", "code", "reason"), [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "pre-empted")]
)
def test_signal_records_the_running_trial(tmp_path, sig, code, reason):
    """Rows 2 and 3: the running trial is FAILED with the reason, never left RUNNING; the exit status says why."""
    proc = _start(tmp_path, 3, sleep=0.2)
    _wait_running(tmp_path, proc)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == code, out
    trials = _trials(tmp_path)
    assert not [t for t in trials if t.state is TrialState.RUNNING]
    failed = [t for t in trials if t.state is TrialState.FAILED]
    assert len(failed) == 1 and failed[0].error.startswith(reason), failed


def test_second_ctrl_c_exits_at_once(tmp_path):
    """Row 2: a second Ctrl+C while the first is being handled (here: a slow database) ends the driver at once."""
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), str(tmp_path), "3", "0.2"],
        stdout=subprocess.PIPE,
        preexec_fn=default_sigint,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "HPT_SLOW_RECORD": "30"},
    )
    _wait_running(tmp_path, proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(3)  # Lightning has handed the trial back; the driver is now recording it (30 s)
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    proc.communicate(timeout=60)
    assert proc.returncode != 0 and time.monotonic() - t0 < 10
    # whatever the second signal cut short, the next start recovers the study and finishes it
    proc = _start(tmp_path, 3, sleep=0.0)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert [t.state for t in _trials(tmp_path)] == [TrialState.COMPLETE] * 3
