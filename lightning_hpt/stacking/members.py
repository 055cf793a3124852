"""One member of a stacked group, seen as a trial: its values, stopping rules, checkpoint, logs and outcome.

The rules are those an ordinary trial gets from its callbacks (see ``lightning.runner.search_callbacks``):
the monitor reports every validation run and applies the driver's pruning decision, a non-finite value
ends the member, ``EarlyStopping`` (``patience`` runs without a strict improvement) ends it, and the
best run's weights are written (once, when the member ends) to ``<trial dir>/checkpoints/best.ckpt``.
A member continued from its resumable checkpoint (:mod:`lightning_hpt.stacking.resume`) starts with
the counters it had (:meth:`Member.restore`) and reports its earlier values again, as a continued
ordinary trial's monitor does.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning_hpt.exceptions import MetricNotFoundError
from lightning_hpt.lightning import compat
from lightning_hpt.lightning.loggers import TrialContext, trial_loggers
from lightning_hpt.lightning.monitor import TrialReporter, metric_missing
from lightning_hpt.lightning.runner import TrialJob, TrialOutcome, end_resume, value_failure
from lightning_hpt.stacking.resume import write_checkpoint
from lightning_hpt.trial import INTERRUPTED, Direction, TrialState

__all__ = ["Member", "member_checkpoint"]

log = logging.getLogger(__name__)


class Member:
    """The trial-side state of one member of a stacked group.

    Attributes:
        job, reporter: the trial and its channel to the driver.
        max_epochs: the member's own epoch count (``trainer.max_epochs``), or ``None``: the group's.
        on_end: called once with the member's outcome when it ends (before the group does).
        epochs_before, steps_before: the epochs and optimizer steps it trained before this group (resumed).
        resumed_at: the first step this group reports, when the member was continued; else ``None``.
        values: monitored value per step (validation run).
        best_value, best_step: the best finite value and its step.
        pruned: the driver asked this member to stop.
        ended: the member receives no more updates (pruned, stopped early, done, or failed).
        error: why the member failed, if it did.
        metrics: the member's last logged values, as floats.
    """

    def __init__(
        self,
        job: TrialJob,
        reporter: TrialReporter | None,
        max_epochs: int | None,
        on_end: Callable[[TrialOutcome], None] | None = None,
    ) -> None:
        self.job, self.reporter, self.max_epochs, self.on_end = job, reporter, max_epochs, on_end
        self.epochs_before = self.steps_before = 0
        self.resumed_at: int | None = None
        self.trained_before = 0.0
        self.attrs: dict[str, Any] = {}
        self.outcome_sent: TrialOutcome | None = None
        self._t0 = time.monotonic()
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

    @property
    def kept(self) -> dict[str, Any] | None:
        """The best step's checkpoint, held until the member ends."""
        return self._best_checkpoint

    @property
    def trained_seconds(self) -> float:
        """Seconds this member trained, over all its attempts (its group's time while it took part)."""
        return self.trained_before + (time.monotonic() - self._t0)

    def own_epoch(self, group_epoch: int) -> int:
        """The member's own epoch number at its group's epoch ``group_epoch`` (both 0-based)."""
        return self.epochs_before + group_epoch

    def open(self, namespace: Any) -> None:
        """Start the member's trial directory and its loggers; a continued member reports its earlier values.

        A new member's directory is emptied, as a retried trial's is. Loggers as an ordinary trial's
        (:func:`~lightning_hpt.lightning.loggers.trial_loggers`): a CSV log in ``csv/``, and a
        TensorBoard log in ``tb/`` when ``tensorboard`` is installed.
        """
        trial_dir = self.job.trial_dir
        if self.resumed_at is None:
            shutil.rmtree(trial_dir, ignore_errors=True)
        Path(trial_dir).mkdir(parents=True, exist_ok=True)
        self._loggers = trial_loggers(namespace, None, TrialContext.from_dir(trial_dir, self.job.params))
        for lg in self._loggers:
            lg.log_hyperparams(dict(self.job.params))
        self._t0 = time.monotonic()
        if self.resumed_at is not None:
            self._replay()

    def _replay(self) -> None:
        """Report the steps of the earlier attempts again: a requeued trial's stored curve lost them."""
        if self.reporter is None:
            return
        for step in sorted(self.values):
            try:
                self.pruned = bool(self.reporter.report(step, self.values[step])) or self.pruned
            except Exception:
                log.exception("reporting step %d of trial %d failed; it continues unpruned", step, self.job.number)
        self.ended = self.ended or self.pruned

    def snapshot(self, epochs: int, steps: int) -> dict[str, Any]:
        """The member's counters after ``epochs`` epochs and ``steps`` optimizer steps, for its resumable checkpoint."""
        return {
            "values": dict(self.values),
            "best_value": self.best_value,
            "best_step": self.best_step,
            "wait": self._wait,
            "metrics": dict(self.metrics),
            "trained_seconds": self.trained_seconds,
            "epochs": epochs,
            "steps": steps,
        }

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Continue from a :meth:`snapshot`; a member that had already ended then ends at once."""
        self.values = {int(k): float(v) for k, v in snapshot["values"].items()}
        self.best_value, self.best_step = snapshot["best_value"], snapshot["best_step"]
        self._wait = int(snapshot["wait"])
        self.metrics = {str(k): float(v) for k, v in snapshot["metrics"].items()}
        self.trained_before = float(snapshot["trained_seconds"])
        self.epochs_before, self.steps_before = int(snapshot["epochs"]), int(snapshot["steps"])
        self.resumed_at = len(self.values)
        last = self.values.get(len(self.values) - 1)
        patience = self.job.build.patience
        if (patience is not None and self._wait >= patience) or (last is not None and not math.isfinite(last)):
            self.ended = True
        self.epoch_done(0)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.metrics.update(metrics)
        for lg in self._loggers:
            lg.log_metrics(metrics, step=step)

    def keep(self, checkpoint: dict[str, Any]) -> None:
        """Hold the best step's checkpoint; it is written once, when the member ends."""
        self._best_checkpoint = checkpoint

    def close(self, write_best: bool = True) -> None:
        """Write the kept checkpoint (unless ``write_best`` is False) and finish the logs."""
        if self._best_checkpoint is not None and write_best:
            write_checkpoint(self._best_checkpoint, self.checkpoint_path)
        self._best_checkpoint = None
        for lg in self._loggers:
            if self.best_value is not None and compat.is_tensorboard_logger(lg):  # the HParams view
                lg.log_hyperparams(dict(self.job.params), {f"hp/{self.job.build.monitor}": self.best_value})
            lg.finalize("success")
        self._loggers = []

    def finish(self) -> TrialOutcome:
        """End the member: write its checkpoint, make its outcome and send it (once).

        Its resumable checkpoint is then removed, as an ordinary trial's is when it ends.
        """
        if self.outcome_sent is None:
            self.ended = True
            self.close()
            outcome = self.outcome()
            end_resume(self.job, outcome)
            self._send(outcome)
        return self.outcome_sent  # type: ignore[return-value]

    def interrupt(self) -> TrialOutcome:
        """End an unfinished member as interrupted (it continues from its resumable checkpoint when rerun)."""
        if self.outcome_sent is None:
            self.ended = True
            self.close(write_best=False)  # its best checkpoint so far is in its resumable checkpoint
            error, values = f"{INTERRUPTED}: the search stopped", dict(self.values)
            self._send(
                TrialOutcome(
                    TrialState.FAILED, error=error, interrupted=INTERRUPTED, intermediate=values, **self._common()
                )
            )
        return self.outcome_sent  # type: ignore[return-value]

    def _send(self, outcome: TrialOutcome) -> None:
        self.outcome_sent = outcome
        if self.on_end is not None:
            self.on_end(outcome)

    def _common(self) -> dict[str, Any]:
        attrs = {**self.attrs, "train_seconds": round(self.trained_seconds, 3)}
        if self.resumed_at is not None:
            attrs["resumed_at_step"] = self.resumed_at
        return {"metrics": dict(self.metrics), "attrs": attrs}

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

    def epoch_done(self, group_epochs: int) -> None:
        """After its group trained ``group_epochs`` epochs: a member that reached its own ``max_epochs`` ends."""
        if self.max_epochs is not None and self.own_epoch(group_epochs) >= self.max_epochs:
            self.ended = True

    def outcome(self) -> TrialOutcome:
        """The member's trial outcome, as an ordinary trial with the same values would have it."""
        common: dict[str, Any] = {"intermediate": dict(self.values), **self._common()}
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


def member_checkpoint(
    model: Any, epoch: int, global_step: int, namespace: Any, state_dict: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One member's weights as a Lightning checkpoint that ``Model.load_from_checkpoint`` reads.

    The tensors are cloned: a member's parameters are views of the group's stacked tensors (and saving a
    view would write the whole group). Optimizer states are not included.

    Args:
        model: the member.
        epoch, global_step: the member's own epoch and optimizer step.
        namespace: the Lightning package (its version is recorded).
        state_dict: these weights instead of the member's current ones (a best step kept from before).
    """
    weights = model.state_dict() if state_dict is None else state_dict
    state = {k: v.detach().clone() for k, v in weights.items()}
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
