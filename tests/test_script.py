"""The Trainer-script route: a user's own script asks for trials, trains them itself, and is pruned."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning.pytorch as L
import pytest
from conftest import TinyData, TinyModel
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from lightning_hpt import Float, Int, ScriptSearch
from lightning_hpt.exceptions import ConfigurationError, SearchFailedError
from lightning_hpt.pruners import Pruner
from lightning_hpt.storage import open_storage
from lightning_hpt.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]


class PruneFromTrial(Pruner):
    """Stops every trial numbered ``first`` or more at its second report."""

    name = "prune_from"

    def __init__(self, first: int) -> None:
        self.first = first

    def should_prune(self, history, trial) -> bool:
        return trial.number >= self.first and len(trial.intermediate) >= 2


def trainer(trial, tmp_path: Path, epochs: int = 3, extra: tuple = (), **kwargs) -> L.Trainer:
    return L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        callbacks=[trial.callback(), ModelCheckpoint(dirpath=trial.dir / "ckpt", monitor="val_loss"), *extra],
        logger=trial.logger("csv"),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kwargs,
    )


def search(tmp_path: Path, **kwargs) -> ScriptSearch:
    settings = {
        "space": {"lr": Float(0.01, 0.1, log=True), "hidden": Int(4, 16)},
        "monitor": "val_loss",
        "mode": "min",
        "n_trials": 3,
        "storage": str(tmp_path / "s.db"),
        "root": str(tmp_path / "runs"),
        "seed": 0,
        "max_epochs": 3,
    }
    return ScriptSearch(**{**settings, **kwargs})


def test_loop_records_each_trial_with_its_steps_and_the_scripts_checkpoint(tmp_path, capsys):
    s = search(tmp_path)
    seen = []
    for trial in s:
        seen.append(trial.number)
        trainer(trial, tmp_path).fit(TinyModel(lr=trial.params["lr"], hidden=trial.params["hidden"]), TinyData())
    assert seen == [0, 1, 2]
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "] trial " in ln]  # one line per recorded trial
    assert [ln.split(" trial ")[0] for ln in lines] == ["[1/3]", "[2/3]", "[3/3]"] and "COMPLETE" in lines[0], lines
    trials = s.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    for t in trials:
        assert sorted(t.intermediate) == [0, 1, 2]
        assert t.value == min(t.intermediate.values()) and t.best_step is not None
        assert t.checkpoint and Path(t.checkpoint).is_file() and "ckpt" in t.checkpoint  # the script's own
        assert (Path(tmp_path / "runs" / "default" / f"trial_{t.number}") / "csv" / "metrics.csv").is_file()
    result = s.result()
    assert "at step None" not in str(result) and f"at step {result.best_trial.best_step}" in str(result)
    assert str(result).splitlines()[0] == "Study 'default': 3 trials (3 complete); n_trials reached"  # why it ended


def test_a_trial_seeded_with_its_seed_gives_the_same_value_in_another_study(tmp_path, capsys):
    """trial.seed depends on the study's seed and the trial's number only: seeding with it reproduces a value."""
    values, seeds = [], []
    for name in ("a", "b"):
        s = search(tmp_path, study_name=name, n_trials=2, verbose=False)
        for trial in s:
            seeds.append(trial.seed)
            L.seed_everything(trial.seed, workers=True, verbose=False)
            trainer(trial, tmp_path).fit(TinyModel(lr=trial.params["lr"], hidden=trial.params["hidden"]), TinyData())
        values.append([t.value for t in s.trials])
    assert "] trial " not in capsys.readouterr().out  # verbose=False: no line
    assert values[0] == values[1] and seeds[:2] == seeds[2:] and seeds[0] != seeds[1]


def test_pruned_trials_stop_training_and_are_recorded_pruned(tmp_path):
    s = search(tmp_path, pruner=PruneFromTrial(1), n_trials=2)
    epochs = []
    for trial in s:
        t = trainer(trial, tmp_path, epochs=5)
        t.fit(TinyModel(lr=trial.params["lr"]), TinyData())
        epochs.append(t.current_epoch)
        assert trial.pruned == (trial.number >= 1)
    trials = s.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED]
    assert len(trials[1].intermediate) == 2 and epochs[1] < epochs[0]


def test_a_failing_fit_is_recorded_failed_and_the_loop_goes_on(tmp_path):
    s = search(tmp_path, n_trials=2)
    for trial in s:
        model = TinyModel(lr=trial.params["lr"], fail_at_epoch=1 if trial.number == 0 else None)
        with contextlib.suppress(RuntimeError):  # the script's own handling of a failed run
            trainer(trial, tmp_path).fit(model, TinyData())
    first, second = s.trials
    assert first.state is TrialState.FAILED and "boom" in first.error
    assert second.state is TrialState.COMPLETE


def test_a_file_where_a_trials_directory_goes_fails_that_trial_and_the_loop_goes_on(tmp_path):
    """Issue: a file named trial_0 ended the script with FileExistsError, the trial left RUNNING."""
    (tmp_path / "runs" / "default").mkdir(parents=True)
    (tmp_path / "runs" / "default" / "trial_0").write_text("the user's file")
    s = search(tmp_path, n_trials=2)
    handed = []
    for trial in s:
        handed.append(trial.number)
        trainer(trial, tmp_path, epochs=1).fit(TinyModel(lr=trial.params["lr"]), TinyData())
    assert handed == [1]
    assert [t.state for t in s.trials] == [TrialState.FAILED, TrialState.COMPLETE]
    assert "trial_0 is a file, not a directory" in s.trials[0].error
    assert (tmp_path / "runs" / "default" / "trial_0").read_text() == "the user's file"


def test_the_loop_stops_when_every_trial_would_fail_as_a_search_does(tmp_path):
    """Issue: a misspelt monitor (``val_acc`` for a template's ``val/acc``) failed every trial of a ScriptSearch
    one after the other, each training an epoch, and the script ended without an error; a search stops after
    the first. One error over different configurations stops it after three, with the error and its fix."""
    from lightning_hpt.exceptions import MetricNotFoundError

    s = search(tmp_path, monitor="val/loss", n_trials=5)
    with pytest.raises(MetricNotFoundError, match=r"'val/loss' was not logged \(did you mean 'val_loss'\?\)"):
        for trial in s:
            trainer(trial, tmp_path, epochs=1).fit(TinyModel(lr=trial.params["lr"]), TinyData())
    assert len(s.trials) == 1 and s.trials[0].state is TrialState.FAILED

    s = search(tmp_path, n_trials=5, study_name="bug")
    with pytest.raises(SearchFailedError, match="trials 0, 1, 2 failed with this error and no trial has completed"):
        for trial in s:
            with contextlib.suppress(RuntimeError):
                trainer(trial, tmp_path).fit(TinyModel(lr=trial.params["lr"], fail_at_epoch=0), TinyData())
    assert [t.state for t in s.trials] == [TrialState.FAILED] * 3


def test_a_trial_trained_without_its_callback_fails_with_the_fix(tmp_path):
    s = search(tmp_path, n_trials=1)
    with pytest.raises(SearchFailedError, match=r"ended \(n_trials reached\) with no COMPLETE trial \(1 FAILED\)"):
        for _trial in s:
            pass  # the loop ends as a search does: with no COMPLETE trial, SearchFailedError naming each error
    (t,) = s.trials
    assert t.state is TrialState.FAILED and "trial.callback()" in t.error


def test_a_loop_ending_while_another_copy_runs_a_trial_of_the_study_does_not_call_it_failed(tmp_path):
    """No COMPLETE trial yet, but another copy of the script still runs one: the loop ends quietly, as it may
    complete; the copy whose loop ends last with none COMPLETE raises."""
    other = search(tmp_path, n_trials=2)
    running = other.ask()  # another copy's trial, RUNNING
    for trial in search(tmp_path, n_trials=2):  # takes the study's last trial, which fails: n_trials reached
        trial.finish(error=ValueError("bad width"))
    running.finish(error=ValueError("bad width"))
    with pytest.raises(SearchFailedError, match=r"with no COMPLETE trial \(2 FAILED\)"):
        other._check_ended("n_trials reached")  # what that copy's loop does when it asks again


def test_a_trainer_given_the_callback_method_uncalled_fails_the_trial_with_the_fix(tmp_path):
    """``callbacks=[trial.callback]`` (no call): Lightning's own error says nothing of it; the trial's does."""
    s = search(tmp_path, n_trials=1)
    with pytest.raises(SearchFailedError, match="with no COMPLETE trial"):
        for trial in s:
            t = L.Trainer(max_epochs=1, callbacks=[trial.callback], logger=False, enable_progress_bar=False)
            with pytest.raises(AttributeError) as raised:
                t.fit(TinyModel(), TinyData())
            trial.finish(error=raised.value)  # what the script's exit records, when the exception ends it
    (t,) = s.trials
    assert t.state is TrialState.FAILED and "raised AttributeError: 'function' object has no attribute" in t.error
    assert "trial.callback() was never called" in t.error and "pass callbacks=[trial.callback(), ...]" in t.error
    with pytest.raises(SearchFailedError, match="trial 0: ValueError: bad width"):
        for failed in search(tmp_path, study_name="own", n_trials=1):  # an error of the script's own, no Trainer
            failed.finish(error=ValueError("bad width"))
    assert search(tmp_path, study_name="own").trials[0].error == "ValueError: bad width"


def test_script_search_refuses_run_and_trainer_arguments(tmp_path):
    with pytest.raises(ConfigurationError, match="trainer_kwargs"):
        search(tmp_path, trainer_kwargs={"max_epochs": 2})
    with pytest.raises(ConfigurationError, match="for trial in search"):
        search(tmp_path).run()


SCRIPT = textwrap.dedent(
    """
    import sys
    import lightning.pytorch as L
    sys.path.insert(0, {tests!r})
    from conftest import TinyData, TinyModel
    from lightning_hpt import Float, ScriptSearch

    search = ScriptSearch(
        space={{"lr": Float(0.01, 0.1, log=True)}}, monitor="val_loss", n_trials=2, pruner="median",
        storage={db!r}, root={root!r}, seed=0, max_epochs=2,
    )
    {body}
    """
)


def run_script(tmp_path: Path, body: str, launcher: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    path = tmp_path / "script.py"
    code = SCRIPT.format(tests=str(ROOT / "tests"), db=str(tmp_path / "s.db"), root=str(tmp_path / "runs"), body=body)
    path.write_text(code)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, *launcher, str(path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )


@pytest.mark.slow
def test_ask_without_finish_is_recorded_when_the_script_exits(tmp_path):
    body = textwrap.dedent(
        """
        trial = search.ask()
        trainer = L.Trainer(max_epochs=2, callbacks=[trial.callback()], logger=False, enable_progress_bar=False)
        trainer.fit(TinyModel(lr=trial.params["lr"]), TinyData())
        """
    )
    done = run_script(tmp_path, body)
    assert done.returncode == 0, done.stderr[-3000:]
    (t,) = open_storage(str(tmp_path / "s.db")).trials("default")
    assert t.state is TrialState.COMPLETE and sorted(t.intermediate) == [0, 1]


@pytest.mark.slow
def test_a_script_that_raises_before_the_fit_records_its_error_not_a_missing_metric(tmp_path):
    """The loop's body raises between trial.callback() and the fit (a logger that cannot start, a bug): the trial
    is FAILED with that exception and its traceback, recorded when the script dies."""
    body = textwrap.dedent(
        """
        def main():
            for trial in search:
                trial.callback()
                raise RuntimeError("the tracking server refused the run")

        main()
        """
    )
    done = run_script(tmp_path, body)
    assert done.returncode == 1 and "the tracking server refused the run" in done.stderr
    (t,) = open_storage(str(tmp_path / "s.db")).trials("default")
    assert t.state is TrialState.FAILED and t.error == "RuntimeError: the tracking server refused the run", t.error
    assert "in main" in Path(t.attrs["traceback"]).read_text()


@pytest.mark.slow
@pytest.mark.parametrize(
    "launcher",
    [(), ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")],
    ids=["lightning", "torchrun"],
)
def test_ddp_runs_each_trial_once_on_every_rank(tmp_path, launcher):
    """Lightning re-runs the script for rank 1 (torchrun starts both): rank 1 trains rank 0's trials, rank 0 writes."""
    body = textwrap.dedent(
        """
        import os
        for trial in search:
            trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=2, strategy="ddp",
                                callbacks=[trial.callback()], logger=False, enable_progress_bar=False)
            trainer.fit(TinyModel(lr=trial.params["lr"]), TinyData())
            with open(f"rank_{trainer.global_rank}.txt", "a") as f:  # one file per rank: no interleaved lines
                f.write(f"rank {trainer.global_rank} trial {trial.number} {trial.params['lr']}\\n")
        """
    )
    done = run_script(tmp_path, body, launcher)
    assert done.returncode == 0, done.stderr[-3000:]
    trials = open_storage(str(tmp_path / "s.db")).trials("default")
    assert [t.number for t in trials] == [0, 1]
    assert all(t.state is TrialState.COMPLETE for t in trials)
    lines = sorted(line for r in (0, 1) for line in (tmp_path / f"rank_{r}.txt").read_text().splitlines())
    assert len(lines) == 4  # both ranks trained both trials, with the same parameters
    by_trial = {}
    for line in lines:
        _, _rank, _, number, lr = line.split()
        by_trial.setdefault(number, set()).add(lr)
    assert all(len(v) == 1 for v in by_trial.values())


def test_early_stopping_of_the_script_still_records_the_best_epoch(tmp_path):
    s = search(tmp_path, n_trials=1)
    for trial in s:
        t = trainer(trial, tmp_path, epochs=6, extra=(EarlyStopping("val_loss", patience=1),))
        t.fit(TinyModel(lr=0.01, val_schedule=[3.0, 1.0, 2.0, 2.5, 3.0, 4.0]), TinyData())
    (rec,) = s.trials
    assert rec.state is TrialState.COMPLETE and rec.value == pytest.approx(1.0) and rec.best_step == 1


class SizedModel(TinyModel):
    """Logs its parameter count next to the validation loss: a second objective and a constrained metric."""

    def validation_step(self, batch, batch_idx):
        super().validation_step(batch, batch_idx)
        self.log("n_params", float(sum(p.numel() for p in self.parameters())))
        self.log("n_weights", float(sum(p.numel() for p in self.parameters() if p.dim() > 1)))


def test_several_objectives_and_constraints_in_a_script(tmp_path):
    s = search(
        tmp_path,
        monitor=["val_loss", "n_params"],
        mode=["min", "min"],
        constraints={"n_weights": ("<=", 40)},
        param_constraints=["hidden <= 12"],
        pruner="median",
    )
    for trial in s:
        model = SizedModel(lr=trial.params["lr"], hidden=trial.params["hidden"])
        for _ in range(2):  # two fits of one trial: its steps (and every objective's values) go on
            trainer(trial, tmp_path, epochs=1).fit(model, TinyData())
    trials = s.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    for t in trials:
        hidden = t.params["hidden"]
        assert hidden <= 12
        size, weights = 4 * hidden + hidden + hidden + 1, 4 * hidden + hidden
        assert sorted(t.intermediate_values) == [0, 1]
        assert all(v == (t.intermediate[step], size) for step, v in t.intermediate_values.items())
        assert t.values == (t.value, size) and t.value == min(t.intermediate.values())
        assert t.attrs["constraint_values"] == {"n_weights": weights} and t.feasible == (weights <= 40)
    assert {t.feasible for t in trials} == {True, False}  # the seed draws both
    result = s.result()
    assert result.multi and result.pareto_trials
    assert {t.number for t in result.pareto_trials} <= {t.number for t in trials if t.feasible}
    assert [o.name for o in result.objectives] == ["val_loss", "n_params"]


def test_the_checkpoint_recorded_is_of_the_best_epoch_in_the_studys_mode_or_none_with_the_fix(tmp_path, caplog):
    """A study that maximizes val_loss, tried with the script's ModelCheckpoint in the wrong mode, then the right one.

    The ModelCheckpoint in Lightning's default mode ("min") keeps the worst epoch of a maximized metric: the trial
    records no checkpoint (not that file), and the script is told once which ModelCheckpoint to add.
    """
    s = search(tmp_path, mode="max", n_trials=3, verbose=False)
    schedule = [1.0, 3.0, 2.0]  # the best epoch (max) is 1, the worst is 0
    for trial in s:
        mode = "min" if trial.number < 2 else "max"
        ckpt = ModelCheckpoint(dirpath=trial.dir / "ckpt", monitor="val_loss", mode=mode, filename="{epoch}")
        t = L.Trainer(
            max_epochs=3,
            accelerator="cpu",
            callbacks=[trial.callback(), ckpt],
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
        )
        t.fit(TinyModel(lr=0.01, val_schedule=schedule), TinyData())
    wrong, wrong_again, right = s.trials
    assert wrong.value == 3.0 and wrong.best_step == 1
    assert wrong.checkpoint is None and wrong_again.checkpoint is None  # not epoch=0.ckpt, the worst epoch
    assert right.checkpoint and Path(right.checkpoint).name == "epoch=1.ckpt"
    told = [r.getMessage() for r in caplog.records if "has no checkpoint" in r.getMessage()]
    assert len(told) == 1, told  # once per script
    assert "ModelCheckpoint(monitor='val_loss', mode='min')" in told[0]
    assert "Add ModelCheckpoint(monitor='val_loss', mode='max')" in told[0]


def test_a_script_studys_result_refuses_to_rebuild_models_with_the_script_fix_also_when_read_back(tmp_path, caplog):
    """load_best_model/test/refit of a ScriptSearch's result say to use the script's own class, at once (no fallback
    from trial to trial, no advice about checkpoint=True or refit()), also from SearchResult.load without a builder."""
    from lightning_hpt import SearchResult

    s = search(tmp_path, n_trials=2, verbose=False)
    for trial in s:
        trainer(trial, tmp_path).fit(TinyModel(lr=trial.params["lr"], hidden=trial.params["hidden"]), TinyData())
    assert all(t.checkpoint for t in s.trials)
    for result in (s.result(), SearchResult.load(str(tmp_path / "s.db"), "default")):
        with pytest.raises(
            ConfigurationError, match=r"^a ScriptSearch's trials are built by the script itself.*own class"
        ):
            result.load_best_model()
        with pytest.raises(ConfigurationError, match="your own Trainer and datamodule"):
            result.test(TinyModel())
        with pytest.raises(ConfigurationError, match="a ScriptSearch's trials are built by the script itself"):
            result.refit()
    assert not [r for r in caplog.records if "falling back" in r.getMessage()]


def test_a_misspelt_monitor_stops_the_loop_after_one_trial_and_retry_failed_reruns_it(tmp_path):
    """As a search does: the first trial that never logs the monitor ends the loop with the error and its fix (not
    n_trials FAILED trials, which would use up the study); the corrected script reruns it with retry_failed=True."""
    from lightning_hpt.exceptions import MetricNotFoundError

    s = search(tmp_path, monitor="val_los", n_trials=3, verbose=False)
    numbers = []
    with pytest.raises(MetricNotFoundError, match=r"(?s)did you mean 'val_loss'.*retry_failed=True"):
        for trial in s:
            numbers.append(trial.number)
            trainer(trial, tmp_path).fit(TinyModel(lr=trial.params["lr"]), TinyData())
    assert numbers == [0]
    (failed,) = s.trials
    assert failed.state is TrialState.FAILED and "val_los" in failed.error
    fixed = search(tmp_path, n_trials=3, verbose=False, retry_failed=True)
    for trial in fixed:
        numbers.append(trial.number)
        trainer(trial, tmp_path).fit(TinyModel(lr=trial.params["lr"]), TinyData())
    assert numbers == [0, 0, 1, 2] and [t.state for t in fixed.trials] == [TrialState.COMPLETE] * 3


def test_a_test_run_after_the_fit_leaves_the_trials_recorded_metrics_those_of_the_fit(tmp_path):
    """The project template's ``trainer.test(ckpt_path="best")`` after ``fit`` in the loop: the Trainer's metrics
    are then the test run's, but the trial records what its fit logged last."""
    s = search(tmp_path, n_trials=1, verbose=False)
    for trial in s:
        t = trainer(trial, tmp_path)
        t.fit(TinyModel(lr=trial.params["lr"]), TinyData())
        t.test(datamodule=TinyData(), ckpt_path="best", verbose=False)
    (rec,) = s.trials
    assert rec.state is TrialState.COMPLETE
    assert "val_loss" in rec.attrs["metrics"] and "test_loss" not in rec.attrs["metrics"], rec.attrs["metrics"]
    assert rec.attrs["metrics"]["val_loss"] == pytest.approx(rec.intermediate[2])


def test_an_interrupted_trial_says_how_to_continue_it_and_continues_when_the_script_runs_again(
    tmp_path, caplog, recwarn
):
    """Ctrl+C in a fit: Lightning exits the script with status 1 and no word of the study; the trial is recorded
    as interrupted with a line saying to run the script again, and the next run continues it from its checkpoint,
    without Lightning's warning that the trial's resume/ directory (which holds that checkpoint) is not empty."""
    s = search(tmp_path, n_trials=1)
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):  # Lightning's own answer to Ctrl+C: sys.exit(1) after a graceful shutdown
            for trial in s:
                trainer(trial, tmp_path).fit(TinyModel(lr=0.01, interrupt_at_epoch=1), TinyData())
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores Ctrl+C from its shutdown on
    (rec,) = s.trials
    assert rec.state is TrialState.FAILED and rec.error == "interrupted: KeyboardInterrupt"
    said = [r.getMessage() for r in caplog.records if "recorded as interrupted" in r.getMessage()]
    assert len(said) == 1 and "run the script again to continue it" in said[0], said
    assert "ckpt_path=trial.ckpt_path" in said[0]
    again = search(tmp_path, n_trials=1)
    recwarn.clear()
    for trial in again:
        assert trial.number == 0 and trial.ckpt_path
        trainer(trial, tmp_path).fit(TinyModel(lr=0.01), TinyData(), ckpt_path=trial.ckpt_path)
    (rec,) = again.trials
    assert rec.state is TrialState.COMPLETE and sorted(rec.intermediate) == [0, 1, 2]
    resume_dir = str(tmp_path / "runs" / "default" / "trial_0" / "resume")
    assert not [str(w.message) for w in recwarn if resume_dir in str(w.message)]
