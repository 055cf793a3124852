"""The driver's handle on one worker process of :class:`~lightning_hpt.executors.process.ProcessExecutor`.

How a worker is started (its command and environment), what the driver keeps about it and about the
trial it runs, and how its process group is signalled.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

from lightning_hpt.executors._slots import Slot
from lightning_hpt.executors.ipc import KEY_ENV

__all__ = ["Task", "WorkerProcess", "main_spec", "signal_group", "worker_command", "worker_env"]

# set by a launcher or a cluster for *its* processes; a worker is a fresh single process, and Lightning
# must neither take it for rank k of someone else's job nor wait for ranks that SLURM will not start
_FOREIGN_VARS = (
    "LOCAL_RANK",
    "RANK",
    "WORLD_SIZE",
    "NODE_RANK",
    "GROUP_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
    "SLURM_NTASKS",
    "PL_GLOBAL_SEED",
)


@dataclass
class Task:
    """A trial queued for a worker: its pickled job, its build, its report stream and its future."""

    number: int
    job_data: bytes
    build_key: int
    report_key: str
    future: Future
    started: float | None = None


@dataclass
class WorkerProcess:
    """A running worker: its process, its connection, the trials it ran, the builds it holds, its task."""

    proc: subprocess.Popen
    token: str
    conn: Connection | None = None
    trials: int = 0
    builds: set[int] = field(default_factory=set)
    task: Task | None = None


def main_spec() -> str | None:
    """How a worker imports the driver's ``__main__``: a script path, ``-m NAME``, or None (interactive)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name not in ("__main__", None):
        return f"-m {spec.name.removesuffix('.__main__')}"
    path = getattr(main, "__file__", None)
    return os.path.abspath(path) if path and path.endswith(".py") else None


def worker_command(address: str, token: str, threads: int, main: str | None) -> list[str]:
    """The command of a worker that connects to ``address`` and greets with ``token``."""
    cmd = [sys.executable, "-m", "lightning_hpt.executors.worker", "--address", address, "--token", token]
    cmd += ["--threads", str(threads)]
    return [*cmd, "--main", main] if main else cmd


def worker_env(slot: Slot, authkey: bytes, extra: Mapping[str, str]) -> dict[str, str]:
    """A worker's environment: this process's, minus a launcher's rank variables, with its slot's devices."""
    env = {k: v for k, v in os.environ.items() if k not in _FOREIGN_VARS}
    # the workers import what this process imports: its sys.path (the test directory, the script's folder)
    paths = [os.path.abspath(p or os.getcwd()) for p in sys.path]
    env.update(
        {
            "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths)),
            KEY_ENV: authkey.hex(),
            "OMP_NUM_THREADS": str(slot.threads),
            "MKL_NUM_THREADS": str(slot.threads),
        }
    )
    env["CUDA_VISIBLE_DEVICES"] = slot.gpus if slot.gpus is not None else ""
    env.update(extra)
    return env


def signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Signal the worker's process group (it leads one: ``start_new_session``), i.e. it and its DDP ranks."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
