"""The report channel between trials in other processes and the driver, on one machine.

A trial in another process sends each validation value to the driver and blocks until the
driver's pruning decision comes back (unless the driver's reporter never answers "stop"), so the
reporter handed to ``Executor.submit`` is always called in the driver process. The channel is a
local socket (:class:`ReportServer` / :class:`ChannelReporter`, authenticated with a random key);
the Ray executor carries the same calls through a Ray actor instead. Both call the driver's
reporters through one :class:`ReporterRegistry`.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import threading
from collections.abc import Callable
from multiprocessing.connection import Client, Connection, Listener
from typing import Any

from lightning_hpt.lightning.monitor import TrialReporter, wire_value
from lightning_hpt.masking import get_logger

__all__ = ["KEY_ENV", "ChannelReporter", "ReportServer", "ReporterRegistry"]

log = get_logger(__name__)

#: environment variable that carries the channel's key (hex) to worker processes, so it is in no command line.
KEY_ENV = "HPT_WORKER_KEY"


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

    def call(self, key: str, step: int, value: float | tuple[float, ...]) -> bool:
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

    def report(self, step: int, value: float | tuple[float, ...]) -> bool:
        import os

        if self._conn is None or self._pid != os.getpid():
            self._conn = Client(self.address, authkey=self.authkey)
            self._conn.send(("reporter", self.key))
            self._pid = os.getpid()
        self._conn.send((int(step), wire_value(value)))
        return bool(self._conn.recv())

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.close()
            self._conn = None
