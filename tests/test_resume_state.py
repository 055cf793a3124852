"""What a continued trial carries over (callback states) and what it costs (duration, disk), in-process.

A trial fails on purpose at epoch ``K`` (once); with ``Resume(failed=True)`` its resumable checkpoint
of epoch ``K - 1`` stays, and ``retry_failed`` continues it. A probe among the project's callbacks
records, at each training epoch's start (every callback done with the epoch before), the state of
every ``EarlyStopping`` and ``ModelCheckpoint`` of the Trainer, which must equal an uninterrupted
run's at the same epoch.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
from conftest import FAST, TinyData, TinyModel
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from lightning_hpt import Float, HyperparameterSearch, Resume, TrialState
from lightning_hpt.exceptions import HPTError, SearchFailedError
from lightning_hpt.lightning import resume as resume_module
from lightning_hpt.lightning.callbacks import combine_callbacks
from lightning_hpt.lightning.resume import InterruptCheckpoint, ResumeCheckpoint, resume_callbacks

EPOCHS, K, PATIENCE = 8, 4, 5
# the monitored metric: best at epoch 1, never better after it, so that our EarlyStopping's counter
# reaches PATIENCE at epoch 6 (the trial stops there) and the best-step checkpoint stays epoch 1's,
# only if both carry over the resume at epoch K
SCHEDULE = [5.0, 3.0, 4.0, 4.5, 3.5, 3.2, 3.1, 3.05]
SLEEP = 0.4  # seconds per training step before epoch K: the first attempt's training time is known


class FailOnce(TinyModel):
    """Sleeps ``pause`` s a step before epoch ``K``; raises at epoch ``K`` unless ``fail_marker`` exists (made then)."""

    def __init__(self, fail_marker: str | None = None, pause: float = 0.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.fail_marker, self.pause = fail_marker, pause

    def training_step(self, batch, batch_idx):
        if self.current_epoch < K:
            time.sleep(self.pause)
        if self.current_epoch == K and self.fail_marker and not os.path.exists(self.fail_marker):
            Path(self.fail_marker).touch()
            raise RuntimeError("boom: the trial fails once")
        return super().training_step(batch, batch_idx)


class Probe(L.Callback):
    """Appends the states of the Trainer's EarlyStopping and ModelCheckpoint callbacks to ``path``, one JSON line
    per training epoch start and one at the end of training; with the files of the trial's ``resume`` folder."""

    def __init__(self, path: str) -> None:
        self.path = path

    def _write(self, trainer: L.Trainer, when: int | str) -> None:
        rec: dict = {"at": when}
        for cb in trainer.callbacks:
            if isinstance(cb, EarlyStopping):
                rec[f"es:{cb.monitor}"] = [cb.wait_count, float(cb.best_score), cb.stopped_epoch]
            elif isinstance(cb, ModelCheckpoint):
                score = None if cb.best_model_score is None else float(cb.best_model_score)
                names = [Path(p).name for p in (cb.best_model_path, cb.last_model_path, *sorted(cb.best_k_models))]
                rec[f"{type(cb).__name__}:{cb.monitor}:{Path(cb.dirpath).name}"] = [score, *names]
        resume = Path(trainer.default_root_dir) / "resume"
        rec["resume_dir"] = sorted(p.name for p in resume.iterdir()) if resume.is_dir() else []
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, trainer.current_epoch)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, "end")


def _model(marker: str | None, pause: float, cfg: dict) -> FailOnce:
    return FailOnce(marker, pause, val_schedule=SCHEDULE, **cfg["model"])


def _project_callbacks(probe: Path) -> list:
    """A project's own list: its EarlyStopping on another metric (a counter that grows every epoch), a
    ModelCheckpoint without a monitor (before ResumeCheckpoint, it had the resumable checkpoint's key)."""
    stop = EarlyStopping("train_loss", min_delta=10.0, patience=100)
    return [Probe(str(probe)), stop, ModelCheckpoint(save_last=True)]


