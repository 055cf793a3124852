"""Stacked trials with several objectives and outcome constraints: each member recorded as its trial alone."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import replace

import pytest
import torch
from test_stacking import SPACE, TRAINER, FixedOrderData, OrderedData, Regressor, _jobs, _Stops
from torch import nn

from lightning_hpt import HyperparameterSearch
from lightning_hpt.constraints import outcome_constraints
from lightning_hpt.exceptions import MetricNotFoundError
from lightning_hpt.lightning.curve import Curve
from lightning_hpt.lightning.runner import run_trial
from lightning_hpt.objectives import parse_objectives
from lightning_hpt.pruners import SuccessiveHalvingPruner
from lightning_hpt.stacking import StackedExecutor, run_jobs
from lightning_hpt.stacking.members import Member
from lightning_hpt.trial import TrialState

OBJECTIVES = parse_objectives(["val_loss", "w_norm"], ["min", "min"])
#: a bound on a metric that is no objective; the trials of the seeded study below fall on both sides of it
BOUND = 1.9
CONSTRAINTS = outcome_constraints({"val_mae": ("<=", BOUND)})


class TwoMetrics(Regressor):
    """Logs its mean absolute error and the squared norm of its weights next to the validation loss."""

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        x, y = batch
        self.log("val_mae", nn.functional.l1_loss(self(x), y))
        self.log("w_norm", sum(p.pow(2).sum() for p in self.parameters()))


def _search(tmp_path, name: str, executor=None, **kw) -> HyperparameterSearch:
    return HyperparameterSearch(
        model=TwoMetrics,
        datamodule=OrderedData,
        space=kw.pop("space", SPACE),
        monitor=["val_loss", "w_norm"],
        mode=["min", "min"],
        strategy="random",
        n_trials=kw.pop("n_trials", 6),
        seed=3,
        root=str(tmp_path / name),
        trainer_kwargs={**TRAINER, **kw.pop("trainer", {})},
        patience=None,
        executor=executor,
        verbose=False,
        **kw,
    )


def _close(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(x == pytest.approx(y, rel=1e-4, abs=1e-6) for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The same seeded two-objective, constrained study run as ordinary trials and as stacked groups of up to 6."""
    tmp = tmp_path_factory.mktemp("stack_mo")
    kw = {"constraints": {"val_mae": ("<=", BOUND)}}
    solo = _search(tmp, "solo", **kw).run()
    stacked = _search(tmp, "stacked", executor=StackedExecutor(stack=6, linger=0.2), **kw).run()
    return solo, stacked


def test_each_member_records_every_objective_as_its_trial_alone(pair):
    solo, stacked = pair
    assert len(stacked.trials) == len(solo.trials) == 6
    assert len({tuple(t.attrs["stacked"]["group"]) for t in stacked.trials}) == 2  # stacked, in two groups
    for a, b in zip(solo.trials, stacked.trials, strict=True):
        assert b.params == a.params and b.state is a.state is TrialState.COMPLETE
        steps = list(range(a.params["trainer.max_epochs"]))
        assert sorted(b.intermediate_values) == sorted(a.intermediate_values) == steps
        for step, vector in a.intermediate_values.items():
            assert len(vector) == 2 and _close(b.intermediate_values[step], vector), (a.number, step)
        assert b.best_step == a.best_step and _close(b.values, a.values)
        assert b.values == b.intermediate_values[b.best_step]  # every objective taken at the best step
    assert {t.number for t in stacked.pareto_trials} == {t.number for t in solo.pareto_trials}


def test_an_outcome_constraint_marks_the_same_members_infeasible(pair):
    solo, stacked = pair
    infeasible = [bool(t.attrs["infeasible"]) for t in solo.trials]
    assert True in infeasible and False in infeasible  # the bound splits the study
    assert [bool(t.attrs["infeasible"]) for t in stacked.trials] == infeasible
    for a, b in zip(solo.trials, stacked.trials, strict=True):
        assert b.attrs["constraint_values"]["val_mae"] == pytest.approx(a.attrs["constraint_values"]["val_mae"], 1e-4)
    assert not any(t.attrs["infeasible"] for t in stacked.pareto_trials)  # never on the front


class _Records:
    """A reporter that keeps every report and prunes at ``prune_at``."""

    answers = True

    def __init__(self, prune_at: int | None = None) -> None:
        self.prune_at, self.seen = prune_at, []

    def report(self, step: int, value: float | tuple[float, ...]) -> bool:
        self.seen.append((step, value))
        return step == self.prune_at


def test_a_member_reports_every_objective_and_is_pruned_on_them(tmp_path):
    params = [{"model.lr": lr, "trainer.max_epochs": 3} for lr in (0.01, 0.02, 0.05)]
    jobs = _jobs(tmp_path, TwoMetrics, params, objectives=OBJECTIVES, constraints=CONSTRAINTS)
    reporters = [_Records(), _Records(prune_at=0), _Records()]
    out = run_jobs(list(zip(jobs, reporters, strict=True)))
    assert [o.state for o in out] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE]
    assert "group" in out[0].attrs["stacked"]
    for o, r in zip(out, reporters, strict=True):
        assert [v for _, v in r.seen] == list(o.intermediate.values()) and all(len(v) == 2 for _, v in r.seen)
        assert o.values == o.intermediate[o.best_step] and "infeasible" in o.attrs
    assert list(out[1].intermediate) == [0]
    alone = [run_trial(replace(j, trial_dir=str(tmp_path / "alone" / str(j.number)))) for j in jobs[::2]]
    for a, b in zip(alone, out[::2], strict=True):
        assert all(_close(b.intermediate[s], v) for s, v in a.intermediate.items()) and _close(b.values, a.values)
        assert b.attrs["infeasible"] == a.attrs["infeasible"]


