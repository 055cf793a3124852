"""The Lightning callback inside every trial: reports each validation result, applies pruning.

``metric_value`` and ``metric_missing`` live in :mod:`lightning_hpt.lightning.curve` and are named here too.
"""

from __future__ import annotations

import random
import time
from typing import Any, Protocol

import lightning.pytorch as L
import numpy as np
import torch
from typing_extensions import override

from lightning_hpt.lightning.curve import Curve, metric_missing, metric_value

__all__ = [
    "MonitorLogic",
    "TrialMonitor",
    "TrialReporter",
    "metric_missing",
    "metric_value",
    "monitor_class",
    "trains_no_more",
    "wire_value",
]


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


class MonitorLogic:
    """Behaves like ``EarlyStopping``: skips the sanity check, decides on rank 0, broadcasts, sets ``should_stop``.

    The rules on the values are its :class:`~lightning_hpt.lightning.curve.Curve`'s; this class feeds it
    each validation run's ``callback_metrics`` and acts on the Trainer. It never raises from a hook: a
    problem (missing metric, wrong type) is kept in ``error`` and the trial is stopped; the runner turns
    it into a FAILED record.

    Args:
        curve: the trial's curve (:meth:`Curve.of`): its monitor, other objectives and constraints.
        reporter: the channel to the driver.

    Attributes:
        curve: the values per step, the best step and value, and the pruning decision.
        error: the exception that ended the trial from inside the callback, if any.
        final_run: no run of the trial follows this one; then a stop at its last validation run is not
            a pruning (see :func:`trains_no_more`).
    """

    def __init__(self, curve: Curve, reporter: TrialReporter | None = None) -> None:
        super().__init__()
        self.curve = curve  # EarlyStopping is Lightning's callback
        self.reporter = reporter
        self.final_run = True
        self.error: BaseException | None = None
        #: seconds trained before this attempt (restored from a resumable checkpoint)
        self.trained_before = 0.0
        self.resumed_at: int | None = None  # the first step this attempt reports, when it continued
        self._t0 = time.monotonic()

    @classmethod
    def of(cls, build: Any, reporter: TrialReporter | None = None, final_run: bool = True) -> MonitorLogic:
        """The monitor of a trial of ``build`` (a ``TrialBuild``): its objectives and outcome constraints.

        ``final_run``: no run of the trial follows this one (False for a fold or repeat before its last).
        """
        monitor = cls(Curve.of(build), reporter)
        monitor.final_run = final_run
        return monitor

    @property
    def monitor(self) -> str:
        return self.curve.monitor

    @property
    def values(self) -> dict[int, float]:
        """Monitored value per step (validation run, from 0)."""
        return self.curve.values

    @property
    def best_value(self) -> float | None:
        return self.curve.best_value

    @property
    def best_step(self) -> int | None:
        return self.curve.best_step

    @property
    def pruned(self) -> bool:
        """Whether the driver asked this trial to stop."""
        return self.curve.pruned

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
        self.curve.replay(self.reporter, "the continued trial")

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
        return self.curve.reported(step)

    def _check(self, trainer: Any) -> None:
        self.curve.record(trainer.callback_metrics)
        step = len(self.curve.values) - 1
        last = self.final_run and trains_no_more(trainer)
        stop = self.curve.ask(self.reporter, step, last=last) if trainer.is_global_zero else False
        # every rank takes rank 0's decisions, so DDP ranks stop together; a NaN or infinite value (of any
        # objective) ends the trial at once even without a pruner or EarlyStopping (it is FAILED "non-finite")
        stop, broken = trainer.strategy.broadcast((stop, not self.curve.finite(step)), src=0)
        if stop:
            self.curve.pruned = True
        if stop or broken:
            trainer.should_stop = True

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            **self.curve.state_dict(),
            "trained_seconds": self.trained_seconds,
            "rng": _get_rng(),  # Lightning's checkpoint does not keep them
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.curve.load_state_dict(state_dict)
        self.trained_before = float(state_dict.get("trained_seconds", 0.0))
        if state_dict.get("rng") is not None:
            # now, before the fit loop makes its first data iterator (which draws the shuffling seed)
            _set_rng(state_dict["rng"])
        self.resumed_at = len(self.values)


def trains_no_more(trainer: Any) -> bool:
    """Whether this validation run is the trial's last: ``max_steps`` reached, or the end of its last epoch.

    A trial whose epochs are searched (``trainer.max_epochs``) may end below the pruner's maximum
    resource; the driver's "stop" at its last run has nothing to stop, and the trial, having trained its
    whole budget, is COMPLETE rather than PRUNED.
    """
    max_steps = trainer.max_steps
    if max_steps is not None and max_steps > 0 and trainer.global_step >= max_steps:
        return True
    max_epochs = trainer.max_epochs
    last_epoch = max_epochs is not None and max_epochs >= 0 and trainer.current_epoch + 1 >= max_epochs
    return last_epoch and trainer.is_last_batch


def _get_rng() -> dict[str, Any]:
    """The random states Lightning's ``seed_everything`` seeds, in types ``torch.load(weights_only=True)`` reads.

    Lightning's checkpoint does not keep them (its own helpers for this are private); the keys are the
    ones Lightning uses, so a checkpoint written before reads the same.
    """
    name, keys, *rest = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), *rest),
    }
    if torch.cuda.is_available():
        states["torch.cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if "torch.cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["torch.cuda"])
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, state, gauss = states["python"]
    random.setstate((version, tuple(state), gauss))


class TrialMonitor(MonitorLogic, L.Callback):
    """The trial's monitor for ``lightning.pytorch`` trainers.

    Example:
        >>> from lightning_hpt.trial import Direction
        >>> cb = TrialMonitor(Curve("val_acc", Direction.MAXIMIZE))  # Trainer(callbacks=[cb])
    """


def monitor_class(namespace: Any) -> type:
    """The monitor class for a Lightning namespace (``lightning.pytorch`` or ``pytorch_lightning``)."""
    if namespace is L:
        return TrialMonitor
    from lightning_hpt.lightning.monitor_pl import TrialMonitor as PLTrialMonitor  # only with pytorch_lightning

    return PLTrialMonitor