def _search(
    root: Path, marker: str | None, probe: Path, resume: Resume, pause: float = SLEEP, **kw
) -> HyperparameterSearch:
    return HyperparameterSearch(
        functools.partial(_model, marker, pause),
        TinyData,
        {"model.lr": Float(0.01, 0.1, log=True)},
        root=str(root),
        n_trials=1,
        seed=0,
        patience=PATIENCE,
        resume=resume,
        trainer_kwargs={**FAST, "max_epochs": EPOCHS, "callbacks": _project_callbacks(probe)},
        verbose=False,
        **kw,
    )


def _records(probe: Path) -> dict:
    out = {}
    for line in probe.read_text().splitlines():
        rec = json.loads(line)
        out[rec.pop("at")] = rec
    probe.unlink()
    return out


@pytest.mark.slow
def test_a_retried_failed_trial_carries_every_callbacks_state_its_training_time_and_one_checkpoint(tmp_path):
    """Resume(failed=True) + retry_failed: the trial continues at epoch K, each EarlyStopping's counter and best
    score, the best-step checkpoint's tracking and the project's own checkpoint equal an uninterrupted run's at
    every epoch after the resume; it stops at the same epoch; its duration counts both attempts' training
    only; the resume folder holds one checkpoint at a time, removed at the end."""
    probe = tmp_path / "probe.jsonl"
    ref = _search(tmp_path / "ref", None, probe, Resume(failed=True)).run().trials[0]
    reference = _records(probe)
    assert ref.state is TrialState.COMPLETE and sorted(ref.intermediate) == list(range(7))  # stopped at epoch 6
    assert reference[K]["es:val_loss"][0] == 2 and reference[K]["es:train_loss"][0] == K - 1  # counters under way

    root, marker = tmp_path / "run", str(tmp_path / "failed_once")
    t0 = time.monotonic()
    with pytest.raises(SearchFailedError):
        _search(root, marker, probe, Resume(failed=True)).run()
    first_wall = time.monotonic() - t0
    first = _records(probe)
    assert sorted(first) == list(range(K + 1))  # failed at epoch K
    assert (root / "default" / "trial_0" / "resume" / "latest.ckpt").is_file()  # kept: Resume(failed=True)
    time.sleep(3.0)  # not training: the duration must not count it
    t0 = time.monotonic()
    t = _search(root, marker, probe, Resume(failed=True), retry_failed=True).run().trials[0]
    second_wall = time.monotonic() - t0
    resumed = _records(probe)

    assert t.state is TrialState.COMPLETE and t.attempt == 2 and t.attrs["resumed_at_step"] == K
    assert sorted(k for k in resumed if k != "end") == list(range(K, 7))  # epochs K..6 only, stopped at 6 again
    for at, rec in resumed.items():
        assert rec == reference[at], at  # the restored states at epoch K, then every epoch, then at the end
    assert dict(t.intermediate) == dict(ref.intermediate) and t.value == ref.value and t.best_step == 1
    assert Path(t.checkpoint).name == "best.ckpt" and reference["end"]["ModelCheckpoint:val_loss:checkpoints"][0] == 3.0
    assert all(rec["resume_dir"] in ([], ["latest.ckpt"]) for rec in [*first.values(), *resumed.values()])
    assert not (root / "default" / "trial_0" / "resume").exists()  # removed when the trial completed
    slept = K * 2 * SLEEP  # two steps an epoch, in the first attempt only
    assert slept <= t.duration < first_wall + second_wall, (t.duration, first_wall, second_wall)
    assert not math.isclose(t.duration, t.finished_at - t.started_at)


