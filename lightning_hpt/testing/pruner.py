"""The contract every :class:`~lightning_hpt.pruners.base.Pruner` must satisfy.

Subclass :class:`PrunerContract` in a test module and override the ``make_pruner`` fixture::

    class TestMyPruner(PrunerContract):
        @pytest.fixture
        def make_pruner(self):
            return lambda: MyPruner(aggressiveness=2)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping

import numpy as np
import pytest

from lightning_hpt.pruners.base import Pruner
from lightning_hpt.space import Float, SearchSpace
from lightning_hpt.trial import Direction, History, TrialRecord, TrialState

__all__ = ["PrunerContract", "make_history", "record"]

SPACE = SearchSpace({"model.lr": Float(1e-4, 1e-1, log=True)})
NON_FINITE = (math.nan, math.inf, -math.inf)


def record(number: int, intermediate: Mapping[int, float], state: TrialState = TrialState.RUNNING) -> TrialRecord:
    """A trial with ``intermediate`` values ``{step: value}`` (pruners read nothing else of it)."""
    return TrialRecord(number=number, params={"model.lr": 0.01}, state=state, intermediate=dict(intermediate))


def make_history(
    *trials: TrialRecord, direction: Direction = Direction.MINIMIZE, seed: int | None = 0, max_steps: int | None = None
) -> History:
    """A history of ``trials`` over a one-parameter space."""
    return History(SPACE, direction, tuple(sorted(trials, key=lambda t: t.number)), seed=seed, max_steps=max_steps)


def _curve(start: float, n_steps: int, direction: Direction) -> dict[int, float]:
    """A learning curve that improves with every step, in the given direction."""
    sign = 1.0 if direction is Direction.MINIMIZE else -1.0
    return {s: sign * start / (s + 1) for s in range(n_steps)}


class PrunerContract:
    """Properties that hold for every pruner, whatever its algorithm, in both directions.

    A trial without steps, the only trial and the best trial are never pruned; NaN, infinite and
    missing steps never raise; decisions are plain ``bool``, the same for the same history (fresh
    instance or not), and leave the history untouched; FAILED and QUEUED trials, and a stale copy
    of the judged trial in the history, change nothing.
    """

    #: whether a NaN or infinite latest value of the judged trial prunes it (False for a pruner that never prunes).
    prunes_non_finite: bool = True

    @pytest.fixture
    def make_pruner(self) -> Callable[[], Pruner]:
        """Override: return a factory of the pruner under test (fresh instance each call)."""
        raise NotImplementedError("override the make_pruner fixture in the subclass")

    @pytest.fixture(params=list(Direction), ids=lambda d: d.name.lower())
    def direction(self, request: pytest.FixtureRequest) -> Direction:
        return request.param

    def _decisions(self, pruner: Pruner, history: History, trial: TrialRecord) -> list[bool]:
        """The decision at each of ``trial``'s steps, as if judged after each validation run."""
        out = []
        for step in sorted(trial.intermediate):
            now = record(trial.number, {s: v for s, v in trial.intermediate.items() if s <= step})
            out.append(pruner.should_prune(history, now))
        return out

    def test_name_and_repr(self, make_pruner: Callable[[], Pruner]) -> None:
        pruner = make_pruner()
        assert isinstance(pruner, Pruner)
        assert isinstance(pruner.name, str) and pruner.name
        assert type(pruner).__name__ in repr(pruner)

    def test_no_steps_yet_is_never_pruned(self, make_pruner: Callable[[], Pruner], direction: Direction) -> None:
        trial = record(0, {})
        assert make_pruner().should_prune(make_history(trial, direction=direction), trial) is False
        # The judged trial may also be missing from the history (not stored yet).
        assert make_pruner().should_prune(make_history(direction=direction), trial) is False

    def test_the_only_trial_is_never_pruned(self, make_pruner: Callable[[], Pruner], direction: Direction) -> None:
        trial = record(0, _curve(1.0, 30, direction))
        for max_steps in (None, 30):
            history = make_history(trial, direction=direction, max_steps=max_steps)
            assert not any(self._decisions(make_pruner(), history, trial))

    def test_the_best_trial_is_never_pruned(self, make_pruner: Callable[[], Pruner], direction: Direction) -> None:
        worse = [record(n, _curve(10.0 + n, 30, direction), TrialState.COMPLETE) for n in range(1, 12)]
        best = record(40, _curve(1.0, 30, direction))
        history = make_history(best, *worse, direction=direction, max_steps=30)
        assert not any(self._decisions(make_pruner(), history, best))

    @pytest.mark.parametrize("bad", NON_FINITE, ids=["nan", "inf", "-inf"])
    def test_non_finite_values_never_raise(
        self, make_pruner: Callable[[], Pruner], direction: Direction, bad: float
    ) -> None:
        others = [record(n, {0: bad, 1: 1.0, 2: bad, 4: 0.5}, TrialState.COMPLETE) for n in range(1, 8)]
        trial = record(0, {0: 1.0, 1: bad})
        history = make_history(trial, *others, direction=direction, max_steps=10)
        decision = make_pruner().should_prune(history, trial)
        assert isinstance(decision, bool)
        assert decision is self.prunes_non_finite
        # Its own non-finite value prunes even a trial that is alone.
        assert make_pruner().should_prune(make_history(trial, direction=direction), trial) is self.prunes_non_finite

    def test_missing_steps_never_raise(self, make_pruner: Callable[[], Pruner], direction: Direction) -> None:
        others = [record(n, {0: 1.0, 5: 0.5, 9: 0.2}, TrialState.COMPLETE) for n in range(1, 8)]
        others += [record(8, {3: 2.0}, TrialState.PRUNED), record(9, {})]
        trial = record(0, {1: 3.0, 4: 2.0, 7: 1.5})
        history = make_history(trial, *others, direction=direction, max_steps=10)
        assert all(isinstance(d, bool) for d in self._decisions(make_pruner(), history, trial))

    def test_deterministic_and_read_only(self, make_pruner: Callable[[], Pruner], direction: Direction) -> None:
        history, trials = _random_study(np.random.default_rng(7), direction)
        snapshot = copy.deepcopy(history.trials)
        first = [self._decisions(make_pruner(), history, t) for t in trials]
        pruner = make_pruner()
        assert [self._decisions(pruner, history, t) for t in trials] == first
        assert [self._decisions(pruner, history, t) for t in trials] == first  # no state kept between calls
        assert history.trials == snapshot

    def test_failed_and_queued_trials_are_ignored(
        self, make_pruner: Callable[[], Pruner], direction: Direction
    ) -> None:
        history, trials = _random_study(np.random.default_rng(3), direction)
        great = _curve(1e-6, 30, direction)
        extra = [record(100 + n, great, TrialState.FAILED) for n in range(10)] + [record(200, {}, TrialState.QUEUED)]
        noisier = make_history(*history.trials, *extra, direction=direction, max_steps=history.max_steps)
        for trial in trials:
            assert self._decisions(make_pruner(), noisier, trial) == self._decisions(make_pruner(), history, trial)

    def test_stale_copy_of_the_judged_trial_is_ignored(
        self, make_pruner: Callable[[], Pruner], direction: Direction
    ) -> None:
        history, trials = _random_study(np.random.default_rng(5), direction)
        trial = trials[0]
        rest = [t for t in history.trials if t.number != trial.number]
        stale = make_history(*rest, record(trial.number, {0: 0.0}), direction=direction, max_steps=history.max_steps)
        assert self._decisions(make_pruner(), stale, trial) == self._decisions(make_pruner(), history, trial)


def _random_study(rng: np.random.Generator, direction: Direction) -> tuple[History, list[TrialRecord]]:
    """Twenty noisy trials of mixed states with some NaN/inf values and gaps, and three trials to judge."""
    states = [TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING]
    trials = []
    for n in range(20):
        n_steps = int(rng.integers(1, 28))
        values = {s: float(v) for s, v in enumerate(rng.uniform(0.5, 2.0) / np.sqrt(np.arange(1, n_steps + 1)))}
        if rng.random() < 0.2:
            values[int(rng.integers(n_steps))] = float(rng.choice(NON_FINITE))
        if rng.random() < 0.2 and n_steps > 2:
            del values[int(rng.integers(1, n_steps - 1))]
        trials.append(record(n, values, states[n % 3]))
    judged = [record(20 + k, {s: float(v) for s, v in enumerate(rng.uniform(0.5, 2.0, size=27))}) for k in range(3)]
    return make_history(*trials, *judged, direction=direction, max_steps=27), judged
