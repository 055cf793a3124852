"""Run the broad Bayesian-optimization suite and append every finished run to a JSON-lines file.

One run is ``(problem, method, seed, batch size, trials)``; its record holds the observed and true
value of every trial and the seconds of every proposal, so one 80-trial run gives the 10, 20, 40
and 80 budgets as prefixes. Runs already in the file are skipped, so the suite resumes after an
interruption and can be split over invocations (``--problems``, ``--methods``, ``--seeds``).
Runs are made seed by seed (every problem and method of seed 0, then seed 1, ...), so a run
stopped by ``--max-minutes`` leaves whole seeds. ``bo_report.py`` prints the README table.

Usage::

    nice -n 19 python benchmarks/bo_suite.py --seeds 0-19 --trials 80 --batch 1 4
    nice -n 19 python benchmarks/bo_suite.py --half tuning --methods bayes tpe --seeds 0-4
    python benchmarks/bo_report.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _env import describe, parse_seeds, quiet_single_thread
from bo_peers import METHODS, run_method
from bo_problems import CHECKING, RESULTS, SUITE, TUNING

RUNS = RESULTS / "bo_suite_runs.jsonl"


def _key(r: dict) -> tuple:
    return (r["problem"], r["method"], r["seed"], r["batch"], r["trials"])


def done_keys(path: Path) -> set[tuple]:
    if not path.exists():
        return set()
    return {_key(json.loads(line)) for line in path.read_text().splitlines() if line.strip()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--half", choices=("tuning", "checking", "all"), default="all")
    ap.add_argument("--problems", nargs="*", help="problem names (default: the whole half)")
    ap.add_argument("--methods", nargs="*", default=list(METHODS), help="also bayes:key=value,... variants")
    ap.add_argument("--seeds", default="0-19", help="e.g. 0-19 or 0,3,5-7")
    ap.add_argument("--trials", type=int, default=80)
    ap.add_argument("--batch", type=int, nargs="*", default=[1, 4])
    ap.add_argument("--max-minutes", type=float, default=None, help="start no new run after this long")
    ap.add_argument("--out", type=Path, default=RUNS)
    args = ap.parse_args()
    quiet_single_thread()
    half = {"tuning": TUNING, "checking": CHECKING, "all": SUITE}[args.half]
    problems = args.problems or list(half)
    done, t_start = done_keys(args.out), time.time()
    machine = describe()
    for seed in parse_seeds(args.seeds):
        for batch in args.batch:
            for name in problems:
                problem = SUITE[name]()
                for method in args.methods:
                    key = (name, method, seed, batch, args.trials)
                    if key in done:
                        continue
                    if args.max_minutes is not None and time.time() - t_start > 60 * args.max_minutes:
                        print("time is up; stopping before", key, flush=True)
                        return
                    t0 = time.time()
                    try:
                        run = run_method(method, problem, args.trials, seed, batch)
                    except Exception:
                        print(f"{key} failed:\n{traceback.format_exc()}", flush=True)
                        continue
                    record = {
                        "problem": name,
                        "method": method,
                        "seed": seed,
                        "batch": batch,
                        "trials": args.trials,
                        **run,
                        "seconds": round(time.time() - t0, 2),
                        "machine": machine,
                    }
                    with args.out.open("a") as f:
                        f.write(json.dumps(record) + "\n")
                    best = min(run["true"])
                    print(
                        f"{name} {method} seed={seed} batch={batch}: best {best:.5g} in {record['seconds']} s",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
