"""The Lightning callback inside every trial: reports each validation result, applies pruning."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import lightning.pytorch as L
import numpy as np
import torch
from typing_extensions import override

from lightning_hpt.exceptions import MetricNotFoundError
from lightning_hpt.trial import Direction

__all__ = [
    "MonitorLogic",
    "TrialMonitor",
    "TrialReporter",
    "metric_missing",
    "metric_value",
    "monitor_class",
    "wire_value",
]

log = logging.getLogger(__name__)


class TrialReporter(Protocol):
    """The channel from a running trial to the driver.

    A reporter handed to ``Executor.submit`` also has ``answers``: False when :meth:`report` never
    returns True (the search has no active pruner), so that a channel between processes or machines
    may send the report without waiting for the answer.
    """

    def report(self, step: int, value: float | tuple[float, ...]) -> bool:
        """Send the monitored value of validation run ``step`` (0-based); True means: stop this trial.

        With several objectives ``value`` is the tuple of every objective's value (the monitor's first).
        """
        ...


def wire_value(value: Any) -> float | tuple[float, ...]:
    """A reported value as plain data for a channel: a float, or a tuple of floats with several objectives."""
    return tuple(float(v) for v in value) if isinstance(value, (tuple, list)) else float(value)


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


def metric_missing(monitor: str, logged: Iterable[str]) -> MetricNotFoundError:
    """The error of a validation run that did not log ``monitor`` (``logged``: what it did log); every trial would."""
    return MetricNotFoundError(
        f"the monitored metric {monitor!r} was not logged; the metrics logged are {sorted(logged)}."
        f" Log it with self.log({monitor!r}, ...) in validation_step, or set monitor= to one of these"
    )


class MonitorLogic:
    """Behaves like ``EarlyStopping``: skips the sanity check, decides on rank 0, broadcasts, sets ``should_stop``.

    It never raises from a hook: a problem (missing metric, wrong type) is kept in ``error`` and the
    trial is stopped; the runner turns it into a FAILED record.

    Args:
        monitor, direction: the metric the trial's best step is chosen by (the first objective).
        reporter: the channel to the driver.
        objectives: the other objectives' metrics: recorded and reported with ``monitor`` at every step.
        watch: more metrics recorded at every step, not reported (those of outcome constraints).

    Attributes:
        values: monitored value per step (validation run, from 0).
        extra: the values of ``objectives`` and ``watch`` per step, ``{step: {name: value}}``.
        best_value, best_step: the best finite value and its step.
        pruned: whether the driver asked this trial to stop.
        error: the exception that ended the trial from inside the callback, if any.
    """

    def __init__(
        self,
        monitor: str,
        direction: Direction,
        reporter: TrialReporter | None = None,
        objectives: Sequence[str] = (),
        watch: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.monitor = monitor
        self.direction = direction
        self.reporter = reporter
        self.objectives, self.watch = tuple(objectives), tuple(watch)
        self.values: dict[int, float] = {}
        self.extra: dict[int, dict[str, float]] = {}
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.pruned = False
        self.error: BaseException | None = None
        #: seconds trained before this attempt (restored from a resumable checkpoint)
        self.trained_before = 0.0
        self.resumed_at: int | None = None  # the first step this attempt reports, when it continued
        self._t0 = time.monotonic()

    @classmethod
    def of(cls, build: Any, reporter: TrialReporter | None = None) -> MonitorLogic:
        """The monitor of a trial of ``build`` (a ``TrialBuild``): its first objective, the others, and the
        metrics its outcome constraints bound."""
        others, watch = [o.name for o in build.objectives[1:]], [c.metric for c in build.constraints]
        return cls(build.monitor, build.direction, reporter, others, watch)

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor)  # type: ignore[attr-defined]

    @override
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """On a continued trial: report its steps again."""
        self._t0 = time.monotonic()
        if self.resumed_at is None or not trainer.is_global_zero or self.reporter is None:
            return
        # the stored curve loses the interrupted attempt's steps when the trial is requeued: the same values
        # again, so that the pruner sees one continuous curve
        stop = False
        for step in sorted(self.values):
            try:
                stop = bool(self.reporter.report(step, self.reported(step))) or stop
            except Exception:
                log.exception("reporting step %d of the continued trial failed; it continues unpruned", step)
        if stop:
            self.pruned = True
            trainer.should_stop = True

    @property
    def trained_seconds(self) -> float:
        """Seconds spent training this trial, over all its attempts."""
        return self.trained_before + (time.monotonic() - self._t0)

    @override
    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        try:
            self._check(trainer)
        except Exception as e:  # never raise from a hook: stop the trial and let the runner report it
            self.error = e
            trainer.should_stop = True

    def reported(self, step: int) -> float | tuple[float, ...]:
        """What step ``step`` reports: the monitored value, or every objective's value with several."""
        if not self.objectives:
            return self.values[step]
        return (self.values[step], *(self.extra[step][name] for name in self.objectives))

    def _check(self, trainer: Any) -> None:
        metrics = trainer.callback_metrics
        for name in (self.monitor, *self.objectives, *self.watch):
            if name not in metrics:
                raise metric_missing(name, metrics)
        value = metric_value(self.monitor, metrics[self.monitor])
        step = len(self.values)
        self.values[step] = value
        if self.objectives or self.watch:
            self.extra[step] = {n: metric_value(n, metrics[n]) for n in (*self.objectives, *self.watch)}
        if math.isfinite(value) and (self.best_value is None or self.direction.better(value, self.best_value)):
            self.best_value, self.best_step = value, step
        stop = False
        if trainer.is_global_zero and self.reporter is not None:
            try:
                stop = bool(self.reporter.report(step, self.reported(step)))
            except Exception:  # a broken channel must not kill the trial; it just is not pruned
                log.exception("reporting step %d of the trial failed; it continues unpruned", step)
        # every rank takes rank 0's decisions, so DDP ranks stop together; a NaN or infinite value (of any
        # objective) ends the trial at once even without a pruner or EarlyStopping (it is FAILED "non-finite")
        finite = math.isfinite(value) and all(math.isfinite(self.extra[step][n]) for n in self.objectives)
        stop, broken = trainer.strategy.broadcast((stop, not finite), src=0)
        if stop:
            self.pruned = True
        if stop or broken:
            trainer.should_stop = True

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "values": dict(self.values),
            "extra": {step: dict(v) for step, v in self.extra.items()},
            "best_value": self.best_value,
            "best_step": self.best_step,
            "trained_seconds": self.trained_seconds,
            "rng": _get_rng(),  # Lightning's checkpoint does not keep them
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.values = {int(k): float(v) for k, v in state_dict["values"].items()}
        extra = state_dict.get("extra") or {}
        self.extra = {int(k): {n: float(x) for n, x in v.items()} for k, v in extra.items()}
        self.best_value, self.best_step = state_dict["best_value"], state_dict["best_step"]
        self.trained_before = float(state_dict.get("trained_seconds", 0.0))
        if state_dict.get("rng") is not None:
            # now, before the fit loop makes its first data iterator (which draws the shuffling seed)
            _set_rng(state_dict["rng"])
        self.resumed_at = len(self.values)


