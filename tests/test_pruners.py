"""Pruners: the shared contract, then each algorithm on hand-built histories.

Steps are validation runs counted from 0; a trial at step ``s`` has used ``s + 1`` units of resource.
"""

from __future__ import annotations

import doctest
import math
from collections import Counter
from collections.abc import Callable

import pytest

import lightning_hpt.pruners as pruners_pkg
from lightning_hpt.exceptions import ConfigurationError
from lightning_hpt.pruners import (
    HyperbandPruner,
    MedianPruner,
    NopPruner,
    Pruner,
    SuccessiveHalvingPruner,
    hyperband,
    make_pruner,
    median,
    nop,
    successive_halving,
)
from lightning_hpt.testing.pruner import PrunerContract, make_history, record
from lightning_hpt.trial import Direction, TrialState

COMPLETE, PRUNED, RUNNING, FAILED = TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.FAILED


@pytest.fixture(params=list(Direction), ids=lambda d: d.name.lower())
def direction(request: pytest.FixtureRequest) -> Direction:
    return request.param


def signed(direction: Direction) -> Callable[[float], float]:
    """Maps a loss (lower is better) to a value of ``direction``, so one test covers both."""
    return (lambda x: x) if direction is Direction.MINIMIZE else (lambda x: -x)


def flat(number: int, value: float, n_steps: int, state: TrialState = RUNNING):
    return record(number, dict.fromkeys(range(n_steps), value), state)


# ---- the contract, for every pruner ----------------------------------------------------------


class TestNopContract(PrunerContract):
    prunes_non_finite = False

    @pytest.fixture
    def make_pruner(self) -> Callable[[], Pruner]:
        return NopPruner


class TestMedianContract(PrunerContract):
    @pytest.fixture(params=[(0, 0, 1), (2, 3, 2)], ids=["eager", "patient"])
    def make_pruner(self, request: pytest.FixtureRequest) -> Callable[[], Pruner]:
        startup, warmup, interval = request.param
        return lambda: MedianPruner(n_startup_trials=startup, n_warmup_steps=warmup, interval_steps=interval)


class TestSuccessiveHalvingContract(PrunerContract):
    @pytest.fixture(params=[(1, 2, 0, None), (1, 3, 0, 27), (2, 3, 1, None)], ids=["eta2", "eta3-R27", "r2-s1"])
    def make_pruner(self, request: pytest.FixtureRequest) -> Callable[[], Pruner]:
        return lambda: SuccessiveHalvingPruner(*request.param)


class TestHyperbandContract(PrunerContract):
    @pytest.fixture(params=[(1, None, 3), (1, 27, 3), (2, 16, 2)], ids=["auto", "R27", "r2-R16-eta2"])
    def make_pruner(self, request: pytest.FixtureRequest) -> Callable[[], Pruner]:
        return lambda: HyperbandPruner(*request.param)


@pytest.mark.parametrize("module", [nop, median, successive_halving, hyperband, pruners_pkg])
def test_docstring_examples(module) -> None:
    assert doctest.testmod(module).failed == 0


# ---- MedianPruner ----------------------------------------------------------------------------


def _median_study(direction: Direction, n_steps: int = 5):
    v = signed(direction)
    # Finished trials at 1.0, 1.1, ..., 1.4 at every step.
    return [flat(n, v(1.0 + n / 10), n_steps, COMPLETE) for n in range(5)]


def test_median_prunes_a_worse_curve_and_keeps_a_better_one(direction: Direction) -> None:
    v = signed(direction)
    worse, better = flat(10, v(2.0), 2), flat(11, v(0.5), 2)
    history = make_history(*_median_study(direction), worse, better, direction=direction)
    pruner = MedianPruner(n_startup_trials=5)
    assert pruner.should_prune(history, worse) is True
    assert pruner.should_prune(history, better) is False


