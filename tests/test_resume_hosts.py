"""Another machine's crash: a second driver takes its trial over after ``stale_after`` and continues it.

Two drivers on one machine play two hosts (``scripts/resume_search.py host=NAME``: the first one's
trials are stored under another host name, so that the second can only tell it is dead by its
heartbeat) sharing one study (a SQLite file, or PostgreSQL when ``HPT_TEST_POSTGRES_URL`` is set)
and, when they share the root, one trial directory (a shared filesystem).
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from pathlib import Path

import pytest
from test_resume import EPOCHS, K, _epochs, _finish, _resumed_epochs, _start, _wait_epoch, reference  # noqa: F401

from lightning_hpt import TrialState
from lightning_hpt.storage import open_storage

pytestmark = pytest.mark.slow
STALE = 1.0  # the second driver's stale_after, in seconds


@pytest.fixture(params=["sqlite", "postgresql"])
def shared(request, tmp_path) -> tuple[str, str]:
    """The storage URL and the study name both drivers use."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}", "default"
    url = os.environ.get("HPT_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("set HPT_TEST_POSTGRES_URL to a PostgreSQL database to test a study shared on it")
    return url, f"hosts_{uuid.uuid4().hex[:8]}"  # the server may be shared with other runs


def _crash_on_host_a(root: Path, url: str, study: str) -> tuple[int, float]:
    """Driver "host-a" is SIGKILLed at epoch K of trial 0; returns its pid and when it died."""
    proc = _start(root, "local", 0.3, "0", "host=host-a", f"storage={url}", f"study={study}")
    pid = _wait_epoch(root, proc, K)
    proc.kill()
    proc.wait()
    (t,) = open_storage(url).trials(study)
    assert (t.state, t.host, t.pid) == (TrialState.RUNNING, "host-a", pid)  # stored as another machine's
    return pid, time.time()


def _after_stale(killed: float) -> None:
    time.sleep(max(0.0, STALE - (time.time() - killed)))


def test_another_hosts_trial_continues_after_stale_after(tmp_path, reference, shared):
    """Driver B takes the trial over once its heartbeat is older than stale_after, and continues it exactly."""
    url, study = shared
    root = tmp_path / "run"
    pid, killed = _crash_on_host_a(root, url, study)
    # before stale_after (here the default, 300 s) B cannot tell a dead machine from a live one: it leaves the trial
    early = _start(root, "local", 0.0, "0", f"storage={url}", f"study={study}")
    out, _ = early.communicate(timeout=300)
    assert early.returncode != 0 and "no COMPLETE trial (1 RUNNING)" in out, out
    (t,) = open_storage(url).trials(study)
    assert (t.state, t.host, t.attempt) == (TrialState.RUNNING, "host-a", 1)
    _after_stale(killed)
    value, attempt, curve, out = _finish(root, "local", "0", f"stale_after={STALE}", f"storage={url}", f"study={study}")
    assert f"left RUNNING by a process that is gone (host-a pid {pid})" in out, out
    assert "starts over" not in out, out
    ref_value, ref_curve = reference("local", "local")
    assert attempt == 2  # same number and configuration, a second attempt
    _resumed_epochs(root, pid)  # from host-a's checkpoint: at most the interrupted epoch again
    assert curve == ref_curve and value == ref_value
    (t,) = open_storage(url).trials(study)
    assert t.host == socket.gethostname() and t.attrs["attempts"][0]["host"] == "host-a"


def test_another_hosts_checkpoint_out_of_reach_starts_over_and_says_so(tmp_path, reference, shared):
    """Driver B with another root (the trial directory is not shared) starts the trial over, and says so."""
    url, study = shared
    root, other = tmp_path / "run", tmp_path / "other"
    pid, killed = _crash_on_host_a(root, url, study)
    assert (root / study / "trial_0" / "resume" / "latest.ckpt").exists()
    _after_stale(killed)
    value, attempt, curve, out = _finish(other, "local", "0", f"stale_after={STALE}", f"storage={url}", f"study={study}")
    assert f"trial 0: no resumable checkpoint in {other / study / 'trial_0'}" in out and "it starts over" in out, out
    assert attempt == 2 and [e for _, e in _epochs(other)] == list(range(EPOCHS))  # every epoch again
    ref_value, ref_curve = reference("local", "local")
    assert curve == ref_curve and value == ref_value  # the same seed: the same run
