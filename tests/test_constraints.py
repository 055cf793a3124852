"""Constraints: bounds on logged metrics (infeasible trials recorded, never best) and rules on the parameters
(an infeasible configuration never runs), with real Lightning trials."""

from __future__ import annotations

import sqlite3

import pytest
from conftest import TinyData
from test_objectives import SizedModel

from lightning_hpt import (
    Categorical,
    ConfigurationError,
    Float,
    HyperparameterSearch,
    Int,
    MetricNotFoundError,
    SearchFailedError,
    Strategy,
    StudyMismatchError,
    TrialState,
)
from lightning_hpt.constraints import param_constraints
from lightning_hpt.space import SearchSpace
from lightning_hpt.trial import Direction, History

SPACE = {"model.lr": Float(0.01, 0.2, log=True), "model.hidden": Int(2, 32)}


def size(hidden: int) -> int:
    return 6 * hidden + 1


def make(tmp_path, fast_trainer, **kw):
    kw.setdefault("n_trials", 6)
    kw.setdefault("seed", 0)
    kw.setdefault("verbose", False)
    kw.setdefault("monitor", "val_loss")
    return HyperparameterSearch(
        SizedModel,
        TinyData,
        kw.pop("space", SPACE),
        root=tmp_path,
        trainer_kwargs=fast_trainer,
        **kw,
    )


def test_infeasible_trials_are_recorded_shown_and_never_best(tmp_path, fast_trainer):
    bound = size(12)
    search = make(
        tmp_path, fast_trainer, constraints={"n_params": ("<=", bound)}, enqueue=[{"model.lr": 0.2, "model.hidden": 32}]
    )
    result = search.run()
    assert all(t.state is TrialState.COMPLETE for t in result.trials)
    big = [t for t in result.trials if t.params["model.hidden"] > 12]
    small = [t for t in result.trials if t.params["model.hidden"] <= 12]
    assert big and small  # both kinds ran: the test means something
    for t in big:
        assert not t.feasible and t.attrs["infeasible"] == [
            f"n_params = {size(t.params['model.hidden']):g}, not <= {bound:g}"
        ]
    for t in small:
        assert (
            t.feasible
            and t.attrs["infeasible"] == []
            and t.attrs["constraint_values"] == {"n_params": size(t.params["model.hidden"])}
        )
    assert result.best_trial in small and result.best_value == min(t.value for t in small)
    assert f"{len(big)} COMPLETE trial" in str(result) and "infeasible" in str(result)
    from lightning_hpt.report.table import trials_table

    table = trials_table(result.trials, "val_loss", "min").splitlines()
    assert table[0].split()[:4] == ["#", "state", "val_loss", "feasible"]
    assert {ln.split()[0]: ln.split()[3] for ln in table[1:]} == {
        str(t.number): ("yes" if t.feasible else "no") for t in result.trials
    }


def test_infeasible_trials_are_never_on_the_front(tmp_path, fast_trainer):
    result = make(
        tmp_path,
        fast_trainer,
        monitor=["val_loss", "n_params"],
        mode=["min", "min"],
        constraints={"neg_size": (">=", -size(12))},
    ).run()
    assert any(not t.feasible for t in result.trials)
    assert result.pareto_trials and all(t.feasible for t in result.pareto_trials)
    # load_model takes a trial or its number, and says why a trial it refuses is not one to load
    chosen = result.pareto_trials[0]
    assert result.load_model(chosen.number).hparams.hidden == chosen.params["model.hidden"]
    broke = next(t for t in result.trials if not t.feasible)
    why = rf"trial {broke.number} of study 'default' is COMPLETE but infeasible \(neg_size = -\d+, not >= -73\)"
    for given in (broke, broke.number):
        with pytest.raises(ConfigurationError, match=why + r".*one of result\.pareto_trials \(trials \[") as err:
            result.load_model(given)
        assert "TrialRecord(" not in str(err.value)  # the trial's reason, not its whole record
    with pytest.raises(ConfigurationError, match="study 'default' has no trial 99"):
        result.test(trial=99)


def test_a_missing_constraint_metric_stops_the_search(tmp_path, fast_trainer):
    match = r"the constrained metric .latency_ms. was not logged.* or set constraints= \(search.constraints: in a CLI"
    with pytest.raises((MetricNotFoundError, SearchFailedError), match=match):
        make(tmp_path, fast_trainer, constraints={"latency_ms": ("<=", 5)}).run()


