from __future__ import annotations

import json

import numpy as np
import pytest

from lightning_hpt import Categorical, Float, Int, SearchSpace, SearchSpaceError


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Float(1.0, 0.5), r"low < high must hold, but got low=1.0, high=0.5; swap them: Float\(0.5, 1.0\)"),
        (lambda: Float(0.5, 0.5), r"low < high must hold.*to fix a parameter at one value, pass it to the model"),
        (lambda: Float(0.0, 1.0, log=True), r"log=True needs low > 0, but got low=0.0"),
        (lambda: Float(-1.0, 1.0, log=True), r"log=True needs low > 0"),
        (lambda: Float(0.0, 1.0, step=0.3), r"step must divide high - low.*step=0.3"),
        (lambda: Float(0.0, float("inf")), r"high must be finite"),
        (lambda: Float(0.0, 1.0, step=-1), r"step must be > 0"),
        (lambda: Float("a", 1.0), r"low must be a number"),
        (lambda: Int(5, 1), r"low < high must hold"),
        (lambda: Int(0, 10, log=True), r"log=True needs low > 0"),
        (lambda: Int(0, 10, step=3), r"step must divide high - low.*use high=9"),
        (lambda: Int(0, 1.5), r"high must be an integer"),
        (lambda: Categorical([]), r"choices must not be empty"),
        (lambda: Categorical([1, 2, 1]), r"duplicate choice 1"),
        (lambda: Categorical("abc"), r"choices must be a list"),
        (lambda: Categorical([object()]), r"choices must be str, int, float, bool or None.*import path"),
        (lambda: Categorical([(0.9, 0.999), (0.8, 0.99)]), r"got \(0.9, 0.999\) of type tuple; a list or tuple"),
        (lambda: SearchSpace({}), r"space must not be empty"),
        (lambda: SearchSpace({"model.lr": [0.1, 0.01]}), r"wrap it: Categorical\(\[0.1, 0.01\]\)$"),
        (
            lambda: SearchSpace({"lr": (1e-4, 1e-1)}),
            r"Categorical\(\[0.0001, 0.1\]\) for these values, or Float\(0.0001, 0.1, log=True\) for the range",
        ),
        (lambda: SearchSpace({"hidden": (16, 64)}), r"or Int\(16, 64\) for the range between them$"),
        (lambda: SearchSpace({"model.lr": 0.1}), r"must be a Float, Int or Categorical"),
        (lambda: SearchSpace({"": Float(0, 1)}), r"must not be empty"),
        (lambda: SearchSpace({"../x": Float(0, 1)}), r"is invalid"),
        (lambda: SearchSpace({"model.a\x00b": Float(0, 1)}), r"is invalid"),
        (lambda: SearchSpace({"m" * 200: Float(0, 1)}), r"at most 128 characters"),
    ],
)
def test_invalid_domains_raise_at_construction(make, match):
    with pytest.raises(SearchSpaceError, match=match):
        make()


def test_categorical_keeps_types_apart():
    # 1 == True in Python, but they are different choices
    c = Categorical([1, True, 1.5, None, "a"])
    assert c.index(True) == 1 and c.index(1) == 0
    assert c.contains(None) and not c.contains(2)


@pytest.mark.parametrize(
    "domain",
    [
        Float(1e-4, 1e-1, log=True),
        Float(0.0, 1.0),
        Float(0.0, 0.5, step=0.1),
        Int(1, 5),
        Int(16, 512, log=True),
        Int(0, 12, step=4),
        Categorical(["adam", "sgd", "rmsprop"]),
    ],
)
def test_unit_round_trip_and_sampling(domain):
    rng = np.random.default_rng(0)
    for _ in range(200):
        v = domain.sample(rng)
        assert domain.contains(v), v
        u = domain.to_unit(v)
        assert 0.0 <= u <= 1.0
        back = domain.from_unit(u)
        assert back == pytest.approx(v) if isinstance(v, float) else back == v
    for u in (-0.5, 0.0, 1.0, 1.5):  # any point of (and around) the cube decodes to a valid value
        assert domain.contains(domain.from_unit(u))


def test_discrete_sampling_is_uniform_over_values():
    rng = np.random.default_rng(1)
    counts = dict.fromkeys(Int(1, 4).values(), 0)
    for _ in range(4000):
        counts[Int(1, 4).sample(rng)] += 1
    assert all(900 < c < 1100 for c in counts.values()), counts


def test_log_float_is_log_uniform():
    rng = np.random.default_rng(2)
    d = Float(1e-4, 1.0, log=True)
    below = np.mean([d.sample(rng) < 1e-2 for _ in range(4000)])
    assert below == pytest.approx(0.5, abs=0.04)


def test_grid_product_order_and_continuous_needs_points():
    space = SearchSpace({"model.a": Int(1, 2), "model.b": Categorical(["x", "y"]), "model.c": Float(0.0, 1.0)})
    with pytest.raises(SearchSpaceError, match=r"'model.c'.*continuous, so a grid needs a number of points"):
        space.grid()
    grid = space.grid({"model.c": 3})
    assert len(grid) == 12
    assert grid[0] == {"model.a": 1, "model.b": "x", "model.c": 0.0}
    assert grid[-1] == {"model.a": 2, "model.b": "y", "model.c": 1.0}
    assert [g["model.c"] for g in grid[:3]] == [0.0, 0.5, 1.0]
    assert len(space.grid(2)) == 8
    with pytest.raises(SearchSpaceError, match="unknown parameters"):
        space.grid({"model.zzz": 2})


def test_log_grid_is_geometric():
    assert Float(1e-3, 1e-1, log=True).grid(3) == pytest.approx([1e-3, 1e-2, 1e-1])


def test_a_decade_ranges_points_are_round():
    """What a user reads in a trial's config: the centre of [1e-4, 1] is 0.01, not 0.010000000000000004."""
    assert Float(1e-4, 1.0, log=True).grid(5) == [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    assert Float(1e-5, 1e-1, log=True).from_unit(0.5) == 1e-3
    d = Float(2e-4, 3e-2, log=True)
    assert all(d.to_unit(d.from_unit(u)) == pytest.approx(u, abs=1e-12) for u in np.linspace(0, 1, 17))


def test_space_json_round_trip_and_equality():
    space = SearchSpace(
        {"model.lr": Float(1e-4, 1e-1, log=True), "model.n": Int(1, 3), "data.bs": Categorical([32, 64])}
    )
    again = SearchSpace.from_json(json.dumps(space.to_dict()))
    assert again == space and list(again) == list(space)
    assert SearchSpace({"model.n": Int(1, 3)}) != SearchSpace({"model.n": Int(1, 4)})
    assert SearchSpace.from_dict(
        {"model.lr": {"type": "float", "low": 0.001, "high": 0.1, "log": True}, "data.bs": {"choices": [32, 64]}}
    )["data.bs"] == Categorical([32, 64])


def test_validate_params():
    space = SearchSpace({"model.n": Int(1, 3)})
    space.validate({"model.n": 2})
    with pytest.raises(SearchSpaceError, match="missing"):
        space.validate({})
    with pytest.raises(SearchSpaceError, match=r"model.n=7 is not in"):
        space.validate({"model.n": 7})
