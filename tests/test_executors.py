"""Executors: the contract every executor passes, and what worker processes must survive (RELIABILITY rows 6, 7, 9, 18).

Run as a script, this file is a search driver used by the signal tests:
``python test_executors.py ROOT`` runs slow trials in two worker processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from conftest import default_sigint

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from lightning_hpt import Categorical, HyperparameterSearch, Int, TrialState
from lightning_hpt.exceptions import ConfigurationError, TrialPickleError
from lightning_hpt.executors import LocalExecutor, ProcessExecutor
from lightning_hpt.lightning.module_builder import ModuleTrialBuilder
from lightning_hpt.lightning.runner import TrialBuild
from lightning_hpt.storage import open_storage
from lightning_hpt.testing.executor import TRAINER, ContractData, ContractModel, ExecutorContract, contract_build


class TestLocalExecutor(ExecutorContract):
    def make_executor(self) -> LocalExecutor:
        return LocalExecutor()


class TestProcessExecutor(ExecutorContract):
    isolates_trials = True

    def make_executor(self) -> ProcessExecutor:
        return ProcessExecutor(workers=2, devices=[], terminate_grace=1.0)


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module (starting Ray takes a while): 2 CPUs, no dashboard."""
    ray = pytest.importorskip("ray", reason="Ray is an extra: pip install 'lightning-hpt[ray]' to test RayExecutor")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(os.path.abspath(p or ".") for p in sys.path)}},
    )
    yield ray
    ray.shutdown()


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
class TestRayExecutor(ExecutorContract):
    isolates_trials = True

    def make_executor(self):
        from lightning_hpt.executors import RayExecutor

        return RayExecutor({"cpu": 1})


def search(tmp_path: Path, executor, space, n_trials=None, **kw) -> HyperparameterSearch:
    kw.setdefault("strategy", "grid")
    return HyperparameterSearch(
        ContractModel,
        ContractData,
        space,
        monitor="val_loss",
        root=tmp_path,
        n_trials=n_trials,
        trainer_kwargs={**TRAINER, **kw.pop("trainer", {})},
        executor=executor,
        verbose=False,
        patience=None,
        seed=0,
        **kw,
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is dead too
        return f.read().split(")")[-1].split()[0] != "Z"


# --------------------------------------------------------------------------------------------- planning
def test_slots_follow_devices_and_split_cores(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    assert [s["gpus"] for s in ProcessExecutor(devices=[0, 1, 2, 3]).slots] == ["4", "5", "6", "7"]
    assert [s["gpus"] for s in ProcessExecutor().slots] == ["4", "5", "6", "7"]  # default: every visible GPU
    assert [s["gpus"] for s in ProcessExecutor(devices=[0, 1, 2, 3], gpus_per_trial=2).slots] == ["4,5", "6,7"]
    assert [s["gpus"] for s in ProcessExecutor(devices=[1, 2], trials_per_gpu=2).slots] == ["5", "5", "6", "6"]
    assert ProcessExecutor(devices=[0, 1], trials_per_gpu=3, workers=4).max_concurrency == 4
    cores = len(os.sched_getaffinity(0))
    cpu = ProcessExecutor(workers=2, devices=[])
    assert cpu.max_concurrency == 2 and cpu.slots[0] == {"gpus": None, "threads": max(1, cores // 2)}
    assert ProcessExecutor(devices=[]).max_concurrency == cores  # CPU only: a worker per core, one thread each
    assert ProcessExecutor(devices=[], threads_per_worker=3).slots[0]["threads"] == 3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"devices": [0, 9]}, r"devices=\[0, 9\] names GPUs \[9\], but 4 are visible"),
        ({"devices": "0,1"}, "devices must be a list of GPU indices"),
        ({"devices": [0, 1, 2], "gpus_per_trial": 2}, "gpus_per_trial=2 must divide the 3 GPUs"),
        ({"workers": 5}, "workers=5 exceeds the 4 GPU slots"),
        ({"workers": 0}, "workers must be a positive integer or None, got workers=0"),
        ({"trials_per_gpu": 0}, "trials_per_gpu must be a positive integer"),
        ({"trial_timeout": -1}, "trial_timeout must be a positive number of seconds"),
    ],
)
def test_bad_arguments_are_refused(monkeypatch, kwargs, match):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    with pytest.raises(ConfigurationError, match=match):
        ProcessExecutor(**kwargs)


