"""An interrupted trial continues from its resumable checkpoint (real subprocesses, tiny Lightning models).

Each test kills a one-trial search of 8 epochs (``scripts/resume_search.py``) once epoch ``K`` has
started, reruns it, and compares with an uninterrupted run of the same seed. A resume from an
epoch-end checkpoint is exact (same curve, same value): the checkpoint holds Lightning's full state
and the monitor keeps the random states that shuffle the next epoch's data.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import default_sigint

from lightning_hpt.exceptions import ConfigurationError
from lightning_hpt.lightning.resume import Resume

SCRIPT = Path(__file__).parent / "scripts" / "resume_search.py"
EPOCHS, K = 8, 4
pytestmark = pytest.mark.slow


#: a file's time comes from the kernel's coarse clock, up to a tick (4 ms here) behind ``time.time()``; a
#: checkpoint written before the signal is older by the 0.2 s :func:`_wait_epoch` waits into the epoch
TICK = 0.02


def _start(root: Path, executor: str, sleep: float, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, str(SCRIPT), str(root), executor, str(EPOCHS), str(sleep), f"{root}.log", *extra]
    return subprocess.Popen(cmd, preexec_fn=default_sigint, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _epochs(root: Path) -> list[tuple[int, int]]:
    """``(pid, epoch)`` for every training epoch started, in order."""
    log = Path(f"{root}.log")
    if not log.exists():
        return []
    return [tuple(map(int, line.split())) for line in log.read_text().splitlines() if line.strip()]


def _wait_epoch(root: Path, proc: subprocess.Popen, epoch: int, limit: float = 120.0) -> int:
    """Wait until ``epoch`` started (then a bit, mid-epoch); returns the pid that trains it."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        started = [pid for pid, e in _epochs(root) if e == epoch]
        if started:
            time.sleep(0.2)
            return started[0]
        if proc.poll() is not None:
            raise AssertionError(f"the search ended before epoch {epoch}:\n{proc.stdout.read()}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"epoch {epoch} did not start in time")


def _finish(root: Path, executor: str, *extra: str) -> tuple[float, int, dict[int, float], str]:
    proc = _start(root, executor, 0.0, *extra)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    _, value, attempt, curve = line.split(" ", 3)
    return float(value), int(attempt), {int(k): v for k, v in json.loads(curve).items()}, out


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, tuple[float, dict[int, float]]]:
    """Uninterrupted runs of the same search, by executor/CV (computed once)."""
    cache: dict[str, tuple[float, dict[int, float]]] = {}

    def get(key: str, executor: str, *extra: str) -> tuple[float, dict[int, float]]:
        if key not in cache:
            value, attempt, curve, _ = _finish(tmp_path_factory.mktemp(key) / "ref", executor, *extra)
            assert attempt == 1
            cache[key] = (value, curve)
        return cache[key]

    return get  # type: ignore[return-value]


def _resumed_epochs(root: Path, first_pid: int) -> list[int]:
    """The epochs trained after the kill; checks that at most the interrupted epoch is trained again."""
    before = [e for pid, e in _epochs(root) if pid == first_pid]
    after = [e for pid, e in _epochs(root) if pid != first_pid]
    # killed during epoch m: it continues from the checkpoint of epoch m - 1, so m is trained again;
    # killed between the checkpoint of m and the start of m + 1: it continues at m + 1
    assert after and after[0] in (max(before), max(before) + 1), (before, after)
    assert after == list(range(after[0], EPOCHS)), after
    return after


