"""Another machine's crash: its trial continues elsewhere from its checkpoint, or starts over and says so.

Another driver's host: two drivers on one machine play two hosts (``scripts/resume_search.py
host=NAME``: the first one's trials are stored under another host name, so that the second can only
tell it is dead by its heartbeat) sharing one study (a SQLite file, or PostgreSQL when
``HPT_TEST_POSTGRES_URL`` is set) and, when they share the root, one trial directory (a shared
filesystem); the second takes the trial over after ``stale_after``.

A Ray node: ``scripts/ray_node_search.py`` runs the trial on a worker node of a Ray cluster of this
machine (``ray.cluster_utils.Cluster``), removes that node mid-trial, and Ray reruns the trial's
task on a new node (``max_retries=1``).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from test_resume import EPOCHS, K, _epochs, _finish, _resumed_epochs, _start, _wait_epoch

from lightning_hpt import TrialState
from lightning_hpt.storage import open_storage

pytestmark = pytest.mark.slow
NODE_SCRIPT = Path(__file__).parent / "scripts" / "ray_node_search.py"
STALE = 1.0  # the second driver's stale_after, in seconds


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[float, dict[int, float]]:
    """The value and curve of the same trial, uninterrupted."""
    value, attempt, curve, _ = _finish(tmp_path_factory.mktemp("ref") / "ref", "local")
    assert attempt == 1
    return value, curve


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
    ref_value, ref_curve = reference
    assert attempt == 2  # same number and configuration, a second attempt
    _resumed_epochs(root, pid)  # from host-a's checkpoint: at most the interrupted epoch again
    assert curve == ref_curve and value == ref_value
    (t,) = open_storage(url).trials(study)
    assert t.host == socket.gethostname() and t.attrs["attempts"][0]["host"] == "host-a"


def test_another_hosts_checkpoint_out_of_reach_starts_over_and_says_so(tmp_path, reference, shared):
    """Driver B with another root (the trial directory is not shared) starts the trial over, and says so."""
    url, study = shared
    root, other = tmp_path / "run", tmp_path / "other"
    _, killed = _crash_on_host_a(root, url, study)
    assert (root / study / "trial_0" / "resume" / "latest.ckpt").exists()
    _after_stale(killed)
    b = ("0", f"stale_after={STALE}", f"storage={url}", f"study={study}")
    value, attempt, curve, out = _finish(other, "local", *b)
    assert f"trial 0: no resumable checkpoint in {other / study / 'trial_0'}" in out and "it starts over" in out, out
    assert attempt == 2 and [e for _, e in _epochs(other)] == list(range(EPOCHS))  # every epoch again
    ref_value, ref_curve = reference
    assert curve == ref_curve and value == ref_value  # the same seed: the same run


def _dead_node_search(root: Path, *extra: str) -> tuple[float, int, dict[int, float], str]:
    cmd = [sys.executable, str(NODE_SCRIPT), str(root), str(EPOCHS), "0.3", f"{root}.log", str(K), *extra]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    _, value, attempt, curve = line.split(" ", 3)
    return float(value), int(attempt), {int(k): v for k, v in json.loads(curve).items()}, proc.stdout


def test_dead_ray_node_trial_continues_on_another_node(tmp_path, reference):
    """The trial's node dies at epoch K: Ray reruns it on another node, which continues from its checkpoint."""
    pytest.importorskip("ray")
    root = tmp_path / "run"
    value, attempt, curve, out = _dead_node_search(root)
    assert "NODE a REMOVED" in out and "report channel failed" not in out, out  # the channel lives on the head
    assert "Ray runs it again (start 2" in out and "starts over" not in out, out
    ref_value, ref_curve = reference
    assert attempt == 1  # Ray's own rerun, within the study's attempt
    _resumed_epochs(root, _epochs(root)[0][0])
    assert curve == ref_curve and value == ref_value
    (t,) = open_storage(f"sqlite:///{root / 'studies.db'}").trials("default")
    assert t.attrs["ray_restarts"] == 1 and t.attrs["resumed_at_step"] >= K


def test_dead_ray_node_checkpoint_out_of_reach_starts_over_and_says_so(tmp_path, reference):
    """The new node cannot see the trial's directory (removed in between): the rerun starts over, and says so."""
    pytest.importorskip("ray")
    root = tmp_path / "run"
    value, _, curve, out = _dead_node_search(root, "unreachable")
    assert f"trial 0: no resumable checkpoint in {root / 'default' / 'trial_0'}" in out, out
    assert "it starts over" in out, out
    first = _epochs(root)[0][0]
    assert [e for p, e in _epochs(root) if p != first] == list(range(EPOCHS))  # every epoch again
    ref_value, ref_curve = reference
    assert curve == ref_curve and value == ref_value  # the same seed: the same run
    (t,) = open_storage(f"sqlite:///{root / 'studies.db'}").trials("default")
    assert t.attrs["ray_restarts"] == 1 and "resumed_at_step" not in t.attrs
