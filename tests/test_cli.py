"""The lightning-hpt command: LightningCLI configs plus a search section, trials built as LightningCLI builds them."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
import yaml
from conftest import TinyData, TinyModel
from lightning.pytorch.cli import LightningCLI

from lightning_hpt.cli import SearchCLI, main
from lightning_hpt.cli.parsing import ARGS_WARNING
from lightning_hpt.cli.space import domain_from_yaml
from lightning_hpt.lightning.runner import trial_seed
from lightning_hpt.space import Categorical, Float, Int
from lightning_hpt.storage import open_storage
from lightning_hpt.trial import TrialState

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "cli"

FIT = {
    "model": {"class_path": "conftest.TinyModel", "init_args": {"lr": 0.05, "hidden": 8}},
    "data": {"class_path": "conftest.TinyData", "init_args": {"batch_size": 32}},
    "trainer": {"accelerator": "cpu", "devices": 1, "max_epochs": 2, "logger": False, "num_sanity_val_steps": 0},
}
SPACE = {"model.lr": {"type": "float", "low": 1e-3, "high": 0.1, "log": True}, "data.batch_size": {"choices": [16, 32]}}


class RecordingCallback(L.Callback):
    """Appends its process id and the Trainer's root directory to ``path`` when fit starts (a user callback)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        with open(self.path, "a") as f:
            f.write(f"{os.getpid()} {trainer.default_root_dir}\n")


class LinkedCLI(LightningCLI):
    """A project's own CLI: fixed classes, and the model's width linked to the batch size."""

    def __init__(self, **kwargs) -> None:
        super().__init__(TinyModel, TinyData, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.batch_size", "model.hidden")


def write(path: Path, data: dict) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


def search_section(tmp_path: Path, space: dict | None = None, **kw) -> dict:
    section = {
        "space": space or SPACE,
        "n_trials": 2,
        "seed": 0,
        "root": str(tmp_path / "runs"),
        "verbose": False,
        "monitor": "val_loss",
        "mode": "min",
        **kw,
    }
    return {"search": section}


def run(*argv: str, **kw) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err, **kw)
    return code, out.getvalue(), err.getvalue()


def trials(tmp_path: Path, study: str = "default") -> list:
    return open_storage(str(tmp_path / "runs" / "studies.db")).trials(study)


@pytest.fixture
def configs(tmp_path: Path) -> tuple[str, str]:
    return write(tmp_path / "fit.yaml", FIT), write(tmp_path / "search.yaml", search_section(tmp_path))


def test_search_builds_trials_with_lightning_cli_and_writes_their_configs(tmp_path, configs):
    fit, search = configs
    code, out, err = run("search", "--config", fit, "--config", search)
    assert code == 0, err
    done = trials(tmp_path)
    assert [t.state for t in done] == [TrialState.COMPLETE] * 2
    for t in done:
        # short forms became the config's own paths
        assert set(t.params) == {"model.init_args.lr", "data.init_args.batch_size"}
        saved = yaml.safe_load((tmp_path / "runs" / "default" / f"trial_{t.number}" / "config.yaml").read_text())
        assert saved["model"]["init_args"]["lr"] == t.params["model.init_args.lr"]
        assert saved["data"]["init_args"]["batch_size"] == t.params["data.init_args.batch_size"]
        assert saved["model"]["init_args"]["hidden"] == 8  # the rest of the user's config is kept
        assert saved["seed_everything"] == trial_seed(0, t.number)  # no seed in the config: the trial's own
        shown = run("best", "--root", str(tmp_path / "runs"), "--trial", str(t.number), "--format", "yaml")
        assert shown[0] == 0 and yaml.safe_load(shown[1])["seed"] == trial_seed(0, t.number), shown[2]
        assert saved["trainer"]["default_root_dir"] is None  # the saved config is the user's, ready for fit
        ckpt = torch.load(t.checkpoint, weights_only=True)
        assert ckpt["hyper_parameters"]["lr"] == t.params["model.init_args.lr"]
    best = tmp_path / "runs" / "default" / "best.yaml"
    assert f"best config (trial {min(done, key=lambda t: t.value).number}): {best}" in out
    assert (
        yaml.safe_load(best.read_text())["model"]["init_args"]["lr"]
        == min(done, key=lambda t: t.value).params["model.init_args.lr"]
    )


