"""Real Lightning projects, written as projects in the wild are, tuned end to end by every route that fits them.

Each project lives in ``tests/projects/<name>/`` and is copied to a temporary directory, so its own
logs and checkpoints never land in the repository. A search must COMPLETE every trial, and the best
configuration must train again to the same validation curve with the project's own ``fit``.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import lightning.pytorch as L
import pytest
import yaml
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from lightning_hpt import ConfigurationError, Float, HyperparameterSearch, Int, ScriptSearch, TrialLogger, TrialState
from lightning_hpt.cli.parsing import ARGS_WARNING
from lightning_hpt.lightning.runner import trial_seed
from lightning_hpt.storage import open_storage

ROOT = Path(__file__).resolve().parents[1]
PROJECTS = Path(__file__).resolve().parent / "projects"

pytestmark = pytest.mark.slow


@pytest.fixture
def project(tmp_path, monkeypatch):
    """``project(name)``: a copy of the project, the working directory, its modules importable."""

    def copy(name: str) -> Path:
        where = tmp_path / name
        shutil.copytree(PROJECTS / name, where, ignore=shutil.ignore_patterns("__pycache__"))
        monkeypatch.chdir(where)
        monkeypatch.syspath_prepend(str(where))
        return where

    return copy


def hpt(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """``lightning-hpt ARGS`` in a fresh interpreter, as a user runs it from the project's directory."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(cwd)])}
    return subprocess.run(
        [sys.executable, "-m", "lightning_hpt", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def script(*args: str, cwd: Path, timeout: int = 300, path: tuple[str, ...] = ()) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*path, str(ROOT), str(cwd)])}
    return subprocess.Popen(
        [sys.executable, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def complete(trials, n: int) -> None:
    assert [t.state for t in trials] == [TrialState.COMPLETE] * n, [(t.number, t.state.value, t.error) for t in trials]


def last(trial) -> float:
    return trial.intermediate[max(trial.intermediate)]


def fit_cli(cli_class, *args, config: Path, **kwargs):
    """The project's own ``fit`` with ``config``, in this process (its Trainer is returned)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=ARGS_WARNING)
        cli = cli_class(
            *args,
            args=["fit", "--config", str(config), "--trainer.enable_progress_bar", "false"],
            **kwargs,
        )
    return cli.trainer


# --- LightningCLI projects, through `lightning-hpt search` ------------------------------------------------


def test_cli_subclass_mode_with_its_checkpoint_early_stopping_logger_and_scheduler(project):
    """class_path/init_args; ModelCheckpoint and EarlyStopping on the monitored metric; TensorBoard; a scheduler."""
    where = project("cli_subclass")
    done = hpt("search", "--config", "config.yaml", "--config", "search.yaml", cwd=where)
    assert done.returncode == 0, done.stderr[-3000:]
    trials = open_storage(str(where / "hpt_runs" / "studies.db")).trials("cancer")
    complete(trials, 3)
    for t in trials:  # each trial logs to TensorBoard in its own directory, not in the project's logs/
        assert list((where / "hpt_runs" / "cancer" / f"trial_{t.number}").rglob("events.out.tfevents.*")), t.number
    assert not (where / "logs").exists()
    best = min(trials, key=lambda t: t.value)
    trainer = fit_cli(
        LightningCLI, config=where / "hpt_runs" / "cancer" / "best.yaml", save_config_kwargs={"overwrite": True}
    )
    assert float(trainer.callback_metrics["val_loss"]) == pytest.approx(last(best), abs=1e-5)


def test_cli_fixed_classes_with_one_flag_naming_the_script(project):
    """LightningCLI(LitCNN, DigitsDataModule) in train.py; fit.yaml with TensorBoard, ModelCheckpoint(val_acc),
    LearningRateMonitor, AdamW and a cosine schedule: the issue's own project."""
    where = project("cli_fixed")
    plain = hpt("search", "--config", "fit.yaml", "--config", "search.yaml", cwd=where)
    assert plain.returncode != 0
    message = plain.stderr.strip().splitlines()
    assert len(message) <= 2 and "--script" in plain.stderr, plain.stderr[-3000:]
    args = ("search", "--script", "train.py", "--config", "fit.yaml", "--config", "search.yaml")
    typo = hpt(*args, "--search.n_trails", "3", cwd=where)  # with --script given, the hint to give it is noise
    assert typo.returncode != 0 and "n_trails" in typo.stderr and "give --script" not in typo.stderr, typo.stderr
    done = hpt(*args, cwd=where)
    assert done.returncode == 0, done.stderr[-3000:]
    trials = open_storage(str(where / "hpt_runs" / "studies.db")).trials("digits_cnn")
    complete(trials, 3)
    assert not (where / "runs").exists()  # the project's own TensorBoard folder stays the project's
    best = max(trials, key=lambda t: t.value)
    module = importlib.import_module("digits_cnn")
    trainer = fit_cli(
        LightningCLI, module.LitCNN, module.DigitsDataModule, config=where / "hpt_runs" / "digits_cnn" / "best.yaml"
    )
    assert float(trainer.callback_metrics["val_acc"]) == pytest.approx(last(best), abs=1e-5)


def test_cli_subclass_with_links_and_added_arguments(project):
    """A LightningCLI subclass with add_arguments_to_parser (its own EarlyStopping) and link_arguments."""
    where = project("cli_custom")
    done = hpt("search", "--script", "cli.py", "--config", "config.yaml", "--config", "search.yaml", cwd=where)
    assert done.returncode == 0, done.stderr[-3000:]
    trials = open_storage(str(where / "hpt_runs" / "studies.db")).trials("wine")
    complete(trials, 3)
    best = max(trials, key=lambda t: t.value)
    module = importlib.import_module("wine")
    cli_class = importlib.import_module("cli").WineCLI
    trainer = fit_cli(
        cli_class, module.WineClassifier, module.WineData, config=where / "hpt_runs" / "wine" / "best.yaml"
    )
    assert float(trainer.callback_metrics["val_acc"]) == pytest.approx(last(best), abs=1e-5)
    short = hpt("search", "--cli", "cli.WineCLI", "--config", "config.yaml", "--config", "search.yaml", cwd=where)
    assert short.returncode != 0 and len(short.stderr.strip().splitlines()) <= 2, short.stderr[-3000:]


# --- the Python API ----------------------------------------------------------------------------------------


def api_search(tmp_path: Path, model, datamodule, space, monitor, mode, **kwargs) -> HyperparameterSearch:
    settings = {"n_trials": 3, "seed": 0, "root": str(tmp_path / "runs"), "verbose": False, "study_name": "api"}
    trainer = {"max_epochs": 2, "accelerator": "cpu", **kwargs.pop("trainer_kwargs", {})}
    return HyperparameterSearch(
        model, datamodule, space, monitor=monitor, mode=mode, trainer_kwargs=trainer, **{**settings, **kwargs}
    )


def test_api_with_the_projects_own_checkpoint_early_stopping_and_logger(project, tmp_path):
    """trainer_kwargs with ModelCheckpoint and EarlyStopping on the monitored metric, a LearningRateMonitor and
    a TensorBoard logger; a model factory; self.hparams; ReduceLROnPlateau on a metric."""
    project("cli_custom")
    wine = importlib.import_module("wine")
    callbacks = [
        ModelCheckpoint(monitor="val_acc", mode="max"),
        EarlyStopping(monitor="val_acc", mode="max", patience=3),
        LearningRateMonitor(),
    ]
    search = api_search(
        tmp_path,
        lambda config: wine.WineClassifier(13, 3, **config["model"]),
        wine.WineData,
        {"model.hidden_dim": Int(8, 64, log=True), "model.lr": Float(1e-3, 5e-2, log=True)},
        "val_acc",
        "max",
        trainer_kwargs={"callbacks": callbacks, "logger": TrialLogger(TensorBoardLogger, save_dir="logs", name="wine")},
    )
    result = search.run()
    complete(result.trials, 3)
    best = result.best_trial
    assert best.checkpoint and Path(best.checkpoint).is_file() and "best.ckpt" not in best.checkpoint  # the project's
    assert not Path("logs").exists()  # the project's TensorBoard folder stays the project's
    L.seed_everything(trial_seed(0, best.number))
    model = wine.WineClassifier(13, 3, hidden_dim=best.params["model.hidden_dim"], lr=best.params["model.lr"])
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False)
    trainer.fit(model, wine.WineData())
    assert float(trainer.callback_metrics["val_acc"]) == pytest.approx(last(best), abs=1e-5)


def test_api_manual_optimization_gan(project, tmp_path):
    """automatic_optimization=False, two optimizers, toggle_optimizer/manual_backward."""
    project("gan")
    gan = importlib.import_module("gan")
    search = api_search(
        tmp_path,
        gan.GAN,
        gan.RingData,
        {"model.lr_g": Float(1e-4, 1e-2, log=True), "model.lr_d": Float(1e-4, 1e-2, log=True)},
        "val_dist",
        "min",
    )
    result = search.run()
    complete(result.trials, 3)
    best = result.best_trial
    L.seed_everything(trial_seed(0, best.number))
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False)
    trainer.fit(gan.GAN(lr_g=best.params["model.lr_g"], lr_d=best.params["model.lr_d"]), gan.RingData())
    assert float(trainer.callback_metrics["val_dist"]) == pytest.approx(last(best), abs=1e-5)


