"""Several objectives: hypervolume after 20 and 40 trials against Optuna's NSGA-II and TPE, and pruning's epochs.

Problems:

* BoTorch's ``test_functions.multi_objective`` (every objective minimized, BoTorch's own reference
  point and maximum hypervolume): BraninCurrin (d=2), DTLZ2 (d=6), ZDT1 (d=4). A run asks one
  strategy for ``--trials`` configurations in turn (ask/tell on a :class:`History`, no training) and
  records every point, so one 40-trial run gives the 20-trial figure as its prefix.
* ``digits``: a real Lightning task (benchmarks/tasks.py, scikit-learn's digits with an MLP):
  maximize ``val_acc`` and minimize the parameter count, ``--epochs`` epochs per trial, no
  EarlyStopping; our strategies with and without multi-objective ASHA, Optuna's samplers training
  the same model with the same Trainer. Hypervolume against the reference point (val_acc 0.5,
  200,000 parameters).

Methods: ``random``, ``sobol``, ``bayes`` (this package's strategies; ``bayes`` infers the
hypervolume's reference point, ``bayes_ref`` is given the one the figures use), ``nsga2`` (Optuna's
NSGAIISampler, population 10 so that 40 trials make four generations), ``tpe`` (Optuna's
multivariate TPESampler), ``ax`` and ``ax_ref`` (Ax's Client with its default generation strategy in
Ax's own interpreter, ``mo_ax.py``: objective thresholds inferred, or given as the reference point;
on the Lightning task Ax asks and the trials train in this interpreter, as Optuna's do). Runs append
to ``benchmarks/results/mo_suite_runs.jsonl`` and are skipped when already there; ``--report`` prints
the tables.

Usage::

    nice -n 19 python benchmarks/mo_suite.py --seeds 0-2 --trials 40
    nice -n 19 python benchmarks/mo_suite.py --problems digits --seeds 0-1 --trials 20 --epochs 10
    python benchmarks/mo_suite.py --report
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from _env import describe, parse_seeds, quiet_single_thread

RESULTS = Path(__file__).resolve().parent / "results"
RUNS = RESULTS / "mo_suite_runs.jsonl"
METHODS = ("random", "sobol", "bayes", "bayes_ref", "nsga2", "tpe", "ax", "ax_ref")
AX = ("ax", "ax_ref")  # Ax's Client, in its own interpreter (mo_ax.py)
OURS = ("random", "sobol", "bayes", "bayes_ref")
DIGITS_REF = (0.5, 200_000.0)  # val_acc (max), parameters (min)


def synthetic() -> dict:
    from botorch.test_functions.multi_objective import DTLZ2, ZDT1, BraninCurrin

    return {
        "branin_currin": lambda: BraninCurrin(),
        "dtlz2_d6": lambda: DTLZ2(dim=6, num_objectives=2),
        "zdt1_d4": lambda: ZDT1(dim=4),
    }


def hypervolume_min(points: list[list[float]], ref: list[float]) -> float:
    """Hypervolume of minimized ``points`` below ``ref`` (this package's, on BoTorch's partitioning)."""
    from lightning_hpt.pareto import hypervolume

    neg = -torch.tensor(points, dtype=torch.float64).reshape(len(points), len(ref))
    return hypervolume(neg, [-r for r in ref])


def _strategy(method: str, ref_point: list[float]):
    from lightning_hpt.strategies import make_strategy
    from lightning_hpt.strategies.bayesian import BayesianStrategy

    return BayesianStrategy(ref_point=ref_point) if method == "bayes_ref" else make_strategy(method)


def _ours_synthetic(method: str, problem, trials: int, seed: int) -> list[list[float]]:
    from lightning_hpt import Float, SearchSpace
    from lightning_hpt.objectives import parse_objectives
    from lightning_hpt.trial import Direction, History

    names = [f"f{i}" for i in range(problem.num_objectives)]
    space = SearchSpace({f"x{i}": Float(0.0, 1.0) for i in range(problem.dim)})
    history = History(space, Direction.MINIMIZE, seed=seed, objectives=parse_objectives(names, ["min"] * len(names)))
    strategy = _strategy(method, problem.ref_point.tolist())
    for _ in range(trials):
        [params] = strategy.ask(history)
        x = torch.tensor([[params[f"x{i}"] for i in range(problem.dim)]], dtype=torch.float64)
        history = history.add(params, values=tuple(problem(x)[0].tolist()))
    return [list(t.values) for t in history.trials]


def _sampler(method: str, seed: int):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if method == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=10, seed=seed)
    return optuna.samplers.TPESampler(multivariate=True, seed=seed)


def _optuna_synthetic(method: str, problem, trials: int, seed: int) -> list[list[float]]:
    import optuna

    study = optuna.create_study(sampler=_sampler(method, seed), directions=["minimize"] * problem.num_objectives)

    def objective(trial):
        x = torch.tensor([[trial.suggest_float(f"x{i}", 0.0, 1.0) for i in range(problem.dim)]], dtype=torch.float64)
        return tuple(problem(x)[0].tolist())

    study.optimize(objective, n_trials=trials)
    return [list(t.values) for t in study.trials]


def _ax_synthetic(method: str, problem, trials: int, seed: int, name: str) -> list[list[float]]:
    import os
    import subprocess

    from bo_peers import ax_python

    cmd = [ax_python(), str(Path(__file__).resolve().parent / "mo_ax.py"), name, str(trials), str(seed), method]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=dict(os.environ))
    if out.returncode != 0:
        raise RuntimeError(f"mo_ax.py failed ({out.returncode}): {out.stderr[-2000:]}")
    return json.loads(next(line for line in reversed(out.stdout.splitlines()) if line.startswith("[")))


def run_synthetic(name: str, method: str, trials: int, seed: int) -> dict:
    problem = synthetic()[name]()
    if method in AX:
        points = _ax_synthetic(method, problem, trials, seed, name)
        return {"points": points, "ref": problem.ref_point.tolist(), "max_hv": float(problem.max_hv)}
    run = _ours_synthetic if method in OURS else _optuna_synthetic
    points = run(method, problem, trials, seed)
    ref = problem.ref_point.tolist()
    return {"points": points, "ref": ref, "max_hv": float(problem.max_hv)}


# ---------------------------------------------------------------------- the Lightning task


def _sized_mlp():
    from tasks import TabularMLP

    class SizedMLP(TabularMLP):
        """The benchmark MLP, logging its parameter count next to its accuracy."""

        def validation_step(self, batch, batch_idx):
            super().validation_step(batch, batch_idx)
            self.log("n_params", float(sum(p.numel() for p in self.parameters())))

    return SizedMLP


def _trainer_kwargs(epochs: int) -> dict:
    return {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": epochs,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
    }


def _ours_digits(method: str, trials: int, seed: int, epochs: int, pruner: str | None) -> dict:
    from tasks import TabularData, space

    from lightning_hpt import HyperparameterSearch, SuccessiveHalvingPruner

    model = _sized_mlp()
    with tempfile.TemporaryDirectory() as root:
        result = HyperparameterSearch(
            lambda cfg: model(name="digits", **cfg["model"]),
            lambda cfg: TabularData(name="digits", **cfg["data"]),
            space(),
            monitor=["val_acc", "n_params"],
            mode=["max", "min"],
            strategy=_strategy(method, list(DIGITS_REF)),
            pruner=SuccessiveHalvingPruner(min_resource=1, reduction_factor=3) if pruner == "asha" else None,
            n_trials=trials,
            seed=seed,
            root=root,
            patience=None,
            checkpoint=False,
            verbose=False,
            trainer_kwargs=_trainer_kwargs(epochs),
        ).run()
        done = [t for t in result.trials if t.values is not None]
        return {
            "points": [[t.values[0], t.values[1]] for t in done],
            "complete": [t.state.value == "COMPLETE" for t in done],
            "epochs": sum(len(t.intermediate) for t in result.trials),
        }


def _train_digits(params: dict, batch_size: int, seed: int, number: int, epochs: int) -> tuple[float, float]:
    """Train one configuration of the digits task as a peer's trial: (best val_acc, parameters at that epoch)."""
    import lightning.pytorch as L
    from tasks import TabularData

    class Best(L.Callback):
        def __init__(self) -> None:
            self.acc, self.size = -1.0, None

        def on_validation_end(self, trainer, pl_module) -> None:
            m = trainer.callback_metrics
            if float(m["val_acc"]) > self.acc:
                self.acc, self.size = float(m["val_acc"]), float(m["n_params"])

    L.seed_everything(seed * 1000 + number, verbose=False)
    best = Best()
    trainer = L.Trainer(**_trainer_kwargs(epochs), enable_checkpointing=False, callbacks=[best])
    trainer.fit(_sized_mlp()(name="digits", **params), datamodule=TabularData("digits", batch_size))
    return best.acc, best.size


