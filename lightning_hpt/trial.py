"""Trial records and the frozen history handed to strategies and pruners."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from lightning_hpt.exceptions import ConfigurationError
from lightning_hpt.space import SearchSpace

if TYPE_CHECKING:
    from lightning_hpt.objectives import Objective

__all__ = [
    "Direction",
    "History",
    "TrialRecord",
    "TrialState",
    "best_trial",
    "count_states",
    "params_key",
    "rank_trials",
]


def params_key(params: Mapping[str, Any]) -> tuple:
    """A hashable, type-aware key of a configuration (``1``, ``1.0`` and ``True`` differ)."""
    return tuple(sorted((k, type(v).__name__, v) for k, v in params.items()))


class TrialState(str, Enum):
    """Life cycle of a trial: ``QUEUED -> RUNNING -> COMPLETE | PRUNED | FAILED``."""

    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    COMPLETE = "COMPLETE"
    PRUNED = "PRUNED"
    FAILED = "FAILED"

    @property
    def is_finished(self) -> bool:
        return self in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAILED)


class Direction(str, Enum):
    """Whether a larger or a smaller monitored value is better."""

    MINIMIZE = "min"
    MAXIMIZE = "max"

    @classmethod
    def parse(cls, mode: str | Direction) -> Direction:
        if isinstance(mode, Direction):
            return mode
        aliases = {"min": cls.MINIMIZE, "minimize": cls.MINIMIZE, "max": cls.MAXIMIZE, "maximize": cls.MAXIMIZE}
        if not isinstance(mode, str) or mode.lower() not in aliases:
            raise ConfigurationError(
                f"mode must be 'min' or 'max' (also 'minimize' or 'maximize', in any case), got mode={mode!r}"
            )
        return aliases[mode.lower()]

    def better(self, a: float, b: float) -> bool:
        """Whether ``a`` is strictly better than ``b``."""
        return a < b if self is Direction.MINIMIZE else a > b

    @property
    def worst(self) -> float:
        return math.inf if self is Direction.MINIMIZE else -math.inf


# Reasons stored in ``TrialRecord.error`` that mean "the process stopped", not "the config is bad".
INTERRUPTED = "interrupted"
PREEMPTED = "pre-empted"


@dataclass(frozen=True)
class TrialRecord:
    """One trial as stored; frozen.

    Attributes:
        number: the trial's number in its study, from 0, unique.
        params: the configuration, ``{name: value}``.
        state: see :class:`TrialState`.
        value: the best monitored value over the trial's epochs (``None`` unless COMPLETE or PRUNED).
        intermediate: monitored value per step ``{step: value}``; steps are validation runs, counted
            from 0 (one per epoch by default).
        best_step: the step at which ``value`` was reached.
        error: why the trial failed (``None`` otherwise).
        checkpoint: path of the best step's checkpoint, if kept.
        started_at, finished_at: POSIX timestamps (seconds).
        host, pid: where the trial ran.
        attempt: how many times this trial number was started (interrupted trials are retried in place).
        attrs: extra JSON data (fold values, test metrics, ...); ``attrs["infeasible"]`` lists the
            outcome constraints the trial broke (see :attr:`feasible`).
        values: with several objectives, every objective's value at ``best_step`` in the study's
            order (``value`` is the first); ``None`` in a study with one objective.
        intermediate_values: with several objectives, every objective's value per step (``intermediate``
            holds the first); empty in a study with one objective.
    """

    number: int
    params: Mapping[str, Any]
    state: TrialState
    value: float | None = None
    intermediate: Mapping[int, float] = field(default_factory=dict)
    best_step: int | None = None
    error: str | None = None
    checkpoint: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    host: str | None = None
    pid: int | None = None
    attempt: int = 0
    attrs: Mapping[str, Any] = field(default_factory=dict)
    values: tuple[float, ...] | None = None
    intermediate_values: Mapping[int, tuple[float, ...]] = field(default_factory=dict)

    @property
    def duration(self) -> float | None:
        """Seconds the trial ran; a trial continued from its checkpoint counts its training time over all attempts."""
        trained = self.attrs.get("train_seconds") if isinstance(self.attrs, Mapping) else None
        if isinstance(trained, (int, float)) and self.attrs.get("resumed_at_step") is not None:
            return float(trained)
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    @property
    def last_step(self) -> int | None:
        return max(self.intermediate) if self.intermediate else None

    @property
    def feasible(self) -> bool:
        """Whether the trial kept every outcome constraint of its study (a trial without a verdict did)."""
        return not (isinstance(self.attrs, Mapping) and self.attrs.get("infeasible"))

    @property
    def objective_values(self) -> tuple[float, ...] | None:
        """Every objective's value (``(value,)`` with one objective), or ``None`` without a value."""
        if self.values is not None:
            return tuple(self.values)
        return None if self.value is None else (self.value,)

    @property
    def scored(self) -> bool:
        """Whether the trial counts for "best" (and the Pareto front): COMPLETE, feasible, with finite values."""
        values = self.objective_values
        return (
            self.state is TrialState.COMPLETE
            and values is not None
            and all(v is not None and math.isfinite(v) for v in values)
            and self.feasible
        )


