"""End-to-end searches with real Lightning training on tiny data."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
import signal
import sqlite3
import warnings
from pathlib import Path

import pytest
import torch
from conftest import TinyData, TinyModel

from lightning_hpt import (
    Categorical,
    ConfigurationError,
    Float,
    HyperparameterSearch,
    Int,
    MetricNotFoundError,
    SearchFailedError,
    SearchSpaceError,
    StorageError,
    StudyMismatchError,
    TrialState,
)

SPACE = {"model.lr": Float(0.01, 0.2, log=True), "model.hidden": Int(4, 16)}


def make(tmp_path, fast_trainer, space=SPACE, **kw):
    kw.setdefault("n_trials", 3)
    kw.setdefault("seed", 0)
    kw.setdefault("verbose", False)
    return HyperparameterSearch(
        kw.pop("model", TinyModel),
        TinyData,
        space,
        monitor="val_loss",
        mode="min",
        root=tmp_path,
        trainer_kwargs={**fast_trainer, **kw.pop("trainer", {})},
        **kw,
    )


def test_random_search_end_to_end(tmp_path, fast_trainer):
    result = make(tmp_path, fast_trainer, space={**SPACE, "data.batch_size": Categorical([16, 32])}).run()
    assert [t.number for t in result.trials] == [0, 1, 2]
    assert all(t.state is TrialState.COMPLETE for t in result.trials)
    for t in result.trials:
        assert math.isfinite(t.value) and t.value == min(t.intermediate.values())
        assert t.intermediate[t.best_step] == t.value
        assert os.path.exists(t.checkpoint) and os.path.dirname(os.path.dirname(t.checkpoint)) == str(
            tmp_path / "default" / f"trial_{t.number}"
        )
        assert t.host and t.pid == os.getpid() and t.finished_at >= t.started_at
    assert result.best_value == min(t.value for t in result.trials)
    model = result.load_best_model()
    assert isinstance(model, TinyModel) and model.hparams.hidden == result.best_params["model.hidden"]
    df = result.to_dataframe()
    assert list(df["number"]) == [0, 1, 2] and "params.model.lr" in df
    assert "Best trial #" in str(result) and f"{result.best_value:.6g}" in str(result)
    assert (tmp_path / "studies.db").exists()


def test_a_class_with_fixed_init_arguments_is_a_class(tmp_path, fast_trainer):
    """Issue: ``functools.partial(MyDataModule, n=...)`` was taken for a factory ``config -> module`` and
    called with the whole configuration; it is the class with some init arguments fixed."""
    import functools

    space = {"model.lr": Float(0.01, 0.2, log=True), "data.batch_size": Categorical([16, 32])}
    model, data = functools.partial(TinyModel, hidden=5, lr=0.5), functools.partial(TinyData, n=48)

    def search(root, space):
        return HyperparameterSearch(
            model, data, space, root=root, n_trials=2, trainer_kwargs=fast_trainer, verbose=False
        )

    result = search(tmp_path, space).run()
    assert all(t.state is TrialState.COMPLETE for t in result.trials)
    best = result.load_best_model()
    assert best.hparams.hidden == 5 and best.hparams.lr == result.best_params["model.lr"]  # the trial's lr wins
    with pytest.raises(ConfigurationError, match=r"'model.hiden'.*not an init argument of TinyModel"):
        search(tmp_path / "typo", {"model.hiden": Int(4, 8)})


def test_value_is_best_epoch_not_last(tmp_path, fast_trainer):
    # val_schedule is a list, not a search domain, so a factory passes it
    search = HyperparameterSearch(
        lambda cfg: TinyModel(val_schedule=[0.5, 0.2, 0.9], **cfg["model"]),
        TinyData,
        {"model.hidden": Int(4, 8)},
        monitor="val_loss",
        root=tmp_path,
        n_trials=1,
        trainer_kwargs={**fast_trainer, "max_epochs": 3},
        verbose=False,
    )
    t = search.run().trials[0]
    assert t.intermediate == {0: 0.5, 1: pytest.approx(0.2), 2: pytest.approx(0.9)}
    assert t.value == pytest.approx(0.2) and t.best_step == 1
    ckpt = torch.load(t.checkpoint, weights_only=True)
    assert ckpt["epoch"] == 1  # the checkpoint kept is the best epoch's


def test_grid_runs_once_and_stops_when_exhausted(tmp_path, fast_trainer):
    space = {"model.hidden": Int(4, 5), "data.batch_size": Categorical([16, 32])}
    result = make(tmp_path, fast_trainer, space=space, strategy="grid", n_trials=10).run()
    assert len(result.trials) == 4 and result.stopped_reason == "grid strategy exhausted"
    again = make(tmp_path, fast_trainer, space=space, strategy="grid", n_trials=10).run()
    assert len(again.trials) == 4  # resumed: nothing runs twice
    seen = {(t.params["model.hidden"], t.params["data.batch_size"]) for t in again.trials}
    assert seen == {(4, 16), (4, 32), (5, 16), (5, 32)}


def test_resume_continues_seeded_sequence(tmp_path, fast_trainer):
    """RELIABILITY row 5: 2 trials + resume to 4 equals 4 uninterrupted trials."""
    whole = make(tmp_path / "a", fast_trainer, n_trials=4).run()
    make(tmp_path / "b", fast_trainer, n_trials=2).run()
    resumed = make(tmp_path / "b", fast_trainer, n_trials=4).run()
    assert [t.params for t in resumed.trials] == [t.params for t in whole.trials]
    assert [t.value for t in resumed.trials] == pytest.approx([t.value for t in whole.trials])


def test_changed_study_is_refused(tmp_path, fast_trainer):
    """RELIABILITY row 14."""
    make(tmp_path, fast_trainer, n_trials=1).run()
    changed = {**SPACE, "model.hidden": Int(4, 32)}
    with pytest.raises(StudyMismatchError, match=r"model\.hidden"):
        make(tmp_path, fast_trainer, space=changed, n_trials=2).run()
    with pytest.raises(StudyMismatchError, match="direction"):
        HyperparameterSearch(
            TinyModel,
            TinyData,
            SPACE,
            monitor="val_loss",
            mode="max",
            root=tmp_path,
            n_trials=2,
            trainer_kwargs=fast_trainer,
            verbose=False,
        ).run()
    result = make(tmp_path, fast_trainer, space=changed, n_trials=2, allow_changes=True).run()
    assert len(result.trials) == 2 and all(t.params["model.hidden"] <= 16 for t in result.trials)
    # the stored direction wins everywhere, trials included: their value is the lowest epoch's
    search = HyperparameterSearch(
        lambda cfg: TinyModel(val_schedule=[0.5, 0.2, 0.9], **cfg["model"]),
        TinyData,
        SPACE,
        mode="max",
        allow_changes=True,
        root=tmp_path,
        n_trials=3,
        verbose=False,
        trainer_kwargs={**fast_trainer, "max_epochs": 3},
        patience=None,
    )
    last = search.run().trials[-1]
    assert last.value == pytest.approx(0.2) and last.best_step == 1


def test_failures_are_recorded_and_the_search_goes_on(tmp_path, fast_trainer):
    """Exceptions, out-of-memory and NaN metrics become FAILED records (RELIABILITY rows 8 and 10)."""
    modes = ["fail", "oom", "nan", "exit", "ok"]

    class Exiting(TinyModel):
        def on_train_epoch_start(self):
            if self.current_epoch == 1:
                raise SystemExit(3)  # user code calling sys.exit: a failure, not a Ctrl+C

    def factory(cfg):
        mode = cfg["model"].pop("mode")
        extra = {
            "fail": {"fail_at_epoch": 1},
            "oom": {"oom_at_epoch": 0},
            "nan": {"nan_at_epoch": 1},
            "exit": {},
            "ok": {},
        }[mode]
        return (Exiting if mode == "exit" else TinyModel)(**cfg["model"], **extra)

    result = HyperparameterSearch(
        factory,
        TinyData,
        {"model.mode": Categorical(modes)},
        strategy="grid",
        root=tmp_path,
        trainer_kwargs=fast_trainer,
        verbose=False,
        patience=None,
    ).run()
    by_mode = {t.params["model.mode"]: t for t in result.trials}
    assert by_mode["fail"].state is TrialState.FAILED and "RuntimeError: boom" in by_mode["fail"].error
    assert by_mode["fail"].intermediate == {0: pytest.approx(by_mode["fail"].intermediate[0])}  # epoch 0 was kept
    assert by_mode["oom"].state is TrialState.FAILED and by_mode["oom"].error.startswith("out of memory")
    assert by_mode["nan"].state is TrialState.FAILED and by_mode["nan"].error.startswith("non-finite")
    assert by_mode["nan"].value is None and math.isnan(by_mode["nan"].intermediate[1])
    assert by_mode["exit"].state is TrialState.FAILED and by_mode["exit"].error == "SystemExit: 3"
    assert by_mode["ok"].state is TrialState.COMPLETE
    assert result.best_trial.params["model.mode"] == "ok"


def test_a_nan_value_ends_its_trial_at_once_without_pruner_or_early_stopping(tmp_path, fast_trainer):
    search = HyperparameterSearch(
        TinyModel,
        TinyData,
        {"model.nan_at_epoch": Categorical([1])},
        strategy="grid",
        root=tmp_path,
        trainer_kwargs={**fast_trainer, "max_epochs": 6},
        verbose=False,
        patience=None,
        pruner=None,
    )
    with pytest.raises(SearchFailedError, match="no COMPLETE trial") as err:  # the grid's only trial failed
        search.run()
    trial = err.value.result.trials[0]
    assert trial.state is TrialState.FAILED and trial.error.startswith("non-finite"), trial.error
    assert sorted(trial.intermediate) == [0, 1]  # epochs 2 to 5 never ran


def test_missing_metric_stops_the_search(tmp_path, fast_trainer):
    """RELIABILITY row 11: the first trial fails naming the logged metrics; no further trial runs."""
    search = make(tmp_path, fast_trainer, n_trials=5)
    search.build = dataclasses.replace(search.build, monitor="val_acc")
    with pytest.raises(MetricNotFoundError, match=r"'val_acc' was not logged.*\['train_loss', 'val_loss'\]"):
        search.run()
    trials = search.trials
    assert len(trials) == 1 and trials[0].state is TrialState.FAILED and "val_acc" in trials[0].error


def test_a_misspelt_monitor_is_named_with_the_closest_logged_metric(tmp_path, fast_trainer):
    search = make(tmp_path, fast_trainer, n_trials=3)
    search.build = dataclasses.replace(search.build, monitor="val_los")
    with pytest.raises(MetricNotFoundError, match=r"'val_los' was not logged \(did you mean 'val_loss'\?\)"):
        search.run()
    result = make(tmp_path, fast_trainer, n_trials=3).run()  # fixed: the study goes on, nothing to delete
    assert [t.state for t in result.trials] == [TrialState.FAILED] + [TrialState.COMPLETE] * 2
    assert result.monitor == "val_loss"


def test_keyboard_interrupt_in_training_is_recorded(tmp_path, fast_trainer):
    """RELIABILITY row 2 (in-process): FAILED 'interrupted', handler restored, KeyboardInterrupt raised."""
    before = signal.getsignal(signal.SIGINT)
    search = HyperparameterSearch(
        lambda cfg: TinyModel(interrupt_at_epoch=1, **cfg["model"]),
        TinyData,
        SPACE,
        root=tmp_path,
        n_trials=3,
        trainer_kwargs=fast_trainer,
        verbose=False,
    )
    with pytest.raises(KeyboardInterrupt, match="run the same search to resume"):
        search.run()
    assert signal.getsignal(signal.SIGINT) is before
    (t,) = search.trials
    assert t.state is TrialState.FAILED and t.error == "interrupted: KeyboardInterrupt"  # not Lightning's SystemExit
    # resuming reruns the interrupted trial under the same number
    builder = dataclasses.replace(search.build.builder, model=TinyModel)  # the same study, a model that runs
    search.build = dataclasses.replace(search.build, builder=builder)
    result = search.run()
    assert [t.number for t in result.trials] == [0, 1, 2]
    assert all(t.state is TrialState.COMPLETE for t in result.trials)
    assert result.trials[0].attrs["attempts"][0]["error"].startswith("interrupted")
    assert result.trials[0].attempt == 2


def test_a_trial_interrupted_during_validation_reruns_that_validation(tmp_path, fast_trainer):
    """Ctrl+C during epoch 2's validation run: the rerun validates epoch 2 (no step missing or renumbered).

    A checkpoint written mid-validation tells Lightning that epoch 2 was trained, and a fit continued from
    it goes on with epoch 3 without validating 2; the trial continues from its last epoch-end checkpoint.
    """
    import lightning.pytorch as L

    class InterruptOnce(L.Callback):
        fired = False

        def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
            if trainer.current_epoch == 2 and not InterruptOnce.fired:
                InterruptOnce.fired = True
                raise KeyboardInterrupt

    search = make(tmp_path, fast_trainer, n_trials=1, trainer={"max_epochs": 4, "callbacks": [InterruptOnce()]})
    with pytest.raises(KeyboardInterrupt):
        search.run()
    assert sorted(search.trials[0].intermediate) == [0, 1]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (t,) = search.run().trials
    assert t.state is TrialState.COMPLETE and t.attempt == 2
    assert sorted(t.intermediate) == [0, 1, 2, 3]
    # its own checkpoint folders hold files when it continues: Lightning's warning about them is noise
    assert not [w for w in caught if "is not empty" in str(w.message)], [str(w.message) for w in caught]


def test_a_study_made_again_after_delete_does_not_continue_the_deleted_ones_checkpoints(tmp_path, fast_trainer, caplog):
    """delete leaves the trials' files; a new study of that name whose trial 0 has another configuration starts
    it over (the checkpoint was another trial's), while the same configuration and seed would continue it."""

    def interrupted(seed):
        model = lambda cfg: TinyModel(interrupt_at_epoch=1, **cfg["model"])  # noqa: E731
        search = make(tmp_path, fast_trainer, model=model, n_trials=1, seed=seed, trainer={"max_epochs": 3})
        with pytest.raises(KeyboardInterrupt):
            search.run()
        assert (tmp_path / "default" / "trial_0" / "resume" / "latest.ckpt").exists()
        search.storage.delete_study("default")

    interrupted(seed=0)
    other = make(tmp_path, fast_trainer, n_trials=1, seed=1, trainer={"max_epochs": 3})
    fresh = other.run().trials[0]
    assert "resumed_at_step" not in fresh.attrs and sorted(fresh.intermediate) == [0, 1, 2]
    assert "was written for another trial in this directory" in caplog.text
    other.storage.delete_study("default")
    interrupted(seed=0)
    same = make(tmp_path, fast_trainer, n_trials=1, seed=0, trainer={"max_epochs": 3}).run().trials[0]
    assert "resumed_at_step" in same.attrs and sorted(same.intermediate) == [0, 1, 2]


def test_callback_error_is_recorded(tmp_path, fast_trainer):
    """RELIABILITY row 22: a user callback raising in on_train_end fails the trial; nothing stays RUNNING."""
    import lightning.pytorch as L

    class Broken(L.Callback):
        def on_train_end(self, trainer, pl_module):
            raise ValueError("callback bug")

    with pytest.raises(SearchFailedError, match="trials 0, 1: ValueError: callback bug") as err:
        make(tmp_path, fast_trainer, n_trials=2, trainer={"callbacks": [Broken()]}).run()
    result = err.value.result
    assert [t.state for t in result.trials] == [TrialState.FAILED] * 2
    assert all("ValueError: callback bug" in t.error and len(t.intermediate) == 2 for t in result.trials)
    for t in result.trials:  # the whole traceback is kept beside the trial, naming the user's code
        text = Path(t.attrs["traceback"]).read_text()
        assert t.attrs["traceback"] == str(tmp_path / "default" / f"trial_{t.number}" / "error.txt")
        assert "Traceback (most recent call last)" in text and "in on_train_end" in text and "callback bug" in text


def test_optimizer_parameters_override_a_hard_coded_optimizer(tmp_path, fast_trainer):
    seen = []

    class Spy(TinyModel):
        def on_train_start(self):
            opt = self.trainer.optimizers[0]
            seen.append((type(opt).__name__, opt.param_groups[0]["lr"], opt.param_groups[0].get("weight_decay")))

    space = {"optimizer.lr": Categorical([0.03]), "optimizer.weight_decay": Categorical([0.001])}
    HyperparameterSearch(
        Spy, TinyData, space, root=tmp_path, n_trials=1, trainer_kwargs=fast_trainer, verbose=False
    ).run()
    space2 = {"optimizer.class_path": Categorical(["torch.optim.AdamW"]), "optimizer.lr": Categorical([0.02])}
    HyperparameterSearch(
        Spy, TinyData, space2, root=tmp_path, study_name="b", n_trials=1, trainer_kwargs=fast_trainer, verbose=False
    ).run()
    assert seen == [("SGD", 0.03, 0.001), ("AdamW", 0.02, 0.01)]


def test_trainer_parameters_and_loggers(tmp_path, fast_trainer):
    fast_trainer.pop("logger")
    result = make(
        tmp_path, fast_trainer, space={"trainer.max_epochs": Int(1, 3), "model.lr": Float(0.01, 0.1)}, n_trials=2
    ).run()
    for t in result.trials:
        assert len(t.intermediate) == t.params["trainer.max_epochs"]
        assert (tmp_path / "default" / f"trial_{t.number}" / "csv" / "metrics.csv").exists()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"space": {"model.lr": {"type": "float", "low": 1.0, "high": 0.1}}}, SearchSpaceError, "low < high"),
        ({"space": {"lr": Float(0.1, 1.0)}}, ConfigurationError, r"parameter 'lr' must start with one of the sections"),
        (
            {"space": {"data.batch_size": Int(8, 16)}, "datamodule": TinyData()},
            ConfigurationError,
            "datamodule is an instance",
        ),
        (
            {"trainer_kwargs": {"max_epoch": 2}},
            ConfigurationError,
            r"'max_epoch' is not an argument of Trainer.*max_epochs",
        ),
        ({"mode": "maximise"}, ConfigurationError, "mode must be 'min' or 'max'"),
        ({"n_trials": 0}, ConfigurationError, "n_trials must be a positive integer"),
        ({"study_name": "../evil"}, ConfigurationError, r"study_name '../evil' is invalid.*'mnist'"),
        ({"study_name": ""}, ConfigurationError, "study_name must not be empty"),
        ({"seed": -1}, ConfigurationError, r"seed must be an integer from 0 to 2\*\*32 - 1.*seed=-1"),
        ({"seed": 2**32}, ConfigurationError, r"seed must be an integer from 0 to 2\*\*32 - 1"),
        ({"seed": 1.5}, ConfigurationError, "seed must be an integer.*float"),
        ({"seed": "3"}, ConfigurationError, "seed must be an integer.*str"),
        ({"seed": True}, ConfigurationError, "seed must be an integer.*bool"),
        ({"space": {"model.lr": Float(0.01, 0.1)}, "checkpoint": "no"}, ConfigurationError, "checkpoint must be True"),
        ({"allow_changes": 1}, ConfigurationError, "allow_changes must be True or False, got allow_changes=1"),
        ({"retry_failed": "yes"}, ConfigurationError, "retry_failed must be True or False"),
        ({"retry_interrupted": None}, ConfigurationError, "retry_interrupted must be True or False"),
        ({"refit": "false"}, ConfigurationError, "refit must be True or False"),
        (
            {"storage": "postgresql+psycopg://u:pw9@h:notaport/db"},
            StorageError,
            r"u:\*\*\*@h:notaport.* not a database",
        ),
        ({"storage": "runs/study.txt"}, StorageError, "path ending in .db"),
        ({"strategy": "tpe"}, ConfigurationError, "strategy must be one of"),
        ({"model": torch.nn.Linear}, ConfigurationError, "model must be a LightningModule class"),
        # an instance is callable, so it used to pass as a factory and fail in trial 0
        ({"model": TinyModel()}, ConfigurationError, r"got the instance TinyModel\(\.\.\.\).*pass the class"),
        # a class is callable too: a LightningModule given as datamodule failed in trial 0 (MetricNotFoundError)
        (
            {"datamodule": TinyModel},
            ConfigurationError,
            "got the class TinyModel .a LightningModule: pass it as model=",
        ),
        ({"datamodule": None}, ConfigurationError, "datamodule is None, but TinyModel has no train_dataloader"),
        ({"builder": TinyModel}, ConfigurationError, "builder must be a TrialBuilder"),
        ({"patience": 0}, ConfigurationError, "patience must be a positive integer or None"),
        (
            {"space": {"model.lrr": Float(0.01, 0.1)}},
            ConfigurationError,
            r"'lrr' is not an init argument of TinyModel.*did you mean \['lr'\]",
        ),
        (
            {"enqueue": {"model.lr": 0.1, "model.hidden": 4}},
            ConfigurationError,
            "enqueue must be a list of configurations",
        ),
        (
            {"trainer_kwargs": ["max_epochs", 2]},
            ConfigurationError,
            r"trainer_kwargs must be a dict.*got list.*pass e.g. trainer_kwargs=\{\"max_epochs\": 10\}",
        ),
        ({"root": None}, ConfigurationError, "root must be a directory path"),
        ({"executor": object()}, ConfigurationError, "executor must be an Executor"),
        ({"stale_after": "x"}, ConfigurationError, "stale_after must be a positive number"),
        ({"timeout": True}, ConfigurationError, "timeout must be a positive number"),
        # other tools' words, and a misspelling: Python's own TypeError named no fix
        ({"trainer": object()}, ConfigurationError, r"takes no argument 'trainer'; use trainer_kwargs=\{'max_epochs'"),
        ({"direction": "maximize"}, ConfigurationError, r"takes no argument 'direction'; use mode='min' or mode='max'"),
        ({"n_trails": 5}, ConfigurationError, r"'n_trails'; did you mean n_trials\? \(its arguments: "),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(tmp_path, kwargs, error, match):
    """RELIABILITY rows 13 and 23: typed errors at construction, so run() never gets to write a study or a file."""
    args = {"model": TinyModel, "datamodule": TinyData, "space": SPACE, "root": tmp_path / "runs", **kwargs}
    with pytest.raises(error, match=match) as err:
        HyperparameterSearch(**args)
    if "study_name" in kwargs:  # study names as examples, not parameter names
        assert "model.lr" not in str(err.value) and not isinstance(err.value, SearchSpaceError)
    assert not (tmp_path / "runs").exists()


