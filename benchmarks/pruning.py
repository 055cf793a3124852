"""Pruning: epochs trained, wall time and best validation accuracy, with and without pruners.

    python benchmarks/pruning.py [--seeds 3] [--trials 30] [--epochs 15] [--tasks digits cancer]

For each task (scikit-learn's digits and breast-cancer data, MLPs), strategy (random, bayes) and
seed: no pruning vs MedianPruner vs ASHA vs Hyperband through HyperparameterSearch, plus Optuna's
TPE with its successive-halving pruner reporting every epoch (when optuna is installed). Every
trial trains at most ``--epochs`` epochs; EarlyStopping is off so that only the pruners save epochs.
Prints a table (medians over seeds) and writes benchmarks/results/pruning.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import lightning.pytorch as L

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _env import describe, quiet_single_thread
from tasks import factories, space, suggest

from lightning_hpt import HyperparameterSearch, TrialState

PRUNERS = [None, "median", "asha", "hyperband"]


def run_ours(task: str, strategy: str, pruner: str | None, seed: int, trials: int, epochs: int, root: str) -> dict:
    model, data = factories(task)
    t0 = time.perf_counter()
    result = HyperparameterSearch(
        model,
        data,
        space(),
        monitor="val_acc",
        mode="max",
        strategy=strategy,
        pruner=pruner,
        n_trials=trials,
        seed=seed,
        root=root,
        study_name=f"{task}_{strategy}_{pruner}_{seed}",
        trainer_kwargs={"accelerator": "cpu", "devices": 1, "max_epochs": epochs, "logger": False},
        patience=None,
        checkpoint=False,
        verbose=False,
    ).run()
    return {
        "epochs": sum(len(t.intermediate) for t in result.trials),
        "seconds": time.perf_counter() - t0,
        "best": result.best_value,
        "pruned": sum(t.state is TrialState.PRUNED for t in result.trials),
    }


def run_optuna(task: str, seed: int, trials: int, epochs: int) -> dict | None:
    try:
        import optuna
    except ImportError:
        return None
    from lightning_hpt.lightning.runner import trial_seed

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    model_f, data_f = factories(task)
    total = {"epochs": 0}

    class Report(L.Callback):
        def __init__(self, trial):
            self.trial, self.pruned, self.best = trial, False, 0.0

        def on_validation_end(self, trainer, pl_module):
            if trainer.sanity_checking:
                return
            total["epochs"] += 1
            value = float(trainer.callback_metrics["val_acc"])
            self.best = max(self.best, value)
            self.trial.report(value, trainer.current_epoch)
            if self.trial.should_prune():
                self.pruned, trainer.should_stop = True, True

    def objective(trial):
        p, bs = suggest(trial)
        L.seed_everything(trial_seed(seed, trial.number), verbose=False)
        cb = Report(trial)
        trainer = L.Trainer(
            accelerator="cpu",
            devices=1,
            max_epochs=epochs,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[cb],
        )
        trainer.fit(model_f({"model": p}), datamodule=data_f({"data": {"batch_size": bs}}))
        if cb.pruned:
            raise optuna.TrialPruned()
        return cb.best  # the best epoch, as our trials are scored

    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(multivariate=True, seed=seed),
        pruner=optuna.pruners.SuccessiveHalvingPruner(),
    )
    t0 = time.perf_counter()
    study.optimize(objective, n_trials=trials)
    best = max(max(t.intermediate_values.values()) for t in study.trials if t.state.name == "COMPLETE")
    return {
        "epochs": total["epochs"],
        "seconds": time.perf_counter() - t0,
        "best": best,
        "pruned": sum(t.state.name == "PRUNED" for t in study.trials),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--tasks", nargs="+", default=["digits", "cancer"])
    p.add_argument("--strategies", nargs="+", default=["random", "bayes"])
    args = p.parse_args()
    quiet_single_thread()
    rows = []
    root = tempfile.mkdtemp(prefix="hpt_pruning_")
    for task in args.tasks:
        for strategy in args.strategies:
            for pruner in PRUNERS:
                runs = [run_ours(task, strategy, pruner, s, args.trials, args.epochs, root) for s in range(args.seeds)]
                rows.append({"task": task, "method": f"{strategy} + {pruner or 'no pruning'}", "runs": runs})
                print(_line(rows[-1]), flush=True)
        runs = [r for r in (run_optuna(task, s, args.trials, args.epochs) for s in range(args.seeds)) if r]
        if runs:
            rows.append({"task": task, "method": "optuna TPE + successive halving", "runs": runs})
            print(_line(rows[-1]), flush=True)
    print(f"\nmachine: {describe()}")
    print(
        f"{args.trials} trials x <= {args.epochs} epochs, medians over {args.seeds} seeds;"
        " epochs relative to no pruning\n"
    )
    print("| task | method | epochs trained | % of no pruning | wall time (s) | best val_acc | pruned trials |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        base = (
            next(
                b
                for b in rows
                if b["task"] == r["task"] and b["method"] == r["method"].split(" + ")[0] + " + no pruning"
            )
            if "+ " in r["method"] and not r["method"].startswith("optuna")
            else next(b for b in rows if b["task"] == r["task"])
        )
        e = statistics.median(x["epochs"] for x in r["runs"])
        e0 = statistics.median(x["epochs"] for x in base["runs"])
        print(
            f"| {r['task']} | {r['method']} | {e:.0f} | {100 * e / e0:.0f}% | "
            f"{statistics.median(x['seconds'] for x in r['runs']):.0f} | "
            f"{statistics.median(x['best'] for x in r['runs']):.4f} | "
            f"{statistics.median(x['pruned'] for x in r['runs']):.0f} |"
        )
    os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
    with open(os.path.join(os.path.dirname(__file__), "results", "pruning.json"), "w") as f:
        json.dump({"machine": describe(), "args": vars(args), "rows": rows}, f, indent=1)


def _line(r: dict) -> str:
    return (
        f"{r['task']:7s} {r['method']:32s} epochs {statistics.median(x['epochs'] for x in r['runs']):6.0f}  "
        f"best {statistics.median(x['best'] for x in r['runs']):.4f}"
        f"  s {statistics.median(x['seconds'] for x in r['runs']):.0f}"
    )


if __name__ == "__main__":
    main()