def test_median_compares_the_best_value_so_far(direction: Direction) -> None:
    v = signed(direction)
    lucky_then_worse = record(10, {0: v(0.5), 1: v(2.0)})
    history = make_history(*_median_study(direction), lucky_then_worse, direction=direction)
    assert MedianPruner(n_startup_trials=0).should_prune(history, lucky_then_worse) is False


def test_median_waits_for_startup_trials_to_complete() -> None:
    worse = flat(10, 2.0, 2)
    running = [flat(20 + n, 1.0, 3) for n in range(5)]  # RUNNING trials are evidence but not startup trials
    history = make_history(*_median_study(Direction.MINIMIZE), *running, worse)
    assert MedianPruner(n_startup_trials=6).should_prune(history, worse) is False
    assert MedianPruner(n_startup_trials=5).should_prune(history, worse) is True


def test_median_respects_warmup_steps() -> None:
    history = make_history(*_median_study(Direction.MINIMIZE))
    pruner = MedianPruner(n_startup_trials=0, n_warmup_steps=2)
    assert pruner.should_prune(history, flat(10, 2.0, 2)) is False  # steps 0, 1: warm-up
    assert pruner.should_prune(history, flat(10, 2.0, 3)) is True  # step 2: first judgement


@pytest.mark.parametrize(
    ("steps", "expected"),
    [((0,), True), ((0, 1), False), ((0, 1, 2), True), ((0, 1, 3), True), ((0, 2, 3), False), ((1, 3, 4), True)],
)
def test_median_judges_every_interval_steps_even_across_gaps(steps: tuple[int, ...], expected: bool) -> None:
    history = make_history(*_median_study(Direction.MINIMIZE))
    trial = record(10, dict.fromkeys(steps, 2.0))
    assert MedianPruner(n_startup_trials=0, interval_steps=2).should_prune(history, trial) is expected


def test_median_counts_non_finite_values_of_others_as_worst(direction: Direction) -> None:
    v = signed(direction)
    diverged = [flat(n, math.nan if n % 2 else math.inf, 3, COMPLETE) for n in range(3)]
    finished = [flat(3, v(1.0), 3, COMPLETE), flat(4, v(1.0), 3, COMPLETE)]
    mediocre = flat(10, v(5.0), 1)  # worse than every finite value, better than the diverged majority
    history = make_history(*diverged, *finished, mediocre, direction=direction)
    assert MedianPruner(n_startup_trials=0).should_prune(history, mediocre) is False


def test_median_ignores_failed_trials() -> None:
    failed = [flat(n, 0.1, 3, FAILED) for n in range(5)]
    trial = flat(10, 2.0, 1)
    pruner = MedianPruner(n_startup_trials=0)
    assert pruner.should_prune(make_history(*failed, trial), trial) is False
    assert pruner.should_prune(make_history(*failed, flat(5, 1.0, 3, COMPLETE), trial), trial) is True


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_startup_trials": -1}, "n_startup_trials must be an integer >= 0"),
        ({"n_warmup_steps": 1.5}, "n_warmup_steps must be an integer >= 0, got n_warmup_steps=1.5"),
        ({"interval_steps": 0}, "interval_steps must be an integer >= 1"),
        ({"interval_steps": True}, "interval_steps"),
    ],
)
def test_median_rejects_invalid_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        MedianPruner(**kwargs)


# ---- SuccessiveHalvingPruner (ASHA) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "max_resource", "until_step", "expected"),
    [
        ((1, 3, 0), 27, None, [0, 2, 8]),  # resources 1, 3, 9; none at 27, where trials finish anyway
        ((1, 3, 0), 28, None, [0, 2, 8, 26]),
        ((1, 3, 0), None, 10, [0, 2, 8]),
        ((2, 2, 1), 20, None, [3, 7, 15]),  # resources 4, 8, 16
        ((1, 4, 0), 4, None, [0]),
    ],
)
def test_asha_rung_steps(args: tuple, max_resource: int | None, until_step: int | None, expected: list[int]) -> None:
    assert SuccessiveHalvingPruner(*args).rung_steps(max_resource, until_step) == expected


