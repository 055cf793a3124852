"""The process-wide changes a search makes while ``run()`` runs, each undone when it returns.

- SIGTERM raises :class:`~lightning_hpt.exceptions.SearchPreempted` in the main thread (the
  previous handler comes back after), so a pre-empted driver records its running trials;
- the objects that exist when the run starts (imported libraries) are frozen out of the garbage
  collector's full collections (``gc.freeze``; ``gc.unfreeze`` after), which otherwise cost about
  0.25 s a trial with torch and Lightning loaded. They are frozen without a full collection first
  (another 0.2 s for each search): garbage left from before the run is freed when it ends;
- a heartbeat thread marks this run's RUNNING trials alive in storage every 30 s.

The package's only other process-wide state is :data:`lightning_hpt.recovery.ACTIVE`.
"""

from __future__ import annotations

import contextlib
import gc
import signal
import threading
from collections.abc import Iterator
from typing import Any

from lightning_hpt.exceptions import SearchPreempted
from lightning_hpt.storage import Storage

__all__ = ["frozen_gc", "heartbeat", "sigterm_raises"]


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """While active, SIGTERM raises :class:`SearchPreempted` (exit status 143) in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise SearchPreempted()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def frozen_gc() -> Iterator[None]:
    """Keep what exists now out of full collections, until the run ends.

    No full collection first: with torch and Lightning loaded it takes about 0.2 s, a fixed cost on every
    search; what is already garbage stays frozen with the rest and is freed by the collections after the run.
    Nothing is frozen later: a stacked group trains in this process while the driver records its members,
    and a group frozen while alive could not be freed when it ends (its models hold reference cycles).
    What the first trial leaves (lazy imports, about 16,000 objects) costs each later collection ~3 ms.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


#: seconds between two heartbeats of a driver's running trials
HEARTBEAT_SECONDS = 30.0


@contextlib.contextmanager
def heartbeat(storage: Storage, study: str, numbers: set[int], every: float = HEARTBEAT_SECONDS) -> Iterator[None]:
    """Mark the trials in ``numbers`` (read at each beat) alive every ``every`` seconds while active."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every):
            running = sorted(numbers)
            if running:
                with contextlib.suppress(Exception):
                    storage.heartbeat(study, running)

    thread = threading.Thread(target=beat, name="hpt-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
