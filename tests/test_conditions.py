"""Conditional parameters: the space's rules, every strategy on a conditional space, reports, stored studies."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from lightning_hpt import Categorical, Float, Int, SearchSpace, SearchSpaceError
from lightning_hpt.conditions import placeholder
from lightning_hpt.failures import fail_fast
from lightning_hpt.report.export import export_trials
from lightning_hpt.report.importance import param_importance
from lightning_hpt.report.table import trials_table
from lightning_hpt.strategies import GridStrategy, RandomStrategy, SobolStrategy
from lightning_hpt.strategies.base import params_key
from lightning_hpt.surrogate import observations
from lightning_hpt.trial import Direction, History, TrialRecord, TrialState

SGD, ADAM = "torch.optim.SGD", "torch.optim.Adam"


def optimizer_space(momentum=None) -> SearchSpace:
    """An optimizer choice whose momentum exists for SGD only, and a depth whose third width exists for 3 layers."""
    return SearchSpace(
        {
            "optimizer.class_path": Categorical([SGD, ADAM]),
            "optimizer.momentum": momentum or Float(0.0, 0.99, when={"optimizer.class_path": SGD}),
            "model.num_layers": Int(1, 3),
            "model.width3": Int(8, 64, log=True, when={"model.num_layers": 3}),
        }
    )


def nested_space() -> SearchSpace:
    # act3 exists only when width3 (itself conditional) is 9; wide exists for 2 or 3 layers
    return SearchSpace(
        {
            "model.act3": Categorical(["relu", "gelu"], when={"model.width3": 9}),
            "model.num_layers": Int(1, 3),
            "model.width3": Int(8, 9, when={"model.num_layers": 3}),
            "model.wide": Categorical([True, False], when={"model.num_layers": [2, 3]}),
        }
    )


def objective(p: dict) -> float:
    """Best near momentum 0.9 with SGD, and 3 layers of width 32: every branch matters."""
    v = (p["optimizer.momentum"] - 0.9) ** 2 * 4 if p["optimizer.class_path"] == SGD else 0.6
    return v + ((math.log2(p["model.width3"]) - 5) ** 2 * 0.1 if p["model.num_layers"] == 3 else 0.4)


def check(space: SearchSpace, params: dict) -> None:
    """``params`` is valid: exactly its active parameters (validate refuses a missing or an inactive one)."""
    space.validate(params)


# ---------------------------------------------------------------------------------------------- the rules


@pytest.mark.parametrize(
    ("domains", "match"),
    [
        (
            {"model.b": Float(0, 1, when={"model.c": 1})},
            r"space\['model.b'\]: when=\{'model.c': \[1\]\} names 'model.c', which is not a parameter of the space",
        ),
        (
            {"optimizer.class_path": Categorical([SGD]), "m": Float(0, 1, when={"optimizer.clas_path": SGD})},
            r"did you mean \['optimizer.class_path'\]",
        ),
        (  # a continuous parameter is no suggestion: a condition could not name it
            {"model.lrs": Categorical(["a"]), "model.lr": Float(0.1, 1), "m": Float(0, 1, when={"model.lrr": "a"})},
            r"finite set of values \(\['model.lrs'\]\); did you mean \['model.lrs'\]\?$",
        ),
        (
            {"model.n": Int(1, 3), "model.w": Int(1, 2, when={"model.n": 5})},
            r"5 is not a value of 'model.n' \(Int\(low=1, high=3.*condition could never hold; use values.*\[1, 2, 3\]",
        ),
        (
            {"optimizer.class_path": Categorical([SGD]), "m": Float(0, 1, when={"optimizer.class_path": "SGD"})},
            r"'SGD' is not a value of 'optimizer.class_path'",
        ),
        (
            {"model.lr": Float(0.1, 1.0), "model.w": Int(1, 2, when={"model.lr": 0.5})},
            r"'model.lr', a continuous Float.*finite set of values \(Categorical, Int, or Float with step\)",
        ),
        (
            {"a.x": Int(0, 1, when={"a.y": 1}), "a.y": Int(0, 1, when={"a.x": 1})},
            r"the conditions form a cycle: 'a.x' -> 'a.y' -> 'a.x'.*remove one of these conditions",
        ),
        ({"a.x": Int(0, 1, when={"a.x": 1})}, r"cycle: 'a.x' -> 'a.x'"),
        (  # momentum asks for Adam while its parent exists for SGD only
            {
                "opt": Categorical(["Adam", "SGD"]),
                "nesterov": Categorical([True, False], when={"opt": "SGD"}),
                "momentum": Float(0, 1, when={"nesterov": True, "opt": "Adam"}),
            },
            r"space\['momentum'\]: when=\{'nesterov': \[True\], 'opt': \['Adam'\]\} can never hold: 'momentum' needs"
            r" 'opt' to be 'Adam' \(its own condition\) and 'SGD' \(for 'nesterov' to exist\) at once, so 'momentum'"
            r" would never be active; change these conditions so that they share a value of 'opt', or drop 'momentum'",
        ),
        (  # every two of the three rules on a.n share a value, the three do not
            {
                "a.n": Int(1, 3),
                "a.e": Int(0, 1, when={"a.n": [1, 3]}),
                "a.d": Int(0, 1, when={"a.n": [2, 3], "a.e": 1}),
                "a.c": Int(0, 1, when={"a.n": [1, 2], "a.d": 1}),
            },
            r"space\['a.c'\].*needs 'a.n' to be one of \[1, 2\] \(its own condition\) and one of \[2, 3\] \(for 'a.d'"
            r" to exist\) and one of \[1, 3\] \(for 'a.e' to exist\) at once",
        ),
    ],
)
def test_a_condition_is_checked_against_the_space(domains, match):
    with pytest.raises(SearchSpaceError, match=match):
        SearchSpace(domains)


def test_conditions_that_hold_together_are_accepted():
    space = SearchSpace(
        {
            "a.n": Int(1, 3),
            "a.e": Int(0, 1, when={"a.n": [1, 3]}),
            "a.d": Int(0, 1, when={"a.n": [2, 3], "a.e": 1}),
            "a.c": Int(0, 1, when={"a.n": [3], "a.d": 1}),  # a.n = 3 keeps all three rules
        }
    )
    assert space.active({"a.n": 3, "a.e": 1, "a.d": 1, "a.c": 0}) == {"a.n": 3, "a.e": 1, "a.d": 1, "a.c": 0}


@pytest.mark.parametrize(
    ("when", "match"),
    [
        ({}, r"Float: when must be a non-empty dict.*got when=\{\}; for example when=\{'optimizer.class_path'"),
        ([("a.b", 1)], r"when must be a non-empty dict of parameter name -> value or list of values"),
        ({"a.b": []}, r"when lists at least one value for 'a.b'"),
        ({"a.b": [[1, 2]]}, r"values must be finite str, int, float, bool or None; \[1, 2\] is not"),
        ({"a.b": float("nan")}, r"values must be finite"),
        ({"../x": 1}, r"a parameter named in when '../x' is invalid"),
    ],
)
def test_a_malformed_when_is_refused(when, match):
    with pytest.raises(SearchSpaceError, match=match):
        Float(0.0, 1.0, when=when)


def test_conditions_are_canonical_and_type_aware():
    assert Int(1, 2, when={"a.n": [3, 2]}) == Int(1, 2, when={"a.n": (2, 3, 3)})
    assert Int(1, 2, when={"a.n": 1}) != Int(1, 2, when={"a.n": True})  # 1 == True in Python, not here
    assert repr(Float(0, 1, when={"a.n": 1})) == "Float(low=0.0, high=1.0, log=False, step=None, when={'a.n': [1]})"
    assert repr(Float(0, 1)) == "Float(low=0.0, high=1.0, log=False, step=None)"  # as before conditions
    bools = SearchSpace({"a.flag": Categorical([1, True]), "a.x": Int(0, 1, when={"a.flag": True})})
    assert "a.x" not in bools.active({"a.flag": 1, "a.x": 0}) and "a.x" in bools.active({"a.flag": True, "a.x": 0})


def test_validate_wants_exactly_the_active_parameters():
    space = optimizer_space()
    space.validate({"optimizer.class_path": ADAM, "model.num_layers": 2})
    with pytest.raises(SearchSpaceError, match=r"missing \['optimizer.momentum'\]"):
        space.validate({"optimizer.class_path": SGD, "model.num_layers": 2})
    with pytest.raises(
        SearchSpaceError,
        match=r"optimizer.momentum=0.5 is given, but optimizer.momentum exists only when optimizer.class_path is"
        r" 'torch.optim.SGD', which does not hold.*leave optimizer.momentum out",
    ):
        space.validate({"optimizer.class_path": ADAM, "optimizer.momentum": 0.5, "model.num_layers": 2})


def test_grid_sums_over_branches_and_nests():
    space = nested_space()
    grid = space.grid()
    # 1 layer: 1; 2 layers: wide x2; 3 layers: width 8 (x2 wide) + width 9 (x2 act x2 wide)
    assert len(grid) == 1 + 2 + 2 + 4 == space.cardinality
    assert len({params_key(p) for p in grid}) == len(grid)
    for p in grid:
        check(space, p)
        assert list(p) == [n for n in space if n in p]  # names in the space's order
    assert {"model.num_layers": 1} in grid
    assert {"model.act3": "gelu", "model.num_layers": 3, "model.width3": 9, "model.wide": False} in grid
    # a continuous conditional parameter takes its points only in its own branch
    space = optimizer_space()
    assert len(space.grid(points={"optimizer.momentum": 3, "model.width3": 2})) == (3 + 1) * (1 + 1 + 2)
    assert space.cardinality is None


def test_unconditional_spaces_keep_their_draws_grid_and_stored_form():
    flat = SearchSpace({"model.lr": Float(1e-3, 0.1, log=True), "model.n": Int(1, 3), "data.bs": Categorical([8, 16])})
    rng, again = np.random.default_rng(3), np.random.default_rng(3)
    assert flat.sample(rng) == {n: d.sample(again) for n, d in flat.items()}
    assert flat.grid(points=2)[:3] == [
        {"model.lr": 1e-3, "model.n": 1, "data.bs": 8},
        {"model.lr": 1e-3, "model.n": 1, "data.bs": 16},
        {"model.lr": 1e-3, "model.n": 2, "data.bs": 8},
    ]
    assert "when" not in json.dumps(flat.to_dict())  # a study stored before conditions existed still matches


def test_sampling_draws_active_parameters_only():
    space = optimizer_space()
    rng = np.random.default_rng(0)
    draws = [space.sample(rng) for _ in range(400)]
    for p in draws:
        check(space, p)
        assert ("optimizer.momentum" in p) == (p["optimizer.class_path"] == SGD)
        assert ("model.width3" in p) == (p["model.num_layers"] == 3)
    sgd = sum(p["optimizer.class_path"] == SGD for p in draws)
    assert 160 < sgd < 240 and 100 < sum("model.width3" in p for p in draws) < 170


def test_the_unit_cube_holds_inactive_parameters_at_a_placeholder_and_decodes_without_them():
    space = optimizer_space()
    adam = {"optimizer.class_path": ADAM, "model.num_layers": 3, "model.width3": 16}
    x = space.to_unit(adam)
    assert x[1] == placeholder(space["optimizer.momentum"]) == pytest.approx(0.5)
    assert space.from_unit(x) == adam
    y = x.clone()
    y[1] = 0.93  # anywhere along an inactive dimension: the same configuration, the same projected point
    assert space.from_unit(y) == adam and torch.equal(space.project(y), x)
    pts = torch.rand(64, space.dim, dtype=torch.float64, requires_grad=True)
    projected = space.project(pts)
    active = torch.tensor([[n in space.from_unit(p) for n in space] for p in pts.detach()])
    fill = torch.tensor([placeholder(d) for d in space.values()], dtype=torch.float64)
    assert torch.equal(projected, torch.where(active, pts, fill))
    assert all(space.from_unit(row) == space.from_unit(p) for row, p in zip(projected, pts, strict=True))
    projected.sum().backward()  # gradients reach the active coordinates only
    assert torch.equal(pts.grad, active.double())


def test_the_study_definition_includes_conditions():
    space = nested_space()
    again = SearchSpace.from_json(space.to_json())
    assert again == space and sorted(map(params_key, again.grid())) == sorted(map(params_key, space.grid()))
    assert space.to_dict()["model.wide"]["when"] == {"model.num_layers": [2, 3]}
    changed = dict(nested_space())
    changed["model.wide"] = Categorical([True, False], when={"model.num_layers": 3})
    assert SearchSpace(changed) != space


# ---------------------------------------------------------------------------------------------- strategies


def run(strategy, space: SearchSpace, n: int, seed: int = 0, batch: int = 1) -> History:
    h = History(space, Direction.MINIMIZE, seed=seed)
    while len(h.trials) < n:
        proposals = strategy.ask(h, batch)
        if not proposals:
            break
        for p in proposals:
            check(space, p)
            h = h.add(p, objective(p) if "optimizer.class_path" in p else 0.0)
    return h


def test_grid_strategy_visits_each_branch_once_and_ends():
    space = nested_space()
    h = run(GridStrategy(), space, 100)
    assert len(h.trials) == 9 == len({params_key(dict(t.params)) for t in h.trials})
    assert GridStrategy().ask(h, 3) == []


@pytest.mark.parametrize("cls", [RandomStrategy, SobolStrategy])
def test_random_and_sobol_propose_active_parameters_only_and_resume_the_same(cls):
    space = optimizer_space()
    h = run(cls(), space, 24, seed=7)
    assert {t.params["optimizer.class_path"] for t in h.trials} == {SGD, ADAM}
    assert any("model.width3" in t.params for t in h.trials) and any("model.width3" not in t.params for t in h.trials)
    half = run(cls(), space, 12, seed=7)
    assert [t.params for t in run(cls(), space, 24, seed=7).trials] == [t.params for t in h.trials]
    assert cls().ask(half, 12) == [dict(t.params) for t in h.trials[12:]]


def test_observations_of_one_configuration_are_one_point():
    space = optimizer_space()
    a = TrialRecord(0, {"optimizer.class_path": ADAM, "model.num_layers": 1}, TrialState.COMPLETE, value=1.0)
    b = TrialRecord(1, {"optimizer.class_path": ADAM, "model.num_layers": 1}, TrialState.COMPLETE, value=1.1)
    x, _ = observations([a, b], space, Direction.MINIMIZE)
    assert torch.equal(x[0], x[1])  # no drawn value along the absent dimensions: the model sees one input twice


@pytest.mark.slow
def test_bayesian_exhausts_a_finite_conditional_space_once_each():
    from lightning_hpt.strategies.bayesian import BayesianStrategy

    momentum = Categorical([0.0, 0.5, 0.9], when={"optimizer.class_path": SGD})
    space = optimizer_space(momentum)
    space = SearchSpace({**space, "model.width3": Categorical([16, 32], when={"model.num_layers": 3})})
    assert space.cardinality == (3 + 1) * (1 + 1 + 2)
    h = run(BayesianStrategy(seed=0, n_initial=4, raw_samples=64, num_restarts=2), space, 100, batch=3)
    assert len(h.trials) == 16 == len({params_key(dict(t.params)) for t in h.trials})


@pytest.mark.slow
def test_bayesian_acquisition_rates_configurations_not_cube_points():
    from lightning_hpt import surrogate
    from lightning_hpt.strategies._encoding import _Encoding
    from lightning_hpt.strategies.bayesian import BayesianStrategy

    space = optimizer_space()
    h = run(BayesianStrategy(seed=1), space, 8)
    enc = _Encoding.of(space)
    x, y = surrogate.observations(h.trials, space, h.direction)
    from botorch.acquisition import qUpperConfidenceBound

    acq = enc.wrap(qUpperConfidenceBound(surrogate.fit_surrogate(x, surrogate.warp(y), surrogate.cat_dims(space)), 2.0))
    adam = space.to_unit({"optimizer.class_path": ADAM, "model.num_layers": 2}).reshape(1, 1, -1)
    moved = adam.clone()
    moved[..., 1], moved[..., 3] = 0.05, 0.95  # the inactive momentum and width3 elsewhere
    with torch.no_grad():
        assert torch.equal(acq(adam), acq(moved))
        assert not torch.equal(acq.acq_func(adam), acq.acq_func(moved))  # unprojected, the fake coordinates count


# ---------------------------------------------------------------------------------------------- reports


def conditional_trials() -> list[TrialRecord]:
    h = run(RandomStrategy(), optimizer_space(), 24, seed=2)
    return list(h.trials)


def test_tables_and_exports_leave_absent_parameters_empty(tmp_path):
    trials = conditional_trials()
    adam = next(t for t in trials if t.params["optimizer.class_path"] == ADAM)
    table = trials_table(trials, "val_loss", "min").splitlines()
    start = table[0].index("momentum")
    cells = {line.split()[0]: line[start : start + len("momentum")].strip() for line in table[1:]}
    assert cells[str(adam.number)] == ""  # nothing is shown where the parameter does not exist
    sgd = next(t for t in trials if "optimizer.momentum" in t.params)
    assert cells[str(sgd.number)] == f"{sgd.params['optimizer.momentum']:.4g}"
    path = export_trials(trials, tmp_path / "t.csv")
    rows = {r["number"]: r for r in csv.DictReader(path.open())}
    assert rows[str(adam.number)]["params.optimizer.momentum"] == ""
    data = json.loads(export_trials(trials, tmp_path / "t.json").read_text())
    assert "optimizer.momentum" not in next(d for d in data if d["number"] == adam.number)["params"]


def test_plots_draw_conditional_parameters(tmp_path):
    plots = pytest.importorskip("lightning_hpt.report.plots")
    trials = conditional_trials()
    for fig in (
        plots.plot_parallel_coordinates(trials, "min", space=optimizer_space()),
        plots.plot_slices(trials, "min", space=optimizer_space()),
        plots.plot_slices(trials, "min"),
    ):
        plots.save_figure(fig, tmp_path / "p.png")


def test_importance_of_a_conditional_parameter():
    space = optimizer_space()
    importance = param_importance(conditional_trials(), space, direction="min", samples=64, grid=8)
    assert set(importance) == set(space) and all(0.0 <= v <= 1.0 for v in importance.values())
    assert importance["optimizer.momentum"] > importance["model.num_layers"]  # momentum dominates the SGD branch


def test_fail_fast_does_not_wait_for_a_parameter_that_cannot_vary():
    space = optimizer_space()
    err = "RuntimeError: broken everywhere"
    params = [{"optimizer.class_path": c, "model.num_layers": n} for c, n in [(ADAM, 1), (SGD, 2), (ADAM, 2)]]
    params[1]["optimizer.momentum"] = 0.5
    fails = [TrialRecord(i, p, TrialState.FAILED, error=err) for i, p in enumerate(params)]
    assert fail_fast(space, fails, fails[-1]) is not None  # width3 never existed: the failures still varied
