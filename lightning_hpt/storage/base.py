"""The Storage interface: the single source of truth of a study."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lightning_hpt.exceptions import StorageError
from lightning_hpt.registry import Registry
from lightning_hpt.space import SearchSpace
from lightning_hpt.trial import Direction, History, TrialRecord, TrialState

if TYPE_CHECKING:
    from lightning_hpt.objectives import Objective

__all__ = ["STORAGES", "Storage", "StudyInfo"]


@dataclass(frozen=True)
class StudyInfo:
    """What defines a study; stored once, compared when the study is opened again.

    ``objectives``: with several objectives, all of them (the first is ``monitor`` and
    ``direction``); ``()`` with one. ``constraints``: the study's constraints (on outcomes and on
    parameters, see :mod:`lightning_hpt.constraints`), ``()`` without.
    """

    name: str
    space: SearchSpace
    direction: Direction
    monitor: str
    strategy: str
    seed: int | None = None
    attrs: Mapping[str, Any] = field(default_factory=dict)
    objectives: tuple[Objective, ...] = ()
    constraints: tuple[Any, ...] = ()


class Storage(ABC):
    """Stores studies and their trials.

    Within one search only the driver process writes. Several drivers (on several machines) may
    share a study: every write is one transaction, and trial numbers are allocated atomically.
    All methods raise :class:`~lightning_hpt.exceptions.StorageError` (or a subclass) on failure.
    """

    #: where the data lives, passwords masked; safe to print.
    url: str

    @abstractmethod
    def open_study(self, info: StudyInfo, *, allow_changes: bool = False) -> StudyInfo:
        """Create the study, or open the existing one of the same name.

        An existing study must have the same space, monitor, direction, strategy and seed, else
        :class:`~lightning_hpt.exceptions.StudyMismatchError` says what differs and how to start
        a new study; ``allow_changes=True`` accepts the stored study as it is and returns it.
        The stored attrs are kept. Returns the stored study.
        """

    @abstractmethod
    def load_study(self, name: str) -> StudyInfo:
        """The stored study; ``StorageError`` listing the known studies if there is none of that name."""

    @abstractmethod
    def study_names(self) -> list[str]:
        """Names of all studies in this storage."""

    @abstractmethod
    def trials(self, study: str) -> list[TrialRecord]:
        """Every trial of the study, ordered by number."""

    def history(
        self, study: str, max_steps: int | None = None, index: Callable[[Direction], Any] | None = None
    ) -> History:
        """A frozen :class:`History` of the study.

        ``index``: makes an index of the trials that a storage reading incrementally keeps up to date
        (:attr:`History.index`); a storage may ignore it, as this one does.
        """
        info = self.load_study(study)
        trials = tuple(self.trials(study))
        return History(info.space, info.direction, trials, info.seed, max_steps, objectives=info.objectives)

    @abstractmethod
    def create_trial(
        self,
        study: str,
        params: Mapping[str, Any],
        *,
        state: TrialState = TrialState.RUNNING,
        max_trials: int | None = None,
        host: str | None = None,
        pid: int | None = None,
        unique: bool = False,
        number: int | None = None,
    ) -> TrialRecord | None:
        """Add a trial with the next free number (atomically), RUNNING or QUEUED.

        With ``unique=True`` a configuration the study already has (any state; same names, values
        and value types) is refused with :class:`~lightning_hpt.exceptions.DuplicateTrialError`, in
        the same transaction that allocates the number: drivers that share a study and propose the
        same grid point at the same moment create it once.

        With ``number`` (the number the caller's proposal was made for: ``History.next_number`` of
        the history it read) the trial is created only if that is still the next free number, else
        :class:`~lightning_hpt.exceptions.DuplicateTrialError`: another driver added a trial since,
        and the caller should propose again from the new history.

        A RUNNING trial gets ``started_at``, ``host``, ``pid`` and ``attempt=1``. Returns ``None``
        (and writes nothing) when the study already has ``max_trials`` trials of any state.
        """

    @abstractmethod
    def claim_queued(self, study: str, *, host: str | None = None, pid: int | None = None) -> TrialRecord | None:
        """Atomically move the lowest-numbered QUEUED trial to RUNNING (``attempt += 1``); ``None`` if none."""

    @abstractmethod
    def report(self, study: str, number: int, step: int, value: float | Sequence[float]) -> None:
        """Store (or overwrite) the intermediate value of a RUNNING trial at ``step``; refresh its heartbeat.

        With several objectives ``value`` is every objective's value (the first is the trial's
        ``intermediate``, the whole vector its ``intermediate_values``).
        """

    def report_many(self, study: str, number: int, values: Mapping[int, float | Sequence[float]]) -> None:
        """Store several intermediate values ``{step: value}`` of a RUNNING trial, in one transaction if it can."""
        for step, value in sorted(values.items()):
            self.report(study, number, step, value)

    @abstractmethod
    def heartbeat(self, study: str, numbers: Sequence[int]) -> None:
        """Mark these RUNNING trials as alive now."""

    @abstractmethod
    def finish_trial(
        self,
        study: str,
        number: int,
        *,
        state: TrialState,
        value: float | None = None,
        best_step: int | None = None,
        error: str | None = None,
        checkpoint: str | None = None,
        attrs: Mapping[str, Any] | None = None,
        values: Sequence[float] | None = None,
        steps: Mapping[int, float | Sequence[float]] | None = None,
    ) -> TrialRecord:
        """Record the end of a trial (COMPLETE, PRUNED or FAILED); ``attrs`` are merged into the trial's.

        ``steps``: intermediate values not stored yet, stored first as :meth:`report_many` does, in the
        same transaction.

        ``values``: with several objectives, every objective's value (``value`` is the first).
        """

    @abstractmethod
    def requeue_trial(self, study: str, number: int) -> TrialRecord:
        """Put a RUNNING or FAILED trial back in the queue under the same number and params.

        The previous attempt (error, times, host, pid, last step) is appended to
        ``attrs["attempts"]``; its value (and values), error and intermediate values are cleared.
        """

    def requeue_failed(self, study: str) -> list[int]:
        """Put every FAILED trial back in the queue (see :meth:`requeue_trial`); returns their numbers.

        Safe while other drivers use the study: each trial is requeued once, whoever asks. This
        default goes trial by trial; a storage with transactions does it in one.
        """
        numbers = []
        for t in self.trials(study):
            if t.state is TrialState.FAILED:
                try:
                    numbers.append(self.requeue_trial(study, t.number).number)
                except StorageError:  # another driver requeued (or reran) it first
                    if next(u for u in self.trials(study) if u.number == t.number).state is TrialState.FAILED:
                        raise
        return numbers

    def delete_study(self, study: str, *, force: bool = False) -> int:
        """Delete the study and its trials; returns how many trials were deleted.

        A study with RUNNING trials (a driver may be using it) is refused unless ``force=True``.
        """
        raise StorageError(f"{type(self).__name__} cannot delete studies")

    @abstractmethod
    def set_trial_attrs(self, study: str, number: int, attrs: Mapping[str, Any]) -> None:
        """Merge ``attrs`` (JSON data) into the trial's attrs."""

    @abstractmethod
    def set_study_attrs(self, study: str, attrs: Mapping[str, Any]) -> None:
        """Merge ``attrs`` (JSON data) into the study's attrs."""

    @abstractmethod
    def last_heartbeat(self, study: str, number: int) -> float | None:
        """POSIX time of the trial's last heartbeat (or start), ``None`` if never."""

    def close(self) -> None:  # noqa: B027  (optional: a backend without connections has nothing to release)
        """Release connections."""


#: storage backends by URL scheme (the part before ``://``, without a ``+driver``): ``open_storage`` reaches a
#: backend registered here, e.g. ``STORAGES.register("redis", RedisStorage)`` for ``redis://host/0``. The
#: class is called as ``cls(url, **kwargs)``. Schemes not registered are SQLAlchemy URLs.
STORAGES: Registry[Storage] = Registry("storage", Storage)