@pytest.mark.parametrize(("loss", "pruned"), [(2.5, False), (3.0, False), (3.5, True), (9.0, True), (0.5, False)])
def test_asha_keeps_the_top_third_at_a_rung(direction: Direction, loss: float, pruned: bool) -> None:
    v = signed(direction)
    # Eight trials reached rung 0 (step 0) with losses 1..8; with the judged one, n=9 values: the best 3 go on.
    rivals = [record(n, {0: v(n + 1.0)}, (COMPLETE, PRUNED, RUNNING)[n % 3]) for n in range(8)]
    trial = record(10, {0: v(loss)})
    history = make_history(*rivals, trial, direction=direction)
    assert SuccessiveHalvingPruner(reduction_factor=3).should_prune(history, trial) is pruned


@pytest.mark.parametrize(("loss", "pruned"), [(0.5, False), (1.0, False), (2.0, True)])
def test_asha_with_fewer_than_eta_values_only_the_best_goes_on(direction: Direction, loss: float, pruned: bool) -> None:
    v = signed(direction)
    trial = record(10, {0: v(loss)})
    history = make_history(record(0, {0: v(1.0)}, COMPLETE), trial, direction=direction)
    assert SuccessiveHalvingPruner(reduction_factor=3).should_prune(history, trial) is pruned


def test_asha_judges_only_at_rungs_and_never_demotes() -> None:
    pruner = SuccessiveHalvingPruner(reduction_factor=3)  # rungs at steps 0, 2, 8
    better_at_rung0 = [record(n, {0: 0.1, 1: 0.1}) for n in range(5)]  # arrived after the trial passed rung 0
    trial = record(10, {0: 1.0, 1: 9.0})
    history = make_history(*better_at_rung0, trial)
    assert pruner.should_prune(history, trial) is False  # step 1 is no rung, and rung 0 is not judged again
    trial = record(10, {0: 1.0, 1: 9.0, 2: 9.0})
    assert pruner.should_prune(make_history(*better_at_rung0, trial), trial) is False  # nobody else reached rung 1


def test_asha_judges_a_rung_that_the_trial_skipped() -> None:
    pruner = SuccessiveHalvingPruner(reduction_factor=3)
    trial = record(10, {0: 1.0, 3: 5.0})  # no value at rung step 2: judged at step 3 with 5.0
    # The rival skipped step 2 too; its rung value is the first one recorded after it.
    assert pruner.should_prune(make_history(record(0, {1: 9.0, 4: 1.0}, COMPLETE), trial), trial) is True
    assert pruner.should_prune(make_history(record(0, {0: 1.0, 1: 1.0}, PRUNED), trial), trial) is False


def test_asha_max_resource_defaults_to_history_max_steps() -> None:
    rival = record(0, dict.fromkeys(range(9), 0.1), COMPLETE)
    trial = record(10, dict.fromkeys(range(9), 1.0) | {0: 0.01, 2: 0.01})  # best at rungs 0 and 1, worse at step 8
    pruner = SuccessiveHalvingPruner(reduction_factor=3)
    assert pruner.should_prune(make_history(rival, trial, max_steps=None), trial) is True  # rung at step 8
    assert pruner.should_prune(make_history(rival, trial, max_steps=10), trial) is True
    assert pruner.should_prune(make_history(rival, trial, max_steps=9), trial) is False  # step 8 is the last one
    explicit = SuccessiveHalvingPruner(reduction_factor=3, max_resource=9)
    assert explicit.should_prune(make_history(rival, trial, max_steps=None), trial) is False
    assert explicit.should_prune(make_history(rival, trial, max_steps=100), trial) is False