def test_a_trainer_given_as_trainer_kwargs_is_refused_with_the_fix(tmp_path):
    """A Lightning user's first try is often ``trainer_kwargs=Trainer(...)``: the error says to pass its
    arguments as a dict (the search builds a Trainer per trial), and nothing is written."""
    import lightning.pytorch as pl

    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False)
    for model_builder_too in (False, True):
        root = tmp_path / f"runs{model_builder_too}"
        with pytest.raises(ConfigurationError) as err:
            if model_builder_too:
                from lightning_hpt import ModuleTrialBuilder

                ModuleTrialBuilder(TinyModel, TinyData, trainer)
            else:
                HyperparameterSearch(TinyModel, TinyData, SPACE, root=root, trainer_kwargs=trainer)
        msg = str(err.value)
        assert "trainer_kwargs must be a dict of Trainer arguments, got a Trainer instance" in msg
        assert "every trial builds its own Trainer" in msg and 'trainer_kwargs={"max_epochs": 10' in msg
        assert "object at 0x" not in msg  # no repr of the Trainer object
        assert not root.exists()


def test_enqueued_configurations_run_first_once(tmp_path, fast_trainer):
    good = {"model.lr": 0.1, "model.hidden": 8}
    result = make(tmp_path, fast_trainer, n_trials=2, enqueue=[good]).run()
    assert result.trials[0].params == good
    result = make(tmp_path, fast_trainer, n_trials=3, enqueue=[good]).run()
    assert sum(t.params == good for t in result.trials) == 1
    # a bad entry is named, with the rule and the fix, before anything is written
    bad = {"model.lr": 5.0, "model.hidden": 8}
    with pytest.raises(SearchSpaceError, match=r"enqueue\[1\]: value model.lr=5.0 is not in Float.*give a value of"):
        make(tmp_path / "bad", fast_trainer, enqueue=[good, bad])
    assert not (tmp_path / "bad").exists()