# The order of states when trials are ranked best first: finished trials with a value before the others.
_STATE_RANK = {
    TrialState.COMPLETE: 0,
    TrialState.PRUNED: 1,
    TrialState.RUNNING: 2,
    TrialState.QUEUED: 3,
    TrialState.FAILED: 4,
}


def rank_trials(trials: Iterable[TrialRecord], direction: Direction | str) -> list[TrialRecord]:
    """Trials best first: COMPLETE by value (infeasible ones after the others), then PRUNED by value, then
    RUNNING, QUEUED and FAILED ones.

    Ties (and trials without a finite value) keep the order of their numbers. The first trial is
    the best one if it is :attr:`~TrialRecord.scored`; this is the package's only definition of "best".
    """
    direction = Direction.parse(direction)

    def key(t: TrialRecord) -> tuple[int, bool, float, int]:
        finite = t.value is not None and math.isfinite(t.value)
        value = (t.value if direction is Direction.MINIMIZE else -t.value) if finite else math.inf
        return _STATE_RANK.get(t.state, 5), not t.feasible, value, t.number

    return sorted(trials, key=key)


def best_trial(trials: Iterable[TrialRecord], direction: Direction | str) -> TrialRecord | None:
    """The COMPLETE trial with the best finite value (lowest number on ties), or ``None``."""
    ranked = rank_trials(trials, direction)
    return ranked[0] if ranked and ranked[0].scored else None


def count_states(trials: Iterable[TrialRecord]) -> dict[str, int]:
    """Number of trials per state that occurs, in the order of :class:`TrialState`: ``{"COMPLETE": 3, ...}``."""
    out = dict.fromkeys((s.value for s in TrialState), 0)
    for t in trials:
        out[t.state.value] += 1
    return {k: v for k, v in out.items() if v}


@dataclass(frozen=True)
class History:
    """What strategies and pruners see: the space, the direction and every trial; read-only.

    Attributes:
        space: the study's search space.
        direction: whether the monitored value is minimized or maximized.
        trials: every trial of the study ordered by number, RUNNING and QUEUED ones included.
        seed: the study's seed (``None``: unseeded).
        max_steps: the most steps (validation runs) a trial can have, if known (``trainer.max_epochs``);
            pruners use it as their maximum resource.
        index: an index of ``trials`` that the reader keeps up to date between reads (the pruners'
            :class:`~lightning_hpt.pruners.StepIndex`, given to ``Storage.history``); a pruner uses
            it only while it reflects exactly ``trials``.
        objectives: with several objectives, all of them (the first is ``direction``'s); ``()``
            with one.
        param_constraints: rules on the parameters alone (:class:`~lightning_hpt.constraints.ParamConstraint`):
            a strategy proposes only configurations that keep every one (see
            :func:`lightning_hpt.strategies.base.allowed`).
        outcome_constraints: bounds on logged metrics (:class:`~lightning_hpt.constraints.OutcomeConstraint`),
            which a model-based strategy may model (trials record them in ``attrs["constraint_values"]``).
    """

    space: SearchSpace
    direction: Direction
    trials: tuple[TrialRecord, ...] = ()
    seed: int | None = None
    max_steps: int | None = None
    index: Any = field(default=None, compare=False, repr=False)
    objectives: tuple[Objective, ...] = ()
    param_constraints: tuple[Any, ...] = ()
    outcome_constraints: tuple[Any, ...] = ()

    @property
    def multi(self) -> bool:
        """Whether the study has several objectives (trials then carry :attr:`TrialRecord.values`)."""
        return len(self.objectives) > 1

    @property
    def next_number(self) -> int:
        """The number the next new trial will get."""
        return max((t.number for t in self.trials), default=-1) + 1

    def with_state(self, *states: TrialState) -> list[TrialRecord]:
        return [t for t in self.trials if t.state in states]

    @property
    def completed(self) -> list[TrialRecord]:
        """COMPLETE trials with a finite value."""
        return [t for t in self.trials if t.scored]

    @property
    def pending(self) -> list[TrialRecord]:
        """Trials that are RUNNING or QUEUED: proposed but without a final value yet."""
        return self.with_state(TrialState.RUNNING, TrialState.QUEUED)

    def best(self) -> TrialRecord | None:
        """The COMPLETE trial with the best value (lowest number on ties), or ``None``; always ``None`` with
        several objectives, whose trials have no single best (see :mod:`lightning_hpt.pareto`)."""
        return None if self.multi else best_trial(self.trials, self.direction)

    def add(
        self,
        params: Mapping[str, Any],
        value: float | None = None,
        state: TrialState = TrialState.COMPLETE,
        **fields: Any,
    ) -> History:
        """A new History with one more trial (the next number); for ask/tell loops without storage.

        Example:
            >>> from lightning_hpt import Float, RandomStrategy, SearchSpace
            >>> h = History(SearchSpace({"x": Float(0, 1)}), Direction.MINIMIZE, seed=0)
            >>> for _ in range(3):
            ...     params = RandomStrategy().ask(h)[0]
            ...     h = h.add(params, value=(params["x"] - 0.3) ** 2)
            >>> len(h.completed)
            3
        """
        self.space.validate(params)
        if value is None and fields.get("values") is not None:
            value = fields["values"][0]
        record = TrialRecord(self.next_number, dict(params), state, value=value, **fields)
        return dataclasses.replace(self, trials=(*self.trials, record), index=None)
