"""Searches over conditional parameters with real Lightning training: the API, the Trainer-script route and the CLI."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import ClassVar

import lightning.pytorch as L
import pytest
import torch
import yaml
from conftest import FAST, TinyData, TinyModel

from lightning_hpt import Categorical, HyperparameterSearch, ScriptSearch, StudyMismatchError
from lightning_hpt.cli import main
from lightning_hpt.storage import open_storage
from lightning_hpt.trial import TrialState

SGD, ADAM = "torch.optim.SGD", "torch.optim.Adam"
TRAINER = {**FAST, "max_epochs": 1}


def space(hidden_when: str = ADAM) -> dict:
    """Momentum exists for SGD only, the hidden width for the other optimizer only."""
    return {
        "optimizer.class_path": Categorical([SGD, ADAM]),
        "optimizer.momentum": Categorical([0.0, 0.9], when={"optimizer.class_path": SGD}),
        "model.hidden": Categorical([4, 16], when={"optimizer.class_path": hidden_when}),
    }


class Spy(TinyModel):
    """Records what each trial's module and optimizer received."""

    seen: ClassVar[list] = []

    def on_train_start(self) -> None:
        group = self.trainer.optimizers[0].param_groups[0]
        Spy.seen.append((type(self.trainer.optimizers[0]).__name__, group.get("momentum"), self.hparams.hidden))


def search(tmp_path: Path, **kw) -> HyperparameterSearch:
    kw = {"strategy": "grid", "n_trials": None, **kw}
    return HyperparameterSearch(
        Spy, TinyData, kw.pop("space", space()), root=tmp_path, seed=0, verbose=False, trainer_kwargs=TRAINER, **kw
    )


def test_inactive_parameters_reach_neither_the_model_nor_the_record(tmp_path):
    Spy.seen = []
    result = search(tmp_path).run()
    trials = result.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4  # 2 momenta for SGD + 2 widths for Adam
    by_class = {c: [dict(t.params) for t in trials if t.params["optimizer.class_path"] == c] for c in (SGD, ADAM)}
    assert sorted(p["optimizer.momentum"] for p in by_class[SGD]) == [0.0, 0.9]
    assert sorted(p["model.hidden"] for p in by_class[ADAM]) == [4, 16]
    assert all("model.hidden" not in p for p in by_class[SGD]) and all(
        "optimizer.momentum" not in p for p in by_class[ADAM]
    )
    expected = [
        ("SGD", t.params["optimizer.momentum"], 8)
        if t.params["optimizer.class_path"] == SGD
        else ("Adam", None, t.params["model.hidden"])
        for t in trials
    ]
    assert Spy.seen == expected  # an SGD trial's module keeps its own default width: it never received one
    stored = open_storage(str(tmp_path / "studies.db")).trials("default")
    assert [t.params for t in stored] == [t.params for t in trials]
    assert len(search(tmp_path).run().trials) == 4  # the grid is exhausted: a rerun adds nothing


def test_a_changed_condition_is_refused_on_resume(tmp_path):
    search(tmp_path, n_trials=1, strategy="random").run()
    with pytest.raises(
        StudyMismatchError, match=r"parameter 'model\.hidden' changed.*'when': \{'optimizer\.class_path'"
    ):
        search(tmp_path, space=space(hidden_when=SGD), n_trials=2, strategy="random").run()
    assert len(open_storage(str(tmp_path / "studies.db")).trials("default")) == 1


@pytest.mark.slow
def test_bayesian_search_over_conditional_parameters(tmp_path, caplog):
    from lightning_hpt import BayesianStrategy

    s = search(tmp_path, strategy=BayesianStrategy(n_initial=2, raw_samples=64, num_restarts=2), n_trials=4)
    result = s.run()
    assert [t.state for t in result.trials] == [TrialState.COMPLETE] * 4
    assert len({tuple(sorted(t.params.items())) for t in result.trials}) == 4  # the whole space, once each
    for t in result.trials:
        s.space.validate(t.params)
    assert "Bayesian proposal" not in caplog.text  # the model made the last proposals, no fallback


def test_trainer_script_route_gets_active_parameters_only(tmp_path):
    s = ScriptSearch(
        space=space(),
        monitor="val_loss",
        strategy="grid",
        n_trials=None,
        storage=str(tmp_path / "s.db"),
        root=str(tmp_path / "runs"),
        seed=0,
    )
    seen = []
    for trial in s:
        seen.append(trial.params)
        model = TinyModel(hidden=trial.params.get("model.hidden", 8))
        settings = {"default_root_dir": trial.dir, "enable_progress_bar": False, **TRAINER}
        trainer = L.Trainer(callbacks=[trial.callback()], **settings)
        trainer.fit(model, TinyData())
    assert len(seen) == 4 and [t.state for t in s.trials] == [TrialState.COMPLETE] * 4
    assert {tuple(sorted(p)) for p in seen} == {
        ("optimizer.class_path", "optimizer.momentum"),
        ("model.hidden", "optimizer.class_path"),
    }