def test_asha_min_early_stopping_rate_delays_the_first_rung() -> None:
    pruner = SuccessiveHalvingPruner(reduction_factor=3, min_early_stopping_rate=1)  # rungs at steps 2, 8
    rival = flat(0, 0.1, 3, COMPLETE)
    assert pruner.should_prune(make_history(rival, flat(10, 5.0, 1)), flat(10, 5.0, 1)) is False
    assert pruner.should_prune(make_history(rival, flat(10, 5.0, 3)), flat(10, 5.0, 3)) is True


def test_asha_counts_non_finite_values_of_others_as_worst(direction: Direction) -> None:
    v = signed(direction)
    rivals = [record(0, {0: math.nan}, PRUNED), record(1, {0: -math.inf}, PRUNED), record(2, {0: math.inf}, RUNNING)]
    trial = record(10, {0: v(100.0)})
    assert (
        SuccessiveHalvingPruner(reduction_factor=4).should_prune(
            make_history(*rivals, trial, direction=direction), trial
        )
        is False
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"min_resource": 0}, "min_resource must be an integer >= 1, got min_resource=0"),
        ({"reduction_factor": 1}, "reduction_factor must be an integer >= 2"),
        ({"reduction_factor": 2.5}, "reduction_factor must be an integer"),
        ({"min_early_stopping_rate": -1}, "min_early_stopping_rate must be an integer >= 0"),
        ({"max_resource": 0}, "max_resource must be an integer >= 1"),
        (
            {"max_resource": 3, "reduction_factor": 3, "min_early_stopping_rate": 1},
            "max_resource must exceed the first rung",
        ),
    ],
)
def test_asha_rejects_invalid_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        SuccessiveHalvingPruner(**kwargs)


# ---- HyperbandPruner -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "max_resource", "expected"),
    [
        ((1, None, 3), 27, [27, 12, 6, 4]),
        ((1, None, 3), 81, [81, 34, 15, 8, 5]),
        ((1, None, 3), 1, [1]),
        ((2, None, 2), 8, [4, 3, 3]),
    ],
)
def test_hyperband_budgets(args: tuple, max_resource: int, expected: list[int]) -> None:
    assert HyperbandPruner(*args).budgets(max_resource) == expected


def test_hyperband_bracket_assignment_is_deterministic_and_spread() -> None:
    pruner = HyperbandPruner(max_resource=27)
    empty = make_history(seed=1)
    busy = make_history(*[flat(n, 1.0, 3, COMPLETE) for n in range(50)], seed=1, max_steps=5)
    brackets = [pruner.bracket_of(empty, n) for n in range(4000)]
    assert brackets == [HyperbandPruner(max_resource=27).bracket_of(busy, n) for n in range(4000)]
    counts = Counter(brackets)
    budgets = pruner.budgets(27)
    for bracket, budget in enumerate(budgets):
        assert counts[bracket] / 4000 == pytest.approx(budget / sum(budgets), abs=0.03)
    # Another seed gives another assignment.
    assert brackets != [pruner.bracket_of(make_history(seed=2), n) for n in range(4000)]


def test_hyperband_max_resource_defaults_to_history_max_steps_then_completed_trials() -> None:
    pruner = HyperbandPruner()
    assert pruner.resolve_max_resource(make_history(max_steps=27)) == 27
    assert pruner.resolve_max_resource(make_history(flat(0, 1.0, 9, COMPLETE), flat(1, 1.0, 20, RUNNING))) == 9
    assert pruner.resolve_max_resource(make_history(flat(1, 1.0, 20, RUNNING))) is None
    assert pruner.bracket_of(make_history(), 0) is None
    assert HyperbandPruner(max_resource=5).resolve_max_resource(make_history(max_steps=27)) == 5
    # Unknown maximum resource: only a non-finite value prunes.
    trial = flat(10, 5.0, 3)
    history = make_history(flat(0, 0.1, 3, RUNNING), trial)
    assert pruner.should_prune(history, trial) is False
    assert pruner.should_prune(history, record(10, {0: math.nan})) is True


def _numbers_by_bracket(pruner: HyperbandPruner, max_steps: int, seed: int = 0) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for n in range(300):
        out.setdefault(pruner.bracket_of(make_history(seed=seed, max_steps=max_steps), n), []).append(n)
    return out