def _optuna_digits(method: str, trials: int, seed: int, epochs: int) -> dict:
    import optuna
    from tasks import suggest

    def objective(trial):
        params, batch_size = suggest(trial)
        return _train_digits(params, batch_size, seed, trial.number, epochs)

    study = optuna.create_study(sampler=_sampler(method, seed), directions=["maximize", "minimize"])
    study.optimize(objective, n_trials=trials)
    return {"points": [list(t.values) for t in study.trials], "complete": [True] * trials, "epochs": trials * epochs}


#: the digits space of tasks.space() in Ax's parameter configs
AX_DIGITS = [
    {"name": "lr", "bounds": [1e-4, 1e-1], "parameter_type": "float", "scaling": "log"},
    {"name": "num_layers", "bounds": [1, 3], "parameter_type": "int"},
    {"name": "hidden_dim", "bounds": [16, 256], "parameter_type": "int", "scaling": "log"},
    {"name": "dropout", "bounds": [0.0, 0.5], "parameter_type": "float"},
    {"name": "weight_decay", "bounds": [1e-6, 1e-2], "parameter_type": "float", "scaling": "log"},
    {"name": "batch_size", "values": [32, 64, 128], "parameter_type": "int", "is_ordered": True},
]


def _ax_digits(method: str, trials: int, seed: int, epochs: int) -> dict:
    """Ax's Client (in its own interpreter, ``mo_ax.py serve``) asks; the trials train here, as the others'."""
    import subprocess

    from bo_peers import ax_python

    thresholds = [f"val_acc >= {DIGITS_REF[0]}", f"n_params <= {DIGITS_REF[1]}"] if method == "ax_ref" else None
    spec = {"parameters": AX_DIGITS, "objective": "val_acc, -n_params", "thresholds": thresholds}
    spec["metrics"] = ["val_acc", "n_params"]
    cmd = [ax_python(), str(Path(__file__).resolve().parent / "mo_ax.py"), "serve", str(seed)]
    points: list[list[float]] = []
    with subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as ax:
        ax.stdin.write(json.dumps(spec) + "\n" + "null\n")
        ax.stdin.flush()
        for number in range(trials):
            line = ax.stdout.readline()
            if not line:
                raise RuntimeError(f"mo_ax.py serve ended before trial {number} (exit status {ax.wait()})")
            params = json.loads(line)["params"]
            batch_size = int(params.pop("batch_size"))
            points.append(list(_train_digits(params, batch_size, seed, number, epochs)))
            if number + 1 < trials:
                ax.stdin.write(json.dumps(points[-1]) + "\n")
                ax.stdin.flush()
        ax.stdin.close()
    return {"points": points, "complete": [True] * trials, "epochs": trials * epochs}