def test_api_several_validation_loaders_and_a_scheduler_on_a_metric(project, tmp_path):
    """Metric names with /dataloader_idx_N; configure_optimizers returns a dict with ReduceLROnPlateau."""
    project("trainer_script")
    shift = importlib.import_module("shift")
    monitor = "val_loss/dataloader_idx_0"
    search = api_search(
        tmp_path,
        shift.Regressor,
        shift.ShiftData,
        {"model.lr": Float(1e-3, 0.3, log=True), "model.hidden": Int(8, 64, log=True)},
        monitor,
        "min",
        trainer_kwargs={"callbacks": [ModelCheckpoint(monitor=monitor), EarlyStopping(monitor=monitor)]},
    )
    result = search.run()
    complete(result.trials, 3)
    assert "val_loss/dataloader_idx_1" in result.best_trial.attrs["metrics"]


def test_api_logger_instances_are_refused_with_what_to_pass(project, tmp_path):
    project("loggers")
    iris = importlib.import_module("iris")
    with pytest.raises(ConfigurationError, match="TrialLogger"):
        api_search(
            tmp_path,
            iris.LitClassifier,
            iris.IrisData,
            {"model.hidden_dim": Int(4, 32)},
            "val/acc",
            "max",
            trainer_kwargs={"logger": iris.make_loggers("logs")},
        )
    assert not (tmp_path / "runs").exists()  # refused before anything was written