def _get_rng() -> dict[str, Any]:
    """The random states Lightning's ``seed_everything`` seeds, in types ``torch.load(weights_only=True)`` reads."""
    from lightning.fabric.utilities.seed import _collect_rng_states

    states = _collect_rng_states(include_cuda=torch.cuda.is_available())
    name, keys, *rest = states["numpy"]
    states["numpy"] = (name, torch.from_numpy(keys.astype(np.int64)), *rest)
    return states


def _set_rng(states: dict[str, Any]) -> None:
    from lightning.fabric.utilities.seed import _set_rng_states

    name, keys, *rest = states["numpy"]
    _set_rng_states({**states, "numpy": (name, keys.numpy().astype(np.uint32), *rest)})


class TrialMonitor(MonitorLogic, L.Callback):
    """The trial's monitor for ``lightning.pytorch`` trainers.

    Example:
        >>> from lightning_hpt.trial import Direction
        >>> cb = TrialMonitor("val_acc", Direction.MAXIMIZE)  # Trainer(callbacks=[cb])
    """


def monitor_class(namespace: Any) -> type:
    """The monitor class for a Lightning namespace (``lightning.pytorch`` or ``pytorch_lightning``)."""
    if namespace is L:
        return TrialMonitor
    from lightning_hpt.lightning.monitor_pl import TrialMonitor as PLTrialMonitor  # only with pytorch_lightning

    return PLTrialMonitor
