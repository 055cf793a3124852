"""Several drivers share one study (RELIABILITY rows 19, 20): 4 processes on PostgreSQL, 3 on one SQLite file.

Every driver runs the same command against one database, as on a cluster (a SLURM array job):
trial numbers must be unique and without gaps, ``n_trials`` counts the whole study, and no
configuration runs twice. The drivers wait for each other before they start, and their strategies
pause between reading the history and returning, so that they do ask at the same moment. A trial
lasts longer than a proposal, so that while one driver trains, the others take the next numbers.

Run as a script, this file is one such driver: ``python test_shared_study.py URL STUDY ROOT READY_DIR N``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from lightning_hpt import Categorical, Float, HyperparameterSearch, Int, TrialState
from lightning_hpt.space import SearchSpace
from lightning_hpt.storage import open_storage
from lightning_hpt.strategies import GridStrategy, RandomStrategy
from lightning_hpt.strategies.base import trial_rng
from lightning_hpt.testing.executor import TRAINER, ContractData, ContractModel

pytestmark = pytest.mark.slow
N_RANDOM = 8
GRID = {"model.hidden": Int(4, 6), "model.lr": Categorical([0.02, 0.05])}  # 6 points


class SlowModel(ContractModel):
    """Trains for about 0.8 s (2 steps of 0.4 s): longer than a refused driver takes to propose again."""

    def __init__(self, lr: float = 0.05, hidden: int = 8) -> None:
        super().__init__(lr=lr, hidden=hidden, sleep=0.4)


class SlowGridStrategy(GridStrategy):
    """The grid, asked slowly: widens the moment between reading the history and creating the trial."""

    def ask(self, history, n=1):
        out = super().ask(history, n)
        time.sleep(0.3)
        return out


class SlowRandomStrategy(RandomStrategy):
    def ask(self, history, n=1):
        out = super().ask(history, n)
        time.sleep(0.3)
        return out


def _drive(url: str, study: str, root: str) -> None:
    common = {
        "monitor": "val_loss",
        "root": root,
        "storage": url,
        "seed": 0,
        "verbose": False,
        "patience": None,
        "trainer_kwargs": {**TRAINER, "max_epochs": 1},
    }
    HyperparameterSearch(
        SlowModel,
        ContractData,
        {"model.lr": Float(0.01, 0.1, log=True)},
        study_name=f"{study}_random",
        strategy=SlowRandomStrategy(),
        n_trials=N_RANDOM,
        **common,
    ).run()
    HyperparameterSearch(
        SlowModel, ContractData, GRID, study_name=f"{study}_grid", strategy=SlowGridStrategy(), n_trials=None, **common
    ).run()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def shared(request, tmp_path_factory):
    """Runs the drivers once per backend; returns the trials of the random study and of the grid study."""
    root = tmp_path_factory.mktemp(request.param)
    if request.param == "sqlite":
        url, drivers = f"sqlite:///{root / 'shared.db'}", 3
    else:
        url, drivers = os.environ.get("HPT_TEST_POSTGRES_URL"), 4
        if not url:
            pytest.skip(
                "set HPT_TEST_POSTGRES_URL to a PostgreSQL database (CI starts a server) to test shared studies on it"
            )
    study = f"shared_{uuid.uuid4().hex[:8]}"  # the server may be shared with other runs
    ready = root / "ready"
    ready.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, url, study, str(root), str(ready), str(drivers)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(drivers)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=False):
        assert p.returncode == 0, out
    storage = open_storage(url)
    return storage.trials(f"{study}_random"), storage.trials(f"{study}_grid")


class TestSharedStudy:
    """One class: the tests share the drivers' runs, made once per backend on one pytest-xdist worker."""

    def test_numbers_are_unique_and_n_trials_is_global(self, shared):
        random_trials, grid_trials = shared
        seen = [(t.number, t.state.value, t.pid, t.error) for t in random_trials + grid_trials]  # shown on failure
        assert [t.number for t in random_trials] == list(range(N_RANDOM)), seen  # n_trials counts every driver's trials
        assert [t.number for t in grid_trials] == list(range(len(grid_trials))), seen
        for trials in (random_trials, grid_trials):
            assert all(t.state is TrialState.COMPLETE for t in trials), seen
        assert len({t.pid for t in random_trials + grid_trials}) > 1, seen  # more than one driver did run trials

    def test_no_grid_point_runs_twice(self, shared):
        _, grid_trials = shared
        points = Counter((t.params["model.hidden"], t.params["model.lr"]) for t in grid_trials)
        assert set(points) == {(h, lr) for h in (4, 5, 6) for lr in (0.02, 0.05)}
        assert max(points.values()) == 1, points

    def test_seeded_random_trials_are_distinct_and_follow_the_seed(self, shared):
        # a proposal made for a number another driver took first is made again: trial k gets draw k
        random_trials, _ = shared
        space = SearchSpace({"model.lr": Float(0.01, 0.1, log=True)})
        assert [dict(t.params) for t in random_trials] == [space.sample(trial_rng(0, k)) for k in range(N_RANDOM)]


if __name__ == "__main__":
    url, study, root, ready, drivers = sys.argv[1:6]
    Path(ready, str(os.getpid())).touch()
    while len(os.listdir(ready)) < int(drivers):  # start together: the proposals must race
        time.sleep(0.01)
    _drive(url, study, root)
