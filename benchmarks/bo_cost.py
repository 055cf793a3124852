"""Seconds of one BayesianStrategy proposal in 12 dimensions, continuous and mixed, one thread.

For ``n`` finished trials of a noisy quadratic (given on the command line), one proposal is timed
on a 12-d continuous space and on a 12-d mixed one (an integer in [1, 50], a 4-way categorical,
10 floats), with the strategy's defaults (past 200 observations it fits a subset).

Usage::

    nice -n 19 python benchmarks/bo_cost.py 100 300 1000
    nice -n 19 python benchmarks/bo_cost.py 100 --bayes num_restarts=10,raw_samples=512   # other settings
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bo_peers import bayes_kwargs

from lightning_hpt.space import Categorical, Float, Int, SearchSpace
from lightning_hpt.strategies.bayesian import BayesianStrategy
from lightning_hpt.trial import Direction, History, TrialRecord, TrialState


def space(d: int, mixed: bool) -> SearchSpace:
    s = {f"x{i}": Float(0, 1) for i in range(d)}
    if mixed:
        s["x0"] = Int(1, 50)
        s["x1"] = Categorical(list("abcd"))
    return SearchSpace(s)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("n", type=int, nargs="+", help="finished trials")
    ap.add_argument("--bayes", default="", help="BayesianStrategy arguments, key=value,...")
    args = ap.parse_args()
    kwargs = bayes_kwargs(f"bayes:{args.bayes}") or {}
    torch.set_num_threads(1)
    for mixed in (False, True):
        for n in args.n:
            sp, rng, records = space(12, mixed), np.random.default_rng(0), []
            for i in range(n):
                p = sp.sample(rng)
                u = sp.to_unit(p)
                records.append(
                    TrialRecord(i, p, TrialState.COMPLETE, value=float(((u - 0.3) ** 2).sum() + 0.01 * rng.normal()))
                )
            history = History(sp, Direction.MINIMIZE, tuple(records), seed=0)
            t0 = time.perf_counter()
            BayesianStrategy(seed=0, **kwargs).ask(history)
            print(f"{'mixed' if mixed else 'continuous'} d=12 n={n}: {time.perf_counter() - t0:.2f} s", flush=True)


if __name__ == "__main__":
    main()
