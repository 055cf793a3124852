"""The report channel between trials running elsewhere and the driver, and what executors share.

A trial in another process sends each validation value to the driver and blocks until the
driver's pruning decision comes back, so the reporter handed to ``Executor.submit`` is always
called in the driver process. On one machine the channel is a local socket
(:class:`ReportServer` / :class:`ChannelReporter`, authenticated with a random key); the Ray
executor carries the same calls through a Ray actor instead. Both call the driver's reporters
through one :class:`ReporterRegistry`.

It also holds what every executor checks before sending trials away: that the trial code pickles
(:func:`check_picklable`) and whether one trial's parameters make it a DDP trial
(:func:`trial_launches_subprocesses`).
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import pickletools
import secrets
import signal
import socket
import threading
from collections.abc import Callable
from multiprocessing.connection import Client, Connection, Listener
from typing import Any

from lightning_hpt.exceptions import TrialPickleError
from lightning_hpt.lightning.monitor import TrialReporter
from lightning_hpt.lightning.builder import trainer_params
from lightning_hpt.lightning.runner import TrialBuild, TrialJob, TrialOutcome
from lightning_hpt.trial import TrialState

__all__ = [
    "KEY_ENV",
    "ChannelReporter",
    "ReportServer",
    "ReporterRegistry",
    "check_picklable",
    "describe_exit",
    "failed_outcome",
    "refers_to_main",
    "trial_launches_subprocesses",
]

log = logging.getLogger(__name__)

#: environment variable that carries the channel's key (hex) to worker processes, so it is in no command line.
KEY_ENV = "HPT_WORKER_KEY"


def failed_outcome(error: str) -> TrialOutcome:
    """A FAILED outcome decided by the executor (the trial itself could not tell: its process is gone)."""
    return TrialOutcome(TrialState.FAILED, error=error)


def describe_exit(returncode: int | None) -> str:
    """``"exit code 3"`` or ``"killed by signal SIGKILL (9)"`` for a ``Popen.returncode``."""
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "signal"
        return f"killed by signal {name} ({-returncode})"
    return f"exit code {returncode}"


class ReporterRegistry:
    """The driver's reporters of running trials, by key; calls them one at a time.

    Calls are serialized: the reporters write the study and ask the pruner, and doing that for one
    report at a time keeps the database and the pruner's view simple, at a cost of milliseconds.
    """

    def __init__(self) -> None:
        self._reporters: dict[str, TrialReporter] = {}
        self._lock = threading.Lock()

    def register(self, reporter: TrialReporter) -> str:
        key = secrets.token_hex(8)
        with self._lock:
            self._reporters[key] = reporter
        return key

    def unregister(self, key: str) -> None:
        with self._lock:
            self._reporters.pop(key, None)

    def call(self, key: str, step: int, value: float) -> bool:
        """The driver's decision for one report: True stops the trial. A broken reporter never prunes."""
        with self._lock:
            reporter = self._reporters.get(key)
            if reporter is None:  # the trial was already ended by the executor (timeout, shutdown)
                return True
            try:
                return bool(reporter.report(step, value))
            except Exception:
                log.exception("the driver could not handle step %d of a trial; it continues unpruned", step)
                return False


class ReportServer:
    """The driver's end of the local channel: accepts connections from workers and their trials.

    Every connection first sends a greeting. ``("reporter", key)`` opens a report stream: each
    ``(step, value)`` received is answered with the registry's decision. Any other greeting is
    handed, with its connection, to ``on_connect`` (the process executor's workers use it).

    It listens on a Unix socket in a private temporary directory (no network port, and no Nagle
    delays on small messages); only processes given :attr:`authkey` can connect.
    """

    def __init__(self, registry: ReporterRegistry, on_connect: Callable[[Connection, tuple], None]) -> None:
        self.registry = registry
        self.on_connect = on_connect
        self.authkey = secrets.token_bytes(32)
        self._listener = Listener(family="AF_UNIX", authkey=self.authkey)
        self.address: str = self._listener.address
        self._closed = threading.Event()
        self._conns: set[Connection] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, name="hpt-report-server", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn = self._listener.accept()
            except Exception:  # a failed handshake, or the listener closed
                continue
            if self._closed.is_set():
                conn.close()
                break
            threading.Thread(target=self._serve, args=(conn,), name="hpt-report-conn", daemon=True).start()

    def _serve(self, conn: Connection) -> None:
        with self._lock:
            self._conns.add(conn)
        keep = False
        try:
            if not conn.poll(30.0):
                return
            hello = conn.recv()
            if hello[0] != "reporter":
                keep = True  # the handler owns the connection now
                self.on_connect(conn, hello)
                return
            key = hello[1]
            while not self._closed.is_set():
                step, value = conn.recv()
                conn.send(self.registry.call(key, step, value))
        except (EOFError, OSError):
            pass  # the trial ended (or its process died): nothing more will come
        except Exception:
            log.exception("a connection to the report channel broke")
        finally:
            with self._lock:
                self._conns.discard(conn)
            if not keep:
                with contextlib.suppress(OSError):
                    conn.close()

    def close(self) -> None:
        """Stop accepting and drop every open report stream."""
        if self._closed.is_set():
            return
        self._closed.set()
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
            s.settimeout(1.0)
            s.connect(self.address)  # wakes the accept() call up so the thread sees the flag
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.close()
        self._thread.join(timeout=2.0)