def test_user_callbacks_loggers_and_fixed_seed_are_kept(tmp_path):
    log = tmp_path / "fit_starts.txt"
    fit = dict(
        FIT,
        seed_everything=123,
        trainer=dict(
            FIT["trainer"],
            logger={
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(tmp_path / "csv")},
            },
            callbacks=[{"class_path": "test_cli.RecordingCallback", "init_args": {"path": str(log)}}],
        ),
    )
    code, _, err = run(
        "search",
        "--config",
        write(tmp_path / "fit.yaml", fit),
        "--config",
        write(tmp_path / "search.yaml", search_section(tmp_path)),
    )
    assert code == 0, err
    starts = [line.split() for line in log.read_text().splitlines()]
    assert starts == [[str(os.getpid()), str(tmp_path / "runs" / "default" / f"trial_{n}")] for n in (0, 1)]
    assert not (tmp_path / "csv").exists()  # the config's logger writes each trial's own run in the trial
    for n in (0, 1):
        saved = yaml.safe_load((tmp_path / "runs" / "default" / f"trial_{n}" / "config.yaml").read_text())
        assert saved["seed_everything"] == 123  # an integer seed in the config is the user's choice: kept
        assert saved["trainer"]["logger"]["init_args"]["save_dir"] == str(tmp_path / "csv")  # as the project has it
        assert (tmp_path / "runs" / "default" / f"trial_{n}" / "csv" / "metrics.csv").exists()
        # best --format json names the seed the trial ran with: the config's, not the one derived for the trial
        code, out, err = run("best", "--root", str(tmp_path / "runs"), "--trial", str(n), "--format", "json")
        assert code == 0 and yaml.safe_load(out)["seed"] == 123, err


@pytest.mark.parametrize("logger", [None, True])
def test_a_config_without_a_logger_logs_each_trial_as_the_python_api_does(tmp_path, logger):
    """Lightning's default logger (no ``trainer.logger``) would write ``lightning_logs/version_k`` in each trial."""
    trainer = {k: v for k, v in FIT["trainer"].items() if k != "logger"}
    fit = dict(FIT, trainer=trainer if logger is None else {**trainer, "logger": logger})
    search = write(tmp_path / "search.yaml", search_section(tmp_path))
    code, _, err = run("search", "--config", write(tmp_path / "fit.yaml", fit), "--config", search)
    assert code == 0, err
    for n in (0, 1):
        trial = tmp_path / "runs" / "default" / f"trial_{n}"
        assert not (trial / "lightning_logs").exists()
        with open(trial / "csv" / "metrics.csv") as f:
            assert "val_loss" in f.readline()
        assert (trial / "tb").is_dir()


def test_command_line_overrides_and_print_config(tmp_path, configs, capsys):
    fit, search = configs
    code, _, _ = run(
        "search",
        "--config",
        fit,
        "--config",
        search,
        "--search.n_trials",
        "7",
        "--trainer.max_epochs",
        "3",
        "--print_config",
    )
    assert code == 0
    merged = yaml.safe_load(capsys.readouterr().out)
    assert merged["search"]["n_trials"] == 7 and merged["search"]["space"] == SPACE
    assert merged["trainer"]["max_epochs"] == 3 and merged["model"]["init_args"]["lr"] == 0.05
    assert not (tmp_path / "runs").exists()  # printing runs nothing


def test_print_config_masks_the_storage_password(tmp_path, configs, capsys):
    fit, search = configs
    url = "postgresql+psycopg://hpt:TopSecret99@db.example:5432/hpt"
    code, _, _ = run("search", "--config", fit, "--config", search, "--search.storage", url, "--print_config")
    assert code == 0
    captured = capsys.readouterr()
    assert "TopSecret99" not in captured.out + captured.err
    merged = yaml.safe_load(captured.out)
    assert merged["search"]["storage"] == "postgresql+psycopg://hpt:***@db.example:5432/hpt"
    assert "masked" in captured.err and "PGPASSWORD" in captured.err


