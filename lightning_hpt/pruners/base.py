"""The Pruner interface: whether a running trial should stop early."""

from __future__ import annotations

from abc import ABC, abstractmethod

from lightning_hpt.trial import History, TrialRecord

__all__ = ["Pruner"]


class Pruner(ABC):
    """Decides whether a running trial stops early, from the stored history alone.

    A pruner never writes anything and keeps no state that matters between calls, so a
    resumed search, or several workers, reach the same decisions.
    """

    #: the name stored with the study and accepted by ``HyperparameterSearch(pruner=...)``; for display only.
    name: str = "pruner"
    #: False for a pruner that never stops a trial: reports then need no answer (channels do not wait).
    active: bool = True

    @abstractmethod
    def should_prune(self, history: History, trial: TrialRecord) -> bool:
        """Whether ``trial`` (RUNNING, with ``trial.intermediate`` up to its latest step) should stop.

        ``history`` includes ``trial`` itself. Intermediate values may be NaN or infinite; a
        pruner must not raise on them.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