def test_ddp_trainers_are_recognised():
    assert not contract_build().builder.launches_subprocesses()
    assert contract_build(strategy="ddp", devices=2).builder.launches_subprocesses()
    assert not contract_build(strategy="ddp_spawn", devices=2).builder.launches_subprocesses()


# --------------------------------------------------------------------------------------------- workers
def test_workers_see_their_gpus_and_threads(tmp_path, monkeypatch):
    """GPU slots reach the trial as CUDA_VISIBLE_DEVICES; torch threads are the slot's share (CPU trials here)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    executor = ProcessExecutor(devices=[0, 1], threads_per_worker=1)
    result = search(tmp_path, executor, {"model.hidden": Int(4, 7)}).run()
    executor.shutdown()
    assert [t.state for t in result.trials] == [TrialState.COMPLETE] * 4
    assert [slot["gpus"] for slot in executor.slots] == ["0", "1"]  # one slot per GPU
    for t in result.trials:  # each trial saw exactly its slot's GPU (which slots ran depends on start-up times)
        assert t.attrs["metrics"]["cuda_visible"] == float(executor.trial_info[t.number]["gpus"])
    assert {t.attrs["metrics"]["threads"] for t in result.trials} == {1.0}


@pytest.mark.slow
def test_dead_worker_fails_its_trial_and_is_replaced(tmp_path):
    """RELIABILITY row 6: os._exit(3) and SIGKILL (as the OOM killer sends) fail only their trial, with the reason;
    a new worker replaces the dead one and the search goes on."""
    executor = ProcessExecutor(workers=1, devices=[], terminate_grace=1.0)
    space = {"model.die_at_epoch": Categorical([1, 99]), "model.die_how": Categorical(["exit", "sigkill"])}
    result = search(tmp_path, executor, space).run()
    executor.shutdown()
    exited, killed, *lived = result.trials
    assert (exited.params["model.die_at_epoch"], exited.params["model.die_how"]) == (1, "exit")
    assert exited.state is TrialState.FAILED and "worker died" in exited.error and "exit code 3" in exited.error
    assert killed.state is TrialState.FAILED and "killed by signal SIGKILL (9)" in killed.error
    assert exited.intermediate == {0: pytest.approx(exited.intermediate[0])}  # epoch 0 had been reported
    assert [t.state for t in lived] == [TrialState.COMPLETE] * 2
    assert 0 not in executor.trial_info and 1 not in executor.trial_info  # nothing came back from the dead workers
    assert not any(_alive(executor.trial_info[t.number]["pid"]) for t in lived)  # shut down, no orphans


@pytest.mark.slow
def test_hung_trial_times_out(tmp_path):
    """RELIABILITY row 7: a trial sleeping far past trial_timeout is terminated, then killed, and FAILED "timeout"."""
    marker = tmp_path / "pid"
    executor = ProcessExecutor(workers=1, devices=[], trial_timeout=3.0, terminate_grace=1.0)
    space = {"model.hang_at_epoch": Categorical([0, 99]), "model.marker": Categorical([str(marker)])}
    t0 = time.monotonic()
    result = search(tmp_path, executor, space, trainer={"max_epochs": 1}).run()
    elapsed = time.monotonic() - t0
    executor.shutdown()
    hung, ok = result.trials
    assert hung.state is TrialState.FAILED and hung.error.startswith("timeout") and "trial_timeout=3 s" in hung.error
    assert "SIGKILL" in hung.error  # it ignored SIGTERM while sleeping, so it was killed
    assert not _alive(int(marker.read_text()))
    assert ok.state is TrialState.COMPLETE
    assert elapsed < 120  # not the ten minutes the trial wanted


def test_unpicklable_trial_code_is_refused_before_anything_is_written(tmp_path):
    """RELIABILITY row 18: a factory closing over a threading.Lock is named, with the fix; no study is written."""
    import threading

    lock = threading.Lock()

    def make_model(config):
        with lock:
            return ContractModel(**config["model"])

    s = HyperparameterSearch(
        make_model,
        ContractData,
        {"model.hidden": Int(4, 8)},
        root=tmp_path / "runs",
        n_trials=2,
        trainer_kwargs=TRAINER,
        executor=ProcessExecutor(workers=1, devices=[]),
        verbose=False,
    )
    with pytest.raises(TrialPickleError, match=r"model=.*make_model cannot be sent to worker processes.*module level"):
        s.run()
    assert not (tmp_path / "runs").exists()


def test_code_that_workers_cannot_import_is_refused(tmp_path):
    """Picklable in the driver but not importable in a fresh process: refused by start(), before any trial."""
    module = types.ModuleType("hpt_only_in_this_process")
    exec("import lightning_hpt.testing.executor as c\nclass Model(c.ContractModel):\n    pass\n", module.__dict__)
    module.Model.__module__ = module.__name__
    sys.modules[module.__name__] = module
    executor = ProcessExecutor(workers=1, devices=[])
    try:
        with pytest.raises(TrialPickleError, match=r"cannot load it.*No module named 'hpt_only_in_this_process'"):
            executor.start(TrialBuild(ModuleTrialBuilder(module.Model, ContractData, TRAINER), "val_loss"))
    finally:
        executor.shutdown()
        del sys.modules[module.__name__]


@pytest.mark.slow
def test_memory_is_flat_and_workers_recycle(tmp_path):
    """RELIABILITY row 9: a worker's RSS and open descriptors stay flat over many trials; max_trials_per_worker
    recycles."""
    executor = ProcessExecutor(workers=1, devices=[])
    result = search(tmp_path, executor, {"model.hidden": Int(4, 17)}, trainer={"max_epochs": 1}).run()
    executor.shutdown()
    assert len(result.trials) == 14 and all(t.state is TrialState.COMPLETE for t in result.trials)
    info = [executor.trial_info[n] for n in range(14)]
    assert len({i["pid"] for i in info}) == 1
    assert info[13]["rss_mb"] - info[3]["rss_mb"] < 20, [round(i["rss_mb"], 1) for i in info]
    assert info[13]["fds"] <= info[3]["fds"]

    executor = ProcessExecutor(workers=1, devices=[], max_trials_per_worker=2)
    search(tmp_path / "b", executor, {"model.hidden": Int(4, 8)}, trainer={"max_epochs": 1}).run()
    executor.shutdown()
    pids = [executor.trial_info[n]["pid"] for n in range(5)]
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]


def test_pruning_through_a_search(tmp_path):
    """Reports stream to the driver while trials run in workers; the pruner's decision stops them."""
    from lightning_hpt.pruners.base import Pruner

    class AfterTwoSteps(Pruner):
        name = "after-two"

        def should_prune(self, history, trial):
            return trial.number % 2 == 1 and max(trial.intermediate) >= 1

    executor = ProcessExecutor(workers=2, devices=[])
    result = search(
        tmp_path, executor, {"model.hidden": Int(4, 7)}, pruner=AfterTwoSteps(), trainer={"max_epochs": 4}
    ).run()
    executor.shutdown()
    assert [t.state for t in result.trials] == [TrialState.COMPLETE, TrialState.PRUNED] * 2
    assert [len(t.intermediate) for t in result.trials] == [4, 2, 4, 2]