@pytest.mark.parametrize(
    ("space", "expected"),
    [
        ({"model.lrr": {"type": "float", "low": 0.01, "high": 0.1}}, r"'model.lrr' is not in the config.*'model.lr'"),
        (
            {"model.init_args.hiden": {"type": "int", "low": 4, "high": 8}},
            r"nearest valid keys: \['model.init_args.hidden'",
        ),
        ({"optimizer.lr": {"type": "float", "low": 0.01, "high": 0.1}}, r"no optimizer \(it is null\)"),
        (
            {"model.hidden": {"type": "float", "low": 4, "high": 16}},
            r"space\['model.init_args.hidden'\].*does not fit.*int",
        ),
        (
            {"trainer.max_epochs": {"choices": ["two", "three"]}},
            r"does not fit the argument's type.*trainer.max_epochs='two'",
        ),
        ({"model.lr": {"type": "float", "low": 0.1, "high": 0.01}}, r"low < high must hold"),
    ],
)
def test_invalid_space_is_refused_before_any_trial(tmp_path, space, expected):
    code, _, err = run(
        "search",
        "--config",
        write(tmp_path / "fit.yaml", FIT),
        "--config",
        write(tmp_path / "search.yaml", search_section(tmp_path, space)),
    )
    assert code == 2
    assert re.search(expected, err, flags=re.DOTALL), err
    assert not (tmp_path / "runs").exists()  # no database, no trial directory


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("strategy", "annealing", r"strategy must be one of \['grid', 'random', 'sobol', 'bayes'\].*'annealing'"),
        ("pruner", "sometimes", r"unknown pruner='sometimes'; use one of 'none', 'median', 'asha', 'hyperband'"),
        ("strategy", {"name": "grd", "points": 3}, r"unknown strategy name='grd'; use one of \['grid'"),
        ("executor", "cluster", r"unknown executor name='cluster'; use one of \[.*'local'"),
    ],
)
def test_unknown_plugin_names_are_refused_before_any_trial(tmp_path, option, value, expected):
    code, _, err = run(
        "search",
        "--config",
        write(tmp_path / "fit.yaml", FIT),
        "--config",
        write(tmp_path / "search.yaml", search_section(tmp_path, **{option: value})),
    )
    assert code == 2 and re.search(expected, err), err
    assert not (tmp_path / "runs").exists()


def test_param_constraints_name_the_space_keys_short_or_full(tmp_path):
    space = {"model.hidden": {"type": "int", "low": 2, "high": 16}, "model.init_args.lr": SPACE["model.lr"]}
    rules = ["model.hidden * 2 <= 12 and model.lr <= 0.05", "model.init_args.hidden >= 3"]
    search = search_section(tmp_path, space, n_trials=3, param_constraints=rules)
    code, _, err = run(
        "search", "--config", write(tmp_path / "fit.yaml", FIT), "--config", write(tmp_path / "s.yaml", search)
    )
    assert code == 0, err
    done = trials(tmp_path)
    assert len(done) == 3 and all(3 <= t.params["model.init_args.hidden"] <= 6 for t in done)
    assert all(t.params["model.init_args.lr"] <= 0.05 for t in done)
    stored = open_storage(str(tmp_path / "runs" / "studies.db")).load_study("default").constraints
    assert [str(c) for c in stored] == [
        "model.init_args.hidden * 2 <= 12 and model.init_args.lr <= 0.05",  # the full keys, the rest as written
        "model.init_args.hidden >= 3",
    ]


def test_a_param_constraint_on_an_unknown_key_is_refused_with_the_nearest_keys(tmp_path):
    space = {"model.hidden": {"type": "int", "low": 2, "high": 16}, "model.lr": SPACE["model.lr"]}
    search = search_section(tmp_path, space, param_constraints=["model.hiden * model.lr <= 1"])
    code, _, err = run(
        "search", "--config", write(tmp_path / "fit.yaml", FIT), "--config", write(tmp_path / "s.yaml", search)
    )
    assert code == 2
    assert re.search(
        r"search\.param_constraints: 'model\.hiden \* model\.lr <= 1' names 'model\.hiden', which is not a key of"
        r" search\.space; nearest keys: \['model\.hidden', 'model\.init_args\.hidden'",
        err,
    ), err
    assert not (tmp_path / "runs").exists()


