"""Trials as Ray tasks, on this machine or an existing Ray cluster (the ``ray`` extra).

Ray is the engine: it places each trial where its resources are free (``{"cpu": 2, "gpu": 0.5}``),
sets ``CUDA_VISIBLE_DEVICES``, and retries a trial whose worker or node died (``max_retries``).
Reports reach the driver through a small Ray actor, so no port has to be opened between the
machines: the trial's reporter asks the actor, the driver takes the question from the actor, calls
the search's reporter and sends the decision back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, wait
from dataclasses import dataclass
from typing import Any

from typing_extensions import override

from lightning_hpt.exceptions import ConfigurationError, TrialPickleError
from lightning_hpt.executors.base import HALT_WAIT, Executor, failed_outcome
from lightning_hpt.executors.ipc import ReporterRegistry
from lightning_hpt.executors.ray_channel import RayReporter, broker_class
from lightning_hpt.lightning.monitor import TrialReporter
from lightning_hpt.lightning.runner import TrialBuild, TrialJob, TrialOutcome, run_trial
from lightning_hpt.masking import get_logger

__all__ = ["RayExecutor"]

log = get_logger(__name__)
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_NICENESS = "RAY_worker_niceness"
_FROZEN = False  # whether this Ray worker process froze its long-lived objects


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigurationError(
            "RayExecutor needs Ray, which is not installed: pip install 'lightning-hpt[ray]'"
        ) from None
    return ray


def _run_remote(
    job: TrialJob, build: TrialBuild, broker: Any, key: str, threads: int, answers: bool = True
) -> TrialOutcome:
    """The Ray task of one trial (``build`` arrives from the object store, shared by every trial).

    A task Ray reruns (its worker or node died) is another start of the trial: it continues from the
    trial's checkpoint, or says that it starts over when this node cannot see it.
    """
    global _FROZEN
    import ray

    starts = ray.get(broker.start.remote(key))
    if starts > 1:
        where = ray.get_runtime_context().get_node_id()
        log.warning(
            "trial %d: Ray runs it again (start %d, on node %s): its worker or node died", job.number, starts, where
        )
        job = dataclasses.replace(job, attempt=job.attempt + starts - 1)
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
    if not _FROZEN:  # see worker._freeze: the full collection after each trial is then cheap
        gc.collect()
        gc.freeze()
        _FROZEN = True
    outcome = run_trial(dataclasses.replace(job, build=build), RayReporter(broker, key, answers))
    if starts > 1:
        outcome = dataclasses.replace(outcome, attrs={**outcome.attrs, "ray_restarts": starts - 1})
    return outcome


def _load_check(build: Any) -> None:
    """Runs once a Ray worker has loaded the trial code (its argument); fails if it cannot."""


def _prestart(build: Any) -> None:
    """Holds a trial's resources for a moment once the trial code is loaded, so that Ray starts (and warms)
    as many worker processes as trials run at once before the first trial needs them."""
    import time

    import lightning_hpt.lightning.runner  # noqa: F401  (torch and Lightning: the slow part of a first trial)

    time.sleep(1.0)


@dataclass
class _Running:
    number: int
    key: str
    future: Future
    started: float
    timed_out: bool = False


class RayExecutor(Executor):
    """Runs each trial as a Ray task with its own resources, on a local Ray or an existing cluster.

    Args:
        resources_per_trial: what one trial needs: ``{"cpu": 2, "gpu": 0.5}``; other keys are Ray
            custom resources (``"memory"`` is bytes). Fractional GPUs pack trials on one GPU.
        address: the cluster to join (``"auto"``, ``"ray://head:10001"``); ``None`` starts a local Ray
            unless one is already initialized in this process.
        max_concurrency: trials at once; default: what the cluster's resources allow when started.
        max_retries: times Ray reruns a trial whose worker process or node died (same number and
            configuration); after that it is FAILED. Exceptions in the trial are never retried.
        trial_timeout: seconds a trial may run before its task is cancelled (force) and FAILED ("timeout").
        max_trials_per_worker: a Ray worker process runs at most this many trials (``None``: reuse it;
            GPU trials get a fresh process each, Ray's default).
        init_kwargs: extra arguments for ``ray.init`` when this executor starts Ray. The dashboard
            stays off unless asked for, and never listens beyond 127.0.0.1.

    Remote clusters: connect with ``address="ray://head:10001"`` (or run the driver on the head with
    ``"auto"``), keep the cluster's ports on a private network, and enable Ray's token
    authentication (``RAY_AUTH_MODE=token``) where others share it. Every node must have this
    package and the trial code installed (or use ``init_kwargs={"runtime_env": ...}``).

    Example:
        >>> executor = RayExecutor({"cpu": 2, "gpu": 0.5}, address="auto")  # doctest: +SKIP
        >>> # a search created with executor=executor runs its trials as Ray tasks
    """

    def __init__(
        self,
        resources_per_trial: Mapping[str, float] | None = None,
        *,
        address: str | None = None,
        max_concurrency: int | None = None,
        max_retries: int = 0,
        trial_timeout: float | None = None,
        max_trials_per_worker: int | None = None,
        init_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        resources = dict(resources_per_trial or {"cpu": 1})
        for name, amount in resources.items():
            if (
                isinstance(amount, bool)
                or not isinstance(amount, (int, float))
                or amount < 0
                or not math.isfinite(amount)
            ):
                raise ConfigurationError(
                    f"RayExecutor: resources_per_trial[{name!r}] must be a non-negative number, got {amount!r}"
                    " (e.g. resources_per_trial={'cpu': 2, 'gpu': 0.5})"
                )
        for name, value in (("max_concurrency", max_concurrency), ("max_trials_per_worker", max_trials_per_worker)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigurationError(
                    f"RayExecutor: {name} must be a positive integer or None, got {name}={value!r}"
                )
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigurationError(
                f"RayExecutor: max_retries must be an integer >= 0, got max_retries={max_retries!r}"
            )
        if trial_timeout is not None and not (isinstance(trial_timeout, (int, float)) and trial_timeout > 0):
            raise ConfigurationError(
                f"RayExecutor: trial_timeout must be a positive number of seconds, got {trial_timeout!r}"
            )
        init = dict(init_kwargs or {})
        host = str(init.get("dashboard_host", "127.0.0.1"))
        if host not in _LOOPBACK:
            raise ConfigurationError(
                f"RayExecutor: init_kwargs['dashboard_host']={host!r} would expose Ray's dashboard beyond this machine;"
                " use '127.0.0.1' and reach it through an SSH tunnel"
            )
        self.resources, self.address, self.max_retries = resources, address, max_retries
        self.trial_timeout, self.max_trials_per_worker, self.init_kwargs = trial_timeout, max_trials_per_worker, init
        self._max = max_concurrency
        self._registry = ReporterRegistry()
        self._running: dict[Any, _Running] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._started = False
        self._owns_ray = False
        self._warm = False
        self._builds: list[tuple[TrialBuild, Any]] = []
        self._threads: list[threading.Thread] = []

    @property
    def max_concurrency(self) -> int:
        return self._max or 1

    def _options(self) -> dict[str, Any]:
        r = dict(self.resources)
        opts: dict[str, Any] = {"num_cpus": r.pop("cpu", 1), "num_gpus": r.pop("gpu", 0)}
        if "memory" in r:
            opts["memory"] = r.pop("memory")
        if r:
            opts["resources"] = r
        return opts

    ddp_refusal = (
        "a Ray task cannot do that; run DDP trials with ProcessExecutor(gpus_per_trial=k) on each machine, or give"
        " each trial one device here"
    )
    trial_kind = "a Ray task"
    sends_to = "Ray workers"

    @override
    def dumps(self) -> Callable[[Any], bytes]:
        return _import_ray().cloudpickle.dumps

    @override
    def _start(self, build: TrialBuild, data: bytes | None) -> None:
        """Start (or join) Ray and the report channel, and check that a Ray worker loads the trial code.

        Raises:
            TrialPickleError: a Ray worker cannot load the trial code.
        """
        ray = _import_ray()
        with self._lock:
            if not self._started or self._closed.is_set():
                self._start_ray(ray)
        try:
            ray.get(self._check.remote(self._build_ref(build)), timeout=600)
            if not self._warm:
                warm = ray.remote(_prestart).options(**self._options())
                ray.get([warm.remote(self._build_ref(build)) for _ in range(self.max_concurrency)], timeout=600)
                self._warm = True
        except Exception as e:
            first = (str(e).strip().splitlines() or [""])[-1]
            raise TrialPickleError(
                f"the trial code pickles, but a Ray worker cannot load it ({type(e).__name__}: {first}); install the"
                " module that defines it on every node, or ship it with"
                " init_kwargs={'runtime_env': {'py_modules': [...]}}"
            ) from e

    def _start_ray(self, ray: Any) -> None:
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "dashboard_host": "127.0.0.1", **self.init_kwargs}
            ours = False
            if self.address is None:
                if "runtime_env" not in kwargs:  # local workers import what this process imports (its sys.path)
                    paths = [os.path.abspath(p or os.getcwd()) for p in sys.path]
                    kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}}
                # Ray runs its workers at niceness 15; trials are the work here, so they run at normal priority
                ours = _NICENESS not in os.environ
                if ours:
                    os.environ[_NICENESS] = "0"
            try:
                ray.init(address=self.address, **kwargs)
            finally:
                if ours:
                    os.environ.pop(_NICENESS, None)
            self._owns_ray = True
        self._closed = threading.Event()
        opts = self._options()
        max_calls = (
            self.max_trials_per_worker if self.max_trials_per_worker is not None else (1 if opts["num_gpus"] else 0)
        )
        self._task = ray.remote(max_calls=max_calls)(_run_remote)
        self._check = ray.remote(num_cpus=0)(_load_check)
        # on this (the driver's) node: a 0-CPU actor may be placed on any node, and dies with it (Ray's
        # soft affinity still chooses another node, so it is a hard one; it needs no resources)
        here = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(
            ray.get_runtime_context().get_node_id(), soft=False
        )
        self._broker = ray.remote(broker_class()).options(num_cpus=0, scheduling_strategy=here).remote()
        if self._max is None:
            total = ray.cluster_resources()
            need = {"CPU": opts["num_cpus"], "GPU": opts["num_gpus"], **opts.get("resources", {})}
            fits = [int(total.get(k, 0) // v) for k, v in need.items() if v > 0]
            self._max = max(1, min(fits)) if fits else 1
        self._threads = [
            threading.Thread(target=self._collect, name="hpt-ray-collect", daemon=True),
            threading.Thread(target=self._relay, name="hpt-ray-relay", daemon=True),
        ]
        for t in self._threads:
            t.start()
        self._started = True

    def _build_ref(self, build: TrialBuild) -> Any:
        import ray

        for known, ref in self._builds:
            if known is build:
                return ref
        ref = ray.put(build)
        self._builds.append((build, ref))
        return ref

    @override
    def _submit(self, job: TrialJob, reporter: TrialReporter, answers: bool) -> Future[TrialOutcome]:
        """Start ``job`` as a Ray task; the future completes when it ends (never with an exception)."""
        if not self._started or self._closed.is_set():
            self.start(job.build)
        future: Future[TrialOutcome] = Future()
        key = self._registry.register(reporter)
        opts = {**self._options(), "max_retries": self.max_retries, "retry_exceptions": False}
        threads = max(1, int(opts["num_cpus"]))
        ref = self._task.options(**opts).remote(
            dataclasses.replace(job, build=None), self._build_ref(job.build), self._broker, key, threads, answers
        )
        with self._lock:
            self._running[ref] = _Running(job.number, key, future, time.monotonic())
        return future

    def _collect(self) -> None:
        """Complete the futures of finished tasks; cancel the ones past ``trial_timeout``."""
        import ray

        while not self._closed.is_set():
            with self._lock:
                refs = list(self._running)
            if not refs:
                time.sleep(0.1)
                continue
            try:
                # back as soon as one trial ends (a slot is free), then take any others that ended too
                ready, rest = ray.wait(refs, num_returns=1, timeout=0.2)
                if ready and rest:
                    ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
            except Exception:  # Ray is shutting down
                if self._closed.is_set():
                    return
                log.exception("waiting for Ray tasks failed")
                time.sleep(0.5)
                continue
            for ref in ready:
                self._finish(ray, ref)
            now = time.monotonic()
            for ref, run in list(self._running.items()):
                if self.trial_timeout is not None and not run.timed_out and now - run.started > self.trial_timeout:
                    run.timed_out = True
                    self._registry.unregister(run.key)
                    with contextlib.suppress(Exception):
                        ray.cancel(ref, force=True)

    def _finish(self, ray: Any, ref: Any) -> None:
        """Complete the future of the ended task ``ref`` with its outcome (unless :meth:`shutdown` took it).

        The trial stays on the running list while its outcome is read, and leaves it as its future
        completes, both under the lock: :meth:`halt` sees every trial whose future is not done yet.
        """
        with self._lock:
            run = self._running.get(ref)
        if run is None:  # shutdown() took it meanwhile and ended its future
            return
        outcome = self._outcome(ray, ref, run)
        with self._lock:
            if self._running.pop(ref, None) is not run:  # shutdown() took it while its outcome was read
                return
            if not run.future.done():
                run.future.set_result(outcome)
        self._registry.unregister(run.key)

    @override
    def halt(self) -> None:
        """The search is stopping: wait up to :data:`HALT_WAIT` seconds for running trials to end.

        Ray's workers do not get the driver's Ctrl+C, so a trial that ended as the signal came (its
        outcome in Ray's object store, not yet collected) is recorded as it ended, not as interrupted:
        its resumable checkpoint is already removed, so an interrupted record would train it again
        from the start. Trials still training are cancelled by :meth:`shutdown`, as before.
        """
        if not self._started or self._closed.is_set():
            return
        # the collector thread completes the futures (see _finish): waiting on them, not on Ray's refs, also
        # covers a trial whose outcome the collector is reading now
        with self._lock:
            futures = [run.future for run in self._running.values()]
        if futures:
            wait(futures, timeout=HALT_WAIT)

    def _outcome(self, ray: Any, ref: Any, run: _Running) -> TrialOutcome:
        try:
            return ray.get(ref)
        except Exception as e:
            if run.timed_out:
                return failed_outcome(
                    f"timeout: trial {run.number} ran longer than trial_timeout={self.trial_timeout:g} s;"
                    " its Ray task was cancelled"
                )
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            retried = f" after {self.max_retries} retries" if self.max_retries else ""
            if isinstance(e, ray.exceptions.OutOfMemoryError):
                return failed_outcome(
                    f"out of memory: Ray's memory monitor killed the worker of trial {run.number}{retried}"
                )
            return failed_outcome(
                f"worker died: trial {run.number}'s Ray task failed{retried} ({type(e).__name__}: {first})"
            )

    def _relay(self) -> None:
        """Carry reports from the broker actor to the search's reporters, in this (the driver) process."""
        import ray

        while not self._closed.is_set():
            try:
                requests = ray.get(self._broker.take.remote(0.5))
            except Exception:
                if self._closed.is_set() or not ray.is_initialized() or not threading.main_thread().is_alive():
                    return  # shut down, Ray shut down under it, or the interpreter is exiting
                log.exception("the Ray report channel failed; retrying")
                time.sleep(1.0)
                continue
            for rid, key, step, value in requests:
                stop = self._registry.call(key, step, value)
                if rid is not None:  # None: posted, nobody waits for the decision
                    self._broker.decide.remote(rid, stop)

    def shutdown(self) -> None:
        """Cancel running trials (FAILED "interrupted"), stop the channel, and stop Ray if this executor started it."""
        if not self._started or self._closed.is_set():
            return
        ray = _import_ray()
        self._closed.set()
        with self._lock:
            running, self._running = dict(self._running), {}
        for ref, run in running.items():
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
            self._registry.unregister(run.key)
            if not run.future.done():
                run.future.set_result(failed_outcome("interrupted: the executor was shut down"))
        for t in self._threads:
            t.join(timeout=5.0)
        with contextlib.suppress(Exception):
            ray.kill(self._broker)
        self._builds.clear()
        self._warm = False
        if self._owns_ray:
            ray.shutdown()
            self._owns_ray = False
        self._started = False

    def __repr__(self) -> str:
        return f"RayExecutor({self.resources!r}, address={self.address!r}, max_concurrency={self._max!r})"