def test_driver_sigkill_resumes_exactly(tmp_path, reference):
    """SIGKILL of the driver at epoch K: the rerun trains epochs K.. only, and ends as an uninterrupted run."""
    root = tmp_path / "run"
    proc = _start(root, "local", 0.3)
    pid = _wait_epoch(root, proc, K)
    proc.kill()
    proc.wait()
    assert (root / "default" / "trial_0" / "resume" / "latest.ckpt").exists()
    value, attempt, curve, _ = _finish(root, "local")
    ref_value, ref_curve = reference("local", "local")
    assert attempt == 2
    _resumed_epochs(root, pid)
    assert curve == ref_curve and value == ref_value  # exact: same state, same data order
    assert not (root / "default" / "trial_0" / "resume").exists()  # removed when the trial ended
    best = torch.load(root / "default" / "trial_0" / "checkpoints" / "best.ckpt", weights_only=True)
    assert best["epoch"] == min(curve, key=curve.get)  # the best step's stays, over both attempts


def test_worker_sigkill_resumes_exactly(tmp_path, reference):
    """SIGKILL of a ProcessExecutor worker: the trial is FAILED ("worker died"); retry_failed continues it."""
    root = tmp_path / "run"
    proc = _start(root, "process", 0.3)
    worker = _wait_epoch(root, proc, K)
    assert worker != proc.pid
    os.kill(worker, signal.SIGKILL)
    out, _ = proc.communicate(timeout=120)
    assert "worker died" in out, out
    value, attempt, curve, _ = _finish(root, "process")
    ref_value, ref_curve = reference("process", "process")
    assert attempt == 2
    _resumed_epochs(root, worker)
    assert curve == ref_curve and value == ref_value


@pytest.mark.parametrize("executor", ["local", "process"])
def test_sigterm_saves_the_state_and_resumes(tmp_path, reference, executor):
    """SIGTERM mid-epoch K to the driver: the trial's state at that moment is saved (by the worker, which the
    driver ends with SIGTERM, under ProcessExecutor) before the driver exits, and the rerun continues.

    Lightning restores how many batches of epoch K were done, but a DataLoader keeps no position: the rest
    of epoch K is the first batches of a new shuffle, so the value is close to the uninterrupted one, not
    equal (tolerance 20%; docs/reliability.md, "How exact").
    """
    root = tmp_path / "run"
    proc = _start(root, executor, 0.3)
    pid = _wait_epoch(root, proc, K)
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out
    ckpt = root / "default" / "trial_0" / "resume" / "latest.ckpt"
    assert ckpt.stat().st_mtime >= sent - TICK  # written on SIGTERM, before the process exited
    value, attempt, curve, _ = _finish(root, executor)
    ref_value, ref_curve = reference(executor, executor)
    assert attempt == 2
    assert _resumed_epochs(root, pid)[0] >= K
    assert sorted(curve) == sorted(ref_curve)  # no step missing or repeated
    assert all(curve[s] == ref_curve[s] for s in range(K))  # the steps before the interruption kept
    assert value == pytest.approx(ref_value, rel=0.2)


def test_ctrl_c_saves_the_state_and_resumes(tmp_path, reference):
    """Ctrl+C (SIGINT) mid-epoch K: as SIGTERM, the state at that moment is saved and the rerun continues."""
    root = tmp_path / "run"
    proc = _start(root, "local", 0.3)
    pid = _wait_epoch(root, proc, K)
    sent = time.time()
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "KeyboardInterrupt" in out, out
    assert (root / "default" / "trial_0" / "resume" / "latest.ckpt").stat().st_mtime >= sent - TICK
    value, attempt, curve, _ = _finish(root, "local")
    ref_value, ref_curve = reference("local", "local")
    assert attempt == 2 and _resumed_epochs(root, pid)[0] >= K
    assert sorted(curve) == sorted(ref_curve) and all(curve[s] == ref_curve[s] for s in range(K))
    assert value == pytest.approx(ref_value, rel=0.2)  # mid-epoch: see the SIGTERM test


def test_script_trial_sigkill_resumes_exactly(tmp_path, reference):
    """A ScriptSearch script killed at epoch K: run again, its fit(ckpt_path=trial.ckpt_path) continues the trial."""
    root = tmp_path / "run"
    proc = _start(root, "script", 0.3)
    pid = _wait_epoch(root, proc, K)
    proc.kill()
    proc.wait()
    value, attempt, curve, out = _finish(root, "script")
    ref_value, ref_curve = reference("script", "script")
    assert attempt == 2 and "starts over" not in out
    _resumed_epochs(root, pid)
    assert curve == ref_curve and value == ref_value
    assert not (root / "default" / "trial_0" / "resume").exists()


