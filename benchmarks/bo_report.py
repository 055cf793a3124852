"""Print the README table of the Bayesian-optimization suite from its JSON-lines results.

For every batch size, problem and budget: the median simple regret over seeds of
``bayes`` (BayesianStrategy) and of the best peer at that cell, their ratio, and whether
``bayes`` is at or below it (a win). The simple regret of a run at budget ``B`` is the true
value of the configuration with the best *observed* value among its first ``B`` trials, minus
the problem's optimum (on noisy problems a search is judged by the configuration it would report).
Each method's median is over the seeds it has finished; the table prints both counts.
At batch size 4 the comparison is also made against Ax's batch mode alone (``ax``/``ax_fast``).

With ``--previous RUNS``, also: ``bayes`` against the ``bayes`` runs of that file, made by an
earlier BayesianStrategy on the same problems and seeds (see the README for how they were made).
With ``--against METHOD``, ``bayes`` against another method of the same runs, e.g. the earlier
defaults ``bayes:num_restarts=4,raw_samples=256,center_first=false``. Variants of ``bayes``
(``bayes:...``) are never counted as peers.

Usage::

    python benchmarks/bo_report.py [--runs results/bo_suite_runs.jsonl] [--budgets 10 20 40 80]
        [--previous results/bo_suite_previous.jsonl] [--against METHOD]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bo_peers import bayes_kwargs
from bo_problems import CENTRE_OPTIMUM, CHECKING, SUITE, TUNING
from bo_suite import RUNS

OURS = "bayes"


def regret(run: dict, budget: int, optimum: float) -> float:
    obs = run["observed"][:budget]
    best = min(range(len(obs)), key=obs.__getitem__)
    return max(run["true"][best] - optimum, 0.0)


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def cells(runs: list[dict], batch: int, budgets: list[int], peers_only: tuple[str, ...] | None = None):
    """Yield ``(problem, budget, ours, best, best_name, n_ours, n_best)`` for every cell with data.

    Each method's median is over the seeds it has finished (every seed is the same problem with
    the same noise, so the medians estimate the same quantity; the seed counts are printed).
    """
    by: dict[tuple[str, str], dict[int, dict]] = defaultdict(dict)
    for r in runs:
        if r["batch"] == batch:
            by[(r["problem"], r["method"])][r["seed"]] = r
    for name in SUITE:
        optimum = SUITE[name]().optimum
        methods = {m for (p, m) in by if p == name}
        peers = sorted(m for m in methods if bayes_kwargs(m) is None and (peers_only is None or m in peers_only))
        if OURS not in methods or not peers:
            continue
        for budget in budgets:
            med, count = {}, {}
            for m in [OURS, *peers]:
                values = [regret(r, budget, optimum) for r in by[(name, m)].values() if len(r["true"]) >= budget]
                if values:
                    med[m], count[m] = statistics.median(values), len(values)
            if OURS not in med or len(med) < 2:
                continue
            best_name = min((m for m in med if m != OURS), key=med.__getitem__)
            yield name, budget, med[OURS], med[best_name], best_name, count[OURS], count[best_name]


def _ratio(r: float) -> str:
    return f"{r:.2f}" if r < 1000 else ">1000"


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def table(runs: list[dict], batch: int, budgets: list[int], peers_only: tuple[str, ...] | None = None) -> list[str]:
    label = "Ax's batch mode" if peers_only else "the best peer"
    lines = [
        f"| half | problem | budget | seeds (bayes / peer) | bayes | {label} | ratio | |",
        "|---|---|---:|---:|---:|---|---:|---|",
    ]
    wins = total = worst = 0
    worst = 0.0
    plain = [0, 0]  # wins and cells without the problems whose optimum is at the centre
    for name, budget, ours, best, best_name, n, n_best in cells(runs, batch, budgets, peers_only):
        half = "tuning" if name in TUNING else "checking"
        win = ours <= best
        ratio = ours / best if best > 0 else (1.0 if ours == 0 else float("inf"))
        wins += win
        total += 1
        worst = max(worst, ratio)
        if name not in CENTRE_OPTIMUM:
            plain[0] += win
            plain[1] += 1
        lines.append(
            f"| {half} | {name} | {budget} | {n} / {n_best} | {_fmt(ours)} | {_fmt(best)} ({best_name}) | "
            f"{_ratio(ratio)} | {'win' if win else 'loss'} |"
        )
    lines.append("")
    lines.append(
        f"bayes at or below {label}: {wins} of {total} cells; worst ratio {_ratio(worst)}; "
        f"without {' and '.join(sorted(CENTRE_OPTIMUM))} (optimum at or near the centre): {plain[0]} of {plain[1]}."
    )
    return lines


def cost(runs: list[dict]) -> list[str]:
    """Median seconds of one proposal (batch 1) by method and number of observations."""
    spans = [(0, 20), (20, 40), (40, 80)]
    acc: dict[str, dict[tuple[int, int], list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        if r["batch"] != 1:
            continue
        for s, at in zip(r["ask_s"], r["ask_at"], strict=False):
            for lo, hi in spans:
                if lo <= at < hi:
                    acc[r["method"]][(lo, hi)].append(s)
    lines = ["| method | " + " | ".join(f"{lo}-{hi} obs" for lo, hi in spans) + " |", "|---|" + "---:|" * len(spans)]
    for m in sorted(acc):
        row = [f"{statistics.median(acc[m][sp]):.3f}" if acc[m][sp] else "-" for sp in spans]
        lines.append(f"| {m} | " + " | ".join(row) + " |")
    return lines


def against_previous(
    runs: list[dict], previous: list[dict], budgets: list[int], method: str = OURS, label: str = "previous bayes"
) -> list[str]:
    """Median regret of ``bayes`` and of ``method`` in ``previous`` (batch 1), on the seeds both have."""
    now = {(r["problem"], r["seed"]): r for r in runs if r["method"] == OURS and r["batch"] == 1}
    old = {(r["problem"], r["seed"]): r for r in previous if r["method"] == method and r["batch"] == 1}
    lines = [
        f"| half | problem | budget | seeds | bayes | {label} | ratio |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    better = total = 0
    for name in SUITE:
        optimum = SUITE[name]().optimum
        seeds = sorted(s for (p, s) in now.keys() & old.keys() if p == name)
        for budget in budgets:
            if not seeds or any(len(now[(name, s)]["observed"]) < budget for s in seeds):
                continue
            a = statistics.median(regret(now[(name, s)], budget, optimum) for s in seeds)
            b = statistics.median(regret(old[(name, s)], budget, optimum) for s in seeds)
            half = "tuning" if name in TUNING else "checking"
            total, better = total + 1, better + (a <= b)
            ratio = a / b if b else (1.0 if a == b else float("inf"))
            lines.append(f"| {half} | {name} | {budget} | {len(seeds)} | {_fmt(a)} | {_fmt(b)} | {_ratio(ratio)} |")
    lines.append(f"bayes at or below {label}: {better} of {total} cells.")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=Path, default=RUNS)
    ap.add_argument("--budgets", type=int, nargs="*", default=[10, 20, 40, 80])
    ap.add_argument("--previous", type=Path, help="runs of an earlier BayesianStrategy to compare with")
    ap.add_argument("--against", help="another method of the same runs to compare bayes with, e.g. bayes:...")
    args = ap.parse_args()
    runs = load(args.runs)
    print(f"Runs: {len(runs)} ({args.runs.name}); machine: {runs[0]['machine'] if runs else '-'}")
    print(f"Tuning half: {', '.join(TUNING)}; checking half: {', '.join(CHECKING)}\n")
    print("### Batch size 1: bayes against the best peer of each cell\n")
    print("\n".join(table(runs, 1, args.budgets)))
    if any(r["batch"] == 4 for r in runs):
        print("\n### Batch size 4: bayes against Ax's batch mode\n")
        print("\n".join(table(runs, 4, args.budgets, peers_only=("ax", "ax_fast"))))
        others = {r["method"] for r in runs if r["batch"] == 4 and bayes_kwargs(r["method"]) is None}
        if others - {"ax", "ax_fast"}:
            print("\n### Batch size 4: bayes against the best peer of each cell\n")
            print("\n".join(table(runs, 4, args.budgets)))
    if args.previous is not None:
        print("\n### Batch size 1: bayes against the previous BayesianStrategy\n")
        print("\n".join(against_previous(runs, load(args.previous), args.budgets)))
    if args.against is not None:
        print(f"\n### Batch size 1: bayes against {args.against}\n")
        print("\n".join(against_previous(runs, runs, args.budgets, args.against, args.against)))
    print("\n### Seconds per proposal (batch size 1, one thread, median)\n")
    print("\n".join(cost(runs)))


if __name__ == "__main__":
    main()
