"""Contract tests every Strategy must pass.

Subclass :class:`StrategyContract` in a test module and override ``make_strategy``::

    class TestMyStrategy(StrategyContract):
        def make_strategy(self):
            return MyStrategy()
"""

from __future__ import annotations

import math

import pytest

from lightning_hpt.space import Categorical, Float, Int, SearchSpace
from lightning_hpt.strategies.base import Strategy, params_key
from lightning_hpt.trial import Direction, History, TrialState


def _space() -> SearchSpace:
    return SearchSpace(
        {
            "model.lr": Float(1e-4, 1e-1, log=True),
            "model.num_layers": Int(1, 4),
            "model.dropout": Float(0.0, 0.5, step=0.1),
            "data.batch_size": Categorical([16, 32, 64]),
        }
    )


def _objective(p: dict) -> float:
    return (
        (math.log10(p["model.lr"]) + 2) ** 2
        + 0.1 * p["model.num_layers"]
        + p["model.dropout"]
        + (p["data.batch_size"] == 64)
    )


class StrategyContract:
    """Behaviour shared by all strategies; the strategy is built fresh for every test."""

    def make_strategy(self) -> Strategy:
        raise NotImplementedError

    def history(self, n_done: int = 0, seed: int | None = 0, direction: Direction = Direction.MINIMIZE) -> History:
        h = History(_space(), direction, seed=seed)
        for _ in range(n_done):
            params = self.make_strategy().ask(h, 1)[0]
            h = h.add(params, _objective(params))
        return h

    def test_proposals_are_valid(self) -> None:
        h = self.history(6)
        proposals = self.make_strategy().ask(h, 3)
        assert 1 <= len(proposals) <= 3
        for p in proposals:
            h.space.validate(p)

    def test_same_seed_and_history_give_same_proposals(self) -> None:
        h = self.history(5, seed=7)
        assert self.make_strategy().ask(h, 2) == self.make_strategy().ask(h, 2)

    def test_pure_function_of_history(self) -> None:
        # one strategy object asked twice about the same history answers the same (no hidden state)
        s, h = self.make_strategy(), self.history(4, seed=3)
        assert s.ask(h, 1) == s.ask(h, 1)

    def test_batch_proposals_are_distinct(self) -> None:
        proposals = self.make_strategy().ask(self.history(6), 4)
        assert len({params_key(p) for p in proposals}) == len(proposals)

    def test_ask_never_returns_more_than_n(self) -> None:
        assert len(self.make_strategy().ask(self.history(2), 2)) <= 2

    def test_tolerates_failed_pruned_and_nonfinite_trials(self) -> None:
        h = self.history(4)
        params = self.make_strategy().ask(h, 3)
        h = h.add(params[0], None, TrialState.FAILED, error="boom")
        h = h.add(params[1], 0.5, TrialState.PRUNED, intermediate={0: 0.5})
        if len(params) > 2:
            h = h.add(params[2], float("nan"), TrialState.COMPLETE)
        for p in self.make_strategy().ask(h, 2):
            h.space.validate(p)

    @pytest.mark.parametrize("direction", [Direction.MINIMIZE, Direction.MAXIMIZE])
    def test_both_directions(self, direction: Direction) -> None:
        h = self.history(5, direction=direction)
        for p in self.make_strategy().ask(h, 1):
            h.space.validate(p)

    def test_conditional_parameters_are_absent_where_inactive(self) -> None:
        space = SearchSpace(
            {
                "optimizer.class_path": Categorical(["sgd", "adam"]),
                "optimizer.momentum": Float(0.0, 0.9, step=0.3, when={"optimizer.class_path": "sgd"}),
                "model.num_layers": Int(1, 3),
                "model.width3": Int(8, 64, log=True, when={"model.num_layers": 3}),
            }
        )
        h = History(space, Direction.MINIMIZE, seed=0)
        for _ in range(6):
            for p in self.make_strategy().ask(h, 1):
                space.validate(p)  # exactly the active parameters: an inactive one is refused
                h = h.add(p, p["model.num_layers"] + p.get("optimizer.momentum", 0.5))
        proposals = self.make_strategy().ask(h, 3)
        for p in proposals:
            space.validate(p)
        assert len({params_key(p) for p in proposals}) == len(proposals)