def test_ask_tell_without_training(tmp_path):
    search = HyperparameterSearch(TinyModel, TinyData, SPACE, root=tmp_path, n_trials=4, seed=1, verbose=False)
    for _ in range(3):
        t = search.ask()
        search.tell(t.number, (t.params["model.lr"] - 0.05) ** 2, intermediate={0: 1.0, 1: 0.5, 2: 0.7})
    assert search.trials[0].best_step == 1  # the best (lowest) intermediate value's step
    with pytest.raises(ConfigurationError, match="value must be a number"):
        search.tell(0, "0.5")
    assert search.tell(search.ask().number, float("nan")).state is TrialState.FAILED
    with pytest.raises(ConfigurationError, match="n_trials reached"):
        search.ask()
    res = search.result()
    assert len(res.trials) == 4 and res.best_value == min(t.value for t in res.trials[:3])
    assert res.trials[0].intermediate == {0: 1.0, 1: 0.5, 2: 0.7}


def test_a_finished_study_is_read_back_with_its_builder_by_the_same_search(tmp_path, fast_trainer):
    """Another session makes the same search and calls result(): no trial runs, the winner loads."""
    first = make(tmp_path, fast_trainer, n_trials=2).run()
    later = make(tmp_path, fast_trainer, n_trials=2)
    result = later.result()
    assert [t.number for t in later.trials] == [0, 1] and result.best_value == first.best_value
    model = result.load_best_model()
    assert isinstance(model, TinyModel) and model.hparams.lr == first.best_params["model.lr"]
    # repr is one line, not every trial's record (print(result.best) without the call shows it)
    assert repr(result) == "SearchResult(study='default', monitor='val_loss', 2 trials: 2 complete)"