# --------------------------------------------------------------------------------------------- driver signals
def _start_driver(root: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, __file__, str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=default_sigint,
        text=True,
        start_new_session=True,
    )


def _worker_pids(root: Path, proc: subprocess.Popen, n: int, limit: float = 180.0) -> list[int]:
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        markers = sorted(root.glob("marker_*"))
        if len(markers) >= n and all(m.read_text() for m in markers):
            return [int(m.read_text()) for m in markers]
        if proc.poll() is not None:
            raise AssertionError(f"the driver ended early:\n{proc.stdout.read()}")
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("the trials did not start in time")


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGKILL, -9)])
def test_driver_signal_ends_the_workers(tmp_path, sig, code):
    """Ctrl+C / SIGTERM: running trials recorded, workers ended promptly; SIGKILL: the workers notice and exit."""
    proc = _start_driver(tmp_path)
    pids = _worker_pids(tmp_path, proc, 2)
    assert all(_alive(p) for p in pids)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == code, out
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids), "orphaned worker processes"
    trials = open_storage(f"sqlite:///{tmp_path / 'studies.db'}").trials("default")
    if sig != signal.SIGKILL:
        assert [t.state for t in trials] == [TrialState.FAILED] * 2
        assert all(t.error.startswith("pre-empted" if sig == signal.SIGTERM else "interrupted") for t in trials)


