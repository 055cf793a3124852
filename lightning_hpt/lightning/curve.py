"""A trial's validation curve and the rules every trial applies to it, with no Trainer in sight.

One :class:`Curve` takes a trial's validation runs one at a time, as the metrics each run logged, and
keeps what the trial's outcome is made of: the monitored value per step (with several objectives, every
objective's; with outcome constraints, every constrained metric's too), the best step (by the first
objective), EarlyStopping's count, the driver's pruning decision, and the checks that fail a trial (a
metric not logged, a NaN or infinite objective). An ordinary trial's monitor
(:class:`~lightning_hpt.lightning.monitor.MonitorLogic`) and a member of a stacked group
(:class:`~lightning_hpt.stacking.members.Member`) both keep theirs in one, so each rule is written once.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lightning_hpt.exceptions import MetricNotFoundError
from lightning_hpt.masking import get_logger
from lightning_hpt.trial import Direction

if TYPE_CHECKING:
    from lightning_hpt.constraints import OutcomeConstraint
    from lightning_hpt.lightning.monitor import TrialReporter

__all__ = ["Curve", "judge", "metric_missing", "metric_value", "value_failure"]

log = get_logger(__name__)


def metric_value(name: str, value: Any) -> float:
    """A logged metric as a float: one-element tensors, numpy scalars and numbers are accepted.

    Raises:
        TypeError: naming the metric and its type, for anything else.
    """
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TypeError(f"metric {name!r} must have one element, got a tensor of shape {tuple(value.shape)}")
        return float(value.detach().cpu().item())
    if (
        isinstance(value, (np.ndarray, np.generic))
        and np.size(value) == 1
        and np.issubdtype(np.asarray(value).dtype, np.number)
    ):
        return float(np.asarray(value).item())
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise TypeError(f"metric {name!r} must be a number or a one-element tensor, got {type(value).__name__}: {value!r}")


def metric_missing(monitor: str, logged: Iterable[str], bounded: bool = False) -> MetricNotFoundError:
    """The error of a validation run that did not log ``monitor`` (``logged``: what it did log); every trial would.

    ``bounded``: the metric is an outcome constraint's, not an objective (the fix is in ``constraints=``).
    """
    what, key = ("constrained", "constraints") if bounded else ("monitored", "monitor")
    near = difflib.get_close_matches(monitor, sorted(logged), n=1)
    return MetricNotFoundError(
        f"the {what} metric {monitor!r} was not logged{f' (did you mean {near[0]!r}?)' if near else ''}; the"
        f" metrics logged are {sorted(logged)}. Log it with self.log({monitor!r}, ...) in validation_step, or set"
        f" {key}= (search.{key}: in a CLI config) to one of these"
    )


def value_failure(
    monitor: str, values: Mapping[int, Any], logged: Iterable[str], objectives: Sequence[str] = ()
) -> tuple[str, bool] | None:
    """Why a trial that reported ``values`` of ``monitor`` fails, and whether every trial would; ``None``: it does not.

    No value: the metric was never logged in a validation run (fatal: every trial would fail so). A
    NaN or infinite value: the trial failed ("non-finite"), the search goes on.

    Args:
        monitor: the monitored metric.
        values: the trial's monitored value per step (with several objectives, tuples of every objective's value).
        logged: the names of the metrics the trial did log, for the message.
        objectives: the names of every objective, when there are several (in the order of the tuples).
    """
    if not values:
        err = MetricNotFoundError(
            f"the monitored metric {monitor!r} was never logged in a validation run; the metrics logged are"
            f" {sorted(logged)}. Log it with self.log({monitor!r}, ...) in validation_step"
        )
        return f"{type(err).__name__}: {err}", True
    for s, v in values.items():
        for name, x in zip(objectives or [monitor], v if isinstance(v, tuple) else (v,), strict=False):
            if not math.isfinite(x):
                return f"non-finite: {name} was {x} at step {s}", False
    return None


def judge(constraints: Any, metrics: Mapping[str, float]) -> dict[str, Any]:
    """The trial's attrs about its outcome constraints: each metric's value, and what it broke (``[]``: none)."""
    from lightning_hpt.constraints import violations

    return {
        "constraint_values": {c.metric: metrics.get(c.metric) for c in constraints},
        "infeasible": violations(constraints, metrics),
    }


class Curve:
    """One trial's validation runs and the rules on them: best step, EarlyStopping's count, pruning, failures.

    Args:
        monitor, direction: the metric the best step is chosen by (the first objective).
        objectives: the other objectives' metrics: recorded and reported with ``monitor`` at every step.
        constraints: the outcome constraints; their metrics are recorded at every step, not reported.
        patience: EarlyStopping's patience (validation runs without a strict improvement), or ``None``:
            the curve never ends the trial for it (an ordinary trial has Lightning's own ``EarlyStopping``).

    Attributes:
        values: monitored value per step (validation run, from 0).
        extra: the values of ``objectives`` and of the constrained metrics per step, ``{step: {name: value}}``.
        best_value, best_step: the best finite value and its step.
        wait: validation runs since the best one (EarlyStopping's count).
        pruned: whether the driver asked this trial to stop.
    """

    def __init__(
        self,
        monitor: str,
        direction: Direction,
        objectives: Sequence[str] = (),
        constraints: Sequence[OutcomeConstraint] = (),
        patience: int | None = None,
    ) -> None:
        self.monitor, self.direction, self.patience = monitor, direction, patience
        self.objectives, self.constraints = tuple(objectives), tuple(constraints)
        self.watch = tuple(c.metric for c in self.constraints)
        self.values: dict[int, float] = {}
        self.extra: dict[int, dict[str, float]] = {}
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.wait = 0
        self.pruned = False

    @classmethod
    def of(cls, build: Any, patience: int | None = None) -> Curve:
        """The curve of a trial of ``build`` (a ``TrialBuild``): its objectives and outcome constraints."""
        return cls(build.monitor, build.direction, [o.name for o in build.objectives[1:]], build.constraints, patience)

    @property
    def names(self) -> tuple[str, ...]:
        """Every metric a validation run must log."""
        return (self.monitor, *self.objectives, *self.watch)

    @property
    def last(self) -> int | None:
        """The last step recorded, or ``None``."""
        return len(self.values) - 1 if self.values else None

    def record(self, logged: Mapping[str, Any]) -> bool:
        """Take one validation run's logged metrics; True when its monitored value is the best so far.

        Raises:
            MetricNotFoundError: a metric of the curve was not logged (nothing is recorded).
            TypeError: a metric is no number (nothing is recorded).
        """
        for name in self.names:
            if name not in logged:
                raise metric_missing(name, logged, bounded=name not in (self.monitor, *self.objectives))
        value = metric_value(self.monitor, logged[self.monitor])
        others = {n: metric_value(n, logged[n]) for n in (*self.objectives, *self.watch)}
        step = len(self.values)
        self.values[step] = value
        if others:
            self.extra[step] = others
        improved = math.isfinite(value) and (self.best_value is None or self.direction.better(value, self.best_value))
        if improved:
            self.best_value, self.best_step, self.wait = value, step, 0
        else:
            self.wait += 1
        return improved

    def reported(self, step: int) -> float | tuple[float, ...]:
        """What step ``step`` reports: the monitored value, or every objective's value with several."""
        if not self.objectives:
            return self.values[step]
        return (self.values[step], *(self.extra[step][name] for name in self.objectives))

    def intermediate(self) -> dict[int, float | tuple[float, ...]]:
        """Every step's reported value, for the outcome."""
        return {s: self.reported(s) for s in self.values}

    def finite(self, step: int) -> bool:
        """Whether every objective's value at ``step`` is finite (a NaN or infinite one ends the trial at once)."""
        return math.isfinite(self.values[step]) and all(math.isfinite(self.extra[step][n]) for n in self.objectives)

    def ends(self) -> bool:
        """Whether the trial ends after its last step: pruned, a non-finite objective, or patience run out."""
        early = self.patience is not None and self.wait >= self.patience
        return self.pruned or early or (self.last is not None and not self.finite(self.last))

    def ask(self, reporter: TrialReporter | None, step: int, trial: str = "the trial", last: bool = False) -> bool:
        """Report ``step`` to the driver; True (and :attr:`pruned` set) when it says stop.

        A broken channel must not kill the trial: the error is logged and the trial continues unpruned.
        ``last``: the trial trains no more after this step (its own budget is spent): a stop has nothing
        to stop, so it is not pruned: it completes, as a trial at a pruner's maximum resource does.
        """
        if reporter is None:
            return False
        try:
            stop = bool(reporter.report(step, self.reported(step))) and not last
        except Exception:
            log.exception("reporting step %d of %s failed; it continues unpruned", step, trial)
            return False
        self.pruned = self.pruned or stop
        return stop

    def replay(self, reporter: TrialReporter | None, trial: str = "the trial") -> None:
        """Report every step again (a continued trial: its requeued record lost them).

        The earlier attempt was judged at these steps and went on. The pruner's answer now is not taken: it
        would judge the trial again against trials that reached a step after it did (ASHA judges a trial once
        per rung), so an interrupted trial could end where the uninterrupted one goes on.
        """
        for step in sorted(self.values):
            self.ask(reporter, step, trial, last=True)  # ``last``: an answer "stop" stops nothing

    def failure(self, logged: Iterable[str]) -> tuple[str, bool] | None:
        """Why the trial fails on its values (see :func:`value_failure`); ``logged``: the names it did log."""
        names = (self.monitor, *self.objectives) if self.objectives else ()
        return value_failure(self.monitor, self.intermediate(), logged, names)

    def best_metrics(self) -> dict[str, float]:
        """Every objective's value at the best step, by name; ``{}`` before a finite value."""
        if self.best_value is None:
            return {}
        at = self.extra.get(self.best_step, {})  # type: ignore[arg-type]
        return {self.monitor: self.best_value, **{n: at[n] for n in self.objectives}}

    def scores(self) -> dict[str, Any]:
        """The outcome's ``value``, ``best_step`` and ``values`` (every objective's at the best step, with several)."""
        best = self.best_metrics()
        values = tuple(best[n] for n in (self.monitor, *self.objectives)) if self.objectives and best else None
        return {"value": self.best_value, "best_step": self.best_step, "values": values}

    def judgement(self) -> dict[str, Any]:
        """The outcome's attrs about its constraints, judged at the best step; ``{}`` without constraints."""
        if not self.constraints:
            return {}
        return judge(self.constraints, self.extra.get(self.best_step, {}))  # type: ignore[arg-type]

    def state_dict(self) -> dict[str, Any]:
        """The curve as plain data (a checkpoint's)."""
        return {
            "values": dict(self.values),
            "extra": {step: dict(v) for step, v in self.extra.items()},
            "best_value": self.best_value,
            "best_step": self.best_step,
            "wait": self.wait,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict` (one written before ``extra`` or ``wait`` existed too).

        Raises:
            ValueError: the state lacks a metric this curve records (it was written by a search with other
                objectives or constraints); nothing is changed.
            KeyError, TypeError: a state of another layout; nothing is changed.
        """
        best_value, best_step, wait = state["best_value"], state["best_step"], int(state.get("wait", 0))
        values = {int(k): float(v) for k, v in state["values"].items()}
        extra = {int(k): {n: float(x) for n, x in v.items()} for k, v in (state.get("extra") or {}).items()}
        for step in values:
            missing = [n for n in (*self.objectives, *self.watch) if n not in extra.get(step, {})]
            if missing:
                raise ValueError(
                    f"the saved values lack {missing} at step {step}: they were saved by a search with other"
                    " objectives or constraints"
                )
        self.values, self.extra = values, extra
        self.best_value, self.best_step, self.wait = best_value, best_step, wait
