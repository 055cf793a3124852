"""A search space written as a function of the trial (``trial.suggest`` and ``if``): tracing, and real searches."""

from __future__ import annotations

import json
import math

import lightning.pytorch as L
import numpy as np
import pytest
import torch
from conftest import FAST, TinyData
from torch import nn

from lightning_hpt import (
    BayesianStrategy,
    Categorical,
    Float,
    HyperparameterSearch,
    Int,
    ScriptSearch,
    SearchSpace,
    StudyMismatchError,
    replay,
)
from lightning_hpt import define_by_run as dbr
from lightning_hpt._watched import watched
from lightning_hpt.exceptions import SearchSpaceError
from lightning_hpt.storage import open_storage
from lightning_hpt.trial import TrialState


def mlp_space(trial, top: int = 3):
    """An MLP's depth, a width per layer, an optimizer, and momentum for SGD only."""
    n = trial.suggest("layers", Int(1, top))
    widths = [trial.suggest(f"width{i}", Categorical([4, 8])) for i in range(n)]
    opt = trial.suggest("opt", Categorical(["sgd", "adam"]))
    momentum = trial.suggest("momentum", Categorical([0.0, 0.9])) if opt == "sgd" else None
    lr = trial.suggest("lr", Float(1e-3, 1e-1, log=True))
    return {"widths": widths, "opt": opt, "momentum": momentum, "lr": lr}


def test_a_function_is_traced_into_domains_with_the_conditions_of_its_ifs():
    space = SearchSpace(mlp_space)
    assert list(space) == ["layers", "width0", "width1", "width2", "opt", "momentum", "lr"]  # the function's order
    when = {name: space[name].when.to_dict() if space[name].when else None for name in space}
    assert when == {
        "layers": None,
        "width0": None,
        "width1": {"layers": [2, 3]},
        "width2": {"layers": [3]},
        "opt": None,
        "momentum": {"opt": ["sgd"]},
        "lr": None,
    }
    # every branch once: (2 + 4 + 8 widths) x (2 momenta + adam) x 2 learning rates
    assert len(space.grid(points={"lr": 2})) == 14 * 3 * 2
    assert SearchSpace(mlp_space) == space  # a trace is deterministic: a resumed study compares equal


def test_nested_choices_and_an_and_of_two_choices():
    def nested(trial):
        sgd = trial.suggest("opt", Categorical(["sgd", "adam"])) == "sgd"
        if sgd and trial.suggest("nesterov", Categorical([True, False])):  # asked for SGD only
            trial.suggest("m", Float(0.5, 0.99))
        a, b = trial.suggest("a", Int(0, 2)), trial.suggest("b", Categorical(["x", "y"]))
        if a >= 1 and b == "x":
            trial.suggest("c", Float(0.0, 1.0))

    space = SearchSpace(nested)
    assert space["nesterov"].when.to_dict() == {"opt": ["sgd"]}
    assert space["m"].when.to_dict() == {"nesterov": [True], "opt": ["sgd"]}
    assert space["c"].when.to_dict() == {"a": [1, 2], "b": ["x"]}


def _or(t):
    a, b = t.suggest("a", Int(0, 1)), t.suggest("b", Categorical(["x", "y"]))
    if a == 1 or b == "x":
        t.suggest("c", Float(0, 1))


def _float_branch(t):
    if t.suggest("lr", Float(1e-4, 1e-1, log=True)) > 0.01:
        t.suggest("warmup", Int(0, 5))


def _range_of_another(t):
    n = t.suggest("n", Int(1, 3))
    t.suggest("k", Int(0, n))


def _two_domains(t):
    t.suggest("a", Float(0, 1))
    t.suggest("a", Float(0, 2))


def _raises(t):
    return {"x": t.suggest("x", Float(0, 1)), "y": int("many")}


def _dumps(t):
    print(json.dumps({"width": t.suggest("width", Categorical([16, 32]))}))