@pytest.mark.slow
def _ends_as_ctrl_c_comes(tmp_path, executor) -> list:
    space = {
        "model.ctrl_c_at_end": Categorical([str(tmp_path / "pressed")]),
        "model.ctrl_c_pid": Categorical([os.getpid()]),
        "model.lr": Categorical([0.01, 0.05]),
    }
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            search(tmp_path, executor, space).run()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert (tmp_path / "pressed").exists()
    trials = open_storage(f"sqlite:///{tmp_path / 'studies.db'}").trials("default")
    return [(t.number, t.state, t.error) for t in trials]


def test_a_trial_that_ends_as_ctrl_c_comes_is_recorded_as_it_ended(tmp_path, monkeypatch):
    """Its worker is still sending the outcome when the driver's Ctrl+C handler runs; its resumable
    checkpoint is already removed, so recorded as interrupted it would train again from the start."""
    import lightning_hpt.executors.process as process

    monkeypatch.setattr(process, "HALT_WAIT", 10.0)  # the mechanism, with room on a loaded machine
    executor = ProcessExecutor(workers=1, devices=[], terminate_grace=1.0)
    assert _ends_as_ctrl_c_comes(tmp_path, executor) == [(0, TrialState.COMPLETE, None)]


def test_a_worker_whose_driver_is_gone_ends_with_one_line(tmp_path, monkeypatch, capsys):
    """The driver was killed: the worker cannot reach its socket, and says so without a traceback."""
    from lightning_hpt.executors import worker
    from lightning_hpt.executors.ipc import KEY_ENV

    monkeypatch.setenv(KEY_ENV, "00" * 16)
    monkeypatch.setattr(worker, "_watch_parent", lambda: None)
    code = worker.main(["--address", str(tmp_path / "gone.sock"), "--token", "w0"])
    err = capsys.readouterr().err
    assert code == 1 and err == f"lightning-hpt worker {os.getpid()}: the search's driver is gone; this worker ends\n"


if __name__ == "__main__":
    root = Path(sys.argv[1])
    space = {
        "model.marker": Categorical([str(root / "marker_0"), str(root / "marker_1")]),
        "model.sleep": Categorical([0.5]),
    }
    try:
        search(root, ProcessExecutor(workers=2, devices=[]), space, trainer={"max_epochs": 50}).run()
    except KeyboardInterrupt:
        sys.exit(130)


# --------------------------------------------------------------------------------------------- Ray
@pytest.mark.slow
@pytest.mark.parametrize("retries", [0, 1])
def test_ray_dead_worker_is_failed_or_retried(tmp_path, local_ray, retries):
    """RELIABILITY row 25: a trial whose Ray worker is killed is FAILED (max_retries=0) or rerun under its number."""
    from lightning_hpt.executors import RayExecutor

    once = tmp_path / "died_once"
    space = {
        "model.die_at_epoch": Categorical([1, 99]),
        "model.die_how": Categorical(["sigkill"]),
        "model.die_once": Categorical([str(once)] if retries else [None]),
    }
    executor = RayExecutor({"cpu": 1}, max_retries=retries)
    result = search(tmp_path, executor, space).run()
    executor.shutdown()
    assert [t.number for t in result.trials] == [0, 1]  # no gap, no duplicate
    killed, lived = result.trials
    assert killed.params["model.die_at_epoch"] == 1 and lived.state is TrialState.COMPLETE
    if retries:
        assert once.exists() and killed.state is TrialState.COMPLETE and sorted(killed.intermediate) == [0, 1]
    else:
        assert killed.state is TrialState.FAILED and killed.error.startswith("worker died"), killed.error


@pytest.mark.slow
def test_ray_a_trial_that_ends_as_ctrl_c_comes_is_recorded_as_it_ended(tmp_path, local_ray, monkeypatch):
    """Ray's workers do not get the driver's Ctrl+C: a trial ending as it comes is collected, not cancelled."""
    import lightning_hpt.executors.ray as ray_executor
    from lightning_hpt.executors import RayExecutor

    monkeypatch.setattr(ray_executor, "HALT_WAIT", 30.0)  # the mechanism, with room on a loaded machine
    read = RayExecutor._outcome

    def slow_read(self, *args):  # a loaded machine: the thread collecting the outcome is slow to read it
        time.sleep(2.0)
        return read(self, *args)

    monkeypatch.setattr(RayExecutor, "_outcome", slow_read)
    executor = RayExecutor({"cpu": 1}, max_concurrency=1)
    assert _ends_as_ctrl_c_comes(tmp_path, executor) == [(0, TrialState.COMPLETE, None)]


