"""Compare BayesianStrategy settings on the TUNING half of the suite only, against the peers' runs.

Defaults are changed looking at this script's output alone: it never reads a checking problem.
Variants are run by ``bo_suite.py`` under method names ``bayes:key=value,...`` (BayesianStrategy
keyword arguments). For each variant and budget it prints the tuning cells (batch size 1) where
the variant's median regret is at or below the best peer's, and the geometric mean over the
tuning cells of the ratio to the best peer.

Usage::

    nice -n 19 python benchmarks/bo_suite.py --half tuning --seeds 0-4 --trials 20 --batch 1 \\
        --methods bayes:num_restarts=20,raw_samples=1024 --out results/bo_tuning_runs.jsonl
    python benchmarks/bo_tune.py --runs results/bo_suite_runs.jsonl results/bo_tuning_runs.jsonl
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _env import parse_seeds
from bo_peers import bayes_kwargs
from bo_problems import SUITE, TUNING
from bo_report import load, regret
from bo_suite import RUNS

PEERS = ("random", "sobol", "tpe", "gp", "ax_fast", "ax", "botorch")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=Path, nargs="*", default=[RUNS])
    ap.add_argument("--seeds", default="0-4")
    ap.add_argument("--budgets", type=int, nargs="*", default=[10, 20])
    args = ap.parse_args()
    seeds = set(parse_seeds(args.seeds))
    per_seed: dict[tuple[str, str, int], dict[int, float]] = defaultdict(dict)
    for path in args.runs:
        for r in load(path):
            if r["batch"] != 1 or r["seed"] not in seeds or r["problem"] not in TUNING:
                continue
            optimum = SUITE[r["problem"]]().optimum
            for b in args.budgets:
                if len(r["true"]) >= b:  # one value per seed: a seed's 20- and 40-trial runs count once
                    per_seed[(r["problem"], r["method"], b)][r["seed"]] = regret(r, b, optimum)
    by = {key: list(values.values()) for key, values in per_seed.items()}
    variants = sorted({m for (_, m, _) in by if bayes_kwargs(m) is not None})
    print(f"tuning half, batch 1, seeds {sorted(seeds)}: cells at or below the best peer, geomean ratio to it")
    for method in variants:
        line = []
        for b in args.budgets:
            wins, logs = 0, []
            for p in TUNING:
                ours = by.get((p, method, b))
                peers = [statistics.median(by[(p, m, b)]) for m in PEERS if by.get((p, m, b))]
                if not ours or not peers:
                    continue
                mine, best = statistics.median(ours), min(peers)
                wins += mine <= best
                logs.append(math.log(max(mine, 1e-12) / max(best, 1e-12)))
            if logs:
                line.append(f"@{b}: {wins}/{len(logs)} wins, geomean {math.exp(statistics.mean(logs)):.2f}")
        print(f"  {method:64s} | " + " | ".join(line))


if __name__ == "__main__":
    main()