@pytest.mark.parametrize("strategy", ["random", "sobol", "grid"])
@pytest.mark.parametrize("rule", ["model.hidden * 2 <= 12", lambda p: p["model.hidden"] * 2 <= 12])
def test_parameter_constraints_keep_infeasible_configurations_from_running(tmp_path, fast_trainer, strategy, rule):
    space = (
        {"model.hidden": Int(2, 20), "model.lr": Float(0.01, 0.2)}
        if strategy != "grid"
        else {"model.hidden": Int(2, 20)}
    )
    result = make(tmp_path, fast_trainer, space=space, strategy=strategy, param_constraints=[rule], n_trials=5).run()
    hidden = [t.params["model.hidden"] for t in result.trials]
    assert all(h <= 6 for h in hidden)
    if strategy == "grid":
        assert sorted(hidden) == [2, 3, 4, 5, 6] and result.stopped_reason == "n_trials reached"


def test_parameter_constraints_keep_the_seeded_sequence_on_resume(tmp_path, fast_trainer):
    rule = ["model.hidden <= 8 and model.lr < 0.1"]
    whole = make(tmp_path / "a", fast_trainer, param_constraints=rule, n_trials=4).run()
    make(tmp_path / "b", fast_trainer, param_constraints=rule, n_trials=2).run()
    resumed = make(tmp_path / "b", fast_trainer, param_constraints=rule, n_trials=4).run()
    assert [t.params for t in resumed.trials] == [t.params for t in whole.trials]


def test_bayesian_proposals_keep_parameter_constraints():
    from lightning_hpt.strategies.bayesian import BayesianStrategy

    space = SearchSpace({"x": Float(0, 1), "y": Float(0, 1)})
    rules = param_constraints(["x + y <= 0.5"], list(space))
    history = History(space, Direction.MINIMIZE, seed=0, param_constraints=rules)
    strategy = BayesianStrategy(seed=0, n_initial=4, num_restarts=2, raw_samples=64)
    for _ in range(7):  # 4 design points, then the model (it would go to x = y = 0.3, outside the rule)
        [params] = strategy.ask(history)
        assert params["x"] + params["y"] <= 0.5
        history = history.add(params, value=(params["x"] - 0.3) ** 2 + (params["y"] - 0.3) ** 2)


class Careless(Strategy):
    """A strategy that knows nothing of constraints: the smallest hidden = 2, 3, ... no trial has yet."""

    name = "careless"

    def ask(self, history, n=1):
        tried = {t.params["model.hidden"] for t in history.trials}
        return [{"model.hidden": h} for h in range(2, 33) if h not in tried][:n]


def test_a_strategy_that_ignores_the_rules_is_asked_again(tmp_path, fast_trainer):
    space = {"model.hidden": Int(2, 32)}
    result = make(
        tmp_path,
        fast_trainer,
        space=space,
        strategy=Careless(),
        param_constraints=["model.hidden % 3 == 0"],
        n_trials=3,
    ).run()
    assert [t.params["model.hidden"] for t in result.trials] == [3, 6, 9]


@pytest.mark.parametrize(
    ("rules", "match"),
    [
        (["model.hidden > 100"], r"reject any of its .* configurations|reject 1000 draws"),
        (["model.width < 3"], r"names 'model\.width', which is not a parameter"),
        (["model.hidden <"], r"is not an expression"),
        (["__import__('os').system('true')"], r"uses Call|not a parameter"),
        (["model.hidden.__class__ == 1"], r"not a parameter"),
        ("model.hidden < 3", r"wrap one in \[...\]"),
        ([3], r"neither an expression"),
        (["model.hidden =< 8"], r"is not an expression: .*compare with <, <=, >, >=, ==, !=, e\.g\."),
        (["model.hidden * 2"], r"computes a number .*not a condition.*'model\.hidden \* 2 <= 4096'"),
        (["model.lr < 0.1 or max(model.hidden, 4)"], r"computes a number \(max\(model\.hidden, 4\)\)"),
        (["not model.hidden - 4 and -model.lr"], r"computes a number \(-model\.lr\)"),
    ],
)
def test_bad_parameter_constraints_are_refused_before_anything_is_written(tmp_path, fast_trainer, rules, match):
    with pytest.raises(ConfigurationError, match=match):
        make(tmp_path, fast_trainer, param_constraints=rules)
    assert not (tmp_path / "studies.db").exists()