def test_api_every_logger_gets_one_run_per_trial(project, tmp_path):
    """TensorBoard, CSV, W&B (offline) and MLflow (a local SQLite store): a run per trial, grouped by study."""
    wandb = pytest.importorskip("wandb")
    mlflow = pytest.importorskip("mlflow")
    from lightning.pytorch.loggers import MLFlowLogger, WandbLogger

    where = project("loggers")
    iris = importlib.import_module("iris")
    tracking = f"sqlite:///{where / 'mlflow.db'}"
    loggers = [
        TrialLogger(TensorBoardLogger, save_dir="logs", name="iris"),
        TrialLogger(CSVLogger, save_dir="logs", name="iris"),
        TrialLogger(WandbLogger, project="iris", offline=True),
        TrialLogger(MLFlowLogger, tracking_uri=tracking),
    ]
    search = api_search(
        tmp_path,
        iris.LitClassifier,
        iris.IrisData,
        {"model.hidden_dim": Int(4, 32), "model.learning_rate": Float(1e-3, 1e-1, log=True)},
        "val/acc",
        "max",
        n_trials=2,
        study_name="iris_study",
        trainer_kwargs={"logger": loggers},
    )
    result = search.run()
    complete(result.trials, 2)
    for t in result.trials:
        trial_dir = tmp_path / "runs" / "iris_study" / f"trial_{t.number}"
        assert list((trial_dir / "tb").glob("events.out.tfevents.*"))
        assert (trial_dir / "csv" / "metrics.csv").is_file()
        hparams = yaml.safe_load((trial_dir / "csv" / "hparams.yaml").read_text())
        assert hparams["model.hidden_dim"] == t.params["model.hidden_dim"]
        assert len(list(trial_dir.glob("wandb/offline-run-*"))) == 1
    assert wandb.run is None  # every trial's run was finished
    runs = mlflow.MlflowClient(tracking).search_runs(
        [mlflow.MlflowClient(tracking).get_experiment_by_name("iris_study").experiment_id]
    )
    assert sorted(r.info.run_name for r in runs) == ["trial_0", "trial_1"]
    assert not (where / "logs").exists()


