"""One member of a stacked group, seen as a trial: its values, stopping rules, checkpoint, logs and outcome.

The rules are those an ordinary trial gets from its callbacks (see ``lightning.runner.search_callbacks``),
taken from the same :class:`~lightning_hpt.lightning.curve.Curve` as an ordinary trial's monitor: every
objective and every constrained metric recorded at every step, each validation run reported (every
objective's value) and the driver's pruning decision applied, a non-finite objective ends the member,
``EarlyStopping`` (``patience`` runs without a strict improvement of the first objective) ends it, the
outcome constraints are judged at the best step, and the best run's weights are written (once, when the
member ends) to ``<trial dir>/checkpoints/best.ckpt``, and its logs (CSV, TensorBoard) when it ends too.
A member continued from its resumable checkpoint (:mod:`lightning_hpt.stacking.resume`) starts with
the counters it had (:meth:`Member.restore`) and reports its earlier values again, as a continued
ordinary trial's monitor does.
"""

from __future__ import annotations

import copy
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning_hpt.exceptions import MetricNotFoundError
from lightning_hpt.lightning import compat
from lightning_hpt.lightning.curve import Curve
from lightning_hpt.lightning.loggers import TrialContext, trial_loggers
from lightning_hpt.lightning.monitor import TrialReporter
from lightning_hpt.lightning.runner import TrialJob, TrialOutcome, end_resume, keeps_resume
from lightning_hpt.stacking.resume import save_member_state, write_checkpoint
from lightning_hpt.trial import INTERRUPTED, TrialState

__all__ = ["Member", "member_checkpoint"]