def test_yaml_domains():
    assert domain_from_yaml("k", {"type": "float", "low": "1e-4", "high": 0.1, "log": True}) == Float(
        1e-4, 0.1, log=True
    )
    assert domain_from_yaml("k", {"choices": [32, 64]}) == Categorical([32, 64])
    assert domain_from_yaml("k", [1, 2]) == Categorical([1, 2])
    assert domain_from_yaml("k", {"type": "int", "low": 1, "high": 4}) == Int(1, 4)
    with pytest.raises(ValueError, match=r"space\['k'\]: domain type must be one of"):
        domain_from_yaml("k", {"type": "normal", "low": 0, "high": 1})


def test_resume_counts_the_study_and_refuses_a_changed_config(tmp_path, configs):
    fit, search = configs
    assert run("search", "--config", fit, "--config", search, "--search.n_trials", "1")[0] == 0
    code, _, err = run("search", "--config", fit, "--config", search, "--search.n_trials", "2")
    assert code == 0, err
    assert [t.number for t in trials(tmp_path)] == [0, 1]
    code, _, err = run("search", "--config", fit, "--config", search, "--search.n_trials", "3", "--model.hidden", "6")
    assert code == 2 and "ran with another config" in err and "model.init_args.hidden: 8 -> 6" in err, err
    assert len(trials(tmp_path)) == 2


def test_ctrl_c_in_a_trial_is_recorded_and_exits_130(tmp_path):
    """RELIABILITY row 2 through the command: the trial is FAILED ("interrupted"), the exit status is 130."""
    fit = dict(FIT, model={"class_path": "conftest.TinyModel", "init_args": {"interrupt_at_epoch": 0}})
    code, _, err = run(
        "search",
        "--config",
        write(tmp_path / "fit.yaml", fit),
        "--config",
        write(tmp_path / "search.yaml", search_section(tmp_path)),
    )
    assert code == 130 and "run the same command to resume" in err
    (t,) = trials(tmp_path)
    assert t.state is TrialState.FAILED and t.error.startswith("interrupted")


def test_show_best_and_report_read_the_study(tmp_path, monkeypatch):
    fit = write(tmp_path / "fit.yaml", FIT)
    search = write(
        tmp_path / "search.yaml", search_section(tmp_path, enqueue=[{"model.lr": 0.02, "data.batch_size": 16}])
    )
    assert run("search", "--config", fit, "--config", search)[0] == 0
    done = trials(tmp_path)
    assert done[0].params == {"model.init_args.lr": 0.02, "data.init_args.batch_size": 16}  # enqueued: run first
    best = min(done, key=lambda t: t.value)
    code, out, err = run("show", "--config", search)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("study 'default': 2 trials (2 complete); val_loss (min)")
    header = lines[1].split()
    assert header[:3] == ["#", "state", "val_loss"] and "lr" in header and "batch_size" in header
    assert [ln.split()[0] for ln in lines[2:4]] == ["0", "1"]
    assert lines[-1] == f"best: trial {best.number}, val_loss={best.value:.6g}"

    code, out, err = run("best", "default", "--root", str(tmp_path / "runs"))
    assert code == 0, err
    config = yaml.safe_load(out)
    assert config["model"]["init_args"]["lr"] == best.params["model.init_args.lr"]
    assert config["data"]["init_args"]["batch_size"] == best.params["data.init_args.batch_size"]

    code, _, err = run("best", "nope", "--root", str(tmp_path / "runs"))
    assert code == 1 and "nope" in err and "default" in err  # the known studies are listed

    try:
        import lightning_hpt.report.html  # noqa: F401
    except ImportError:
        pass
    else:
        code, out, err = run("report", "--config", search, "-o", str(tmp_path / "r.html"))
        assert code == 0 and (tmp_path / "r.html").stat().st_size > 0 and str(tmp_path / "r.html") in out, err
    monkeypatch.setitem(sys.modules, "lightning_hpt.report.html", None)  # as if the module were missing
    code, _, err = run("report", "--config", search)
    assert code == 1 and "report needs lightning_hpt.report.html" in err


