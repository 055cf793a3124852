"""The part of the storage contract about several objectives and constraints (see :mod:`.storage`)."""

from __future__ import annotations

import math

import pytest

from lightning_hpt.constraints import outcome_constraints
from lightning_hpt.exceptions import StudyMismatchError
from lightning_hpt.objectives import parse_objectives
from lightning_hpt.storage.base import Storage
from lightning_hpt.trial import TrialState

__all__ = ["ObjectivesContract"]

PARAMS = {"model.lr": 0.01, "model.layers": 2, "optimizer": "adam"}


class ObjectivesContract:
    """A storage keeps every objective's value of a trial and of each step, and a study's objectives and constraints."""

    def test_several_objectives_round_trip(self, storage: Storage) -> None:
        objectives = parse_objectives(["val_acc", "n_params"], ["max", "min"])
        constraints = outcome_constraints({"latency": ("<=", 5.0)})
        info = _info("multi", objectives=objectives, constraints=constraints)
        assert storage.open_study(info).objectives == objectives
        got = storage.load_study("multi")
        assert (got.objectives, got.constraints) == (objectives, constraints)
        assert storage.history("multi").objectives == objectives
        n = storage.create_trial("multi", PARAMS).number
        storage.report("multi", n, 0, (0.5, 100.0))
        storage.report_many("multi", n, {1: (0.7, 100.0), 2: (math.nan, 100.0)})
        done = storage.finish_trial("multi", n, state=TrialState.COMPLETE, value=0.7, values=(0.7, 100.0), best_step=1)
        for t in (done, storage.trials("multi")[0], storage.history("multi").trials[0]):
            assert t.values == (0.7, 100.0) and t.intermediate[1] == 0.7 and math.isnan(t.intermediate[2])
            assert t.intermediate_values[1] == (0.7, 100.0) and math.isnan(t.intermediate_values[2][0])
        with pytest.raises(StudyMismatchError, match="objectives changed"):
            storage.open_study(_info("multi", objectives=objectives[::-1], constraints=constraints))
        with pytest.raises(StudyMismatchError, match="constraints changed"):
            storage.open_study(_info("multi", objectives=objectives))

    def test_requeue_clears_every_objective_value(self, storage: Storage) -> None:
        storage.open_study(_info("multi", objectives=parse_objectives(["a", "b"], ["max", "min"])))
        n = storage.create_trial("multi", PARAMS).number
        storage.report("multi", n, 0, (0.5, 1.0))
        storage.finish_trial("multi", n, state=TrialState.FAILED, value=0.5, values=(0.5, 1.0), error="boom")
        queued = storage.requeue_trial("multi", n)
        assert (queued.values, dict(queued.intermediate_values)) == (None, {})
        assert storage.trials("multi")[0].values is None


def _info(name: str, **changes: object) -> object:
    from lightning_hpt.testing.storage import study_info

    return study_info(name, **changes)