class ChannelReporter:
    """The trial's end of the local channel; a :class:`TrialReporter` that can be pickled.

    It connects on first use in each process, so it also works from a process Lightning starts
    for a rank (``ddp_spawn``) after receiving a pickled copy.
    """

    def __init__(self, address: str, authkey: bytes, key: str) -> None:
        self.address, self.authkey, self.key = address, authkey, key
        self._conn: Connection | None = None
        self._pid: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"address": self.address, "authkey": self.authkey, "key": self.key}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["address"], state["authkey"], state["key"])  # type: ignore[misc]

    def report(self, step: int, value: float) -> bool:
        import os

        if self._conn is None or self._pid != os.getpid():
            self._conn = Client(self.address, authkey=self.authkey)
            self._conn.send(("reporter", self.key))
            self._pid = os.getpid()
        self._conn.send((int(step), float(value)))
        return bool(self._conn.recv())

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.close()
            self._conn = None


def refers_to_main(data: bytes) -> bool:
    """Whether a pickle names something in ``__main__`` (the user's script), which a worker must import first."""
    with contextlib.suppress(Exception):
        return any(
            arg == "__main__" or (isinstance(arg, str) and arg.startswith("__main__ "))
            for _, arg, _ in pickletools.genops(data)
        )
    return False


def check_picklable(build: TrialBuild, dumps: Callable[[Any], bytes], where: str) -> bytes:
    """Pickle ``build`` with ``dumps``, or raise :class:`TrialPickleError` naming the part that cannot be.

    Args:
        build: the search's trial code and settings.
        dumps: the pickler the executor uses (``pickle.dumps``, or Ray's cloudpickle).
        where: how the executor sends trials, for the message (``"worker processes"``).

    Returns:
        The pickled build.
    """
    try:
        return dumps(build)
    except Exception as whole:  # find the field (and the trainer argument) that fails, for the message
        culprit, error = "the trial build", whole
        for name, part in build.builder.parts():
            try:
                dumps(part)
            except Exception as e:
                culprit = name if name.endswith("]") else f"{name}={_short(part)}"
                error = e
                break
        raise TrialPickleError(
            f"{culprit} cannot be sent to {where}: it cannot be pickled ({type(error).__name__}: {error}). Trials run"
            " in other processes, so the model, datamodule and trainer_kwargs must be picklable: define classes and"
            " factory functions at module level (not lambdas or nested functions), and create locks, open files,"
            " connections and threads inside the trial (in the factory, setup() or __init__), not around it"
        ) from whole


def _short(value: Any) -> str:
    name = getattr(value, "__qualname__", None)
    if isinstance(name, str):
        return name  # in full: its end is the name the user knows
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def pickle_dumps(obj: Any) -> bytes:
    """The pickler of the process executor: the standard one, highest protocol."""
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


# trainer.* parameters that decide how many processes a trial's Trainer starts
_PROCESS_KEYS = frozenset({"strategy", "devices", "num_nodes", "accelerator"})


def trial_launches_subprocesses(job: TrialJob, executor: str) -> str | None:
    """Why ``job`` cannot run under ``executor`` because its ``trainer.*`` parameters make it a DDP trial; ``None`` if it can.

    ``TrialBuilder.launches_subprocesses()`` judges the shared Trainer settings once, before any trial;
    this judges one trial whose search space sets ``trainer.strategy``, ``trainer.devices``, ... (only
    those trials: it builds a throwaway Trainer).
    """
    trainer = trainer_params(job.params)
    if not _PROCESS_KEYS & set(trainer) or not job.build.builder.launches_subprocesses(job.params):
        return None
    return (
        f"trial {job.number}'s parameters {dict(sorted(trainer.items()))} train it on several processes (DDP), which"
        f" Lightning starts by re-running the current command; {executor} cannot run such a trial. Run DDP trials with"
        " executor=ProcessExecutor(gpus_per_trial=k) (CPU: ProcessExecutor(devices=[], workers=cores // k)), or leave"
        " the strategy and devices out of the search space"
    )