def test_project_cli_class_applies_its_own_parsing_rules(tmp_path):
    """--cli names the project's LightningCLI subclass: its fixed classes and links apply to every trial."""
    fit = {"model": {"lr": 0.05}, "data": {"batch_size": 8}, "trainer": FIT["trainer"]}
    section = search_section(tmp_path, {"data.batch_size": {"choices": [4, 12]}}, strategy="grid", n_trials=None)
    code, _, err = run(
        "search",
        "--cli",
        "test_cli.LinkedCLI",
        "--config",
        write(tmp_path / "fit.yaml", fit),
        "--config",
        write(tmp_path / "search.yaml", section),
    )
    assert code == 0, err
    done = trials(tmp_path)
    assert sorted(t.params["data.batch_size"] for t in done) == [4, 12]
    for t in done:
        ckpt = torch.load(t.checkpoint, weights_only=True)
        assert ckpt["hyper_parameters"]["hidden"] == t.params["data.batch_size"]  # the link made it so


def test_search_cli_runs_search_from_the_projects_script(tmp_path):
    section = search_section(tmp_path, {"model.lr": {"choices": [0.01, 0.05]}}, strategy="grid", n_trials=None)
    cli = SearchCLI(
        TinyModel,
        TinyData,
        trainer_defaults={"num_sanity_val_steps": 0, "logger": False},
        args=["search", "--config", write(tmp_path / "search.yaml", section), "--trainer.max_epochs", "1"],
    )
    assert cli.exit_code == 0
    done = trials(tmp_path)
    assert sorted(t.params["model.lr"] for t in done) == [0.01, 0.05]
    assert all(len(t.intermediate) == 1 for t in done)  # the command-line override reached every trial
    with pytest.raises(SystemExit) as e:
        SearchCLI(
            TinyModel,
            TinyData,
            args=["search", "--config", write(tmp_path / "bad.yaml", search_section(tmp_path, {"model.nope": [1, 2]}))],
        )
    assert e.value.code == 2


@pytest.mark.slow
def test_scheduler_keys_in_worker_processes(tmp_path):
    """With the runner's build_trial hook: lr_scheduler.* keys, and trials built by the CLI inside worker processes."""
    log = tmp_path / "fit_starts.txt"
    fit = dict(
        FIT,
        optimizer={"class_path": "torch.optim.SGD", "init_args": {"lr": 0.05}},
        lr_scheduler={"class_path": "torch.optim.lr_scheduler.StepLR", "init_args": {"step_size": 1}},
        trainer=dict(
            FIT["trainer"], callbacks=[{"class_path": "test_cli.RecordingCallback", "init_args": {"path": str(log)}}]
        ),
    )
    section = search_section(
        tmp_path,
        {"lr_scheduler.gamma": {"choices": [0.1, 0.9]}},
        strategy="grid",
        n_trials=None,
        executor={"name": "process", "workers": 1, "devices": []},
    )
    code, _, err = run(
        "search", "--config", write(tmp_path / "fit.yaml", fit), "--config", write(tmp_path / "search.yaml", section)
    )
    assert code == 0, err
    done = trials(tmp_path)
    assert [t.state for t in done] == [TrialState.COMPLETE] * 2
    for t in done:
        ckpt = torch.load(t.checkpoint, weights_only=True)
        assert ckpt["lr_schedulers"][0]["gamma"] == t.params["lr_scheduler.init_args.gamma"]
    pids = {line.split()[0] for line in log.read_text().splitlines()}
    assert pids and str(os.getpid()) not in pids  # built and trained in a worker


