"""Conditional parameters and the Bayesian strategy: how inactive parameters are encoded, measured.

The problem: an optimizer choice with per-optimizer parameters (momentum for SGD and RMSprop, beta
for Adam), a shared log learning rate, and a depth whose third layer's width exists only for three
layers; the best value, 0.15, is SGD at lr 10^-1.5, momentum 0.9, three layers of width 64. Every
branch has its own optimum, so the model must learn within branches and compare across them.

Methods (same problem, trials and seeds):

* ``bayes``: ``BayesianStrategy`` as shipped: inactive coordinates at a fixed placeholder (the middle of
  the domain), the acquisition evaluated on projected points (docs/bayesian.md).
* ``bayes_noproj``: the same placeholder, the acquisition on the raw cube point (Ax's flattened
  optimization, where an inactive coordinate still moves the acquisition).
* ``bayes_random``: each inactive coordinate drawn at random whenever a trial is encoded (Ax's
  ``use_random_dummy_values=True``), no projection.
* ``random``: ``RandomStrategy``; ``tpe``: Optuna's ``TPESampler(multivariate=True, group=True)``
  asking define-by-run, the conditional parameters only where they exist.

Usage::

    python benchmarks/bo_conditional.py --seeds 5 --trials 30   # appends to results/bo_conditional.jsonl
    python benchmarks/bo_conditional.py --report                # the table of that file
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from _env import describe, quiet_single_thread

import lightning_hpt.space as space_module
from lightning_hpt.space import Categorical, Float, Int, SearchSpace
from lightning_hpt.strategies import RandomStrategy
from lightning_hpt.strategies._encoding import _Encoding
from lightning_hpt.trial import Direction, History

RESULTS = Path(__file__).resolve().parent / "results" / "bo_conditional.jsonl"
BEST = 0.15
SPACE = SearchSpace(
    {
        "optimizer.class_path": Categorical(["sgd", "adam", "rmsprop"]),
        "optimizer.lr": Float(1e-4, 1.0, log=True),
        "optimizer.momentum": Float(0.0, 1.0, when={"optimizer.class_path": ["sgd", "rmsprop"]}),
        "optimizer.beta": Float(0.8, 0.999, when={"optimizer.class_path": "adam"}),
        "model.num_layers": Int(1, 3),
        "model.width3": Int(8, 256, log=True, when={"model.num_layers": 3}),
    }
)


def objective(p: dict[str, Any]) -> float:
    lr = math.log10(p["optimizer.lr"])
    kind = p["optimizer.class_path"]
    if kind == "sgd":
        v = 0.1 + 0.3 * (lr + 1.5) ** 2 + 2.0 * (p["optimizer.momentum"] - 0.9) ** 2
    elif kind == "rmsprop":
        v = 0.3 + 0.3 * (lr + 3.0) ** 2 + (p["optimizer.momentum"] - 0.5) ** 2
    else:
        v = 0.2 + 0.3 * (lr + 3.0) ** 2 + 20.0 * (p["optimizer.beta"] - 0.95) ** 2
    depth = {1: 0.3, 2: 0.15}.get(p["model.num_layers"])
    return v + (depth if depth is not None else 0.05 + 0.05 * (math.log2(p["model.width3"]) - 6) ** 2)


@contextlib.contextmanager
def variant(name: str, seed: int) -> Iterator[None]:
    """Patch the encoding for the ablations; ``bayes`` runs the package as it is."""
    wrap, placeholder = _Encoding.wrap, space_module.placeholder
    rng = np.random.default_rng(seed)
    if name in ("bayes_noproj", "bayes_random"):
        _Encoding.wrap = lambda self, acq: acq
    if name == "bayes_random":
        space_module.placeholder = lambda domain: float(rng.random())
    try:
        yield
    finally:
        _Encoding.wrap, space_module.placeholder = wrap, placeholder


def run_strategy(method: str, trials: int, seed: int) -> tuple[list[float], float]:
    from lightning_hpt.strategies.bayesian import BayesianStrategy

    strategy = RandomStrategy() if method == "random" else BayesianStrategy()
    h, t0 = History(SPACE, Direction.MINIMIZE, seed=seed), time.perf_counter()
    with variant(method, seed):
        for _ in range(trials):
            (p,) = strategy.ask(h, 1)
            h = h.add(p, objective(p))
    return [t.value for t in h.trials], time.perf_counter() - t0


def run_tpe(trials: int, seed: int) -> tuple[list[float], float]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def trial_fn(t: Any) -> float:
        p = {"optimizer.class_path": t.suggest_categorical("optimizer.class_path", ["sgd", "adam", "rmsprop"])}
        p["optimizer.lr"] = t.suggest_float("optimizer.lr", 1e-4, 1.0, log=True)
        if p["optimizer.class_path"] == "adam":
            p["optimizer.beta"] = t.suggest_float("optimizer.beta", 0.8, 0.999)
        else:
            p["optimizer.momentum"] = t.suggest_float("optimizer.momentum", 0.0, 1.0)
        p["model.num_layers"] = t.suggest_int("model.num_layers", 1, 3)
        if p["model.num_layers"] == 3:
            p["model.width3"] = t.suggest_int("model.width3", 8, 256, log=True)
        return objective(p)

    sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)
    study, t0 = optuna.create_study(sampler=sampler), time.perf_counter()
    study.optimize(trial_fn, n_trials=trials)
    return [t.value for t in study.trials], time.perf_counter() - t0


def run(method: str, trials: int, seed: int) -> dict[str, Any]:
    values, seconds = run_tpe(trials, seed) if method == "tpe" else run_strategy(method, trials, seed)
    return {"method": method, "seed": seed, "values": values, "seconds": seconds}


def report(checkpoints: tuple[int, ...] = (10, 20, 30)) -> None:
    runs = [json.loads(line) for line in RESULTS.read_text().splitlines()]
    methods = list(dict.fromkeys(r["method"] for r in runs))
    n_max = max(checkpoints)
    print(f"simple regret (best value - {BEST}) after n trials: median (mean) over the seeds;")
    print(f"found: seeds within 0.01 of the optimum by trial {n_max}; stall: longest run of equal values (mean);")
    print("seconds per run (median)")
    print("| method | " + " | ".join(f"n={n}" for n in checkpoints) + " | found | stall | seeds | s/run |")
    print("| --- |" + " --- |" * (len(checkpoints) + 4))
    for m in methods:
        mine = [r for r in runs if r["method"] == m and len(r["values"]) >= n_max]
        cells = []
        for n in checkpoints:
            regret = [min(r["values"][:n]) - BEST for r in mine]
            cells.append(f"{statistics.median(regret):.3f} ({statistics.mean(regret):.3f})")
        found = sum(min(r["values"][:n_max]) - BEST < 0.01 for r in mine)
        stall = statistics.mean(_stall(r["values"][:n_max]) for r in mine)
        seconds = statistics.median(r["seconds"] for r in mine)
        print(f"| {m} | {' | '.join(cells)} | {found} | {stall:.1f} | {len(mine)} | {seconds:.0f} |")


def _stall(values: list[float]) -> int:
    """The longest run of consecutive trials with the same value (to 2 decimals): a search stuck in one place."""
    rounded = [round(v, 2) for v in values]
    return max(len(list(group)) for _, group in itertools.groupby(rounded))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="bayes,bayes_noproj,bayes_random,random,tpe")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    if args.report:
        report()
        return
    quiet_single_thread()
    print(describe())
    done = set()
    if RESULTS.exists():
        done = {(r["method"], r["seed"]) for r in map(json.loads, RESULTS.read_text().splitlines())}
    for seed in range(args.seeds):
        for method in args.methods.split(","):
            if (method, seed) in done:
                continue
            row = run(method, args.trials, seed)
            with RESULTS.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(method, seed, f"best={min(row['values']):.4f}", f"{row['seconds']:.0f}s", flush=True)
    report()


if __name__ == "__main__":
    main()