class Member:
    """The trial-side state of one member of a stacked group.

    Attributes:
        job, reporter: the trial and its channel to the driver.
        max_epochs: the member's own epoch count (``trainer.max_epochs``), or ``None``: the group's.
        on_end: called once with the member's outcome when it ends (before the group does).
        epochs_before, steps_before: the epochs and optimizer steps it trained before this group (resumed).
        joined_at: the group's epoch at which it took the slot of an ended member (0: it started with it).
        resumed_at: the first step this group reports, when the member was continued; else ``None``.
        curve: its values per step (every objective's and every constrained metric's), best step and
            value, EarlyStopping's count and the driver's pruning decision.
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
        self.joined_at = 0  # the group's epoch at which it joined (0: it started with its group)
        self.resumed_at: int | None = None
        self.trained_before = 0.0
        self.attrs: dict[str, Any] = {}
        self.outcome_sent: TrialOutcome | None = None
        self._t0 = time.monotonic()
        self.curve = Curve.of(job.build, patience=job.build.patience)
        self.ended = False
        self.error: BaseException | None = None
        self.metrics: dict[str, float] = {}
        self._namespace: Any = None  # the Lightning package, once the member is opened
        self._logged: list[tuple[dict[str, float], int]] = []  # (values, step) for the loggers
        self._best_checkpoint: dict[str, Any] | None = None
        self._held: dict[str, Any] | None = None  # its latest resumable state, not written yet

    @property
    def values(self) -> dict[int, float]:
        """The monitored value per step (validation run)."""
        return self.curve.values

    @property
    def label(self) -> str:
        return f"trial {self.job.number}"

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
        return self.epochs_before + group_epoch - self.joined_at

    def open(self, namespace: Any) -> None:
        """Start the member's trial directory; a continued member reports its earlier values.

        A new member's directory is emptied, as a retried trial's is. Its logs are written when it ends
        (:meth:`close`): a logger per member alive while the group trains would put a writer thread per
        member (TensorBoard's) beside the training loop.
        """
        trial_dir = self.job.trial_dir
        if self.resumed_at is None:
            shutil.rmtree(trial_dir, ignore_errors=True)
        Path(trial_dir).mkdir(parents=True, exist_ok=True)
        self._namespace = namespace
        self._t0 = time.monotonic()
        if self.resumed_at is not None:
            self._replay()

    def _replay(self) -> None:
        """Report the steps of the earlier attempts again: a requeued trial's stored curve lost them."""
        self.curve.replay(self.reporter, self.label)

    def snapshot(self, epochs: int, steps: int) -> dict[str, Any]:
        """The member's counters after ``epochs`` epochs and ``steps`` optimizer steps, for its resumable checkpoint.

        Its curve as an ordinary trial's monitor saves it (``values``, ``extra``: every objective's and every
        constrained metric's value per step, ``best_value``, ``best_step``, ``wait``), and its own counters.
        """
        return {
            **self.curve.state_dict(),
            "metrics": dict(self.metrics),
            "trained_seconds": self.trained_seconds,
            "epochs": epochs,
            "steps": steps,
        }

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Continue from a :meth:`snapshot`; a member that had already ended then ends at once.

        A snapshot written before every objective was recorded (no ``extra``) is read as it was with one
        objective and no outcome constraints.

        Raises:
            ValueError: the snapshot lacks a metric this member records (written by a search with other
                objectives or constraints); nothing is changed (the caller starts the member over).
            KeyError, TypeError: a snapshot of another layout; nothing is changed.
        """
        metrics = {str(k): float(v) for k, v in snapshot["metrics"].items()}
        trained, epochs, steps = float(snapshot["trained_seconds"]), int(snapshot["epochs"]), int(snapshot["steps"])
        self.curve.load_state_dict(snapshot)  # checks everything before it changes anything
        self.metrics, self.trained_before = metrics, trained
        self.epochs_before, self.steps_before = epochs, steps
        self.resumed_at = len(self.values)
        self.ended = self.curve.ends()  # it had stopped early, or its last value was not finite
        self.epoch_done(0)

    def log_metrics(self, metrics: dict[str, float], step: int, final: dict[str, float] | None = None) -> None:
        """Take one validation run's logged values, for the member's loggers when it ends; its last metrics
        take ``final`` (default: ``metrics``)."""
        self.metrics.update(metrics if final is None else {**final, "epoch": metrics.get("epoch", step)})
        self._logged.append((dict(metrics), step))

    def keep(self, checkpoint: dict[str, Any]) -> None:
        """Hold the best step's checkpoint; it is written once, when the member ends."""
        self._best_checkpoint = checkpoint

    def close(self, write_best: bool = True) -> None:
        """Write the kept checkpoint (unless ``write_best`` is False) and the logs.

        The logs are an ordinary trial's (:func:`~lightning_hpt.lightning.loggers.trial_loggers`): a CSV
        log in ``csv/``, and a TensorBoard log in ``tb/`` when ``tensorboard`` is installed, each with the
        trial's parameters and every value the member logged, at its own steps.
        """
        if self._best_checkpoint is not None and write_best:
            write_checkpoint(self._best_checkpoint, self.checkpoint_path)
        self._best_checkpoint = None
        logged, self._logged = self._logged, []
        if self._namespace is None:  # never opened
            return
        context = TrialContext.from_dir(self.job.trial_dir, self.job.params)
        best = {f"hp/{name}": value for name, value in self.curve.best_metrics().items()}
        for lg in trial_loggers(self._namespace, None, context):
            lg.log_hyperparams(dict(self.job.params))
            for metrics, step in logged:
                lg.log_metrics(metrics, step=step)
            if best and compat.is_tensorboard_logger(lg):  # the HParams view: every objective at the best step
                lg.log_hyperparams(dict(self.job.params), best)
            lg.finalize("success")
        self._namespace = None

    def hold_resume(self, state: dict[str, Any]) -> None:
        """Keep ``state`` (its own tensors, not views) as the member's resumable checkpoint, to write later."""
        self._held = state

    def write_resume(self) -> None:
        """Write the held resumable checkpoint, if any (see :mod:`lightning_hpt.stacking.resume`)."""
        if self._held is not None:
            save_member_state(self.job, self._held)
            self._held = None

    def finish(self) -> TrialOutcome:
        """End the member: write its checkpoint, make its outcome and send it (once).

        Its resumable checkpoint is then removed, as an ordinary trial's is when it ends, or written
        when it stays (``Resume(keep=True)``, or ``failed=True`` for a failed member).
        """
        if self.outcome_sent is None:
            self.ended = True
            self.close()
            outcome = self.outcome()
            if keeps_resume(self.job, outcome):
                self.write_resume()
            self._held = None
            end_resume(self.job, outcome)
            self._send(outcome)
        return self.outcome_sent  # type: ignore[return-value]

    def interrupt(self) -> TrialOutcome:
        """End an unfinished member as interrupted: its held resumable checkpoint is written, to continue from."""
        if self.outcome_sent is None:
            self.ended = True
            self.write_resume()
            self.close(write_best=False)  # its best checkpoint so far is in its resumable checkpoint
            error, values = f"{INTERRUPTED}: the search stopped", self.curve.intermediate()
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
        attrs = {**copy.deepcopy(self.attrs), "train_seconds": round(self.trained_seconds, 3)}  # its group grows
        if self.resumed_at is not None:
            attrs["resumed_at_step"] = self.resumed_at
        return {"metrics": dict(self.metrics), "attrs": attrs}

    def observe(self, logged: dict[str, float], epoch: int) -> bool:
        """Take one validation run's metrics (as ``callback_metrics``: the last training step's and the run's),
        at the end of the member's own epoch ``epoch`` (0-based).

        Returns True when this step is the best so far (save it). At its last epoch a member is not
        pruned: it trained its whole budget (see :meth:`Curve.ask <lightning_hpt.lightning.curve.Curve.ask>`).
        """
        try:
            improved = self.curve.record(logged)
        except Exception as e:  # a metric not logged, or not a number: the member fails as its trial would
            self.error, self.ended = e, True
            return False
        last = self.max_epochs is not None and epoch + 1 >= self.max_epochs
        self.curve.ask(self.reporter, len(self.values) - 1, self.label, last=last)
        self.ended = self.ended or self.curve.ends()
        return improved

    def epoch_done(self, group_epochs: int) -> None:
        """After its group trained ``group_epochs`` epochs: a member that reached its own ``max_epochs`` ends."""
        if self.max_epochs is not None and self.own_epoch(group_epochs) >= self.max_epochs:
            self.ended = True

    def outcome(self) -> TrialOutcome:
        """The member's trial outcome, as an ordinary trial with the same values would have it."""
        common: dict[str, Any] = {"intermediate": self.curve.intermediate(), **self._common()}
        if self.error is not None:
            fatal = isinstance(self.error, MetricNotFoundError)
            return TrialOutcome(
                TrialState.FAILED, error=f"{type(self.error).__name__}: {self.error}", fatal=fatal, **common
            )
        failure = self.curve.failure(self.metrics)
        if failure is not None:
            return TrialOutcome(TrialState.FAILED, error=failure[0], fatal=failure[1], **common)
        ckpt = self.checkpoint_path if os.path.exists(self.checkpoint_path) else None
        state = TrialState.PRUNED if self.curve.pruned else TrialState.COMPLETE
        common["attrs"].update(self.curve.judgement())  # the outcome constraints, at the best step
        return TrialOutcome(state, checkpoint=ckpt, **self.curve.scores(), **common)


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
