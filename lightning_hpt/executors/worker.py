"""A worker process of :class:`~lightning_hpt.executors.process.ProcessExecutor`: runs trials, one at a time.

The executor starts it as its own command::

    python -m lightning_hpt.executors.worker --address SOCKET --token TOKEN [--threads N] [--main SCRIPT]

with the channel's key in the ``HPT_WORKER_KEY`` environment variable. It connects to the driver,
receives trials (a pickled :class:`~lightning_hpt.lightning.runner.TrialJob`), runs each with
:func:`~lightning_hpt.lightning.runner.run_trial`, streams the validation values back for pruning and
returns the outcome.

A DDP trial needs nothing special. Lightning starts every extra rank by re-running the command
of the current process with ``LOCAL_RANK`` set; here that command is this module with the same
arguments, so the new process asks the driver for the trial its rank-0 worker is running and
trains it with the same configuration (rank 0 alone reports; the monitor broadcasts the decision
to every rank). A worker whose trial started a process group leaves afterwards, so the next trial
gets a clean process.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import os
import pickle
import runpy
import shutil
import signal
import sys
import tempfile
import threading
import time
import types
from multiprocessing.connection import Client, Connection
from typing import Any

__all__ = ["main"]

_GROUP_ENV = "HPT_WORKER_GROUP"
# variables that a finished DDP trial leaves behind; their change means the process is no longer clean
_DIST_VARS = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "NODE_RANK", "LOCAL_RANK", "RANK")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m lightning_hpt.executors.worker", description=__doc__.split("\n")[0])
    p.add_argument("--address", required=True, help="the Unix socket of the driver's channel")
    p.add_argument("--token", required=True, help="this worker's name in the driver")
    p.add_argument("--threads", type=int, default=0, help="torch threads per trial (0: torch's default)")
    p.add_argument("--main", default=None, help="the driver's script (a path) or module (-m NAME), imported first")
    return p.parse_args(argv)


def _watch_parent() -> None:
    """End this worker (and the DDP ranks it started) when the process that started it is gone."""
    parent = os.getppid()
    group = os.environ.get(_GROUP_ENV)

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                if group is not None and int(group) == os.getpgrp():
                    os.killpg(os.getpgrp(), signal.SIGKILL)  # our own group: this worker and its ranks only
                os._exit(1)

    threading.Thread(target=watch, name="hpt-parent-watch", daemon=True).start()


def _import_main(spec: str) -> None:
    """Import the driver's script as ``__mp_main__`` so objects pickled from its ``__main__`` can be loaded.

    This is what ``multiprocessing`` does with the ``spawn`` start method: the script's top level
    runs, its ``if __name__ == "__main__":`` block does not.
    """
    if spec.startswith("-m "):
        content = runpy.run_module(spec[3:], run_name="__mp_main__", alter_sys=False)
    else:
        content = runpy.run_path(spec, run_name="__mp_main__")
    module = types.ModuleType("__mp_main__")
    module.__dict__.update(content)
    sys.modules["__main__"] = sys.modules["__mp_main__"] = module


def _stats() -> dict[str, Any]:
    """Resident memory, open descriptors and CUDA memory of this process after a trial."""
    out: dict[str, Any] = {"pid": os.getpid()}
    with contextlib.suppress(OSError, StopIteration, ValueError), open("/proc/self/status") as f:
        out["rss_mb"] = next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024
    with contextlib.suppress(OSError):
        out["fds"] = len(os.listdir("/proc/self/fd"))
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda_allocated"] = int(torch.cuda.memory_allocated())
        out["cuda_reserved"] = int(torch.cuda.memory_reserved())
    return out


def _distributed_started(env_before: dict[str, str]) -> bool:
    torch = sys.modules.get("torch")
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        return True
    return any(os.environ.get(k) != env_before.get(k) for k in _DIST_VARS)


def _freeze() -> None:
    """Keep what exists now (torch, Lightning, the trial code) out of the full collection after each trial.

    ``run_trial`` collects garbage when a trial ends; with torch and Lightning loaded, a full collection
    costs about 0.25 s, unless the long-lived objects are frozen first.
    """
    gc.collect()
    gc.freeze()


def _run(job: Any, reporter: Any) -> Any:
    from lightning_hpt.lightning.runner import run_trial

    return run_trial(job, reporter)


def _serve(conn: Connection, address: str, key: bytes) -> int:
    """Rank 0 (or a plain worker): run trials until told to stop, or until the process is not clean."""
    from lightning_hpt.executors.base import failed_outcome
    from lightning_hpt.executors.ipc import ChannelReporter
    from lightning_hpt.trial import PREEMPTED

    builds: dict[int, Any] = {}
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return 0  # the driver is gone or let us go
        if msg[0] == "stop":
            return 0
        if msg[0] == "load":  # the executor checks, before any trial, that the trial code loads here
            _, build_key, data = msg
            try:
                builds[build_key] = pickle.loads(data)
                _freeze()
                conn.send(("loaded", build_key, None))
            except BaseException as e:
                conn.send(("loaded", build_key, f"{type(e).__name__}: {e}"))
            continue
        _, number, job_data, build_key, build_data, report_key = msg
        retire, seconds, cpu = False, None, None
        try:
            if build_data is not None:
                builds[build_key] = pickle.loads(build_data)
                _freeze()
            job = dataclasses.replace(pickle.loads(job_data), build=builds[build_key])
        except BaseException as e:
            outcome = failed_outcome(f"the trial could not be loaded in its worker process: {type(e).__name__}: {e}")
        else:
            env_before = dict(os.environ)
            reporter = ChannelReporter(address, key, report_key)
            t0, c0 = time.perf_counter(), time.process_time()
            outcome = _run(job, reporter)
            seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
            reporter.close()
            del job  # run_trial has collected the trial's garbage already
            # a trial that started a process group (DDP) or was sent SIGTERM leaves this process unfit for more
            retire = _distributed_started(env_before) or outcome.interrupted == PREEMPTED
        conn.send(("outcome", number, outcome, {**_stats(), "seconds": seconds, "cpu_seconds": cpu}, retire))
        if retire:
            return 0


def _serve_rank(conn: Connection, token: str, local_rank: int) -> int:
    """An extra DDP rank started by Lightning: train the trial its rank-0 worker runs, then exit."""
    conn.send(("rank", token, local_rank))
    msg = conn.recv()
    conn.close()
    if msg is None:
        return 0  # the trial is already over
    _, number, job_data, build_data = msg
    job = dataclasses.replace(pickle.loads(job_data), build=pickle.loads(build_data))
    _freeze()
    # rank 0 owns the trial directory (it clears it when the trial starts); this rank gets a scratch one,
    # since Lightning writes logs and checkpoints from rank 0 only
    scratch = tempfile.mkdtemp(prefix=f"hpt-trial{number}-rank{local_rank}-")
    try:
        _run(dataclasses.replace(job, trial_dir=scratch), None)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the worker; returns the exit status."""
    args = _parse(argv)
    address = args.address
    from lightning_hpt.executors.ipc import KEY_ENV

    key = bytes.fromhex(os.environ[KEY_ENV])
    if os.getpgrp() == os.getpid():  # the executor made this worker a group leader: its ranks join the group
        os.environ[_GROUP_ENV] = str(os.getpid())
    _watch_parent()
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    if args.main:
        _import_main(args.main)
    local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    try:
        conn = Client(address, authkey=key)
    except (ConnectionError, FileNotFoundError):  # its socket refuses, or was removed
        return _driver_gone()
    try:
        if local_rank > 0:
            return _serve_rank(conn, args.token, local_rank)
        conn.send(("worker", args.token, os.getpid()))
        return _serve(conn, address, key)
    except ConnectionError:
        return _driver_gone()


def _driver_gone() -> int:
    """The driver died (killed) before the parent watch ended this worker: one line, not a traceback."""
    sys.stderr.write(f"lightning-hpt worker {os.getpid()}: the search's driver is gone; this worker ends\n")
    return 1


if __name__ == "__main__":
    sys.exit(main())