def test_a_failed_trials_checkpoint_is_removed_unless_kept_by_option_so_a_retry_starts_over(tmp_path, caplog):
    """Without Resume(failed=True) a FAILED trial keeps no checkpoint: retry_failed trains it from epoch 0,
    without a warning that a checkpoint is missing (none is meant to be there)."""
    probe, root, marker = tmp_path / "probe.jsonl", tmp_path / "run", str(tmp_path / "failed_once")
    with pytest.raises(SearchFailedError):
        _search(root, marker, probe, Resume(), pause=0.0).run()
    assert not (root / "default" / "trial_0" / "resume").exists()
    probe.unlink()
    caplog.clear()
    t = _search(root, marker, probe, Resume(keep=True), pause=0.0, retry_failed=True).run().trials[0]
    assert "no resumable checkpoint" not in caplog.text
    assert t.state is TrialState.COMPLETE and t.attempt == 2 and "resumed_at_step" not in t.attrs
    assert min(k for k in _records(probe) if k != "end") == 0
    # Resume(keep=True): the completed trial keeps its one checkpoint, of its last epoch
    assert [p.name for p in (root / "default" / "trial_0" / "resume").iterdir()] == ["latest.ckpt"]


def test_the_resumable_checkpoint_sits_beside_a_projects_checkpoint_without_a_monitor():
    """Lightning keys a ModelCheckpoint's state by class name, monitor, mode and interval: the project's
    ModelCheckpoint() would have taken the resumable checkpoint's place (the project's callbacks win)."""
    ours = [object(), *resume_callbacks(L, Resume(), "trial_0")]
    mine = [ModelCheckpoint(save_last=True)]
    out = combine_callbacks(L, mine, ours)
    assert out == [ours[0], *mine, *ours[1:]] and isinstance(out[2], ResumeCheckpoint)
    assert len({cb.state_key for cb in out[1:3]}) == 2
    # checkpointing turned off by the project: no resumable checkpoint, none written on interruption either
    off = combine_callbacks(L, [], ours, checkpointing=False)
    assert off == [ours[0]] and not any(isinstance(c, (ModelCheckpoint, InterruptCheckpoint)) for c in off)


def test_a_script_trial_writes_its_checkpoint_in_its_first_fit_only_and_never_with_checkpointing_off(tmp_path):
    """ScriptSearch: the first fit keeps the resumable checkpoint; a later fit of the trial does not continue
    from it (removed, ckpt_path None); a Trainer with checkpointing off gets none; the trial's end removes it."""
    from lightning_hpt import ScriptSearch

    search = ScriptSearch(space={"lr": Float(0.01, 0.1, log=True)}, root=str(tmp_path), n_trials=2, seed=0)
    for trial in search:
        resume = trial.dir / "resume" / "latest.ckpt"
        on = trial.number == 0
        assert trial.ckpt_path is None  # fresh trials
        for fit in range(2):
            trainer = L.Trainer(
                **{**FAST, "max_epochs": 2},
                callbacks=[trial.callback()],
                default_root_dir=str(trial.dir),
                enable_checkpointing=on,
            )
            assert not resume.exists() and trial.ckpt_path is None  # a later fit: the first's state removed
            trainer.fit(TinyModel(lr=trial.params["lr"]), TinyData(), ckpt_path=trial.ckpt_path)
            assert resume.exists() == (on and fit == 0)
    assert [sorted(t.intermediate) for t in search.trials] == [[0, 1, 2, 3]] * 2  # steps go on over both fits
    assert not any((tmp_path / "default" / f"trial_{n}" / "resume").exists() for n in (0, 1))