@pytest.mark.parametrize(
    "fn, match",
    [
        (_or, r"asks for 'c' under a condition a space cannot hold .*with \{'a': 0, 'b': 'y'\}.*`and`, not `or`"),
        (_float_branch, r"branches on 'lr' .*too many values to trace; branch only on a Categorical"),
        (_range_of_another, r"raised SearchSpaceError: Int: .*domain may not depend on another parameter's value"),
        (_two_domains, r"suggest\('a', \.\.\.\) is asked twice with different domains"),
        (_raises, r"_raises raised ValueError: .* \(while traced with \{'x': 0.5\}\); it should only call"),
        (
            _dumps,
            r"raised TypeError: Object of type WatchedNumber .*; while traced, a numeric choice is a stand-in.*json",
        ),
        (lambda t: None, r"asked for no parameter"),
        (lambda t: t.suggest("x", [1, 2]), r"the domain must be a Float, Int or Categorical"),
        (lambda t: t.suggest("x", Float(0, 1, when={"y": 1})), r"drop when="),
        (lambda t: t.suggest("../x", Float(0, 1)), r"parameter name"),
    ],
)
def test_a_function_a_space_cannot_hold_is_refused_with_the_reason(fn, match):
    with pytest.raises(SearchSpaceError, match=match):
        SearchSpace(fn)


def test_too_many_branches_are_refused(monkeypatch):
    def many(t):  # 4 x 4 x 4 x 4 = 256 branches
        for i in range(4):
            if t.suggest(f"c{i}", Categorical(["a", "b", "c", "d"])) == "a":
                t.suggest(f"x{i}", Float(0, 1))

    monkeypatch.setattr(dbr, "MAX_BRANCHES", 100)
    with pytest.raises(
        SearchSpaceError, match=r"more than 100 branches: it looks at .*\['c0', 'c1', 'c2'.*when= conditions"
    ):
        SearchSpace(many)
    monkeypatch.setattr(dbr, "MAX_BRANCHES", 256)
    assert SearchSpace(many)["x3"].when.to_dict() == {"c3": ["a"]}