def test_a_grid_is_checked_when_made_and_a_short_budget_on_it_is_warned_of(tmp_path, fast_trainer, caplog):
    """A continuous domain without grid points is refused before anything is written; n_trials below an
    unshuffled grid's size warns (its first parameter varies slowest), and the progress counts the grid."""
    with pytest.raises(SearchSpaceError, match="a grid needs a number of points"):
        make(tmp_path / "nopoints", fast_trainer, strategy="grid")
    assert not (tmp_path / "nopoints").exists()
    space = {"model.hidden": Int(4, 6), "model.lr": Categorical([0.01, 0.1])}  # 3 x 2 = 6 points
    with caplog.at_level("WARNING"):
        make(tmp_path, fast_trainer, space=space, strategy="grid", n_trials=4)
    assert "n_trials=4 runs 4 of the grid's 6 points" in caplog.text and "shuffle=True" in caplog.text
    caplog.clear()
    search = make(tmp_path, fast_trainer, space=space, strategy="grid", n_trials=10, study_name="all", verbose="lines")
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        result = search.run()
    assert len(result.trials) == 6 and "0/6 trials done" in out.getvalue() and "n_trials=" not in caplog.text


def test_n_trials_none_runs_until_the_timeout_with_any_strategy(tmp_path, fast_trainer):
    """Optuna's study.optimize(n_trials=None, timeout=...): trials start until the time is up, then the search ends."""
    with pytest.raises(ConfigurationError, match=r"n_trials=None .* or a timeout; give a number, or timeout=SECONDS"):
        make(tmp_path / "never", fast_trainer, n_trials=None)
    result = make(tmp_path, fast_trainer, n_trials=None, timeout=2.0).run()
    assert result.stopped_reason == "timeout" and len(result.trials) >= 2
    assert all(t.state is TrialState.COMPLETE for t in result.trials)