def test_script_trial_sigterm_saves_the_state_and_resumes(tmp_path, reference):
    """SIGTERM to a ScriptSearch script mid-epoch K: the trial is recorded pre-empted with its state saved.

    The script ends there with status 143, as a search does (Lightning's SIGTERMException is a SystemExit
    without a code, status 0: a batch system would take the pre-empted script for a finished one).
    """
    root = tmp_path / "run"
    proc = _start(root, "script", 0.3)
    pid = _wait_epoch(root, proc, K)
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert "RESULT" not in out and proc.returncode == 143, out
    assert (root / "default" / "trial_0" / "resume" / "latest.ckpt").stat().st_mtime >= sent - TICK
    value, attempt, curve, _ = _finish(root, "script")
    ref_value, ref_curve = reference("script", "script")
    assert attempt == 2 and _resumed_epochs(root, pid)[0] >= K
    assert sorted(curve) == sorted(ref_curve) and all(curve[s] == ref_curve[s] for s in range(K))
    assert value == pytest.approx(ref_value, rel=0.2)


def test_ray_worker_sigkill_resumes_exactly(tmp_path, reference):
    """A Ray worker killed at epoch K: Ray reruns the task (max_retries=1), which continues from the checkpoint."""
    pytest.importorskip("ray")
    root = tmp_path / "run"
    proc = _start(root, "ray", 0.3)
    worker = _wait_epoch(root, proc, K, limit=300.0)
    assert worker != proc.pid
    os.kill(worker, signal.SIGKILL)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    _, value, attempt, curve = line.split(" ", 3)
    curve = {int(k): v for k, v in json.loads(curve).items()}
    ref_value, ref_curve = reference("local", "local")
    assert int(attempt) == 1  # Ray's own retry, within the same attempt of the study
    _resumed_epochs(root, worker)
    assert curve == ref_curve and float(value) == ref_value


def test_resume_false_starts_over(tmp_path):
    """Without resume the killed trial trains all its epochs again."""
    root = tmp_path / "run"
    proc = _start(root, "local", 0.3, "0", "noresume")
    pid = _wait_epoch(root, proc, K)
    proc.kill()
    proc.wait()
    _, attempt, _, _ = _finish(root, "local", "0", "noresume")
    assert attempt == 2 and [e for p, e in _epochs(root) if p != pid] == list(range(EPOCHS))


def test_cv_trial_keeps_finished_folds(tmp_path, reference):
    """A 2-fold trial killed in fold 1: fold 0 is kept, fold 1 continues; same value as uninterrupted."""
    root = tmp_path / "run"
    proc = _start(root, "local", 0.05, "2")
    t0 = time.monotonic()
    while len(_epochs(root)) < EPOCHS + K and time.monotonic() - t0 < 120:  # fold 0's epochs, then K of fold 1
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.05)
    time.sleep(0.2)
    proc.kill()
    proc.wait()
    trained_before = len(_epochs(root))
    value, attempt, curve, _ = _finish(root, "local", "2")
    ref_value, ref_curve = reference("cv", "local", "2")
    assert attempt == 2
    assert len(_epochs(root)) - trained_before <= EPOCHS - K + 1  # only fold 1's remaining epochs
    assert curve == ref_curve and value == ref_value


@pytest.mark.parametrize(
    "kwargs",
    [
        {"every_n_epochs": 0},
        {"every_n_epochs": None},
        {"every_n_epochs": None, "every_minutes": -1.0},
        {"every_n_epochs": 1, "every_minutes": 2.0},
    ],
)
def test_bad_resume_settings_are_refused(kwargs):
    with pytest.raises(ConfigurationError, match="every_"):
        Resume(**kwargs)
