"""The project's callbacks and the search's in one Trainer, without the duplicates Lightning refuses.

The rule (one place for every way a trial is built): the project's callbacks are kept as they
are; a callback of the search that has the same ``state_key`` as one of the project's (an
``EarlyStopping`` or ``ModelCheckpoint`` on the same metric and mode) is left out, so the
project's wins. With the project's ``ModelCheckpoint`` on the monitored metric, the trial's best
checkpoint is that callback's ``best_model_path``. The trial's resumable checkpoint
(:class:`~lightning_hpt.lightning.resume.ResumeCheckpoint`) has a key of its own and is always
kept beside the project's callbacks. The search's checkpoints (the best step's, the resumable one
and its writer on interruption) are left out when the project turns checkpointing off
(``enable_checkpointing=False``): such a trial starts over when interrupted. Quiet trials keep a
progress bar the project put in its callbacks. A project ``ModelCheckpoint`` with a ``dirpath`` outside the
trial's directory writes into it (``<trial_dir>/<last part of dirpath>``), as the project's loggers do.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Sequence
from typing import Any

from lightning_hpt.lightning.resume import InterruptCheckpoint

__all__ = ["best_checkpoint", "combine_callbacks", "quiet_flags"]


def _state_key(callback: Any) -> str | None:
    with contextlib.suppress(Exception):
        return str(callback.state_key)
    return None


def combine_callbacks(
    pl: Any, user: Iterable[Any], ours: Sequence[Any], *, checkpointing: bool | None = None, trial_dir: str = ""
) -> list[Any]:
    """The trial's callbacks: the search's monitor first, the project's, then the search's others that do not clash.

    Args:
        pl: the Lightning package (``lightning.pytorch`` or ``pytorch_lightning``).
        user: the project's callbacks for this trial (already its own copies).
        ours: the search's callbacks, its monitor first.
        checkpointing: the project's ``enable_checkpointing``; ``False`` leaves out the search's checkpoints.
        trial_dir: the trial's directory: a project ``ModelCheckpoint`` with a ``dirpath`` of its own writes in
            it (``<trial_dir>/<last part of dirpath>``), as its loggers do, not where every trial would.
    """
    user = list(user)
    for cb in user:
        if trial_dir and isinstance(cb, pl.callbacks.ModelCheckpoint):
            _into_trial_dir(cb, trial_dir)
    taken = {k for k in map(_state_key, user) if k is not None}
    monitor, *rest = ours
    kept = []
    for cb in rest:
        if _state_key(cb) in taken:
            continue  # the project's own callback of that kind and setting wins
        if checkpointing is False and isinstance(cb, (pl.callbacks.ModelCheckpoint, InterruptCheckpoint)):
            continue
        kept.append(cb)
    return [monitor, *user, *kept]


def _into_trial_dir(cb: Any, trial_dir: str) -> None:
    """A project ``ModelCheckpoint`` whose ``dirpath`` is outside the trial's directory writes inside it instead:
    files of concurrent trials in one directory would take each other's names (``epoch=2-v1.ckpt``)."""
    dirpath = getattr(cb, "dirpath", None)
    if not dirpath:
        return  # Lightning puts it under the Trainer's default_root_dir or logger: the trial's directory
    root = os.path.realpath(trial_dir)
    if os.path.commonpath([root, os.path.realpath(os.fspath(dirpath))]) != root:
        cb.dirpath = os.path.join(root, os.path.basename(os.path.normpath(os.fspath(dirpath))) or "checkpoints")


def quiet_flags(pl: Any, user: Iterable[Any], quiet: bool) -> dict[str, bool]:
    """``enable_progress_bar``/``enable_model_summary`` for a quiet trial, unless the project has such callbacks."""
    user = list(user)
    if not quiet:
        return {}
    flags = {}
    if not any(isinstance(c, pl.callbacks.ProgressBar) for c in user):
        flags["enable_progress_bar"] = False
    if not any(isinstance(c, pl.callbacks.ModelSummary) for c in user):
        flags["enable_model_summary"] = False
    return flags


def best_checkpoint(trainer: Any, monitor: str, mode: str) -> str | None:
    """The best checkpoint a ModelCheckpoint of ``trainer`` on ``monitor`` (in ``mode``) kept, if any."""
    for cb in getattr(trainer, "checkpoint_callbacks", None) or []:
        path = getattr(cb, "best_model_path", "")
        if path and getattr(cb, "monitor", None) == monitor and getattr(cb, "mode", mode) == mode:
            return str(path)
    return None


def checkpointing_off(trainer: Any) -> bool:
    """Whether ``trainer`` was made with ``enable_checkpointing=False``: Lightning then has no checkpoint callback at
    all (else it adds its own ``ModelCheckpoint``), and refuses one in ``callbacks``."""
    return trainer is not None and not getattr(trainer, "checkpoint_callbacks", None)


def missing_checkpoint_hint(trainer: Any, monitor: str, mode: str) -> str:
    """Why ``trainer`` kept no best checkpoint on ``monitor`` (in ``mode``), and the ModelCheckpoint that would."""
    add = f"ModelCheckpoint(monitor={monitor!r}, mode={mode!r})"
    if checkpointing_off(trainer):
        return (
            f"the Trainer has enable_checkpointing=False, so it kept no checkpoint of the best {monitor} ({mode}) and"
            " none to continue an interrupted trial from. For the best epoch's file (result.best_checkpoint), leave"
            f" enable_checkpointing=False out and add {add} to its callbacks (Lightning refuses a ModelCheckpoint"
            " beside enable_checkpointing=False)"
        )
    others = [
        f"ModelCheckpoint(monitor={cb.monitor!r}, mode={getattr(cb, 'mode', None)!r})"
        for cb in getattr(trainer, "checkpoint_callbacks", None) or []
        if getattr(cb, "monitor", None) is not None
    ]
    has = f"its checkpoint callbacks are {', '.join(others)}" if others else "it has no ModelCheckpoint with a monitor"
    return (
        f"the Trainer kept no checkpoint of the best {monitor} ({mode}): {has}. Add {add} to its callbacks so"
        " that the trial records its best epoch's file (result.best_checkpoint)"
    )