@pytest.mark.slow
def test_ray_refuses_ddp_and_public_dashboards(local_ray):
    from lightning_hpt.executors import RayExecutor

    with pytest.raises(ConfigurationError, match="dashboard"):
        RayExecutor(init_kwargs={"dashboard_host": "0.0.0.0"})
    with pytest.raises(ConfigurationError, match=r"DDP ranks.*ProcessExecutor"):
        RayExecutor().start(contract_build(strategy="ddp", devices=2))


@pytest.mark.slow
def test_ray_fails_a_trial_that_the_search_space_makes_ddp(tmp_path, local_ray):
    from lightning_hpt.executors import RayExecutor

    executor = RayExecutor({"cpu": 1})
    result = search(tmp_path, executor, {"trainer.devices": Categorical([1, 2])}).run()
    executor.shutdown()
    trials = {t.params["trainer.devices"]: t for t in result.trials}
    assert trials[1].state is TrialState.COMPLETE, trials[1].error
    assert trials[2].state is TrialState.FAILED and "a Ray task cannot run such a trial" in trials[2].error


class _Remote:
    """Stands in for a Ray actor method: ``.remote(*args)`` records the call."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def remote(self, *args):
        self.calls.append(args)


def test_ray_reports_without_a_pruner_go_in_batches_at_most_every_interval():
    # each message to the report actor costs CPU that trials lose: with nobody to answer "stop",
    # values are held and sent together at most once per interval (the outcome carries them all anyway)
    from lightning_hpt.executors.ray_channel import RayReporter

    broker = types.SimpleNamespace(post=_Remote())
    held = RayReporter(broker, "k", answers=False, every=3600.0)
    assert [held.report(step, 1.0 / (step + 1)) for step in range(3)] == [False] * 3
    assert broker.post.calls == []  # within the interval: nothing sent yet
    eager = RayReporter(broker, "k", answers=False, every=0.0)
    eager.report(0, 0.5)
    eager.report(1, 0.25)
    assert broker.post.calls == [("k", [(0, 0.5)]), ("k", [(1, 0.25)])]
    broker.post.calls.clear()
    timed = RayReporter(broker, "k", answers=False, every=0.2)
    timed.report(0, 3.0)  # the interval counts from the trial's start
    time.sleep(0.25)
    timed.report(1, 2.0)  # the interval has passed: both values go in one message
    timed.report(2, 1.0)
    assert broker.post.calls == [("k", [(0, 3.0), (1, 2.0)])]


def test_the_executor_contract_lives_in_the_base_class(tmp_path):
    """Issue 14: an executor that implements only _submit gets the DDP refusals and never-raising submit."""
    from concurrent.futures import Future

    from lightning_hpt.executors import Executor
    from lightning_hpt.lightning.runner import TrialJob, TrialOutcome, run_trial
    from lightning_hpt.testing.executor import RecordingReporter

    class Minimal(Executor):
        max_concurrency = 1

        def __init__(self) -> None:
            self.seen: list[bool] = []

        def _submit(self, job, reporter, answers) -> Future[TrialOutcome]:
            self.seen.append(answers)
            if job.number == 99:
                raise OSError("the cluster is gone")
            future: Future[TrialOutcome] = Future()
            future.set_result(run_trial(job, reporter))
            return future

    ex = Minimal()
    with pytest.raises(ConfigurationError, match="DDP ranks by re-running"):
        ex.start(contract_build(strategy="ddp", devices=2))
    ex.start(contract_build())
    ddp = TrialJob(contract_build(), 0, {"model.lr": 0.05, "trainer.devices": 2}, 0, str(tmp_path / "t0"))
    out = ex.submit(ddp, RecordingReporter()).result()
    assert out.state is TrialState.FAILED and "this executor cannot run such a trial" in out.error
    broken = TrialJob(contract_build(), 99, {"model.lr": 0.05}, 0, str(tmp_path / "t99"))
    out = ex.submit(broken, RecordingReporter()).result()
    assert out.state is TrialState.FAILED and "OSError: the cluster is gone" in out.error
    quiet = RecordingReporter()
    quiet.answers = False
    ok = ex.submit(TrialJob(contract_build(), 1, {"model.lr": 0.05}, 0, str(tmp_path / "t1")), quiet).result()
    assert ok.state is TrialState.COMPLETE and ex.seen == [True, False]
