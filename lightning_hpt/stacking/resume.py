"""A stacked member's resumable checkpoint: its own slice of the group's state, so that a rerun continues it.

An ordinary trial's resumable checkpoint is Lightning's own (:mod:`lightning_hpt.lightning.resume`). A
stacked group has one Trainer for all its members, so the group keeps each member's state itself, in
the same folder (``<trial dir>/resume/``) as ``member.ckpt``, and the same rule removes it when the trial
ends (``Resume(keep=..., failed=...)``). The state is taken at the search's ``Resume`` interval (at the
end of an epoch: an interval in minutes takes it at the first epoch end after it) and held in memory; the
held states are written at most every ``write_every`` seconds (:data:`WRITE_EVERY` by default; ``0``:
each as it is taken), and always when the group is stopped (its unfinished members are interrupted) or
fails, and when a member's checkpoint stays after it ends. A stacked member's epoch takes its group
milliseconds, and a file per member and epoch took a sixth of a small group's time; what a hard kill
(``SIGKILL``, a power cut) loses is at most ``write_every`` seconds of the group's training. It holds,
for that member only:

- ``state_dict``: its weights (copies of its slices, not views of the group's tensors);
- ``optimizer_states``: its own optimizer's ``state_dict``, in ``torch.optim``'s format;
- ``epoch``, ``global_step``: the epochs and optimizer steps it has trained;
- ``member``: its values, best value and step, EarlyStopping's count, last metrics and training time;
- ``best``: the weights of its best step so far (``checkpoints/best.ckpt`` is written when it ends).

A rerun of the trial continues from there in whatever group it joins, at the epoch after the
checkpoint. Lightning's ``fit(ckpt_path=...)`` cannot read the file (it has no loop state): a trial
that runs as an ordinary trial on its rerun starts over.
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path
from typing import Any

import torch

from lightning_hpt.lightning.resume import RESUME_DIR, Resume, checkpoint_to_resume, claim
from lightning_hpt.lightning.runner import TrialJob
from lightning_hpt.masking import get_logger

__all__ = ["MEMBER_FILE", "WRITE_EVERY", "ResumeClock", "load_member_state", "save_member_state", "write_checkpoint"]

log = get_logger(__name__)

#: the member's resumable checkpoint in ``<trial dir>/resume/``, without ``.ckpt``
MEMBER_FILE = "member"
#: seconds between writes of a group's held member states (``StackedExecutor(write_every=)``'s default)
WRITE_EVERY = 10.0
_KEYS = ("state_dict", "optimizer_states", "epoch", "global_step", "member", "best")


def load_member_state(job: TrialJob) -> dict[str, Any] | None:
    """The member's resumable checkpoint, if the search keeps them and one is there, whole and readable.

    Called once per member as its group starts. A checkpoint written for another trial in this directory
    is removed (:func:`~lightning_hpt.lightning.resume.checkpoint_to_resume`).
    """
    if job.build.resume is None:
        return None
    path = checkpoint_to_resume(job, name=MEMBER_FILE)
    if path is None:
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        missing = [k for k in _KEYS if k not in state]
        if missing:
            raise KeyError(f"missing {missing}")
    except Exception as e:  # a file of another version, or damaged: the member starts over
        log.warning("trial %d: its checkpoint %s cannot be read (%s); it starts over", job.number, path, e)
        return None
    return state


def write_checkpoint(obj: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` to ``path``, whole or not at all (a kill while writing leaves the previous file).

    The bytes are made in memory and written at once: ``torch.save`` straight to a file writes each
    tensor's record apart, about three times slower for the small models that are stacked.
    """
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with open(f"{path}.tmp", "wb") as f:
        f.write(buffer.getbuffer())
    os.replace(f"{path}.tmp", path)


def save_member_state(job: TrialJob, state: dict[str, Any]) -> None:
    """Write the member's resumable checkpoint, the trial's directory claimed first (most members write none)."""
    claim(job)
    write_checkpoint(state, Path(job.trial_dir) / RESUME_DIR / f"{MEMBER_FILE}.ckpt")


class ResumeClock:
    """When a member's resumable state is taken: :class:`Resume`'s interval, at epoch ends.

    Args:
        resume: the search's setting; ``None``: never.
    """

    def __init__(self, resume: Resume | None) -> None:
        self.resume = resume
        self._last = time.monotonic()

    def due(self, epochs: int) -> bool:
        """Whether to take it now, the member having trained ``epochs`` epochs in all."""
        r = self.resume
        if r is None:
            return False
        if r.every_n_epochs is not None:
            return epochs % r.every_n_epochs == 0
        return r.every_minutes is not None and time.monotonic() - self._last >= 60 * r.every_minutes

    def written(self) -> None:
        """The state was just taken."""
        self._last = time.monotonic()