# --- the Trainer-script route -------------------------------------------------------------------------------


def test_script_route_two_copies_on_one_study_with_pruning(project):
    """tune.py (ScriptSearch) started twice at once, as a SLURM array or two terminals would."""
    where = project("trainer_script")
    # both copies import torch and Lightning, then wait for each other: on a loaded machine one copy's start-up
    # took as long as the other's six trials, and it found the study done (the test's barrier, not the project's)
    barrier = where / "barrier"
    barrier.mkdir()
    (barrier / "sitecustomize.py").write_text(
        "import os, pathlib, time\nimport lightning.pytorch\nimport lightning_hpt\n"
        f"here = pathlib.Path({str(barrier)!r})\n(here / f'ready_{{os.getpid()}}').touch()\n"
        "end = time.monotonic() + 120\n"
        "while len(list(here.glob('ready_*'))) < 2 and time.monotonic() < end:\n    time.sleep(0.05)\n"
    )
    procs = [script("tune.py", "--trials", "6", "--max_epochs", "3", cwd=where, path=(str(barrier),)) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-3000:] for _, err in outs]
    assert len(list(barrier.glob("ready_*"))) == 2  # the barrier ran in both
    trials = open_storage(str(where / "tune" / "studies.db")).trials("shift")
    assert len(trials) == 6 and {t.number for t in trials} == set(range(6))
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials), [
        (t.state, t.error) for t in trials
    ]
    assert len({t.pid for t in trials}) == 2  # both copies trained trials
    best = min((t for t in trials if t.state is TrialState.COMPLETE), key=lambda t: t.value)
    train = importlib.import_module("train")
    p = best.params
    args = [f"--lr={p['lr']}", f"--hidden={p['hidden']}", f"--batch_size={p['batch_size']}", "--max_epochs=3"]
    metrics = train.main([*args, f"--seed={best.number}", "--log_dir=refit"])
    assert metrics[train.MONITOR] == pytest.approx(last(best), abs=1e-5)


def test_script_route_gan(project, tmp_path):
    project("gan")
    gan = importlib.import_module("gan")
    search = ScriptSearch(
        space={"lr_g": Float(1e-4, 1e-2, log=True), "lr_d": Float(1e-4, 1e-2, log=True)},
        monitor="val_dist",
        mode="min",
        n_trials=2,
        storage=str(tmp_path / "gan.db"),
        root=str(tmp_path / "runs"),
        seed=0,
    )
    for trial in search:
        L.seed_everything(trial.number)
        trainer = L.Trainer(
            max_epochs=2,
            callbacks=[trial.callback()],
            logger=trial.logger("tensorboard"),
            enable_progress_bar=False,
        )
        trainer.fit(gan.GAN(**trial.params), gan.RingData())
    complete(search.trials, 2)