def test_hyperband_trials_compete_only_within_their_bracket(direction: Direction) -> None:
    v = signed(direction)
    pruner = HyperbandPruner(reduction_factor=3)  # R=27: brackets 0..3, bracket 0 judges at steps 0, 2, 8
    by_bracket = _numbers_by_bracket(pruner, 27)
    judged, mates, strangers = by_bracket[0][0], by_bracket[0][1:4], by_bracket[1][:3] + by_bracket[2][:3]
    trial = record(judged, {0: v(2.0)})

    def better(numbers):
        return [record(n, {0: v(1.0)}, COMPLETE) for n in numbers]

    assert (
        pruner.should_prune(make_history(*better(strangers), trial, direction=direction, max_steps=27), trial) is False
    )
    assert pruner.should_prune(make_history(*better(mates), trial, direction=direction, max_steps=27), trial) is True


def test_hyperband_brackets_start_later_and_the_last_never_prunes() -> None:
    pruner = HyperbandPruner(reduction_factor=3)
    by_bracket = _numbers_by_bracket(pruner, 27)
    for bracket, first_rung_step in [(1, 2), (2, 8), (3, None)]:
        numbers = by_bracket[bracket]
        mates = [flat(n, 0.1, 27, COMPLETE) for n in numbers[1:4]]
        decisions = []
        for n_steps in range(1, 27):
            trial = flat(numbers[0], 5.0, n_steps)
            decisions.append(pruner.should_prune(make_history(*mates, trial, max_steps=27), trial))
        first = decisions.index(True) if True in decisions else None
        assert first == first_rung_step, f"bracket {bracket}"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"min_resource": 0}, "min_resource must be an integer >= 1"),
        ({"reduction_factor": 1}, "reduction_factor must be an integer >= 2"),
        ({"max_resource": "auto"}, "max_resource must be an integer >= 1, got max_resource='auto'"),
        ({"min_resource": 4, "max_resource": 3}, "max_resource must be >= min_resource"),
    ],
)
def test_hyperband_rejects_invalid_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        HyperbandPruner(**kwargs)


# ---- make_pruner -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "cls"),
    [
        (None, NopPruner),
        ("none", NopPruner),
        ("median", MedianPruner),
        ("ASHA", SuccessiveHalvingPruner),
        ("hyperband", HyperbandPruner),
    ],
)
def test_make_pruner_by_name(spec: str | None, cls: type) -> None:
    pruner = make_pruner(spec)
    assert type(pruner) is cls
    assert pruner.name == (spec or "none").lower()


def test_make_pruner_passes_instances_through() -> None:
    pruner = MedianPruner(n_warmup_steps=3)
    assert make_pruner(pruner) is pruner


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("successive", r"unknown pruner='successive'; use one of 'none', 'median', 'asha', 'hyperband'"),
        (3, "pruner must be None, a Pruner or one of 'none', 'median', 'asha', 'hyperband'; got pruner=3 of type int"),
        (MedianPruner, r"pass an instance such as MedianPruner\(\)"),
    ],
)
def test_make_pruner_rejects_unknown_specs(spec: object, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        make_pruner(spec)


@pytest.mark.parametrize(
    "pruner", [MedianPruner(n_startup_trials=0), SuccessiveHalvingPruner(), HyperbandPruner(max_resource=9)], ids=repr
)
def test_values_stored_as_none_count_as_non_finite(pruner: Pruner) -> None:
    """A database that cannot keep NaN may hand back None: it must not crash a pruner either."""
    others = [record(n, {0: None, 1: 1.0}, COMPLETE) for n in range(4)]
    trial = record(10, {0: 5.0})
    assert pruner.should_prune(make_history(*others, trial), trial) is False  # the others count as worst
    assert pruner.should_prune(make_history(*others), record(10, {0: 5.0, 1: None})) is True
