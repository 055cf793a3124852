"""One member of a stacked group, seen as a trial: its values, stopping rules, checkpoint, logs and outcome.

The rules are those an ordinary trial gets from its callbacks (see ``lightning.runner.search_callbacks``):
the monitor reports every validation run and applies the driver's pruning decision, a non-finite value
ends the member, ``EarlyStopping`` (``patience`` runs without a strict improvement) ends it, and the
best run's weights are written (once, when the member ends) to ``<trial dir>/checkpoints/best.ckpt``.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from lightning_hpt.exceptions import MetricNotFoundError
from lightning_hpt.lightning import compat
from lightning_hpt.lightning.loggers import TrialContext, trial_loggers
from lightning_hpt.lightning.monitor import TrialReporter, metric_missing
from lightning_hpt.lightning.runner import TrialJob, TrialOutcome, value_failure
from lightning_hpt.trial import Direction, TrialState

__all__ = ["Member", "member_checkpoint"]

log = logging.getLogger(__name__)


class Member:
    """The trial-side state of one member of a stacked group.

    Attributes:
        job, reporter: the trial and its channel to the driver.
        max_epochs: the member's own epoch count (``trainer.max_epochs``), or ``None``: the group's.
        values: monitored value per step (validation run).
        best_value, best_step: the best finite value and its step.
        pruned: the driver asked this member to stop.
        ended: the member receives no more updates (pruned, stopped early, done, or failed).
        error: why the member failed, if it did.
        metrics: the member's last logged values, as floats.
    """

    def __init__(self, job: TrialJob, reporter: TrialReporter | None, max_epochs: int | None) -> None:
        self.job, self.reporter, self.max_epochs = job, reporter, max_epochs
        self.values: dict[int, float] = {}
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.pruned = self.ended = False
        self.error: BaseException | None = None
        self.metrics: dict[str, float] = {}
        self._wait = 0
        self._loggers: list[Any] = []
        self._best_checkpoint: dict[str, Any] | None = None

    @property
    def direction(self) -> Direction:
        return self.job.build.direction

    @property
    def checkpoint_path(self) -> str:
        return os.path.join(self.job.trial_dir, "checkpoints", "best.ckpt")

    def open(self, namespace: Any) -> None:
        """Start the member's trial directory (emptied, as a retried trial's is) and its loggers.

        As an ordinary trial's (:func:`~lightning_hpt.lightning.loggers.trial_loggers`): a CSV log in
        ``csv/``, and a TensorBoard log in ``tb/`` when ``tensorboard`` is installed.
        """
        trial_dir = self.job.trial_dir
        shutil.rmtree(trial_dir, ignore_errors=True)
        Path(trial_dir).mkdir(parents=True, exist_ok=True)
        self._loggers = trial_loggers(namespace, None, TrialContext.from_dir(trial_dir, self.job.params))
        for lg in self._loggers:
            lg.log_hyperparams(dict(self.job.params))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.metrics.update(metrics)
        for lg in self._loggers:
            lg.log_metrics(metrics, step=step)

    def keep(self, checkpoint: dict[str, Any]) -> None:
        """Hold the best step's checkpoint; it is written once, when the member is closed."""
        self._best_checkpoint = checkpoint

    def close(self) -> None:
        """Write the kept checkpoint and finish the logs."""
        if self._best_checkpoint is not None:
            path = self.checkpoint_path
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            torch.save(self._best_checkpoint, f"{path}.tmp")
            os.replace(f"{path}.tmp", path)
            self._best_checkpoint = None
        for lg in self._loggers:
            if self.best_value is not None and compat.is_tensorboard_logger(lg):  # the HParams view
                lg.log_hyperparams(dict(self.job.params), {f"hp/{self.job.build.monitor}": self.best_value})
            lg.finalize("success")
        self._loggers = []

    def observe(self, logged: dict[str, float]) -> bool:
        """Take one validation run's metrics (as ``callback_metrics``: the last training step's and the run's).

        Returns True when this step is the best so far (save it).
        """
        monitor = self.job.build.monitor
        if monitor not in logged:
            self.error, self.ended = metric_missing(monitor, logged), True
            return False
        value = logged[monitor]
        step = len(self.values)
        self.values[step] = value
        improved = math.isfinite(value) and (self.best_value is None or self.direction.better(value, self.best_value))
        if improved:
            self.best_value, self.best_step, self._wait = value, step, 0
        else:
            self._wait += 1
        if self.reporter is not None:
            try:
                self.pruned = bool(self.reporter.report(step, value))
            except Exception:  # a broken channel must not kill the member; it just is not pruned
                log.exception("reporting step %d of trial %d failed; it continues unpruned", step, self.job.number)
        patience = self.job.build.patience
        stop_early = patience is not None and self._wait >= patience
        if self.pruned or stop_early or not math.isfinite(value):
            self.ended = True
        return improved

    def epoch_done(self, epochs: int) -> None:
        """After ``epochs`` training epochs: a member that reached its own ``max_epochs`` ends."""
        if self.max_epochs is not None and epochs >= self.max_epochs:
            self.ended = True

    def outcome(self, attrs: dict[str, Any]) -> TrialOutcome:
        """The member's trial outcome, as an ordinary trial with the same values would have it."""
        common: dict[str, Any] = {"intermediate": dict(self.values), "metrics": dict(self.metrics), "attrs": attrs}
        if self.error is not None:
            fatal = isinstance(self.error, MetricNotFoundError)
            return TrialOutcome(
                TrialState.FAILED, error=f"{type(self.error).__name__}: {self.error}", fatal=fatal, **common
            )
        failure = value_failure(self.job.build.monitor, self.values, self.metrics)
        if failure is not None:
            return TrialOutcome(TrialState.FAILED, error=failure[0], fatal=failure[1], **common)
        ckpt = self.checkpoint_path if os.path.exists(self.checkpoint_path) else None
        state = TrialState.PRUNED if self.pruned else TrialState.COMPLETE
        return TrialOutcome(state, value=self.best_value, best_step=self.best_step, checkpoint=ckpt, **common)


def member_checkpoint(model: Any, epoch: int, global_step: int, namespace: Any) -> dict[str, Any]:
    """One member's weights as a Lightning checkpoint that ``Model.load_from_checkpoint`` reads.

    The tensors are cloned: a member's parameters are views of the group's stacked tensors (and saving a
    view would write the whole group). Optimizer states are not included.
    """
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ckpt: dict[str, Any] = {
        "state_dict": state,
        "epoch": epoch,
        "global_step": global_step,
        "pytorch-lightning_version": namespace.__version__,
        "loops": {},
        "callbacks": {},
        "optimizer_states": [],
        "lr_schedulers": [],
    }
    hparams = getattr(model, "hparams", None)
    if hparams:
        ckpt[type(model).CHECKPOINT_HYPER_PARAMS_KEY] = dict(hparams)
    model.on_save_checkpoint(ckpt)
    return ckpt