class Deep(L.LightningModule):
    """An MLP of any depth on TinyData, with SGD (and momentum) or Adam: what ``mlp_space`` returns."""

    def __init__(self, widths, opt, momentum, lr) -> None:
        super().__init__()
        self.save_hyperparameters()
        layers, d = [], 4
        for w in widths:
            layers += [nn.Linear(d, w), nn.ReLU()]
            d = w
        self.net = nn.Sequential(*layers, nn.Linear(d, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        h = self.hparams
        if h.opt == "sgd":
            return torch.optim.SGD(self.parameters(), lr=h.lr, momentum=h.momentum)
        return torch.optim.Adam(self.parameters(), lr=h.lr)


def script_search(tmp_path, space=mlp_space, **kw) -> ScriptSearch:
    kw = {"strategy": "random", "n_trials": 6, **kw}
    return ScriptSearch(
        space=space, monitor="val_loss", storage=str(tmp_path / "s.db"), root=str(tmp_path / "runs"), seed=0,
        verbose=False, **kw,
    )  # fmt: skip


def train(trial, model) -> None:
    settings = {**FAST, "max_epochs": 1, "enable_progress_bar": False, "default_root_dir": trial.dir}
    L.Trainer(callbacks=[trial.callback()], **settings).fit(model, TinyData())


def test_the_script_calls_the_function_with_its_trial_and_gets_the_trials_values(tmp_path):
    search = script_search(tmp_path, strategy=BayesianStrategy(n_initial=3, raw_samples=64, num_restarts=2))
    built = []
    for trial in search:
        config = mlp_space(trial)  # the same function: each suggest answers with the trial's value
        model = Deep(**config)
        built.append((trial.params, config, [m.out_features for m in model.net if isinstance(m, nn.Linear)]))
        train(trial, model)
    assert [t.state for t in search.trials] == [TrialState.COMPLETE] * 6
    for params, config, outs in built:
        n = params["layers"]
        assert set(params) == {"layers", "opt", "lr", *(f"width{i}" for i in range(n))} | (
            {"momentum"} if params["opt"] == "sgd" else set()
        )  # exactly what the function asks for: nothing inactive in the record
        assert config["widths"] == [params[f"width{i}"] for i in range(n)] and outs == [*config["widths"], 1]
        assert config["momentum"] == params.get("momentum")
    stored = open_storage(str(tmp_path / "s.db")).trials("default")
    assert [t.params for t in stored] == [p for p, _, _ in built]


def test_a_trials_suggest_refuses_what_the_space_does_not_hold(tmp_path):
    search = script_search(tmp_path, n_trials=1, enqueue=[{"layers": 1, "width0": 4, "opt": "adam", "lr": 0.01}])
    trial = search.ask()
    assert trial.suggest("width0", Categorical([4, 8])) == 4
    with pytest.raises(SearchSpaceError, match=r"'width1' is inactive in this trial \(it exists when \{'layers'"):
        trial.suggest("width1", Categorical([4, 8]))
    with pytest.raises(SearchSpaceError, match=r"'dropout' is not in the search space"):
        trial.suggest("dropout", Float(0, 0.5))
    with pytest.raises(SearchSpaceError, match=r"the search space has 'lr' as Float\(low=0.001"):
        trial.suggest("lr", Float(1e-4, 1e-1, log=True))
    trial.finish("not trained in this test")


def test_a_grid_over_a_function_visits_each_branch_once_through_the_api(tmp_path):
    def space(trial):
        sgd, adam = "torch.optim.SGD", "torch.optim.Adam"
        if trial.suggest("optimizer.class_path", Categorical([sgd, adam])) == sgd:
            trial.suggest("optimizer.momentum", Categorical([0.0, 0.9]))
        trial.suggest("model.hidden", Categorical([4, 16]))

    trainer = {**FAST, "max_epochs": 1}
    from conftest import TinyModel

    result = HyperparameterSearch(
        TinyModel, TinyData, space, strategy="grid", n_trials=None, root=tmp_path, seed=0, verbose=False,
        trainer_kwargs=trainer,
    ).run()  # fmt: skip
    assert [t.state for t in result.trials] == [TrialState.COMPLETE] * 6  # (2 momenta + Adam) x 2 widths
    assert sorted(tuple(sorted(t.params.items())) for t in result.trials) == sorted(
        tuple(sorted(p.items())) for p in SearchSpace(space).grid()
    )


def model_space(trial):
    """mlp_space under the Python API's names: the model's init arguments are model.*."""
    n = trial.suggest("model.layers", Int(1, 3))
    widths = [trial.suggest(f"model.width{i}", Categorical([4, 8])) for i in range(n)]
    opt = trial.suggest("model.opt", Categorical(["sgd", "adam"]))
    momentum = trial.suggest("model.momentum", Categorical([0.0, 0.9])) if opt == "sgd" else None
    return {"widths": widths, "opt": opt, "momentum": momentum, "lr": trial.suggest("model.lr", Float(1e-3, 1e-1))}


def build_deep(cfg):
    return Deep(**replay(model_space, cfg))  # the factory builds with the function that defined the space


def test_a_factory_builds_with_the_space_function_through_replay(tmp_path):
    result = HyperparameterSearch(
        build_deep, TinyData, model_space, strategy="random", n_trials=4, root=tmp_path, seed=0, verbose=False,
        trainer_kwargs={**FAST, "max_epochs": 1},
    ).run()  # fmt: skip
    assert [t.state for t in result.trials] == [TrialState.COMPLETE] * 4
    model = result.load_best_model()
    p = result.best_params
    assert list(model.hparams.widths) == [p[f"model.width{i}"] for i in range(p["model.layers"])]
    assert model.hparams.momentum == p.get("model.momentum")  # None where Adam has none
    assert replay(model_space, p) == replay(model_space, {"model": {k[6:]: v for k, v in p.items()}})  # flat or nested
    with pytest.raises(SearchSpaceError, match=r"replay: the space function asks for 'model.layers', which this"):
        replay(model_space, {"model": {}})


def test_a_changed_function_is_refused_on_resume(tmp_path):
    for trial in script_search(tmp_path, n_trials=1):
        train(trial, Deep(**mlp_space(trial)))
    with pytest.raises(StudyMismatchError, match=r"added.*width3|'layers' changed"):
        for trial in script_search(tmp_path, space=lambda t: mlp_space(t, top=4), n_trials=2):
            train(trial, Deep(**mlp_space(trial, top=4)))
    assert len(open_storage(str(tmp_path / "s.db")).trials("default")) == 1


def test_allow_changes_with_a_function_asking_for_what_the_stored_space_lacks_is_refused(tmp_path, caplog):
    for trial in script_search(tmp_path, n_trials=1):
        train(trial, Deep(**mlp_space(trial)))
    match = r"continues with the space it was created with \(allow_changes=True\), but the space function given asks"
    with pytest.raises(StudyMismatchError, match=match + r" for 'layers' \(the stored space has Int\(low=1, high=3"):
        for trial in script_search(tmp_path, space=lambda t: mlp_space(t, top=4), n_trials=2, allow_changes=True):
            train(trial, Deep(**mlp_space(trial, top=4)))
    assert len(open_storage(str(tmp_path / "s.db")).trials("default")) == 1  # nothing ran, nothing lost
    narrower = lambda t: {"lr": t.suggest("lr", Float(1e-3, 1e-1, log=True))}  # noqa: E731 - one stored parameter
    for trial in script_search(tmp_path, space=narrower, n_trials=2, allow_changes=True):
        train(trial, Deep(**mlp_space(trial)))  # the stored space answers what the function asks for
    assert [t.state for t in open_storage(str(tmp_path / "s.db")).trials("default")] == [TrialState.COMPLETE] * 2
    assert "what was given differs from what it was created with: parameters removed from the space" in caplog.text


def test_the_modules_example_runs():
    import doctest

    assert doctest.testmod(dbr).attempted > 0 and doctest.testmod(dbr).failed == 0


def _flaky(t, calls=[]):  # noqa: B006 - the state kept between calls is the point
    calls.append(1)
    if len(calls) % 2:
        t.suggest("lr", Float(1e-4, 1e-1, log=True))  # every other run only
    t.suggest("x", Float(0, 1))


def _moving_domain(t, calls=[]):  # noqa: B006
    calls.append(1)
    t.suggest("seed", Int(0, 10 + len(calls)))


@pytest.mark.parametrize("fn", [_flaky, _moving_domain])
def test_a_function_that_changes_between_runs_is_refused_with_the_reason(fn):
    with pytest.raises(SearchSpaceError, match=r"asks for something else when run again.*no random numbers"):
        SearchSpace(fn)


@pytest.mark.parametrize(
    "fn, match",
    [
        (lambda t: t.params["x"], r"trial.params: .*only trial.suggest\(name, domain\), which returns the value"),
        (lambda t: t.suggest_float("lr", 1e-4, 1e-1), r"trial.suggest_float is Optuna's; write trial.suggest\('lr'"),
    ],
)
def test_what_a_traced_trial_does_not_have_is_named_with_the_fix(fn, match):
    with pytest.raises(SearchSpaceError, match=match):
        SearchSpace(fn)


def _missed(t):
    if 0.8 < t.suggest("x", Float(0.0, 1.0)) < 0.95:  # between the values tracing tries (0, 0.5, 1)
        t.suggest("y", Int(0, 5))


def _typed(t):
    if isinstance(t.suggest("n", Categorical([1, 2])), int):  # false while traced
        t.suggest("x", Float(0, 1))


def _joined(t):
    opt = t.suggest("opt", Categorical(["sgd", "adam"]))
    t.suggest("lr_" + opt, Float(1e-4, 1e-1, log=True))  # str + choice: a concatenation no value can see


@pytest.mark.parametrize(
    "fn, match",
    [
        (_typed, r"_typed asks for \['x'\] with \{'n': [12]\}, which tracing did not see.*isinstance\(x, int\)"),
        (_missed, r"_missed asks for \['y'\] with \{'x': 0.8[0-9]*\}, which tracing did not see.*a Float"),
        (
            _joined,
            r"_joined asks for \['lr_adam'\] with \{'opt': 'adam', 'lr_sgd': .*\}, which tracing did not"
            r" see.*str.join",
        ),
    ],
)
def test_a_branch_that_tracing_missed_is_found_on_seeded_configurations(fn, match):
    with pytest.raises(SearchSpaceError, match=match):
        SearchSpace(fn)


def test_choices_the_function_only_stores_are_not_branched_on(monkeypatch):
    def flat(t):  # 4 x 3 x 3 x 3 x 10 x 6 = 19,440 combinations, none branched on
        cfg = {name: t.suggest(name, Categorical(values)) for name, values in [
            ("batch", [16, 32, 64, 128]), ("act", ["relu", "gelu", "tanh"]), ("norm", ["batch", "layer", "none"]),
            ("sched", ["cosine", "step", "none"])]}  # fmt: skip
        cfg["patience"], cfg["warmup"] = t.suggest("patience", Int(1, 10)), t.suggest("warmup", Int(0, 5))
        if t.suggest("opt", Categorical(["sgd", "adam"])) == "sgd":  # the one choice it branches on
            cfg["momentum"] = t.suggest("momentum", Float(0.0, 0.99))
        return cfg

    runs = []
    real = dbr._run
    monkeypatch.setattr(dbr, "_run", lambda *a, **k: runs.append(a[1]) or real(*a, **k))
    space = SearchSpace(flat)
    assert {n: d.when.to_dict() for n, d in space.items() if d.when} == {"momentum": {"opt": ["sgd"]}}
    assert len(runs) < 100  # 2 branches, the repeat check and the 64 seeded configurations


@pytest.mark.parametrize(
    "use, counts",
    [
        (lambda v: {"stored": v, "listed": [v]}, False),
        (lambda v: list(range(v)), True),
        (lambda v: v * 2, False),  # a number made from it, only stored: not yet looked at
        (lambda v: (v * 2 + 1) // 3 > 1, True),  # ... until it is
        (lambda v: 1 < v, True),  # noqa: SIM300  (the reflected comparison, on purpose)
        (lambda v: {3: "a"}.get(v), True),
        (lambda v: f"width{v}", True),
        (lambda v: math.log(v), True),
        (lambda v: [0] * v, True),
        (lambda v: float(np.log2(v)), True),
    ],
)
def test_a_watched_number_counts_what_is_done_with_it_and_acts_as_the_number(use, counts):
    seen = []
    result = use(watched(3, lambda: seen.append(1)))
    assert bool(seen) is counts
    assert result == use(3)


@pytest.mark.parametrize(
    "use, counts",
    [
        (lambda v: {"opt": v}, False),
        (lambda v: v == "sgd", True),
        (lambda v: v in ("sgd", "adam"), True),
        (lambda v: v.startswith("s"), True),
        (lambda v: f"lr_{v}", True),
        (lambda v: v + "_lr", True),
        (lambda v: {"sgd": 1}[v], True),
    ],
)
def test_a_watched_string_counts_what_is_done_with_it_and_is_a_str(use, counts):
    seen = []
    value = watched("sgd", lambda: seen.append(1))
    result = use(value)
    assert bool(seen) is counts
    assert isinstance(value, str) and result == use("sgd")


def test_the_example_script_runs(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "script" / "tune_space_function.py"
    spec = importlib.util.spec_from_file_location("tune_space_function", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--trials", "3", "--epochs", "1", "--root", str(tmp_path)])
    out = capsys.readouterr().out
    assert "'width2': Int(low=16, high=256, log=True, step=1, when={'layers': [3]})" in out
    assert "Study 'digits_space_function': 3 trials (3 complete)" in out


@pytest.mark.parametrize(
    "left, right, use",
    [
        (3, 5, lambda a, b: a < b),
        (3, 5, lambda a, b: a * b > 1),
        (3, 5, lambda a, b: max(a, b)),
        ("sgd", "adam", lambda a, b: a == b),
        ("sgd", "adam", lambda a, b: a + b),
    ],
)
def test_both_watched_values_of_one_operation_are_looked_at(left, right, use):
    seen = set()
    result = use(watched(left, lambda: seen.add("a")), watched(right, lambda: seen.add("b")))
    assert seen == {"a", "b"}
    assert result == use(left, right)


def test_numbers_computed_from_choices_and_only_stored_are_not_branched_on(monkeypatch):
    def blocks(t):
        out = []
        for i in range(t.suggest("n", Int(1, 3))):
            k = t.suggest(f"k{i}", Categorical([3, 5, 7]))
            c = t.suggest(f"c{i}", Categorical([8, 16, 32, 64]))
            out.append({"kernel": k, "padding": k // 2, "channels": c, "hidden": c * 4, "flag": -c})
        return {"blocks": out, "total": sum(b["channels"] for b in out)}

    runs = []
    real = dbr._run
    monkeypatch.setattr(dbr, "_run", lambda *a, **k: runs.append(1) or real(*a, **k))
    space = SearchSpace(blocks)
    assert space["k2"].when.to_dict() == {"n": [3]} and space["c1"].when.to_dict() == {"n": [2, 3]}
    assert len(runs) < 100  # 3 branches of n, not 3 x 12 ** 3


def test_a_choice_on_the_right_of_an_operation_is_branched_on():
    def blocks(t):
        for i in range(t.suggest("n", Int(1, 2))):
            c, k = t.suggest(f"c{i}", Categorical([8, 32])), t.suggest(f"k{i}", Categorical([3, 5]))
            if c * k > 100:  # k is looked at as much as c
                t.suggest(f"groups{i}", Categorical([1, 2]))

    space = SearchSpace(blocks)
    assert space["groups0"].when.to_dict() == {"c0": [32], "k0": [5]}
    assert space["groups1"].when.to_dict() == {"c1": [32], "k1": [5], "n": [2]}