# ---------------------------------------------------------------------------------------------- the CLI

FIT = {
    "model": {"class_path": "conftest.TinyModel", "init_args": {"lr": 0.05, "hidden": 8}},
    "data": {"class_path": "conftest.TinyData", "init_args": {"batch_size": 32}},
    "trainer": {"accelerator": "cpu", "devices": 1, "max_epochs": 1, "logger": False, "num_sanity_val_steps": 0},
    "optimizer": {"class_path": ADAM, "init_args": {"lr": 0.01}},  # Adam: SGD's momentum is not in the config
}
YAML_SPACE = {
    "optimizer.class_path": [SGD, ADAM],
    "optimizer.momentum": {"choices": [0.0, 0.9], "when": {"optimizer.class_path": SGD}},
    "model.hidden": {"choices": [4, 16], "when": {"data.batch_size": 16}},  # short forms in when
    "data.batch_size": [16, 32],
}


def cli(tmp_path: Path, *argv: str, space: dict | None = None) -> tuple[int, str, str]:
    section = {"space": space or YAML_SPACE, "strategy": "grid", "n_trials": None, "seed": 0, "verbose": False}
    (tmp_path / "fit.yaml").write_text(yaml.safe_dump(FIT))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"search": {**section, "root": str(tmp_path / "runs")}}))
    out, err = io.StringIO(), io.StringIO()
    configs = ["--config", str(tmp_path / "fit.yaml"), "--config", str(tmp_path / "s.yaml")]
    code = main([argv[0], *configs, *argv[1:]] if argv[0] == "search" else [*argv], stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_cli_yaml_conditions_build_each_branchs_config(tmp_path):
    code, _, err = cli(tmp_path, "search")
    assert code == 0, err
    trials = open_storage(str(tmp_path / "runs" / "studies.db")).trials("default")
    assert len(trials) == (2 + 1) * (2 + 1) and all(t.state is TrialState.COMPLETE for t in trials)
    for t in trials:
        config = yaml.safe_load((tmp_path / "runs" / "default" / f"trial_{t.number}" / "config.yaml").read_text())
        groups = torch.load(t.checkpoint, weights_only=False)["optimizer_states"][0]["param_groups"][0]
        if t.params["optimizer.class_path"] == SGD:
            assert config["optimizer"]["init_args"]["momentum"] == t.params["optimizer.init_args.momentum"]
            assert groups["momentum"] == t.params["optimizer.init_args.momentum"]
        else:
            assert "optimizer.init_args.momentum" not in t.params and "momentum" not in config["optimizer"]["init_args"]
        hidden = t.params.get("model.init_args.hidden")
        assert (hidden is not None) == (t.params["data.init_args.batch_size"] == 16)
        assert config["model"]["init_args"]["hidden"] == (hidden or 8)  # the config's own value where inactive
    code, out, err = cli(tmp_path, "show", "default", "--root", str(tmp_path / "runs"))
    assert code == 0, err
    lines = out.splitlines()
    start = lines[1].index("momentum")
    adam = next(t.number for t in trials if t.params["optimizer.class_path"] == ADAM)
    assert next(ln for ln in lines[2:] if ln.split()[0] == str(adam))[start : start + 8].strip() == ""


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"optimizer.momentum": {"choices": [0.9], "when": {"optimizer.class": SGD}}},
            r"names 'optimizer.class', which",
        ),
        (
            {"optimizer.momentum": {"choices": [0.9], "when": {"optimizer.class_path": "torch.optim.RMSprop"}}},
            r"'torch.optim.RMSprop' is not a value of 'optimizer.class_path'",
        ),
        (
            {"model.nope": {"choices": [1], "when": {"data.batch_size": 16}}},
            r"space key 'model.nope' is not in the config",
        ),
        (  # model.hidden exists for batch size 16 only
            {"model.lr": {"choices": [0.01], "when": {"model.hidden": 4, "data.batch_size": 32}}},
            r"space\['model.init_args.lr'\].*can never hold: .* needs 'data.init_args.batch_size' to be 32"
            r" \(its own condition\) and 16 \(for 'model.init_args.hidden' to exist\)",
        ),
    ],
)
def test_cli_refuses_a_bad_condition_before_any_trial(tmp_path, change, expected):
    code, _, err = cli(tmp_path, "search", space={**YAML_SPACE, **change})
    assert code == 2 and re.search(expected, err), err
    assert not (tmp_path / "runs").exists()
