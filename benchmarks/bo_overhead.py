"""Seconds per proposal of BayesianStrategy, Optuna's GPSampler and Ax, as a study grows.

For ``d`` in 6 and 12 continuous dimensions and ``n`` in 20, 50, 100 and 200 finished trials
(random configurations of a smooth test function), each method proposes the next configuration
``--repeats`` times; the median seconds per proposal are reported. The methods take turns at each
point, so they share the machine's load. Every method runs with one torch thread and is warmed up
with one untimed proposal at the same point (imports and first-use setup; Optuna's GPSampler then
reuses the previous fit's kernel parameters, as it does within a study).

Usage::

    python benchmarks/bo_overhead.py                       # all methods, writes results/bo_overhead.json
    python benchmarks/bo_overhead.py --methods bayes gp    # a subset
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bo_regret import environment

from lightning_hpt.space import Float, SearchSpace
from lightning_hpt.strategies.bayesian import BayesianStrategy
from lightning_hpt.trial import Direction, History, TrialRecord, TrialState

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("bayes", "gp", "ax")


def objective(x: np.ndarray) -> float:
    """A smooth multimodal function on the unit cube (Levy-like)."""
    w = 1 + (x * 10 - 5 - 1) / 4
    return float(
        np.sin(np.pi * w[0]) ** 2
        + ((w[:-1] - 1) ** 2 * (1 + 10 * np.sin(np.pi * w[:-1] + 1) ** 2)).sum()
        + (w[-1] - 1) ** 2
    )


def data(d: int, n: int, seed: int = 0) -> tuple[SearchSpace, list[dict[str, float]], list[float]]:
    space = SearchSpace({f"x{i}": Float(0.0, 1.0) for i in range(d)})
    rng = np.random.default_rng(seed)
    params = [space.sample(rng) for _ in range(n)]
    values = [objective(np.array(list(p.values()))) for p in params]
    return space, params, values


def time_bayes(space: SearchSpace, params: list[dict], values: list[float], repeats: int) -> list[float]:
    pairs = enumerate(zip(params, values, strict=False))
    records = tuple(TrialRecord(i, p, TrialState.COMPLETE, value=v) for i, (p, v) in pairs)
    out = []
    for r in range(repeats + 1):
        history = History(space, Direction.MINIMIZE, records, seed=r)
        start = time.perf_counter()
        BayesianStrategy().ask(history)
        if r:  # like the peers, the first call (imports, first-use setup) is not counted
            out.append(time.perf_counter() - start)
    return out


def time_optuna_gp(space: SearchSpace, params: list[dict], values: list[float], repeats: int) -> list[float]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = {name: optuna.distributions.FloatDistribution(d.low, d.high) for name, d in space.items()}
    study = optuna.create_study(sampler=optuna.samplers.GPSampler(seed=0))
    for p, v in zip(params, values, strict=False):
        study.add_trial(optuna.trial.create_trial(params=p, distributions=dists, value=v))
    out = []
    for r in range(repeats + 1):
        start = time.perf_counter()
        trial = study.ask(dists)
        seconds = time.perf_counter() - start
        study.tell(trial, objective(np.array([trial.params[k] for k in space])))
        if r:  # the first ask warms up the sampler
            out.append(seconds)
    return out


def time_ax(space: SearchSpace, params: list[dict], values: list[float], repeats: int) -> list[float]:
    from ax.api.client import Client
    from ax.api.configs import RangeParameterConfig

    logging.getLogger("ax").setLevel(logging.ERROR)
    client = Client(random_seed=0)
    client.configure_experiment(
        parameters=[
            RangeParameterConfig(name=n, bounds=(d.low, d.high), parameter_type="float") for n, d in space.items()
        ]
    )
    client.configure_optimization(objective="-f")
    client.configure_generation_strategy(method="fast", initialization_random_seed=0)
    for p, v in zip(params, values, strict=False):
        index = client.attach_trial(parameters=p)
        client.complete_trial(trial_index=index, raw_data={"f": v})
    out = []
    for r in range(repeats + 1):
        start = time.perf_counter()
        trials = client.get_next_trials(max_trials=1)
        seconds = time.perf_counter() - start
        for index, p in trials.items():
            client.complete_trial(trial_index=index, raw_data={"f": objective(np.array([p[k] for k in space]))})
        if r:
            out.append(seconds)
    return out


TIMERS = {"bayes": time_bayes, "gp": time_optuna_gp, "ax": time_ax}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--dims", nargs="+", type=int, default=[6, 12])
    parser.add_argument("--sizes", nargs="+", type=int, default=[20, 50, 100, 200])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    logging.basicConfig(level=logging.WARNING)
    RESULTS.mkdir(exist_ok=True)

    rows: list[dict[str, Any]] = []
    for d in args.dims:
        for n in args.sizes:
            space, params, values = data(d, n)
            row: dict[str, Any] = {"dim": d, "trials": n}
            for method in args.methods:
                seconds = TIMERS[method](space, params, values, args.repeats)
                row[method] = float(np.median(seconds))
                row[f"{method}_all"] = seconds
            rows.append(row)
            print(
                " ".join(
                    f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items() if "_all" not in k
                ),
                flush=True,
            )

    header = "| d | finished trials | " + " | ".join(f"{m} s/proposal" for m in args.methods) + " |"
    lines = [header, "|" + " --- |" * (2 + len(args.methods))]
    for row in rows:
        lines.append(f"| {row['dim']} | {row['trials']} | " + " | ".join(f"{row[m]:.3f}" for m in args.methods) + " |")
    if "bayes" in args.methods and "gp" in args.methods:
        slower = [f"d={r['dim']}, n={r['trials']}" for r in rows if r["bayes"] > r["gp"]]
        lines.append("\nbayes slower than Optuna's GPSampler at: " + (", ".join(slower) if slower else "none"))
    print("\n".join(lines))
    (RESULTS / "bo_overhead.json").write_text(json.dumps({"environment": environment(), "rows": rows}, indent=1))
    print(f"\nwrote {RESULTS / 'bo_overhead.json'}")


if __name__ == "__main__":
    main()