@pytest.mark.slow
def test_example_project_search_best_then_fit(tmp_path, monkeypatch):
    """The examples/cli project end to end: search, best, then LightningCLI fit with the best config."""
    monkeypatch.chdir(EXAMPLE)
    monkeypatch.syspath_prepend(str(EXAMPLE))  # as the command does for its working directory
    root = tmp_path / "runs"
    code, out, err = run(
        "search",
        "--config",
        "fit.yaml",
        "--config",
        "search.yaml",
        "--search.n_trials",
        "2",
        "--trainer.max_epochs",
        "2",
        "--search.root",
        str(root),
    )
    assert code == 0 and "best config (trial" in out, err
    storage = open_storage(str(root / "studies.db"))
    done = storage.trials("digits_cli")
    assert [t.state for t in done] == [TrialState.COMPLETE] * 2
    best = max(done, key=lambda t: t.value)
    code, out, err = run("best", "digits_cli", "--root", str(root), "-o", str(tmp_path / "best.yaml"))
    assert code == 0 and f"its checkpoint: {best.checkpoint}" in out, (out, err)
    # the command's entry point in a fresh interpreter reads the same study
    shown = subprocess.run(
        [sys.executable, "-m", "lightning_hpt", "show", "digits_cli", "--root", str(root)],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(EXAMPLE)},
    )
    assert shown.returncode == 0 and "best: trial" in shown.stdout, shown.stderr
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=ARGS_WARNING)  # args= while pytest has command-line arguments
        cli = LightningCLI(
            args=[
                "fit",
                "--config",
                str(tmp_path / "best.yaml"),
                "--trainer.default_root_dir",
                str(tmp_path / "fit"),
                "--trainer.enable_progress_bar",
                "false",
            ]
        )
    # the best config trains the best trial's model again: same parameters, same seed, same validation curve
    assert cli.model.hparams.hidden_dim == best.params["model.init_args.hidden_dim"]
    assert cli.trainer.optimizers[0].defaults["lr"] == pytest.approx(best.params["optimizer.init_args.lr"])
    assert float(cli.trainer.callback_metrics["val_acc"]) == pytest.approx(best.intermediate[1], abs=1e-6)
    assert float(cli.trainer.callback_metrics["val_loss"]) == pytest.approx(best.attrs["metrics"]["val_loss"], abs=1e-6)


def test_cli_result_loads_tests_and_refits_the_best_model(tmp_path, configs):
    """Issue 14: load_best_model, test and refit work for a CLI search, and for its result read back from storage."""
    from lightning_hpt.cli import run_search
    from lightning_hpt.result import SearchResult

    fit, search = configs
    result = run_search(["--config", fit, "--config", search], stream=io.StringIO())
    model = result.load_best_model()
    assert isinstance(model, TinyModel) and model.hparams.lr == result.best_params["model.init_args.lr"]
    assert result.test()["test_loss"] >= 0
    refit = result.refit(max_epochs=1)
    assert isinstance(refit, TinyModel) and (tmp_path / "runs" / "default" / "refit" / "model.ckpt").is_file()

    stored = SearchResult.load(
        tmp_path / "runs" / "studies.db", "default", builder=result.builder, root=tmp_path / "runs"
    )
    assert (
        stored.best_trial
        == open_storage(str(tmp_path / "runs" / "studies.db")).trials("default")[stored.best_trial.number]
    )
    again = stored.load_best_model()
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values(), strict=True))
    with pytest.raises(Exception, match="needs the trials' builder"):
        SearchResult.load(tmp_path / "runs" / "studies.db", "default").load_best_model()


def test_ddp_in_the_configs_trainer_is_refused_in_process(tmp_path):
    """Issue 14: the in-process DDP check sees the Trainer the CLI config builds (it saw only trainer_kwargs)."""
    ddp = {**FIT, "trainer": {**FIT["trainer"], "strategy": "ddp", "devices": 2}}
    fit = write(tmp_path / "fit.yaml", ddp)
    code, _, err = run("search", "--config", fit, "--config", write(tmp_path / "s.yaml", search_section(tmp_path)))
    assert code != 0 and "ProcessExecutor" in err and "'strategy': 'ddp'" in err
    assert trials(tmp_path) == []  # refused before any trial ran


def test_lightning_clis_warning_about_the_configs_optimizer_is_shown_once_a_search(tmp_path):
    # TinyModel has its own configure_optimizers, which the config's optimizer overrides in every trial
    fit = dict(FIT, optimizer={"class_path": "torch.optim.SGD", "init_args": {"lr": 0.05}})
    section = search_section(tmp_path, {"optimizer.init_args.lr": {"type": "float", "low": 0.01, "high": 0.1}})
    section["search"]["n_trials"] = 3
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        code, _, err = run(
            "search", "--config", write(tmp_path / "fit.yaml", fit), "--config", write(tmp_path / "s.yaml", section)
        )
    assert code == 0, err
    said = [w for w in caught if "configure_optimizers` will be overridden by" in str(w.message)]
    assert len(said) == 1, [str(w.message) for w in said]
    assert len(trials(tmp_path)) == 3
