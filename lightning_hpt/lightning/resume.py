"""Each trial's resumable checkpoint: written by Lightning's own callbacks, found again when the trial reruns.

Every trial keeps one full Lightning checkpoint of its latest state (model, optimizers,
schedulers, loop progress, every callback's state: the search's monitor with its reported values
and the random number generators, ``EarlyStopping``'s counters, the best-step ``ModelCheckpoint``)
in ``<trial dir>/resume/latest.ckpt``. :class:`ResumeCheckpoint` (Lightning's ``ModelCheckpoint``
without a monitor) writes it at the interval of :class:`Resume`; :class:`InterruptCheckpoint` writes
it when the trial is stopped from outside (Ctrl+C, SIGTERM). A rerun of the trial (same number, same
directory) hands it to ``trainer.fit(ckpt_path=...)``.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import shutil
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as L
from typing_extensions import override

from lightning_hpt.exceptions import ConfigurationError, SearchPreempted
from lightning_hpt.lightning import compat
from lightning_hpt.masking import get_logger

__all__ = [
    "RESUME_DIR",
    "InterruptCheckpoint",
    "Resume",
    "ResumeCheckpoint",
    "checkpoint_to_resume",
    "claim",
    "discard",
    "load_finished_runs",
    "resume_callbacks",
    "save_finished_runs",
]

log = get_logger(__name__)
#: a finished run's value in ``runs.json``: a number, or with several objectives the tuple of their values
Score = float | tuple[float, ...]

#: the folder of a trial's resumable checkpoint, inside its trial directory
RESUME_DIR = "resume"
_NAME = "latest"
#: the file beside ``RESUME_DIR`` that says which trial its checkpoints belong to (outside it: Lightning warns
#: about a checkpoint folder that holds files before its first save)
_OWNER = "resume_owner.json"


@dataclass(frozen=True)
class Resume:
    """When a trial writes its resumable checkpoint, and what happens to it when the trial ends.

    Attributes:
        every_n_epochs: write it every N epochs (1: after every epoch's validation run).
        every_minutes: write it every M minutes of training instead (may stop mid-epoch: resuming
            from there restarts that epoch's data order, see ``docs/reliability.md``).
        keep: keep it when the trial ends (it is removed by default; the best-step checkpoint stays).
        failed: a FAILED trial keeps it too, so that ``retry_failed`` continues from it instead of
            starting over.

    Example:
        >>> Resume(every_n_epochs=5)
        Resume(every_n_epochs=5, every_minutes=None, keep=False, failed=False)
    """

    every_n_epochs: int | None = 1
    every_minutes: float | None = None
    keep: bool = False
    failed: bool = False

    def __post_init__(self) -> None:
        n, m = self.every_n_epochs, self.every_minutes
        if (n is None) == (m is None):
            raise ConfigurationError(
                f"Resume needs exactly one of every_n_epochs and every_minutes, got every_n_epochs={n!r},"
                f" every_minutes={m!r}; e.g. Resume(every_n_epochs=1) or Resume(every_n_epochs=None, every_minutes=10)"
            )
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ConfigurationError(f"Resume(every_n_epochs=) must be an integer >= 1, got {n!r}")
        if m is not None and (isinstance(m, bool) or not isinstance(m, (int, float)) or not m > 0):
            raise ConfigurationError(f"Resume(every_minutes=) must be a number > 0, got {m!r}")


class InterruptCheckpoint(L.Callback):
    """Writes the trial's resumable checkpoint when it is interrupted (Ctrl+C, SIGTERM) before the process exits.

    Lightning's ``OnExceptionCheckpoint`` does this for every exception, removes the file at
    teardown, and makes ``fit(ckpt_path=None)`` look for a "last" checkpoint; a trial that fails on
    its own error keeps the last interval's checkpoint instead (the state at an error is not one to
    continue from), and the runner chooses ``ckpt_path`` itself.

    Nothing is written when the interruption comes during a validation run: Lightning's loops would
    read such a checkpoint as "this epoch is trained" and go on with the next epoch without finishing
    the validation run, so the trial's curve would lose that step. The last interval's checkpoint
    (the end of the previous epoch, by default) stays, and the rerun trains that epoch again.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    @override
    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        if not (isinstance(exception, (KeyboardInterrupt, SearchPreempted)) or compat.is_interrupt_exit(exception)):
            return
        if trainer.validating:
            log.info("the trial was interrupted during a validation run: it continues from its last checkpoint")
            return
        self.writing = True
        try:
            trainer.save_checkpoint(self.path, weights_only=False)
        finally:
            self.writing = False
        log.info("the trial was interrupted: its state is saved in %s", self.path)

    writing = False

    @override
    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        if self.writing:
            _leave_out_hparams(checkpoint)


class ResumeCheckpoint(L.callbacks.ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` under a name of its own, so that it sits beside a project's.

    Lightning keeps each callback's state under its ``state_key`` and refuses two callbacks with one
    key; ``ModelCheckpoint``'s key is its class name with its monitor, mode and interval, so a
    project's ``ModelCheckpoint()`` without a monitor would have the key of the trial's resumable
    checkpoint (and replace it, as the project's callbacks win: ``lightning.callbacks``). This
    class's name makes its key ``ResumeCheckpoint{...}``: both are kept, each with its own state.

    Its files leave out hyper-parameters that ``torch.load(weights_only=True)`` refuses (see
    :func:`readable_hparams`), so that ``trainer.fit(ckpt_path=...)`` can continue from them.
    """

    writing = False

    @override
    def _save_checkpoint(self, trainer: Any, filepath: str) -> None:  # where a ModelCheckpoint writes its file
        self.writing = True
        try:
            super()._save_checkpoint(trainer, filepath)
        finally:
            self.writing = False

    @override
    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        if self.writing:  # every callback sees every checkpoint: only this one's own file is changed
            _leave_out_hparams(checkpoint)


#: what the resumable checkpoints of this process left out, said once (every trial of a project leaves out the same)
_TOLD: set[str] = set()


def _leave_out_hparams(checkpoint: dict[str, Any]) -> None:
    """:func:`readable_hparams` for a resumable checkpoint, with a log line the first time in the process."""
    left = " and ".join(readable_hparams(checkpoint))
    if left and left not in _TOLD:
        _TOLD.add(left)
        log.info(
            "resumable checkpoints leave out %s, which torch.load(weights_only=True) refuses; continuing a trial"
            " does not need them",
            left,
        )


#: the hyper-parameter entries Lightning writes for the module and for the DataModule: (values, name, type)
_HPARAMS = (
    ("hyper_parameters", "hparams_name", "hparams_type"),
    ("datamodule_hyper_parameters", "datamodule_hparams_name", "datamodule_hparams_type"),
)


def readable_hparams(checkpoint: dict[str, Any]) -> list[str]:
    """Leave out of a resumable ``checkpoint`` the hyper-parameters that ``torch.load(weights_only=True)`` refuses.

    ``save_hyperparameters()`` stores the init arguments as they are: an optimizer given as
    ``functools.partial`` (as Hydra's ``_partial_: true`` makes it), a ``pathlib.Path``, an OmegaConf
    ``DictConfig``. Lightning then loads the checkpoint with ``weights_only=True`` and refuses the
    whole file, so the trial could not continue. Continuing never reads the hyper-parameters (the
    trial's model is built from its configuration), so those that cannot be read are left out of
    this file, whole; the best-step checkpoint keeps them. Returns what was left out, with the
    first type refused (``["hyper_parameters (functools.partial)"]``).
    """
    import io
    import pickle

    import torch

    left: list[str] = []
    for keys in _HPARAMS:
        entry = {k: checkpoint[k] for k in keys if k in checkpoint}
        if keys[0] not in entry:
            continue
        buffer = io.BytesIO()
        try:
            torch.save(entry, buffer)
            buffer.seek(0)
            torch.load(buffer, weights_only=True)
        except pickle.UnpicklingError as e:
            for k in keys:
                checkpoint.pop(k, None)
            found = re.search(r"GLOBAL (\S+)", str(e))
            left.append(f"{keys[0]} ({found.group(1) if found else type(e).__name__})")
        except Exception:  # not picklable at all: Lightning's own save says so
            continue
    return left


def resume_callbacks(pl: Any, resume: Resume, trial_dir: str) -> list[Any]:
    """The callbacks that write ``<trial_dir>/resume/latest.ckpt``: at the interval, and on interruption."""
    dirpath = os.path.join(trial_dir, RESUME_DIR)
    interval = None if resume.every_minutes is None else datetime.timedelta(minutes=resume.every_minutes)
    # pytorch_lightning's trainers need its own classes: there the plain ModelCheckpoint, which a
    # project's ModelCheckpoint without a monitor replaces, and nothing is written on interruption
    ours = pl is L
    latest = (ResumeCheckpoint if ours else pl.callbacks.ModelCheckpoint)(
        dirpath=dirpath,
        filename=_NAME,
        monitor=None,
        save_top_k=1,  # without a monitor: the most recent one
        every_n_epochs=resume.every_n_epochs,
        train_time_interval=interval,
        enable_version_counter=False,
    )
    cbs = [latest]
    if ours:
        cbs.append(InterruptCheckpoint(os.path.join(dirpath, f"{_NAME}.ckpt")))
    return cbs


def checkpoint_to_resume(job: Any, name: str = _NAME) -> str | None:
    """The resumable checkpoint of ``job`` (a ``TrialJob``) if one is there, whole and its own; logs why it starts over.

    ``name``: the file's name in ``RESUME_DIR``, without ``.ckpt`` (a stacked member's is ``member``). A
    checkpoint written for another trial in the same directory (a study of the same name, deleted and
    made again, whose trial of this number has another configuration or seed) is removed, not used.
    """
    trial_dir, number = job.trial_dir, job.number
    path = os.path.join(trial_dir, RESUME_DIR, f"{name}.ckpt")
    damage = _damage(path) if os.path.exists(path) else None
    if os.path.exists(path) and damage is None:
        if _foreign(job, f"the checkpoint {path}"):
            return None
        log.info("trial %d continues from its checkpoint %s", number, path)
        return path
    if os.path.exists(path):
        log.warning("trial %d: its checkpoint %s is %s; it starts over", number, path, damage)
    elif os.path.isdir(os.path.dirname(path)) or (job.attempt > 1 and not _has_files(trial_dir)):
        # the folder is there without the file, or a rerun finds no trial directory on this host; a trial
        # that ended (a FAILED one retried, a study made again after delete) had the folder removed
        log.warning(
            "trial %d: no resumable checkpoint in %s (not written yet, or not reachable from this host);"
            " it starts over",
            number,
            trial_dir,
        )
    return None


def _damage(path: str) -> str | None:
    """What is wrong with the checkpoint file ``path``, or ``None`` if it is whole.

    A torch checkpoint is a zip file whose members carry a CRC: a truncated file has no zip directory, and a
    damaged one (zeros in place of data that never reached the disk before a power loss) fails a member's CRC.
    """
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (OSError, zipfile.BadZipFile, zlib.error, EOFError, ValueError) as e:
        return f"truncated or not a checkpoint ({type(e).__name__}: {e})"
    return None if bad is None else f"damaged (its member {bad!r} fails its CRC check)"


def claim(job: Any) -> None:
    """Write which trial the resumable checkpoints of ``job``'s directory belong to (before any is written)."""
    path = os.path.join(job.trial_dir, _OWNER)
    if _read_owner(job.trial_dir) == _owner(job):
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(_owner(job), f)
    os.replace(path + ".tmp", path)


def _foreign(job: Any, what: str) -> bool:
    """Whether ``job``'s directory keeps ``what`` for another trial; if so it is removed, with a warning."""
    owner = _read_owner(job.trial_dir)
    if owner is None or owner == _owner(job):
        return False
    log.warning(
        "trial %d: %s was written for another trial in this directory (a study of the same name, deleted and made"
        " again?): it is removed and the trial starts over",
        job.number,
        what,
    )
    discard(job.trial_dir)
    return True


def _owner(job: Any) -> dict[str, Any]:
    """What makes a checkpoint this trial's: its number, the study's seed and its configuration."""
    return json.loads(json.dumps({"number": job.number, "seed": job.seed, "params": dict(job.params)}, default=str))


def _read_owner(trial_dir: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(trial_dir, _OWNER), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):  # none (a checkpoint of an earlier version: taken as the trial's) or damaged
        return None


def _has_files(folder: str) -> bool:
    return os.path.isdir(folder) and bool(os.listdir(folder))


def discard(trial_dir: str) -> None:
    """Remove the trial's resumable checkpoint and what says whose it is (the trial ended)."""
    if not os.path.isdir(trial_dir):  # never made, or a file in its place (left alone)
        return
    shutil.rmtree(os.path.join(trial_dir, RESUME_DIR), ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(trial_dir, _OWNER))


def _runs_file(trial_dir: str) -> str:
    return os.path.join(trial_dir, RESUME_DIR, "runs.json")


def save_finished_runs(job: Any, done: Sequence[Score], runs: list[dict[str, Any]], sent: Mapping[int, Score]) -> None:
    """Keep a cross-validated trial's finished runs (folds, repeats), so that a rerun continues after them.

    ``done``: each finished run's value (a tuple of every objective's with several); ``runs``: what each run
    recorded (every objective's and constrained metric's value at its best step); ``sent``: the trial's steps.
    """
    claim(job)
    path = _runs_file(job.trial_dir)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = {"done": done, "runs": runs, "sent": {str(k): v for k, v in sent.items()}}
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(path + ".tmp", path)  # a kill while writing leaves the previous file whole


def _score(value: Any) -> Score:
    """A kept value: a number, or with several objectives the tuple of their values (a JSON list)."""
    return tuple(float(v) for v in value) if isinstance(value, list) else float(value)


def load_finished_runs(job: Any) -> tuple[list[Score], list[dict[str, Any]], dict[int, Score]]:
    """The finished runs a cross-validated trial kept (see :func:`save_finished_runs`); none for a fresh one."""
    path = _runs_file(job.trial_dir)
    if job.build.resume is None:
        return [], [], {}
    if _foreign(job, f"the finished runs in {path}"):
        return [], [], {}
    if not os.path.exists(path):
        if os.path.isdir(os.path.dirname(path)):  # the folder without the file: kept ones are missing
            log.warning("trial %d: no finished runs kept in %s; its runs start over", job.number, path)
        return [], [], {}
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        runs = list(data["runs"])
        done = [_score(v) for v in data["done"]]
        sent = {int(k): _score(v) for k, v in data["sent"].items()}
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("trial %d: its finished runs in %s cannot be read (%s); its runs start over", job.number, path, e)
        return [], [], {}
    log.info("trial %d continues after its %d finished runs", job.number, len(runs))
    return done, runs, sent
