"""Pruning with several objectives: trials ranked at a rung by non-dominated sorting, then crowding distance."""

from __future__ import annotations

import math

import pytest
from test_objectives import make

from lightning_hpt import HyperbandPruner, MedianPruner, SuccessiveHalvingPruner, TrialState
from lightning_hpt.objectives import parse_objectives
from lightning_hpt.space import Float, SearchSpace
from lightning_hpt.trial import Direction, History, TrialRecord

MIN_MIN = parse_objectives(["loss", "size"], ["min", "min"])


def trial(number, vectors, state=TrialState.COMPLETE):
    """A trial with every objective's value per step: ``vectors`` is ``[(loss, size), ...]`` from step 0."""
    steps = {s: tuple(map(float, v)) for s, v in enumerate(vectors)}
    return TrialRecord(
        number, {"x": 0.1}, state, intermediate={s: v[0] for s, v in steps.items()}, intermediate_values=steps
    )


def history(*trials, objectives=MIN_MIN):
    return History(SearchSpace({"x": Float(0, 1)}), Direction.MINIMIZE, trials, seed=0, objectives=objectives)


# nine finished trials at step 0: a front (1, 9), (3, 5), (5, 3), (9, 1) and five dominated points behind it
RIVALS = [(1, 9), (3, 5), (5, 3), (9, 1), (6, 6), (7, 7), (8, 8), (9, 9), (10, 10)]


def asha_decision(vector):
    done = [trial(i, [v, v]) for i, v in enumerate(RIVALS)]
    judged = trial(len(done), [vector], TrialState.RUNNING)
    return SuccessiveHalvingPruner(min_resource=1, reduction_factor=3).should_prune(history(*done, judged), judged)


def test_asha_keeps_the_front_and_prunes_dominated_trials():
    # 10 trials at the rung keep max(10 // 3, 1) = 3: only a trial with fewer than 3 ahead of it goes on
    assert asha_decision((0.5, 0.5)) is False  # dominates everything: alone on the front
    assert asha_decision((20.0, 0.5)) is False  # worst loss, best size: an extreme of the front (infinite crowding)
    assert asha_decision((7.5, 7.5)) is True  # dominated by the front and by (6, 6) and (7, 7)
    # with one objective the same loss of 20 would be pruned: the second objective saves it
    one = [TrialRecord(i, {"x": 0.1}, TrialState.COMPLETE, intermediate={0: float(v[0])}) for i, v in enumerate(RIVALS)]
    judged = TrialRecord(9, {"x": 0.1}, TrialState.RUNNING, intermediate={0: 20.0})
    single = History(SearchSpace({"x": Float(0, 1)}), Direction.MINIMIZE, (*one, judged), seed=0)
    assert SuccessiveHalvingPruner(min_resource=1, reduction_factor=3).should_prune(single, judged) is True


def test_crowding_distance_breaks_ties_within_a_front():
    # four points on one front; the middle one of a crowded cluster has the smallest crowding distance
    front = [(0, 10), (4.9, 5.1), (5.1, 4.9), (10, 0)]
    done = [trial(i, [v]) for i, v in enumerate(front)]
    judged = trial(4, [(5.0, 5.0)], TrialState.RUNNING)
    # 5 points keep max(5 // 2, 1) = 2: the two extremes are ahead of everyone, the crowded middle goes
    assert SuccessiveHalvingPruner(min_resource=1, reduction_factor=2).should_prune(history(*done, judged), judged)


def test_median_rule_with_several_objectives():
    done = [trial(i, [v]) for i, v in enumerate(RIVALS)]
    pruner = MedianPruner(n_startup_trials=0)
    good, bad = trial(9, [(2.0, 2.0)], TrialState.RUNNING), trial(9, [(9.5, 9.5)], TrialState.RUNNING)
    assert pruner.should_prune(history(*done, good), good) is False
    assert pruner.should_prune(history(*done, bad), bad) is True


def test_a_non_finite_objective_prunes_at_once():
    done = [trial(i, [v]) for i, v in enumerate(RIVALS)]
    judged = trial(9, [(0.1, math.nan)], TrialState.RUNNING)
    for pruner in (MedianPruner(n_startup_trials=0), SuccessiveHalvingPruner(), HyperbandPruner(max_resource=9)):
        assert pruner.should_prune(history(*done, judged), judged) is True


def test_hyperband_ranks_by_non_dominated_sorting_within_its_bracket():
    pruner = HyperbandPruner(min_resource=1, max_resource=9, reduction_factor=3)
    done = [trial(i, [v] * 9) for i, v in enumerate(RIVALS * 3)]
    h = history(*done)
    bracket = pruner.bracket_of(h, 27)
    mates = [t for t in done if pruner.bracket_of(h, t.number) == bracket]
    assert bracket < 2 and len(mates) >= 3  # a bracket that judges at step 2, with rivals there
    best, worst = trial(27, [(0.1, 0.1)] * 3, TrialState.RUNNING), trial(27, [(50.0, 50.0)] * 3, TrialState.RUNNING)
    assert pruner.should_prune(history(*done, best), best) is False
    assert pruner.should_prune(history(*done, worst), worst) is True


@pytest.mark.slow
def test_a_pruned_search_with_two_objectives_trains_real_trials(tmp_path, fast_trainer):
    result = make(
        tmp_path,
        fast_trainer,
        pruner=SuccessiveHalvingPruner(min_resource=1, reduction_factor=2),
        n_trials=8,
        patience=None,
        trainer={"max_epochs": 4},
    ).run()
    states = [t.state for t in result.trials]
    assert TrialState.PRUNED in states and TrialState.COMPLETE in states
    for t in result.trials:
        assert t.values is not None and len(t.intermediate_values) == len(t.intermediate)
    assert result.pareto_trials and all(t.state is TrialState.COMPLETE for t in result.pareto_trials)