def test_a_rule_that_reads_a_conditional_parameter_must_hold_without_it(tmp_path, fast_trainer):
    """The grid's first configurations have ``model.lr`` and keep the rule; those with ``hidden=4`` lack it.
    The rule is refused when the search is made, not when such a configuration is drawn mid-search."""
    space = {"model.hidden": Categorical([8, 4]), "model.lr": Float(0.01, 0.2, step=0.01, when={"model.hidden": 8})}
    absent = r"reads 'model\.lr', which .*\{'model\.hidden': 4\} does not have.*with or"
    with pytest.raises(ConfigurationError, match=absent) as err:
        make(tmp_path, fast_trainer, space=space, param_constraints=["model.lr <= 0.1"], strategy="random")
    assert not (tmp_path / "studies.db").exists()
    # the example is this rule with model.lr's own condition tested first (it named another space's width2)
    assert "(e.g. 'model.hidden != 8 or model.lr <= 0.1', true where model.lr is absent)" in str(err.value)
    guarded = ["model.hidden != 8 or model.lr <= 0.1"]  # the example, as it is: it runs
    result = make(tmp_path, fast_trainer, space=space, param_constraints=guarded, strategy="random", n_trials=6).run()
    hidden = [t.params["model.hidden"] for t in result.trials]
    assert all(t.state is TrialState.COMPLETE for t in result.trials)
    assert 4 in hidden and 8 in hidden  # both branches ran: the rule was evaluated without model.lr
    assert all(t.params["model.lr"] <= 0.1 for t in result.trials if t.params["model.hidden"] == 8)


@pytest.mark.parametrize(
    ("constraints", "match"),
    [
        ({"n_params": ("<", 3)}, r"must be \('<=', bound\) or \('>=', bound\)"),
        ({"n_params": 3}, r"must be \('<=', bound\)"),
        ({"n_params": ("<=", float("inf"))}, "finite"),
        ({"val_loss": ("<=", 1.0)}, "bounds an objective"),
        (["n_params"], "must be a dict"),
    ],
)
def test_bad_outcome_constraints_are_refused(tmp_path, fast_trainer, constraints, match):
    with pytest.raises(ConfigurationError, match=match):
        make(tmp_path, fast_trainer, constraints=constraints)
    assert not (tmp_path / "studies.db").exists()


def test_an_enqueued_configuration_must_keep_the_rules(tmp_path, fast_trainer):
    with pytest.raises(ConfigurationError, match=r"breaks param_constraints \['model\.hidden <= 8'\]"):
        make(
            tmp_path,
            fast_trainer,
            param_constraints=["model.hidden <= 8"],
            enqueue=[{"model.lr": 0.1, "model.hidden": 9}],
        )


def test_changed_constraints_are_refused_on_resume(tmp_path, fast_trainer):
    make(
        tmp_path,
        fast_trainer,
        n_trials=1,
        constraints={"n_params": ("<=", 100)},
        param_constraints=["model.hidden <= 8"],
    ).run()
    with pytest.raises(
        StudyMismatchError, match=r"constraints changed from \['n_params <= 100', 'model\.hidden <= 8'\]"
    ):
        make(
            tmp_path,
            fast_trainer,
            n_trials=2,
            constraints={"n_params": ("<=", 200)},
            param_constraints=["model.hidden <= 8"],
        ).run()
    with pytest.raises(StudyMismatchError, match="constraints"):
        make(tmp_path, fast_trainer, n_trials=2).run()
    search = make(tmp_path, fast_trainer, n_trials=2, allow_changes=True)  # the stored rules win
    result = search.run()
    assert [str(c) for c in search.constraints] == ["n_params <= 100", "model.hidden <= 8"]
    assert result.trials[1].params["model.hidden"] <= 8 and "infeasible" in result.trials[1].attrs
    con = sqlite3.connect(tmp_path / "studies.db")
    (definition,) = con.execute("SELECT definition FROM hpt_studies").fetchone()
    assert '"params": "model.hidden <= 8"' in definition


def test_a_study_whose_every_trial_broke_a_constraint_says_so(tmp_path, fast_trainer):
    from lightning_hpt import HPTError

    result = make(tmp_path, fast_trainer, n_trials=2, constraints={"n_params": ("<=", 1)}).run()
    assert [t.state for t in result.trials] == [TrialState.COMPLETE] * 2 and result.best_trial is None
    assert "No COMPLETE feasible trial." in str(result)
    with pytest.raises(HPTError, match="no COMPLETE feasible trial \\(every COMPLETE one broke a constraint\\)"):
        _ = result.best_params
    from test_pareto import run_cli

    code, _, err = run_cli("best", "--root", str(tmp_path), "--trial", "1")
    assert code == 1 and "--trial 1: trial 1 of study 'default' is COMPLETE but infeasible (n_params = " in err
    assert ", not <= 1)" in err