def test_asha_prunes_a_stacked_group_on_two_objectives(tmp_path):
    pruner = SuccessiveHalvingPruner(min_resource=1, reduction_factor=2)
    space = {k: v for k, v in SPACE.items() if k != "trainer.max_epochs"}
    executor = StackedExecutor(stack=8, linger=0.2)
    kw = {"n_trials": 8, "pruner": pruner, "space": space, "trainer": {"max_epochs": 4}}
    result = _search(tmp_path, "asha", executor, **kw).run()
    states = [t.state for t in result.trials]
    assert TrialState.PRUNED in states and TrialState.COMPLETE in states
    for t in result.trials:
        assert "group" in t.attrs["stacked"] and len(t.intermediate_values) == len(t.intermediate)
        assert t.values == t.intermediate_values[t.best_step]
        if t.state is TrialState.PRUNED:
            assert len(t.intermediate) < 4  # it stopped receiving updates when pruned
    assert result.pareto_trials and all(t.state is TrialState.COMPLETE for t in result.pareto_trials)


def test_an_interrupted_member_continues_with_every_objective(tmp_path):
    configs = [{"model.lr": lr, "trainer.max_epochs": 5} for lr in (0.02, 0.03)]
    kw = {"data": FixedOrderData, "objectives": OBJECTIVES, "constraints": CONSTRAINTS}
    jobs = _jobs(tmp_path / "run", TwoMetrics, configs, **kw)
    stop = threading.Event()
    first = run_jobs([(jobs[0], _Stops(stop, stop_at=2)), (jobs[1], None)], stop=stop)
    assert all(o.interrupted for o in first) and all(len(v) == 2 for v in first[0].intermediate.values())
    saved = torch.load(os.path.join(jobs[0].trial_dir, "resume", "member.ckpt"), weights_only=True)["member"]
    assert sorted(saved["values"]) == [0, 1] and all(set(e) == {"w_norm", "val_mae"} for e in saved["extra"].values())

    reporters = [_Records(), _Records()]
    again = run_jobs([(replace(j, attempt=2), r) for j, r in zip(jobs, reporters, strict=True)])
    reference = run_jobs([(replace(j, trial_dir=j.trial_dir + "_ref"), None) for j in jobs])
    for o, ref, rep in zip(again, reference, reporters, strict=True):
        assert o.state is ref.state is TrialState.COMPLETE and o.best_step == ref.best_step
        assert o.attrs["resumed_at_step"] == 2 and o.attrs["infeasible"] == ref.attrs["infeasible"]
        assert [s for s, _ in rep.seen] == list(ref.intermediate)  # the earlier steps reported again, then the rest
        for (s, v), r in zip(rep.seen, ref.intermediate.values(), strict=True):
            assert isinstance(v, tuple) and _close(v, r) and _close(o.intermediate[s], r), s
        assert _close(o.values, ref.values)


def test_a_member_checkpoint_of_one_objective_is_read_or_started_over(tmp_path, caplog):
    """A snapshot written before every objective was kept (no ``extra``): read with one objective, and with two
    the member starts over (its values could not be reported), with the reason in the log."""
    one = _jobs(tmp_path / "one", TwoMetrics, [{"model.lr": 0.02, "trainer.max_epochs": 4}], data=FixedOrderData)[0]
    two = replace(one, number=1, build=replace(one.build, objectives=OBJECTIVES), trial_dir=str(tmp_path / "two"))
    stop = threading.Event()
    for job in (one, two):
        run_jobs([(job, _Stops(stop, stop_at=1))], stop=stop)
        stop.clear()
        path = os.path.join(job.trial_dir, "resume", "member.ckpt")
        state = torch.load(path, weights_only=True)
        del state["member"]["extra"]  # the layout of older member checkpoints
        torch.save(state, path)
    old = dict(state["member"])
    Member(one, None, 4).restore(old)  # one objective: readable
    with pytest.raises(ValueError, match=r"lack \['w_norm'\] at step 0"):
        Member(two, None, 4).restore(old)
    caplog.set_level(logging.WARNING, logger="lightning_hpt.stacking")
    reporters = [_Records(), _Records()]
    resumed = run_jobs([(replace(j, attempt=2), r) for j, r in zip((one, two), reporters, strict=True)])
    assert resumed[0].attrs.get("resumed_at_step") == 1 and [s for s, _ in reporters[0].seen] == [0, 1, 2, 3]
    assert "resumed_at_step" not in resumed[1].attrs and "it starts over" in caplog.text
    assert sorted(resumed[1].intermediate) == [0, 1, 2, 3]
    assert all(len(v) == 2 for v in resumed[1].intermediate.values())


def test_a_curve_reports_tuples_and_ends_as_early_stopping_would():
    curve = Curve("val_loss", OBJECTIVES[0].direction, ["w_norm"], CONSTRAINTS, patience=1)
    assert curve.record({"val_loss": 1.0, "w_norm": 3.0, "val_mae": 2.0}) and not curve.ends()
    assert not curve.record({"val_loss": 1.0, "w_norm": 2.0, "val_mae": 1.0}) and curve.ends()  # no strict gain
    assert curve.intermediate() == {0: (1.0, 3.0), 1: (1.0, 2.0)} and curve.scores()["values"] == (1.0, 3.0)
    assert curve.judgement() == {"constraint_values": {"val_mae": 2.0}, "infeasible": ["val_mae = 2, not <= 1.9"]}
    with pytest.raises(MetricNotFoundError, match="'val_mae' was not logged"):
        curve.record({"val_loss": 0.5, "w_norm": 2.0})
    assert len(curve.values) == 2  # nothing recorded
