from __future__ import annotations

import pytest

from lightning_hpt import Categorical, Float, GridStrategy, Int, RandomStrategy, SearchSpace, SobolStrategy
from lightning_hpt.exceptions import ConfigurationError
from lightning_hpt.strategies import make_strategy
from lightning_hpt.strategies.base import params_key
from lightning_hpt.testing.strategy import StrategyContract
from lightning_hpt.trial import Direction, History, TrialState


class TestRandomContract(StrategyContract):
    def make_strategy(self):
        return RandomStrategy()


class TestSobolContract(StrategyContract):
    def make_strategy(self):
        return SobolStrategy()


class TestGridContract(StrategyContract):
    def make_strategy(self):
        return GridStrategy(points=3)


def _h(space=None, seed=0):
    space = space or SearchSpace({"model.lr": Float(1e-4, 1e-1, log=True), "model.n": Int(1, 8)})
    return History(space, Direction.MAXIMIZE, seed=seed)


@pytest.mark.parametrize("cls", [RandomStrategy, SobolStrategy])
def test_resumed_sequence_equals_uninterrupted(cls):
    """A seeded search stopped after 3 trials and resumed proposes what an uninterrupted one does (RELIABILITY 5)."""
    h = _h()
    whole = []
    for _ in range(6):
        p = cls().ask(h)[0]
        whole.append(p)
        h = h.add(p, 1.0)
    h2 = _h()
    for p in whole[:3]:
        h2 = h2.add(p, 1.0)
    # a batch ask after resume continues the same sequence
    assert cls().ask(h2, 3) == whole[3:]


@pytest.mark.parametrize("cls", [RandomStrategy, SobolStrategy])
def test_different_seeds_differ(cls):
    assert cls().ask(_h(seed=1), 3) != cls().ask(_h(seed=2), 3)


def test_sobol_covers_space_evenly():
    space = SearchSpace({"model.x": Float(0.0, 1.0)})
    xs = sorted(p["model.x"] for p in SobolStrategy().ask(History(space, Direction.MINIMIZE, seed=0), 16))
    # one point in each sixteenth: that is what a (scrambled) Sobol design guarantees
    assert [int(x * 16) for x in xs] == list(range(16))


def test_grid_order_skip_and_exhaustion():
    space = SearchSpace({"model.n": Int(1, 2), "data.bs": Categorical([32, 64])})
    h = _h(space)
    g = GridStrategy()
    first = g.ask(h, 3)
    assert first == [{"model.n": 1, "data.bs": 32}, {"model.n": 1, "data.bs": 64}, {"model.n": 2, "data.bs": 32}]
    h = h.add(first[0], 1.0).add(first[1], None, TrialState.FAILED).add(first[2], None, TrialState.RUNNING)
    assert g.ask(h, 5) == [{"model.n": 2, "data.bs": 64}]
    h = h.add({"model.n": 2, "data.bs": 64}, 0.5)
    assert g.ask(h, 1) == []


def test_grid_seeded_shuffle_is_a_permutation():
    space = SearchSpace({"model.n": Int(1, 6)})
    shuffled = GridStrategy(shuffle=True, seed=3).ask(_h(space), 10)
    assert sorted(p["model.n"] for p in shuffled) == [1, 2, 3, 4, 5, 6]
    assert shuffled != GridStrategy().ask(_h(space), 10)
    assert shuffled == GridStrategy(shuffle=True, seed=3).ask(_h(space), 10)


def test_grid_continuous_needs_points():
    with pytest.raises(Exception, match="grid needs a number of points"):
        GridStrategy().ask(_h(), 1)
    assert len({params_key(p) for p in GridStrategy(points=3).ask(_h(), 100)}) == 24


def test_make_strategy_names():
    assert isinstance(make_strategy("random"), RandomStrategy)
    assert isinstance(make_strategy("grid"), GridStrategy)
    with pytest.raises(
        ConfigurationError, match=r"strategy must be one of \['grid', 'random', 'sobol', 'bayes'\].*'tpe'"
    ):
        make_strategy("tpe")
    with pytest.raises(ConfigurationError, match="points must be a positive int"):
        GridStrategy(points=0)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: RandomStrategy(seed=-1), r"seed must be an integer from 0 to 2\*\*32 - 1"),
        (lambda: GridStrategy(seed=2**32), r"seed must be an integer from 0 to 2\*\*32 - 1"),
        (lambda: SobolStrategy(seed=1.0), "seed must be an integer"),
        (lambda: GridStrategy(shuffle="yes"), "GridStrategy: shuffle must be True or False"),
    ],
)
def test_strategy_arguments_are_refused_when_the_strategy_is_made(make, match):
    """A seed the generators would fold (2**32 acts as 0) or refuse (-1, at the first proposal) is refused at once."""
    with pytest.raises(ConfigurationError, match=match):
        make()
