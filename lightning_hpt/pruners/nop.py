"""The pruner that never prunes."""

from __future__ import annotations

from lightning_hpt.pruners.base import Pruner
from lightning_hpt.trial import History, TrialRecord

__all__ = ["NopPruner"]


class NopPruner(Pruner):
    """Never stops a trial: every trial runs all its epochs (``pruner=None``).

    Example:
        >>> from lightning_hpt.pruners import make_pruner
        >>> make_pruner(None)
        NopPruner()
    """

    name = "none"
    active = False

    def should_prune(self, history: History, trial: TrialRecord) -> bool:
        # Non-finite values included: a diverged trial is the monitor's business, not this pruner's.
        return False