def test_foreign_database_is_not_touched(tmp_path, fast_trainer):
    """RELIABILITY row 15: a SQLite file with unrelated tables is refused, not written into."""
    db = tmp_path / "other.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE customers (id INTEGER)")
    con.commit()
    con.close()
    with pytest.raises(Exception, match=r"other\.db"):
        make(tmp_path, fast_trainer, storage=f"sqlite:///{db}").run()
    con = sqlite3.connect(db)
    assert [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")] == ["customers"]
    con.close()


def test_tensorboard_hparams_and_study_curve(tmp_path, fast_trainer):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    fast_trainer.pop("logger")
    result = make(tmp_path, fast_trainer, n_trials=2).run()
    trial_tb = EventAccumulator(str(tmp_path / "default" / "trial_0" / "tb"))
    trial_tb.Reload()
    assert "hp/val_loss" in trial_tb.Tags()["scalars"]
    assert trial_tb.Scalars("hp/val_loss")[-1].value == pytest.approx(result.trials[0].value)
    assert "_hparams_/session_start_info" in trial_tb.PluginTagToContent("hparams")  # what the HParams view reads
    study_tb = EventAccumulator(str(tmp_path / "default" / "tensorboard"))
    study_tb.Reload()
    best = [e.value for e in study_tb.Scalars("best_val_loss")]
    assert best == pytest.approx([result.trials[0].value, min(t.value for t in result.trials)])


def test_the_driver_reporter_answers_only_with_a_pruner(tmp_path, fast_trainer):
    # channels between processes skip the round trip for a reporter that never answers "stop"
    from lightning_hpt.pruners import make_pruner
    from lightning_hpt.reporting import StudyReporter

    assert StudyReporter(None, "s", make_pruner(None), list, 0).answers is False
    assert StudyReporter(None, "s", make_pruner("median"), list, 0).answers is True


def test_reading_trials_writes_nothing(tmp_path, fast_trainer):
    """Issue 14: .trials is a plain read: before run() it neither creates the study nor rewrites the search."""
    search = make(tmp_path, fast_trainer, n_trials=1)
    assert search.trials == [] and search.storage.study_names() == []
    search.run()
    search.strategy = strategy = make(tmp_path, fast_trainer).strategy  # not rebuilt by a read
    assert len(search.trials) == 1 and search.strategy is strategy


def test_a_grid_run_to_exhaustion_counts_its_size_on_every_line(tmp_path, fast_trainer, capsys):
    """With n_trials=None the grid's size is the total: the start line said 0/4 while each trial's
    line said [1/?], [2/?], ..."""
    space = {"model.lr": Categorical([0.05, 0.1]), "model.hidden": Categorical([4, 8])}
    result = make(tmp_path, fast_trainer, space=space, strategy="grid", n_trials=None, verbose="lines").run()
    assert len(result.trials) == 4
    out = capsys.readouterr().out
    assert "0/4 trials done" in out
    lines = [line for line in out.splitlines() if line.startswith("[")]
    assert [line.split()[0] for line in lines] == ["[1/4]", "[2/4]", "[3/4]", "[4/4]"]


def test_capabilities_are_attributes_not_names(tmp_path, fast_trainer):
    """Issue 14: n_trials=None needs Strategy.exhaustive, not the name 'grid'; answers follow Pruner.active."""
    from lightning_hpt.pruners import NopPruner, Pruner
    from lightning_hpt.reporting import StudyReporter
    from lightning_hpt.strategies import GridStrategy

    class Coarse(GridStrategy):
        name = "coarse-grid"

    search = make(tmp_path, fast_trainer, strategy=Coarse(points=2), n_trials=None)
    assert search.n_trials is None
    with pytest.raises(ConfigurationError, match="exhaustive strategy"):
        make(tmp_path, fast_trainer, n_trials=None)

    class Quiet(NopPruner):
        name = "quiet"

    class Named(Pruner):
        name = "none"  # a display name only: it still prunes

        def should_prune(self, history, trial):
            return True

    assert StudyReporter(None, "s", Quiet(), list, 0).answers is False
    assert StudyReporter(None, "s", Named(), list, 0).answers is True


def test_allow_changes_keeps_a_configured_strategy(tmp_path, fast_trainer):
    """Issue 14: a study continued with allow_changes kept the stored strategy's name but with default arguments."""
    from lightning_hpt.strategies import SobolStrategy

    make(tmp_path, fast_trainer).open()  # stored with strategy 'random'
    sobol = SobolStrategy(seed=3)
    search = make(tmp_path, fast_trainer, strategy=sobol, allow_changes=True)
    search.open()
    assert search.strategy is sobol
    by_name = make(tmp_path, fast_trainer, strategy="sobol", allow_changes=True)
    by_name.open()
    assert by_name.strategy.name == "random"  # a name means the stored study's choice


def test_plugins_are_reached_by_name_from_one_registry_each(tmp_path, fast_trainer):
    """Issue 14: a registered strategy and storage scheme are reachable by name without editing the package."""
    from lightning_hpt.storage import STORAGES, SQLStorage, open_storage
    from lightning_hpt.strategies import STRATEGIES, RandomStrategy

    class Mine(RandomStrategy):
        name = "mine"

    class Local(SQLStorage):
        def __init__(self, url, **kwargs):
            super().__init__(f"sqlite:///{tmp_path / url.split('://', 1)[1]}", **kwargs)

    STRATEGIES.register("mine", Mine)
    STORAGES.register("local", Local)
    try:
        search = make(tmp_path, fast_trainer, strategy="mine", storage="local://x.db")
        assert isinstance(search.strategy, Mine) and isinstance(search.storage, Local)
        assert isinstance(open_storage("local+v1://y.db"), Local) and (tmp_path / "y.db").exists()
    finally:
        STRATEGIES.unregister("mine")
        STORAGES.unregister("local")