def test_a_damaged_checkpoint_that_is_still_a_zip_file_starts_the_trial_over(tmp_path, caplog):
    """A resumable checkpoint whose data is damaged but whose zip directory is whole (zeros written over its
    middle, as a power loss can leave a file renamed before its data reached the disk): the rerun starts over
    with a warning. It passed the check (a zip file), failed to load, and the trial was FAILED."""
    probe, root, marker = tmp_path / "probe.jsonl", tmp_path / "run", str(tmp_path / "failed_once")
    with pytest.raises(SearchFailedError):
        _search(root, marker, probe, Resume(failed=True), pause=0.0).run()
    ckpt = root / "default" / "trial_0" / "resume" / "latest.ckpt"
    data = bytearray(ckpt.read_bytes())
    n = len(data)
    data[n // 4 : n // 2] = bytes(n // 2 - n // 4)
    ckpt.write_bytes(bytes(data))
    probe.unlink()
    t = _search(root, marker, probe, Resume(failed=True), pause=0.0, retry_failed=True).run().trials[0]
    assert t.state is TrialState.COMPLETE and t.attempt == 2 and "resumed_at_step" not in t.attrs, t.error
    assert f"its checkpoint {ckpt} is damaged" in caplog.text and "it starts over" in caplog.text
    assert min(k for k in _records(probe) if k != "end") == 0


ADAM = functools.partial(torch.optim.Adam, lr=0.05)


class PartialOptimizer(FailOnce):
    """The lightning-hydra-template's module: ``save_hyperparameters()`` keeps its optimizer, a ``functools.partial``
    (Hydra's ``_partial_: true``), which ``torch.load(weights_only=True)`` refuses."""

    def __init__(self, fail_marker: str, optimizer=ADAM, **kwargs) -> None:
        super().__init__(fail_marker, **kwargs)
        self.save_hyperparameters()

    def configure_optimizers(self):
        return self.hparams.optimizer(self.parameters())


DATA_DIR = Path("data")


class PathData(TinyData):
    """A DataModule whose ``save_hyperparameters()`` keeps a ``pathlib.Path``, refused as well."""

    def __init__(self, data_dir: Path = DATA_DIR, batch_size: int = 32) -> None:
        super().__init__(batch_size=batch_size)
        self.save_hyperparameters()


def test_a_trial_whose_hyperparameters_torch_refuses_continues_from_its_checkpoint(tmp_path, caplog, monkeypatch):
    """A module keeping a functools.partial and a DataModule keeping a Path in their hyper-parameters: the rerun
    continued from the resumable checkpoint with Lightning's weights_only=True load, which refused the whole
    file (the trial FAILED with UnpicklingError). The resumable checkpoint leaves them out; the best-step
    checkpoint keeps them."""
    import logging

    root, marker = tmp_path / "run", str(tmp_path / "failed_once")

    def search(**kw) -> HyperparameterSearch:
        return HyperparameterSearch(
            functools.partial(PartialOptimizer, marker),
            PathData,
            {"model.lr": Float(0.01, 0.1, log=True)},
            root=str(root),
            n_trials=1,
            seed=0,
            resume=Resume(failed=True),
            trainer_kwargs={**FAST, "max_epochs": K + 2},
            verbose=False,
            **kw,
        )

    monkeypatch.setattr(resume_module, "_TOLD", set())  # said once a process: not yet in this test
    with caplog.at_level(logging.INFO, logger="lightning_hpt"), pytest.raises(SearchFailedError):
        search().run()
    assert "leave out hyper_parameters (functools.partial) and datamodule_hyper_parameters" in caplog.text
    ckpt = root / "default" / "trial_0" / "resume" / "latest.ckpt"
    state = torch.load(ckpt, weights_only=True)  # what Lightning's fit(ckpt_path=...) does
    assert "hyper_parameters" not in state and "datamodule_hyper_parameters" not in state and state["epoch"] == K - 1
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="lightning_hpt"):
        t = search(retry_failed=True).run().trials[0]
    assert t.state is TrialState.COMPLETE and t.attempt == 2 and t.attrs["resumed_at_step"] == K, t.error
    assert "trial 0 continues from its checkpoint" in caplog.text and "leave out" not in caplog.text  # said once
    best = torch.load(t.checkpoint, weights_only=False)  # the project's file to load: as Lightning wrote it
    with pytest.raises(HPTError, match=r"holds an object torch.load\(weights_only=True\) refuses .*partial"):
        search().result().load_best_model()  # refused once, with the choices (it tried each trial, then advised refit)
    assert isinstance(best["hyper_parameters"]["optimizer"], functools.partial)
    assert isinstance(best["datamodule_hyper_parameters"]["data_dir"], Path)