def run_digits(method: str, trials: int, seed: int, epochs: int, pruner: str | None) -> dict:
    if method in ("nsga2", "tpe"):
        run = _optuna_digits(method, trials, seed, epochs)
    elif method in AX:
        run = _ax_digits(method, trials, seed, epochs)
    else:
        run = _ours_digits(method, trials, seed, epochs, pruner)
    return {**run, "ref": list(DIGITS_REF)}


def digits_hv(points: list[list[float]], complete: list[bool], n: int) -> float:
    """Hypervolume of the first ``n`` trials' COMPLETE points (accuracy maximized, size minimized)."""
    kept = [[-acc, size] for (acc, size), ok in zip(points[:n], complete[:n], strict=True) if ok]
    return hypervolume_min(kept, [-DIGITS_REF[0], DIGITS_REF[1]]) if kept else 0.0


# ---------------------------------------------------------------------- driver and report


def _key(r: dict) -> tuple:
    return (r["problem"], r["method"], r.get("pruner"), r["seed"], r["trials"], r.get("epochs_per_trial"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--problems", nargs="*", default=[*synthetic(), "digits"])
    ap.add_argument("--methods", nargs="*", default=list(METHODS))
    ap.add_argument("--seeds", default="0-2")
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--epochs", type=int, default=10, help="epochs per trial of the digits task")
    ap.add_argument("--pruners", nargs="*", default=["none", "asha"], help="digits task, our strategies")
    ap.add_argument("--out", type=Path, default=RUNS)
    ap.add_argument("--report", action="store_true", help="print the tables of the runs in --out and exit")
    args = ap.parse_args()
    if args.report:
        report(args.out)
        return
    quiet_single_thread()
    done = {_key(json.loads(line)) for line in args.out.read_text().splitlines()} if args.out.exists() else set()
    machine = describe()
    for seed in parse_seeds(args.seeds):
        for problem in args.problems:
            for method in args.methods:
                pruners = ["none"] if problem != "digits" or method in ("nsga2", "tpe", *AX) else args.pruners
                for pruner in pruners:
                    epochs = args.epochs if problem == "digits" else None
                    key = (problem, method, None if pruner == "none" else pruner, seed, args.trials, epochs)
                    if key in done:
                        continue
                    t0 = time.time()
                    if problem == "digits":
                        run = run_digits(method, args.trials, seed, args.epochs, key[2])
                    else:
                        run = run_synthetic(problem, method, args.trials, seed)
                    record = {
                        "problem": problem,
                        "method": method,
                        "pruner": key[2],
                        "seed": seed,
                        "trials": args.trials,
                        "epochs_per_trial": epochs,
                        **run,
                        "seconds": round(time.time() - t0, 1),
                        "machine": machine,
                    }
                    args.out.parent.mkdir(parents=True, exist_ok=True)
                    with args.out.open("a") as f:
                        f.write(json.dumps(record) + "\n")
                    print(f"{key}: {record['seconds']} s", flush=True)


def _cell(values: list[float], scale: float = 1.0) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values) / scale
    sd = statistics.stdev(values) / scale if len(values) > 1 else 0.0
    return f"{100 * mean:.1f} ± {100 * sd:.1f}" if scale != 1.0 else f"{mean:.4g} ± {sd:.2g}"


def _per_seed(runs: list[dict], n: int) -> list[dict]:
    """One run per seed for the ``n``-trial figure: the shortest run with at least ``n`` trials.

    A longer run's first trials equal the shorter run's only on the same machine and code, so the 20-
    and 40-trial figures keep coming from the 40-trial runs when an 80-trial run of the seed exists.
    """
    by_seed: dict[int, dict] = {}
    for r in runs:
        if r["trials"] >= n and (r["seed"] not in by_seed or r["trials"] < by_seed[r["seed"]]["trials"]):
            by_seed[r["seed"]] = r
    return [by_seed[s] for s in sorted(by_seed)]


def report(path: Path) -> None:
    runs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["problem"], r["method"], r.get("pruner")), []).append(r)
    budgets = (20, 40, 80)
    print("| problem | method | seeds | " + " | ".join(f"HV@{n}" for n in budgets) + " | epochs | seconds per run |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in budgets) + " | --- | --- |")
    for (problem, method, pruner), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or "")):
        cells = []
        for n in budgets:
            if problem == "digits":
                hv = [digits_hv(r["points"], r["complete"], n) for r in _per_seed(rs, n)]
                cells.append(_cell(hv, (1.0 - DIGITS_REF[0]) * DIGITS_REF[1]))
            else:
                hv = [hypervolume_min(r["points"][:n], r["ref"]) for r in _per_seed(rs, n)]
                cells.append(_cell(hv, rs[0]["max_hv"]))
        epochs = statistics.fmean(r["epochs"] for r in _per_seed(rs, 40)) if problem == "digits" else None
        name = method + (f" + {pruner}" if pruner else "")
        seconds = ", ".join(
            f"{statistics.median(r['seconds'] for r in rs if r['trials'] == t):.0f} ({t} trials)"
            for t in sorted({r["trials"] for r in rs})
        )
        seeds = "/".join(str(len(_per_seed(rs, n))) for n in budgets)
        print(
            f"| {problem} | {name} | {seeds} | {' | '.join(cells)} |"
            f" {'-' if epochs is None else f'{epochs:.0f}'} | {seconds} |"
        )
    print(f"\nmachine: {runs[0]['machine'] if runs else '-'}")
    print(
        "seeds: at 20/40/80 trials (a seed counts once, with its shortest run that long); "
        "HV: mean ± sd over seeds, in % of the problem's maximum hypervolume (digits: of the box from the reference"
        " point (val_acc 0.5, 200,000 parameters) to the ideal (1.0, 0)); epochs: mean epochs trained per run"
    )


if __name__ == "__main__":
    main()
