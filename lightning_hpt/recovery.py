"""What a driver finds when it opens a study: trials left RUNNING by a dead driver, missing checkpoints.

It also holds the one process-wide registry of the package, :data:`ACTIVE`: the trials this
process is running now, by storage and study. A trial stored as RUNNING under this host and
process id is alive only if it is there; a search in another thread of the same process (or a
later search object after a crash of the first) would otherwise take it for its own.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import zipfile
from collections.abc import Iterable, Sequence

from lightning_hpt.exceptions import (
    ConfigurationError,
    DatabaseLockedError,
    MetricNotFoundError,
    SearchFailedError,
    SearchPreempted,
)
from lightning_hpt.masking import get_logger
from lightning_hpt.run_scope import HEARTBEAT_SECONDS
from lightning_hpt.storage import Storage
from lightning_hpt.trial import INTERRUPTED, PREEMPTED, TrialRecord, TrialState

__all__ = ["ACTIVE", "HOST", "ActiveTrials", "abandon", "check_checkpoints", "check_stale_after", "recover"]

log = get_logger(__name__)
HOST = socket.gethostname()


class ActiveTrials:
    """The trials running in this process, as ``(storage url, study, number)``; thread-safe."""

    def __init__(self) -> None:
        self._keys: set[tuple[str, str, int]] = set()
        self._lock = threading.Lock()

    def add(self, storage: Storage, study: str, number: int) -> None:
        with self._lock:
            self._keys.add((storage.url, study, number))

    def discard(self, storage: Storage, study: str, number: int) -> None:
        with self._lock:
            self._keys.discard((storage.url, study, number))

    def __contains__(self, key: tuple[str, str, int]) -> bool:
        with self._lock:
            return key in self._keys


#: the trials this process runs now (process-wide by nature: see the module's docstring).
ACTIVE = ActiveTrials()


def _pid_alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _process_start(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), from Linux's /proc; ``None`` elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # after "pid (name)": field 3 onwards
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start time in clock ticks
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _is_dead(storage: Storage, study: str, t: TrialRecord, stale_after: float, now: float) -> bool:
    beat = storage.last_heartbeat(study, t.number)
    stale = beat is None or now - beat > stale_after
    if t.host == HOST and t.pid == os.getpid():
        return (storage.url, study, t.number) not in ACTIVE
    if t.host == HOST:
        if not _pid_alive(t.pid):
            return True
        started = _process_start(t.pid) if t.pid is not None else None
        if started is not None and t.started_at is not None:
            # the pid is alive: the trial's own driver if that process started before the trial did (a
            # heartbeat older than a short stale_after does not make a live driver dead), another
            # process that reused the pid otherwise
            return started > t.started_at + 1.0
        return stale  # no /proc: a stale heartbeat also catches a reused pid
    return stale


def check_stale_after(value: object) -> float:
    """``stale_after`` as a positive number of seconds; under two heartbeats, allowed with a warning."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigurationError(f"stale_after must be a positive number of seconds, got stale_after={value!r}")
    if value < 2 * HEARTBEAT_SECONDS:
        log.warning(
            "stale_after=%s s is under two heartbeats (a driver marks its trials alive every %.0f s): a live driver"
            " on another host may be taken for dead and its trials run twice; a dead driver of this host is found"
            " at once whatever stale_after is",
            value,
            HEARTBEAT_SECONDS,
        )
    return float(value)


def recover(storage: Storage, study: str, *, stale_after: float, retry_interrupted: bool) -> None:
    """Trials left RUNNING by a dead driver become FAILED ("interrupted"); interrupted ones are requeued."""
    now = time.time()
    for t in storage.trials(study):
        if t.state is TrialState.RUNNING:
            if not _is_dead(storage, study, t, stale_after, now):
                continue
            log.warning("trial %d was left RUNNING by a process that is gone (%s pid %s)", t.number, t.host, t.pid)
            error = f"{INTERRUPTED}: the driver process ({t.host} pid {t.pid}) died"
            t = storage.finish_trial(study, t.number, state=TrialState.FAILED, error=error)
        if retry_interrupted and t.state is TrialState.FAILED and (t.error or "").startswith((INTERRUPTED, PREEMPTED)):
            log.info("trial %d was interrupted (%s): it runs again with the same configuration", t.number, t.error)
            storage.requeue_trial(study, t.number)


def check_checkpoints(trials: Sequence[TrialRecord]) -> None:
    """Warn (never fail) about finished trials whose checkpoint is missing or truncated."""
    for t in trials:
        if (
            t.state is TrialState.COMPLETE
            and t.checkpoint
            and not (os.path.exists(t.checkpoint) and zipfile.is_zipfile(t.checkpoint))
        ):
            log.warning(
                "the checkpoint of trial %d (%s) is missing or truncated; load_best_model() skips it",
                t.number,
                t.checkpoint,
            )


def abandon(storage: Storage, study: str, numbers: Iterable[int], error: BaseException) -> None:
    """Record the trials a stopped run started and did not finish, so none stays RUNNING."""
    if isinstance(error, (KeyboardInterrupt, SearchPreempted, SearchFailedError, MetricNotFoundError)):
        # these trials run again on resume: they were stopped, not at fault
        reason = PREEMPTED if isinstance(error, SearchPreempted) else INTERRUPTED
        why = f"{reason}: the search stopped ({type(error).__name__})"
    elif isinstance(error, DatabaseLockedError):
        # the database could not take a record (a finished trial's, often): the trial is not at fault either
        why = f"{INTERRUPTED}: the search stopped on a database error ({type(error).__name__}: {error})"
    else:  # a driver error is not retried forever: the trial keeps the real reason
        why = f"the search stopped on an error in the driver: {type(error).__name__}: {error}"
    for number in sorted(numbers):
        with contextlib.suppress(Exception):
            storage.finish_trial(study, number, state=TrialState.FAILED, error=why)
        ACTIVE.discard(storage, study, number)
