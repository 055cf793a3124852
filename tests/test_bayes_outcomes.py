"""The Bayesian strategy with several objectives (qLogNEHVI) and outcome constraints (feasibility modelled)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from test_objectives import make

from lightning_hpt import ConfigurationError, Float, RandomStrategy, TrialState
from lightning_hpt.constraints import outcome_constraints
from lightning_hpt.objectives import parse_objectives
from lightning_hpt.pareto import hypervolume, objective_matrix
from lightning_hpt.space import SearchSpace
from lightning_hpt.strategies.bayesian import BayesianStrategy
from lightning_hpt.trial import Direction, History

pytestmark = pytest.mark.slow

UNIT2 = SearchSpace({"x0": Float(0, 1), "x1": Float(0, 1)})


def branin_currin_history(strategy, n: int) -> History:
    from botorch.test_functions.multi_objective import BraninCurrin

    problem = BraninCurrin()  # both minimized
    objectives = parse_objectives(["branin", "currin"], ["min", "min"])
    history = History(UNIT2, Direction.MINIMIZE, seed=0, objectives=objectives)
    for _ in range(n):
        [p] = strategy.ask(history)
        y = problem(torch.tensor([[p["x0"], p["x1"]]], dtype=torch.float64))[0]
        history = history.add(p, values=tuple(y.tolist()))
    return history


def test_several_objectives_beat_random_search_on_hypervolume():
    ref = torch.tensor([-18.0, -6.0])  # BoTorch's reference point of BraninCurrin, in maximization form
    objectives = parse_objectives(["branin", "currin"], ["min", "min"])
    bayes = branin_currin_history(BayesianStrategy(seed=0, n_initial=5, num_restarts=2, raw_samples=64), 14)
    random = branin_currin_history(RandomStrategy(seed=0), 14)
    hv_bayes = hypervolume(objective_matrix(bayes.trials, objectives), ref)
    hv_random = hypervolume(objective_matrix(random.trials, objectives), ref)
    assert hv_bayes > hv_random


def test_outcome_constraints_are_modelled():
    # minimize (x - 0.8)^2 subject to the logged metric g = x <= 0.5: the feasible optimum is x = 0.5
    space = SearchSpace({"x": Float(0, 1)})
    rules = outcome_constraints({"g": ("<=", 0.5)})
    history = History(space, Direction.MINIMIZE, seed=0, outcome_constraints=rules)
    strategy = BayesianStrategy(seed=0, n_initial=4, num_restarts=2, raw_samples=64)
    for _ in range(12):
        [p] = strategy.ask(history)
        x = p["x"]
        attrs = {"constraint_values": {"g": x}, "infeasible": [] if x <= 0.5 else ["g"]}
        history = history.add(p, value=(x - 0.8) ** 2, attrs=attrs)
    model_based = [t.params["x"] for t in history.trials[4:]]
    # never towards the unconstrained optimum 0.8: the proposals hug the boundary of the feasible region
    assert all(0.4 < x < 0.55 for x in model_based)
    best = history.best()
    assert best.feasible and best.params["x"] == pytest.approx(0.5, abs=0.01)


def test_a_reference_point_of_the_wrong_length_is_refused():
    with pytest.raises(
        ConfigurationError, match=r"one finite number per objective, two or more .*one objective takes none"
    ):
        BayesianStrategy(ref_point=[1.0])
    strategy = BayesianStrategy(seed=0, n_initial=3, ref_point=[1.0, 2.0, 3.0])
    history = History(UNIT2, Direction.MINIMIZE, seed=0, objectives=parse_objectives(["a", "b"], ["min", "max"]))
    with pytest.raises(
        ConfigurationError, match=r"one value per objective \['a', 'b'\], got ref_point=\[1.0, 2.0, 3.0\]"
    ):
        strategy.ask(history)


@pytest.mark.parametrize(
    "ref, warned",
    [
        ([2e5, 0.5], r"ref_point=\[200000.0, 0.5\] is better than every trial so far on val_acc 200000 \(max; the best"
         r" of 6 trials: 0.9[0-9]*\) and n_params 0.5 \(min; the best of 6 trials: 10000\).*did you mean ref_point="
         r"\[0.5, 200000.0\]\?"),
        ([0.99, 2e5], r"ref_point=\[0.99, 200000.0\] is better than every trial so far on val_acc 0.99 \(max"),
        ([0.5, 2e5], None),
    ],
)  # fmt: skip
def test_a_reference_point_no_trial_beats_is_warned_about_once(ref, warned, caplog):
    objectives = parse_objectives(["val_acc", "n_params"], ["max", "min"])
    history = History(UNIT2, Direction.MAXIMIZE, seed=0, objectives=objectives)
    rng = np.random.default_rng(0)
    for i in range(6):  # accuracy 0.80 to 0.95 with 10,000 to 60,000 parameters
        params = {"x0": float(rng.random()), "x1": float(rng.random())}
        history = history.add(params, values=(0.8 + 0.03 * i, 1e4 * (1 + i)))
    strategy = BayesianStrategy(seed=0, n_initial=3, num_restarts=2, raw_samples=64, ref_point=ref)
    for _ in range(2):
        assert len(strategy.ask(history)) == 1  # the search goes on
    said = [r.getMessage() for r in caplog.records if "ref_point=" in r.getMessage()]
    if warned is None:
        assert said == []
    else:
        assert len(said) == 1, said  # once, not at every proposal
        assert re.search(warned, said[0]), said[0]


def test_a_search_refuses_a_wrong_reference_point_or_warm_start_before_anything_is_written(
    tmp_path, fast_trainer, caplog
):
    """The strategy's settings are checked against the study when the search is made, not at the first proposal."""
    wrong = BayesianStrategy(seed=0, ref_point=[1.0, 2.0, 3.0])
    with pytest.raises(
        ConfigurationError, match=r"ref_point must give one value per objective \['val_loss', 'n_params'\]"
    ):
        make(tmp_path / "ref", fast_trainer, strategy=wrong)
    misnamed = BayesianStrategy(seed=0, warm_start=[({"lr": 0.01, "hidden": 8}, 0.5)])
    with pytest.raises(ConfigurationError, match=r"no warm_start result fits the search space.*warm_start\[0\]"):
        make(tmp_path / "warm", fast_trainer, strategy=misnamed)
    assert not (tmp_path / "ref").exists() and not (tmp_path / "warm").exists()
    params = make(tmp_path / "ok", fast_trainer, strategy="random").space.sample(np.random.default_rng(0))
    some = BayesianStrategy(seed=0, warm_start=[(params, 0.5), ({"lr": 0.01}, 0.4)])
    make(tmp_path / "some", fast_trainer, strategy=some)  # the fitting half is used, the other said once
    assert (
        caplog.text.count("1 of 2 warm_start results do not fit the search space") == 1
        and "warm_start[1]" in caplog.text
    )


def test_bayesian_search_with_two_objectives_trains_real_trials(tmp_path, fast_trainer):
    strategy = BayesianStrategy(seed=0, n_initial=3, num_restarts=2, raw_samples=64)
    result = make(tmp_path, fast_trainer, constraints={"neg_size": (">=", -200.0)}, strategy=strategy, n_trials=6).run()
    assert [t.state for t in result.trials] == [TrialState.COMPLETE] * 6
    assert result.pareto_trials and all(t.feasible for t in result.pareto_trials)
    assert len({tuple(sorted(t.params.items())) for t in result.trials}) == 6  # distinct proposals
