"""Worker processes on one machine: one trial per GPU (or k GPUs, or m trials per GPU), or a share of the cores.

Each slot owns one worker process at a time, started as its own command
(``python -m lightning_hpt.executors.worker``, a fresh interpreter: safe with CUDA, like ``spawn``)
in its own process group. A slot thread in the driver hands its worker one trial at a time and
watches it: a worker that dies fails its trial with the exit code or signal and is replaced; a
trial past ``trial_timeout`` has its worker terminated, then killed. Reports come back over the
local channel of :mod:`lightning_hpt.executors.ipc` and are decided in the driver.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import queue
import secrets
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, wait
from concurrent.futures import TimeoutError as FutureTimeoutError  # not the builtin before Python 3.11
from multiprocessing.connection import Connection
from typing import Any

from typing_extensions import override

from lightning_hpt.exceptions import ConfigurationError, TrialPickleError
from lightning_hpt.executors._pickling import check_picklable, pickle_dumps, refers_to_main
from lightning_hpt.executors._slots import Slot, plan_slots
from lightning_hpt.executors._workers import Task, WorkerProcess, main_spec, signal_group, worker_command, worker_env
from lightning_hpt.executors.base import HALT_WAIT, Executor, describe_exit, failed_outcome
from lightning_hpt.executors.ipc import ReporterRegistry, ReportServer
from lightning_hpt.lightning.monitor import TrialReporter
from lightning_hpt.lightning.runner import TrialBuild, TrialJob, TrialOutcome
from lightning_hpt.masking import get_logger

__all__ = ["ProcessExecutor"]

log = get_logger(__name__)


class ProcessExecutor(Executor):
    """Runs trials in worker processes on this machine, several at a time.

    With GPUs, each worker sees its own GPUs through ``CUDA_VISIBLE_DEVICES`` (inside a trial they
    are ``cuda:0``, ``cuda:1``, ...). Without, the workers split the cores: each trial gets
    ``threads_per_worker`` torch threads, so together they do not oversubscribe the machine.

    Trial code must be picklable and importable by a fresh process (classes and factory functions
    defined at module level, or in the script that runs the search); ``start`` checks this before
    any trial runs. A Trainer with ``strategy="ddp"`` and ``devices=k`` trains every trial on k
    ranks: give each worker k GPUs with ``gpus_per_trial=k``.

    Args:
        workers: how many trials run at once. Default: one per GPU group (see below), else one per core.
        devices: GPU indices to use (``[0, 1, 2, 3]``); ``[]`` for CPU only. Default: every visible GPU.
        gpus_per_trial: GPUs given to each trial (for DDP inside the trial).
        trials_per_gpu: small trials packed on each GPU (group of ``gpus_per_trial`` GPUs).
        threads_per_worker: torch threads of each trial. Default: the usable cores divided by ``workers``.
        trial_timeout: seconds a trial may run; past it its worker is terminated, then killed, and the
            trial is FAILED ("timeout"). ``None``: no limit.
        max_trials_per_worker: start a fresh worker after this many trials (``None``: keep it), for
            trial code that leaks memory.
        start_timeout: seconds a new worker may take to start and connect.
        terminate_grace: seconds between SIGTERM and SIGKILL when a worker is ended.
        env: extra environment variables for the workers.

    Example:
        >>> executor = ProcessExecutor(devices=[0, 1, 2, 3])  # a search's executor=executor: 4 GPUs
        >>> ProcessExecutor(workers=2, devices=[]).max_concurrency   # two CPU trials at a time
        2
    """

    def __init__(
        self,
        workers: int | None = None,
        *,
        devices: Sequence[int] | None = None,
        gpus_per_trial: int = 1,
        trials_per_gpu: int = 1,
        threads_per_worker: int | None = None,
        trial_timeout: float | None = None,
        max_trials_per_worker: int | None = None,
        start_timeout: float = 120.0,
        terminate_grace: float = 5.0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        for name, value in (
            ("workers", workers),
            ("threads_per_worker", threads_per_worker),
            ("max_trials_per_worker", max_trials_per_worker),
        ):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigurationError(
                    f"ProcessExecutor: {name} must be a positive integer or None, got {name}={value!r}"
                )
        for name, value in (("gpus_per_trial", gpus_per_trial), ("trials_per_gpu", trials_per_gpu)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"ProcessExecutor: {name} must be a positive integer, got {name}={value!r}")
        for name, value in (
            ("trial_timeout", trial_timeout),
            ("start_timeout", start_timeout),
            ("terminate_grace", terminate_grace),
        ):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
                raise ConfigurationError(
                    f"ProcessExecutor: {name} must be a positive number of seconds, got {name}={value!r}"
                )
        self.trial_timeout, self.max_trials_per_worker = trial_timeout, max_trials_per_worker
        self.start_timeout, self.terminate_grace = float(start_timeout), float(terminate_grace)
        self.env = {str(k): str(v) for k, v in (env or {}).items()}
        self._slots = plan_slots(workers, devices, gpus_per_trial, trials_per_gpu, threads_per_worker)
        #: per trial number: where it ran and its worker after it: ``pid``, ``gpus``, ``slot``, ``seconds`` and
        #: ``cpu_seconds`` (wall and CPU time of the trial), ``rss_mb``, ``fds``, and where CUDA was used
        #: ``cuda_allocated`` and ``cuda_reserved`` (bytes)
        self.trial_info: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._server: ReportServer | None = None
        self._registry = ReporterRegistry()
        self._queue: queue.Queue[Task | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._workers: dict[int, WorkerProcess] = {}  # slot index -> its current worker
        self._hello: dict[str, queue.Queue] = {}  # token -> where its connection goes
        self._builds: dict[int, tuple[TrialBuild, bytes]] = {}
        self._main: str | None = None
        self._closed = threading.Event()
        self._started = False
        ref = weakref.ref(self)
        atexit.register(lambda: (e := ref()) is not None and e.shutdown())

    @property
    def max_concurrency(self) -> int:
        return len(self._slots)

    @property
    def slots(self) -> list[dict[str, Any]]:
        """Each slot's GPUs (``CUDA_VISIBLE_DEVICES``, ``None`` on CPU) and torch threads."""
        return [{"gpus": s.gpus, "threads": s.threads} for s in self._slots]

    # ------------------------------------------------------------------ life cycle
    #: trials run as the worker's own command: a DDP Trainer re-runs the worker with the same trial
    runs_ddp = True
    sends_to = "worker processes"

    @override
    def dumps(self) -> Callable[[Any], bytes]:
        return pickle_dumps

    @override
    def _start(self, build: TrialBuild, data: bytes | None) -> None:
        """Check that ``build`` loads in a fresh worker, and start the workers.

        Raises:
            TrialPickleError: naming what cannot be loaded, before any trial runs.
        """
        key = self._register_build(build, data)
        with self._lock:
            if not self._started or self._closed.is_set():
                self._closed = threading.Event()
                self._server = ReportServer(self._registry, self._on_connect)
                self._threads = [
                    threading.Thread(target=self._slot_loop, args=(s,), name=f"hpt-slot-{s.index}", daemon=True)
                    for s in self._slots
                ]
                self._started = True
                for t in self._threads:
                    t.start()
        self._check_loads(key)

    def _register_build(self, build: TrialBuild, data: bytes | None = None) -> int:
        for key, (known, _) in self._builds.items():
            if known is build:
                return key
        data = data if data is not None else check_picklable(build, pickle_dumps, self.sends_to)
        if refers_to_main(data):
            self._main = main_spec()
            if self._main is None:
                raise TrialPickleError(
                    "the trial code is defined in __main__ of an interactive session, which a worker process cannot"
                    " import; move the model, datamodule and factories into a module (a .py file) and import them"
                )
        key = len(self._builds)
        self._builds[key] = (build, data)
        return key

    def _check_loads(self, key: int) -> None:
        answer: Future = Future()
        self._queue.put(Task(-1, b"", key, "", answer))
        try:
            kind, error = answer.result(timeout=self.start_timeout + 60)
        except FutureTimeoutError:
            kind, error = "start", f"no worker answered within start_timeout={self.start_timeout:g} s"
        if kind == "start":
            self.shutdown()
            raise ConfigurationError(
                f"ProcessExecutor: a worker process could not start ({error}); its error output is above. Check that"
                f" `{sys.executable} -m lightning_hpt.executors.worker --help` runs, or raise start_timeout"
            )
        if error is not None:
            raise TrialPickleError(
                f"the trial code pickles, but a fresh worker process cannot load it ({error}); define it in a module"
                " the workers can import (they get this process's sys.path and working directory)"
            )

    @override
    def _submit(self, job: TrialJob, reporter: TrialReporter, answers: bool) -> Future[TrialOutcome]:
        """Queue ``job`` for the next free worker; the future completes when it ends (never with an exception)."""
        if not self._started or self._closed.is_set():
            self.start(job.build)
        key = self._register_build(job.build)
        future: Future[TrialOutcome] = Future()
        data = pickle_dumps(dataclasses.replace(job, build=None))
        self._queue.put(Task(job.number, data, key, self._registry.register(reporter), future))
        return future

    @override
    def halt(self) -> None:
        """The search is stopping: wait up to :data:`HALT_WAIT` seconds for the outcomes of running trials.

        A trial that ended as the signal came (its worker still sending its outcome, or the outcome not
        yet read) is then recorded as it ended, not as interrupted: its resumable checkpoint is already
        removed, so an interrupted record would train it again from the start. Trials still training
        are ended by :meth:`shutdown`, as before.
        """
        with self._lock:
            if not self._started or self._closed.is_set():
                return
            tasks = [w.task for w in self._workers.values()]
        futures = [t.future for t in tasks if t is not None and t.number >= 0]
        if futures:
            wait(futures, timeout=HALT_WAIT)

    def shutdown(self) -> None:
        """End every worker now (SIGTERM, then SIGKILL after ``terminate_grace``); running trials are FAILED."""
        with self._lock:
            if not self._started or self._closed.is_set():
                return
            self._closed.set()
            workers = list(self._workers.values())
        for w in workers:
            signal_group(w.proc, signal.SIGTERM)
        deadline = time.monotonic() + self.terminate_grace
        for w in workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                w.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            signal_group(w.proc, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                w.proc.wait(timeout=5.0)
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join(timeout=5.0)
        while True:  # trials that never reached a worker
            try:
                task = self._queue.get_nowait()
            except queue.Empty:
                break
            if task is not None and not task.future.done():
                task.future.set_result(
                    failed_outcome("interrupted: the executor was shut down before the trial started")
                    if task.number >= 0
                    else ("start", "the executor was shut down")
                )
        if self._server is not None:
            self._server.close()
        self._workers.clear()

    # ------------------------------------------------------------------ the driver side of one slot
    def _slot_loop(self, slot: Slot) -> None:
        worker: WorkerProcess | None = None
        spawn_failed = False
        while not self._closed.is_set():
            if worker is None and not spawn_failed:
                worker, _ = self._spawn(slot)  # start the next worker while waiting for work
                spawn_failed = worker is None
            try:
                task = self._queue.get(timeout=0.2)
            except queue.Empty:
                if worker is not None and worker.proc.poll() is not None:  # died while idle
                    self._end(worker, slot, 0.0)
                    worker = None
                continue
            if task is None or self._closed.is_set():
                if task is not None:
                    self._queue.put(task)  # for shutdown to fail it
                break
            if worker is None or worker.proc.poll() is not None:
                if worker is not None:
                    self._end(worker, slot, 0.0)
                worker, why = self._spawn(slot)
                spawn_failed = worker is None
                if worker is None:
                    self._complete(
                        task,
                        failed_outcome(f"worker process could not start: {why}")
                        if task.number >= 0
                        else ("start", why),
                    )
                    continue
            if task.number < 0:
                keep = self._load(worker, task)
            else:
                outcome, keep = self._run(worker, slot, task)
                self._complete(task, outcome)
            if not keep:
                self._end(worker, slot, self.terminate_grace)
                worker = None
        if worker is not None:
            self._end(worker, slot, self.terminate_grace)

    def _complete(self, task: Task, result: Any) -> None:
        if task.report_key:
            self._registry.unregister(task.report_key)
        if not task.future.done():
            task.future.set_result(result)

    def _spawn(self, slot: Slot) -> tuple[WorkerProcess | None, str]:
        """Start a worker for ``slot`` and wait for it to connect; ``(None, why)`` if it does not."""
        assert self._server is not None
        token = secrets.token_hex(8)
        inbox: queue.Queue = queue.Queue()
        self._hello[token] = inbox
        cmd = worker_command(self._server.address, token, slot.threads, self._main)
        env = worker_env(slot, self._server.authkey, self.env)
        try:
            proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as e:
            self._hello.pop(token, None)
            return None, f"{type(e).__name__}: {e}"
        worker = WorkerProcess(proc, token)
        with self._lock:
            self._workers[slot.index] = worker
            closed = self._closed.is_set()
        deadline = time.monotonic() + self.start_timeout
        while not closed and time.monotonic() < deadline:
            try:
                worker.conn = inbox.get(timeout=0.1)
                self._hello.pop(token, None)
                return worker, ""
            except queue.Empty:
                if proc.poll() is not None:
                    break
                closed = self._closed.is_set()
        self._hello.pop(token, None)
        why = (
            describe_exit(proc.poll())
            if proc.poll() is not None
            else f"it did not connect within {self.start_timeout:g} s"
        )
        self._end(worker, slot, 0.0)
        log.error("a worker process could not start: %s", why)
        return None, why

    def _on_connect(self, conn: Connection, hello: tuple) -> None:
        """A worker greets the driver (``worker``), or a DDP rank Lightning started asks for its trial (``rank``)."""
        if hello[0] == "worker" and hello[1] in self._hello:
            self._hello[hello[1]].put(conn)
            return
        try:
            if hello[0] == "rank":
                owner = next((w for w in list(self._workers.values()) if w.token == hello[1]), None)
                task = owner.task if owner is not None else None
                if task is None:
                    conn.send(None)
                else:
                    conn.send(("job", task.number, task.job_data, self._builds[task.build_key][1]))
        finally:
            conn.close()

    def _load(self, worker: WorkerProcess, task: Task) -> bool:
        """Have ``worker`` unpickle the build; the answer (an error text or None) completes the task."""
        data = self._builds[task.build_key][1]
        try:
            worker.conn.send(("load", task.build_key, data))
            while not worker.conn.poll(0.2):
                if worker.proc.poll() is not None:
                    raise EOFError
            _, _, error = worker.conn.recv()
        except (EOFError, OSError):
            self._complete(
                task, ("load", f"the worker process died while loading it ({describe_exit(worker.proc.wait())})")
            )
            return False
        worker.builds.add(task.build_key)
        self._complete(task, ("load", error))
        return error is None

    def _run(self, worker: WorkerProcess, slot: Slot, task: Task) -> tuple[TrialOutcome, bool]:
        """Run one trial on ``worker``; returns its outcome and whether the worker can take another."""
        send_build = task.build_key not in worker.builds
        data = self._builds[task.build_key][1] if send_build else None
        worker.task, task.started = task, time.monotonic()
        try:
            worker.conn.send(("job", task.number, task.job_data, task.build_key, data, task.report_key))
            worker.builds.add(task.build_key)
            while True:
                if worker.conn.poll(0.2):
                    _, _, outcome, stats, retire = worker.conn.recv()
                    worker.trials += 1
                    self.trial_info[task.number] = {**stats, "gpus": slot.gpus, "slot": slot.index}
                    more = not retire and (
                        self.max_trials_per_worker is None or worker.trials < self.max_trials_per_worker
                    )
                    return outcome, more
                if worker.proc.poll() is not None:
                    raise EOFError
                if self._closed.is_set():
                    return failed_outcome("interrupted: the executor was shut down"), False
                if self.trial_timeout is not None and time.monotonic() - task.started > self.trial_timeout:
                    self._registry.unregister(task.report_key)
                    self._end(worker, slot, self.terminate_grace, ask=False)
                    return failed_outcome(
                        f"timeout: trial {task.number} ran longer than trial_timeout={self.trial_timeout:g} s;"
                        f" its worker was ended ({describe_exit(worker.proc.returncode)})"
                    ), False
        except (EOFError, OSError):
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.proc.wait(timeout=5.0)  # the connection may close a moment before the exit status is known
            how = describe_exit(worker.proc.poll())
            log.warning("the worker running trial %d died (%s); a new one replaces it", task.number, how)
            return failed_outcome(f"worker died: its process ended ({how}) while running trial {task.number}"), False
        finally:
            worker.task = None

    def _end(self, worker: WorkerProcess, slot: Slot, grace: float, *, ask: bool = True) -> None:
        """Stop ``worker`` and every process it started: ask (an idle one), then SIGTERM, then SIGKILL."""
        if ask and worker.conn is not None and worker.proc.poll() is None and grace > 0:
            with contextlib.suppress(OSError):
                worker.conn.send(("stop",))
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.proc.wait(timeout=min(grace, 1.0))
        if worker.proc.poll() is None:
            signal_group(worker.proc, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.proc.wait(timeout=grace)
        signal_group(worker.proc, signal.SIGKILL)  # also the DDP ranks left in its group
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.proc.wait(timeout=5.0)
        if worker.conn is not None:
            with contextlib.suppress(OSError):
                worker.conn.close()
        with self._lock:
            if self._workers.get(slot.index) is worker:
                del self._workers[slot.index]

    def __repr__(self) -> str:
        return (
            f"ProcessExecutor(workers={len(self._slots)}, gpus={[s.gpus for s in self._slots]},"
            f" threads_per_worker={self._slots[0].threads if self._slots else 0})"
        )
