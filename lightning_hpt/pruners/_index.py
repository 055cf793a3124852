"""What pruners decide on, kept up to date as trials change instead of rebuilt from the whole history.

A :class:`StepIndex` holds, for each (step, kind, group) a pruner asked about, the sorted scores of
the evidence trials there (``kind`` ``"at"``: the value recorded at exactly that step, as the median
rule reads it; ``"from"``: the first value at or after it, as successive halving reads it; ``group``:
``None`` or a predicate on trial numbers, such as a Hyperband bracket). A list is built from the
records the first time it is asked for, then updated trial by trial by whoever maintains the index
(the SQL storage's incremental history). A pruner uses it only through :func:`index_of`, which
hands it out only for the exact trials it reflects, so a decision never depends on which path
computed it.
"""

from __future__ import annotations

import bisect
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable

from lightning_hpt.pruners._common import EVIDENCE_STATES, score, value_from
from lightning_hpt.trial import Direction, History, TrialRecord, TrialState

__all__ = ["StepIndex", "index_of"]

Group = Callable[[int], bool]
MAX_KEYS = 64  # lists kept up to date at once; the least recently asked for is dropped beyond that


def index_of(history: History) -> StepIndex | None:
    """The history's index if it reflects exactly ``history.trials``, else ``None`` (use the trials)."""
    index = getattr(history, "index", None)
    return index if index is not None and index.trials is history.trials else None


class StepIndex:
    """Sorted evidence scores per (step, kind, group), and counts of COMPLETE trials; see the module.

    Args:
        direction: the study's direction (how non-finite values are scored).
    """

    def __init__(self, direction: Direction) -> None:
        self.direction = direction
        self.trials: tuple[TrialRecord, ...] | None = None  # the tuple the index reflects; set by its keeper
        self.records: dict[int, TrialRecord] = {}
        self.n_complete = 0
        self.complete_steps: Counter[int] = Counter()  # last_step + 1 of COMPLETE trials
        self._lists: OrderedDict[tuple[int, str, Hashable], list[float]] = OrderedDict()

    def replace(self, old: TrialRecord | None, new: TrialRecord | None) -> None:
        """Take ``old`` (the trial as it was, if known) out and put ``new`` in."""
        for record, sign in ((old, -1), (new, 1)):
            if record is None:
                continue
            if record.state is TrialState.COMPLETE:
                self.n_complete += sign
                if record.last_step is not None:
                    self.complete_steps[record.last_step + 1] += sign
                    if not self.complete_steps[record.last_step + 1]:
                        del self.complete_steps[record.last_step + 1]
            for (step, kind, group), values in self._lists.items():
                v = self.contribution(record, step, kind, group)
                if v is None:
                    continue
                if sign > 0:
                    bisect.insort(values, v)
                else:
                    del values[bisect.bisect_left(values, v)]
        if new is not None:
            self.records[new.number] = new
        elif old is not None:
            self.records.pop(old.number, None)

    def contribution(self, record: TrialRecord | None, step: int, kind: str, group: Hashable) -> float | None:
        """The score ``record`` adds to the list of (step, kind, group), or ``None``."""
        if record is None or record.state not in EVIDENCE_STATES or (group is not None and not group(record.number)):
            return None
        if kind == "at":
            return score(record.intermediate[step], self.direction) if step in record.intermediate else None
        v = value_from(record.intermediate, step)
        return None if v is None else score(v, self.direction)

    def scores(self, step: int, kind: str, group: Hashable = None) -> list[float]:
        """The sorted scores at ``step`` of every evidence trial (in ``group``); do not modify."""
        key = (step, kind, group)
        values = self._lists.get(key)
        if values is None:
            contributions = (self.contribution(r, step, kind, group) for r in self.records.values())
            values = self._lists[key] = sorted(v for v in contributions if v is not None)
            while len(self._lists) > MAX_KEYS:
                self._lists.popitem(last=False)
        else:
            self._lists.move_to_end(key)
        return values

    def longest_complete(self) -> int | None:
        """The most steps a COMPLETE trial ran, or ``None``."""
        return max(self.complete_steps, default=None)


def count_better(values: list[float], value: float, direction: Direction) -> int:
    """How many of the sorted ``values`` are strictly better than ``value``."""
    if direction is Direction.MINIMIZE:
        return bisect.bisect_left(values, value)
    return len(values) - bisect.bisect_right(values, value)


def kth_without(values: list[float], k: int, removed: float | None) -> float:
    """The ``k``-th (from 0) of the sorted ``values`` once one instance of ``removed`` is taken out."""
    if removed is None:
        return values[k]
    return values[k] if k < bisect.bisect_left(values, removed) else values[k + 1]


def promotable(index: StepIndex, trial: TrialRecord, value: float, rung_step: int, eta: int, group: Hashable) -> bool:
    """Successive halving's rule from the index: ``value`` is in the top ``max(n // eta, 1)`` at the rung.

    ``n`` counts ``value`` and every other evidence trial (in ``group``) that reached ``rung_step``;
    the history's record of ``trial.number`` is left out, as :func:`~._common.others` leaves it out.
    """
    values = index.scores(rung_step, "from", group)
    own = index.contribution(index.records.get(trial.number), rung_step, "from", group)
    rivals = len(values) - (own is not None)
    better = count_better(values, value, index.direction) - (own is not None and index.direction.better(own, value))
    return better < max((rivals + 1) // eta, 1)


def median_of_others(index: StepIndex, trial: TrialRecord, step: int) -> float | None:
    """The median score at exactly ``step`` of the other evidence trials, or ``None`` if none got there."""
    values = index.scores(step, "at")
    own = index.contribution(index.records.get(trial.number), step, "at", None)
    n = len(values) - (own is not None)
    if not n:
        return None
    half = n // 2
    if n % 2:
        return kth_without(values, half, own)
    return (kth_without(values, half - 1, own) + kth_without(values, half, own)) / 2


def completed_others(index: StepIndex, trial: TrialRecord) -> int:
    """How many trials other than ``trial.number`` are COMPLETE."""
    own = index.records.get(trial.number)
    return index.n_complete - (own is not None and own.state is TrialState.COMPLETE)
