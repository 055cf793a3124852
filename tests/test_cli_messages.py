"""What the command says about a `search:` section or a space the config parser refuses: the reason and the value."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
import yaml
from conftest import FAST

from lightning_hpt.cli import main
from lightning_hpt.storage import open_storage

OPTIMIZERS = ["torch.optim.SGD", "torch.optim.Adam"]


def run(*argv: str) -> tuple[int, str]:
    code = main(list(argv), stdout=io.StringIO(), stderr=(err := io.StringIO()))
    return code, err.getvalue()


def configs(tmp_path: Path, momentum_for: str, **search: object) -> list[str]:
    """A fit config with an Adam optimizer, and a search over SGD or Adam with ``momentum`` when ``momentum_for``."""
    fit = {
        "model": {"class_path": "conftest.TinyModel"},
        "data": {"class_path": "conftest.TinyData"},
        "trainer": {**FAST, "enable_progress_bar": False},
        "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.01}},
    }
    space = {
        "optimizer.class_path": OPTIMIZERS,
        "optimizer.momentum": {
            "type": "float",
            "low": 0.0,
            "high": 0.9,
            "when": {"optimizer.class_path": momentum_for},
        },
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    grid = {"name": "grid", "points": 2}  # SGD with two momenta, and Adam
    section = {
        "space": space,
        "strategy": grid,
        "n_trials": 3,
        "seed": 0,
        "root": str(tmp_path / "runs"),
        "verbose": False,
        **search,
    }
    (tmp_path / "fit.yaml").write_text(yaml.safe_dump(fit))
    (tmp_path / "search.yaml").write_text(yaml.safe_dump({"search": section}))
    return ["--config", str(tmp_path / "fit.yaml"), "--config", str(tmp_path / "search.yaml")]


def test_momentum_for_sgd_trains_and_momentum_for_adam_is_refused_with_the_parsers_reason(tmp_path):
    code, err = run("search", *configs(tmp_path / "sgd", "torch.optim.SGD"))
    assert code == 0, err
    trials = open_storage(str(tmp_path / "sgd" / "runs" / "studies.db")).trials("default")
    assert {t.params["optimizer.class_path"] for t in trials} == set(OPTIMIZERS)  # real trials of each
    assert all(
        ("optimizer.init_args.momentum" in t.params) == ("SGD" in t.params["optimizer.class_path"]) for t in trials
    )

    code, err = run("search", *configs(tmp_path / "adam", "torch.optim.Adam"))
    assert code == 2
    # the parser's own reason, not its "Expected a <class 'NoneType'>" for the optimizer: section's `None` alternative
    assert "Problem with given class_path 'torch.optim.Adam': Option 'momentum' is not accepted" in err, err
    assert "NoneType" not in err and "give it a when on the class_path that chooses them" in err, err
    assert not (tmp_path / "adam" / "runs").exists()


@pytest.mark.parametrize(
    ("search", "expected"),
    [
        # an outcome constraint in a wrong form gets the search's own rule and example
        (
            {"constraints": {"val_loss_std": 0.5}},
            r"constraints\['val_loss_std'\] must be \('<=', bound\) or \('>=', bound\) with a number bound, got 0\.5",
        ),
        # an `X | None` setting says what it expects and what it got
        ({"n_trials": "ten"}, r'Parser key "search\.n_trials": Expected a <class \'int\'>; Given value: ten'),
        (
            {"param_constraints": "model.hidden <= 8"},
            r'"search\.param_constraints": Expected a <class \'list\'>; Given value: model\.hidden <= 8',
        ),
    ],
)
def test_a_search_setting_of_the_wrong_form_names_the_rule_and_the_value(tmp_path, search, expected):
    code, err = run("search", *configs(tmp_path, "torch.optim.SGD", **search))
    assert code == 2 and re.search(expected, err), err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("when", [None, {"model.hidden": 8}])
def test_an_argument_of_a_searched_class_without_a_condition_on_it_says_to_give_one(tmp_path, when):
    """``optimizer.momentum`` is not in the config (Adam): with no condition, or one on another parameter, the
    message says how to search an argument of some of the searched optimizers."""
    argv = configs(tmp_path, "torch.optim.SGD")
    search = yaml.safe_load(Path(argv[3]).read_text())
    search["search"]["space"]["model.hidden"] = [8, 16]
    momentum = search["search"]["space"]["optimizer.momentum"]
    momentum.pop("when")
    if when:
        momentum["when"] = when
    Path(argv[3]).write_text(yaml.safe_dump(search))
    code, err = run("search", *argv)
    assert code == 2, err
    assert "space key 'optimizer.momentum' is not in the config" in err, err
    assert "give it when: {optimizer.class_path: <those classes>}" in err, err
    assert not (tmp_path / "runs").exists()
