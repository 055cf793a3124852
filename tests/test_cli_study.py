"""The study commands (show, best, report, retry, delete) and what the command says when a search cannot go on."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import FAST, TinyData, TinyModel

from lightning_hpt.cli import main
from lightning_hpt.lightning.runner import trial_seed
from lightning_hpt.storage import SQLStorage, open_storage
from lightning_hpt.testing.storage import PARAMS, study_info
from lightning_hpt.trial import TrialState


class Flaky(TinyModel):
    """Fails in training_step while the file ``flag`` exists (the bug), and trains normally once it is gone."""

    def __init__(self, flag: str = "", lr: float = 0.05, hidden: int = 8) -> None:
        super().__init__(lr=lr, hidden=hidden)
        self.flag = flag

    def training_step(self, batch, batch_idx):
        if self.flag and Path(self.flag).exists():
            raise ValueError(f"the bug in {self.flag}, at batch {batch_idx}")
        x, y = batch
        return torch.nn.functional.mse_loss(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self(x), y))


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def configs(tmp_path: Path, flag: Path, n_trials: int = 3) -> list[str]:
    fit = {
        "model": {"class_path": f"{__name__}.Flaky", "init_args": {"flag": str(flag)}},
        "data": {"class_path": "conftest.TinyData"},
        "trainer": {**FAST, "enable_progress_bar": False},
    }
    space = {"model.lr": {"type": "float", "low": 1e-3, "high": 0.1, "log": True}, "model.hidden": {"choices": [4, 8]}}
    search = {"space": space, "n_trials": n_trials, "seed": 0, "root": str(tmp_path / "runs"), "verbose": False}
    (tmp_path / "fit.yaml").write_text(yaml.safe_dump(fit))
    (tmp_path / "search.yaml").write_text(yaml.safe_dump({"search": search}))
    return ["--config", str(tmp_path / "fit.yaml"), "--config", str(tmp_path / "search.yaml")]


def test_search_without_a_config_says_what_to_give():
    code, _, err = run("search")
    assert code == 2 and "no config given" in err and "--config fit.yaml --config search.yaml" in err
    assert "arguments are required" not in err


@pytest.mark.parametrize("command", ["show", "best", "report", "retry", "delete"])
def test_readers_never_create_a_database(tmp_path, monkeypatch, command):
    """Issue: show X --storage missing_dir/typo.db created the directory and an empty database."""
    monkeypatch.chdir(tmp_path)
    for storage in ("missing_dir/typo.db", f"sqlite:///{tmp_path}/missing_dir/typo.db", "typo.db"):
        code, _, err = run(command, "x", "--storage", storage)
        assert code == 1 and "no study database at" in err and "typo.db" in err, err
    assert list(tmp_path.iterdir()) == []


def test_a_missing_study_is_named_for_a_command_line_user(tmp_path):
    storage = SQLStorage(f"sqlite:///{tmp_path / 'studies.db'}")
    storage.open_study(study_info("mnist"))
    code, _, err = run("show", "mnsit", "--storage", str(tmp_path / "studies.db"))
    assert code == 1 and "no study 'mnsit'" in err and "['mnist']" in err and "did you mean" in err
    assert "open_study" not in err


def one_complete_trial(tmp_path: Path) -> Path:
    """A study database with study "api" made through the Python API and one COMPLETE trial of PARAMS."""
    db = tmp_path / "studies.db"
    storage = SQLStorage(f"sqlite:///{db}")
    storage.open_study(study_info("api"))
    t = storage.create_trial("api", PARAMS)
    storage.finish_trial("api", t.number, state=TrialState.COMPLETE, value=0.9)
    return db


def test_best_of_a_python_api_study_says_why_and_writes_its_parameters(tmp_path):
    """Issue: best on a study made through the Python API blamed a missing directory; it has no config.yaml."""
    db = one_complete_trial(tmp_path)
    code, out, err = run("best", "api", "--storage", str(db))
    assert code == 0 and "made through the Python API" in err and "no config.yaml" in err and "--format json" in err
    seed = trial_seed(7, 0)  # the study's seed is 7
    assert yaml.safe_load(out) == {
        "study": "api",
        "trial": 0,
        "monitor": "val_acc",
        "value": 0.9,
        "seed": seed,
        "params": PARAMS,
    }
    code, out, _ = run("best", "api", "--storage", str(db), "--format", "json", "-o", str(tmp_path / "best.json"))
    assert code == 0 and "best parameters (trial 0)" in out
    assert json.loads((tmp_path / "best.json").read_text())["params"] == PARAMS


def test_best_of_a_script_study_gives_the_seed_and_hydra_overrides_that_train_its_value_again(tmp_path):
    """Issue: best of a ScriptSearch study gave the parameters but not the trial's seed, so the project's own
    training (a Hydra train.py) could not reproduce the value; and a Hydra project had to turn the YAML into
    name=value overrides by hand."""
    import lightning.pytorch as L

    from lightning_hpt import Categorical, Float, ScriptSearch

    space = {"model.lr": Float(0.01, 0.1, log=True), "model.act": Categorical(["it's relu", None, True])}

    def fit(lr: float, seed: int) -> float:
        L.seed_everything(seed, workers=True)
        trainer = L.Trainer(**{**FAST, "max_epochs": 1}, callbacks=callbacks, default_root_dir=str(tmp_path / "fit"))
        trainer.fit(TinyModel(lr=lr), TinyData())
        return float(trainer.callback_metrics["val_loss"])

    search = ScriptSearch(space=space, monitor="val_loss", root=str(tmp_path), n_trials=1, seed=3, verbose=False)
    for trial in search:
        callbacks = [trial.callback()]
        fit(trial.params["model.lr"], trial.seed)
    db = str(tmp_path / "studies.db")
    code, out, err = run("best", "--storage", db, "--format", "json")
    best = json.loads(out)
    assert code == 0 and best["seed"] == trial_seed(3, 0), err
    callbacks = []
    assert fit(best["params"]["model.lr"], best["seed"]) == best["value"]
    code, out, _ = run("best", "--storage", db, "--format", "overrides")
    lines = dict(line.split("=", 1) for line in out.splitlines())
    assert code == 0 and float(lines["model.lr"]) == best["params"]["model.lr"]
    act = {"it's relu": "'it\\'s relu'", None: "null", True: "true"}[best["params"]["model.act"]]
    assert lines["model.act"] == act


def test_an_output_path_that_cannot_be_written_is_an_error_naming_it(tmp_path):
    """Issue: report/best -o DIR and export -o FILE/x.csv ended with an IsADirectoryError (NotADirectoryError)."""
    db = one_complete_trial(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "afile").write_text("mine")
    before = sorted(tmp_path.rglob("*"))
    for command, output, why in [
        ("report", tmp_path / "out", "it is a directory; name a file in it"),
        ("best", tmp_path / "out", "it is a directory; name a file in it"),
        ("export", tmp_path / "afile" / "t.csv", f"{tmp_path / 'afile'} is a file, not a directory"),
    ]:
        code, out, err = run(command, "api", "--storage", str(db), "-o", str(output))
        assert code == 1 and f"cannot write {str(output)!r}: {why}" in err and out == "", err
    assert sorted(p for p in tmp_path.rglob("*") if not p.name.startswith("studies.db")) == [
        p for p in before if not p.name.startswith("studies.db")
    ]
    assert (tmp_path / "afile").read_text() == "mine"


def test_show_into_a_closed_pipe_ends_quietly(tmp_path):
    """Issue: ``lightning-hpt show STUDY | head -2`` ended with a BrokenPipeError traceback."""
    db = tmp_path / "studies.db"
    storage = SQLStorage(f"sqlite:///{db}")
    storage.open_study(study_info("api"))
    for _ in range(3):
        t = storage.create_trial("api", PARAMS)
        storage.finish_trial("api", t.number, state=TrialState.COMPLETE, value=0.9)
    cmd = [sys.executable, "-m", "lightning_hpt", "show", "api", "--storage", str(db)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader is gone before the command writes anything
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141 and "Traceback" not in err, err


def test_failed_search_exits_1_shows_errors_and_goes_on_after_retry(tmp_path):
    """Issue 13 item 5: exit non-zero with no COMPLETE trial, errors in show, retry reruns under the same numbers."""
    flag = tmp_path / "bug"
    flag.touch()
    args = configs(tmp_path, flag)
    code, _, err = run("search", *args)
    assert code == 1 and ("no COMPLETE trial" in err or "failed with this error" in err), err
    assert err.count("ValueError: the bug in") == 1 and "lightning-hpt retry" in err
    code, out, _ = run("show", "--config", str(tmp_path / "search.yaml"))
    header, *rows = out.splitlines()[1:4]
    assert code == 0 and header.split()[-1] == "error" and all("ValueError: the bug in" in r for r in rows), out
    flag.unlink()  # the bug is fixed
    assert run("search", *args)[0] == 1  # the study is full: it still says why, and how to go on
    code, out, _ = run("retry", "--config", str(tmp_path / "search.yaml"))
    assert code == 0 and "trials 0, 1, 2 are queued again" in out, out
    code, out, err = run("search", *args)
    assert code == 0, err
    trials = open_storage(tmp_path / "runs" / "studies.db", create=False).trials("default")
    assert [(t.number, t.state) for t in trials] == [(n, TrialState.COMPLETE) for n in range(3)]
    _, out, _ = run("retry", "--config", str(tmp_path / "search.yaml"))
    assert out.endswith("has no FAILED trial: nothing to retry\n")


DRIVER = """
import sys
sys.path.insert(0, {tests!r})
from conftest import FAST, TinyData, TinyModel
from lightning_hpt import HyperparameterSearch, Float
HyperparameterSearch(
    lambda cfg: TinyModel(sleep=0.2, marker={marker!r}, **cfg["model"]), TinyData, {{"model.lr": Float(0.01, 0.2)}},
    root={root!r}, study_name="shared", n_trials=2, trainer_kwargs=dict(FAST), verbose=False,
).run()
"""


def test_delete_is_refused_while_another_driver_runs_the_study(tmp_path):
    marker = tmp_path / "running"
    script = DRIVER.format(tests=str(Path(__file__).parent), marker=str(marker), root=str(tmp_path))
    driver = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not marker.exists() and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    db = str(tmp_path / "studies.db")
    code, _, err = run("delete", "shared", "--storage", db)
    assert code == 1 and "has RUNNING trials: trial 0" in err and "--force" in err, err
    assert run("retry", "shared", "--storage", db)[0] == 0  # nothing FAILED: the running driver is left alone
    assert driver.wait(timeout=300) == 0, driver.stderr.read()
    trials = open_storage(db, create=False).trials("shared")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2  # the driver never noticed
    code, out, _ = run("delete", "shared", "--storage", db)
    assert code == 0 and "deleted study 'shared' (2 trials)" in out and "left in place" in out
    assert (tmp_path / "shared").is_dir()  # the files are the user's to remove
    code, _, err = run("show", "shared", "--storage", db)
    assert code == 1 and "no study 'shared'" in err


@pytest.mark.parametrize("top", ["-1", "0", "ten"])
def test_show_top_must_be_a_count_and_is_refused_before_any_output(tmp_path, top, capsys):
    open_storage(str(tmp_path / "studies.db")).open_study(study_info("s"))
    code, out, err = run("show", "s", "--root", str(tmp_path), "--top", top)
    err += capsys.readouterr().err  # argparse's own refusal goes to sys.stderr
    assert code == 2 and out == "" and f"argument --top: must be a whole number of at least 1, got '{top}'" in err, err


def test_a_configs_checkpoint_with_a_dirpath_of_its_own_writes_in_each_trials_directory(tmp_path):
    """The CLI route: the config's ModelCheckpoint(dirpath=...) writes into each trial's directory."""
    args = configs(tmp_path, tmp_path / "no-bug", n_trials=2)
    fit = yaml.safe_load((tmp_path / "fit.yaml").read_text())
    shared = tmp_path / "logs" / "ckpts"
    ckpt = {"dirpath": str(shared), "monitor": "val_loss", "filename": "best_{epoch}", "save_last": True}
    fit["trainer"]["callbacks"] = [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": ckpt}]
    (tmp_path / "fit.yaml").write_text(yaml.safe_dump(fit))
    code, _, err = run("search", *args)
    assert code == 0, err
    assert not shared.exists()
    for t in open_storage(tmp_path / "runs" / "studies.db", create=False).trials("default"):
        trial_dir = tmp_path / "runs" / "default" / f"trial_{t.number}"
        assert {"last.ckpt", Path(t.checkpoint).name} <= {p.name for p in (trial_dir / "ckpts").iterdir()}
        assert Path(t.checkpoint).parent == trial_dir / "ckpts" and Path(t.checkpoint).name.startswith("best_epoch=")
