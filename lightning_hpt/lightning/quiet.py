"""Lightning's info logs and chatty warnings silenced inside trials."""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections.abc import Iterator

__all__ = ["quiet_lightning"]

_QUIET_LOGGERS = ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric")


@contextlib.contextmanager
def quiet_lightning(enabled: bool, resumed: str | None = None) -> Iterator[None]:
    """While active (and ``enabled``), Lightning logs only warnings, minus the ones every tiny trial triggers.

    ``resumed``: the directory of a trial that continues from its checkpoint, whose checkpoint folders
    are expected to hold files (Lightning warns that they are not empty).
    """
    if not enabled:
        yield
        return
    loggers = [logging.getLogger(n) for n in _QUIET_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*(number of training batches|log_every_n_steps).*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        if resumed is not None:
            warnings.filterwarnings("ignore", message=f"Checkpoint directory {re.escape(resumed)}.* is not empty")
        try:
            yield
        finally:
            for lg, lv in zip(loggers, levels, strict=True):
                lg.setLevel(lv)
