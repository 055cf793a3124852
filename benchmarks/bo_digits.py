"""Bayesian optimization on real Lightning trials: best validation accuracy after N trials.

    python benchmarks/bo_digits.py [--task digits|cancer] [--seeds 5] [--trials 20] [--epochs 10]

BayesianStrategy and RandomStrategy through HyperparameterSearch, and Optuna's
TPESampler(multivariate=True) and GPSampler driving the same Lightning model (when optuna is
installed), on the same space, budget and seeds. The tasks are ``benchmarks/tasks.py``'s MLPs on
scikit-learn's digits and breast-cancer data (``cancer`` is in no table of the Bayesian suite: a task
no default was chosen on). Every trial trains at most ``--epochs`` epochs with EarlyStopping
(patience 3) and is scored by its best epoch. Prints the table and writes results/bo_<task>.json.
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

from lightning_hpt import HyperparameterSearch
from lightning_hpt.lightning.runner import trial_seed


def ours(task: str, strategy: str, seed: int, trials: int, epochs: int, root: str) -> float:
    model, data = factories(task)
    result = HyperparameterSearch(
        model,
        data,
        space(),
        monitor="val_acc",
        mode="max",
        strategy=strategy,
        n_trials=trials,
        seed=seed,
        root=root,
        study_name=f"{task}_{strategy}_{seed}",
        patience=3,
        checkpoint=False,
        trainer_kwargs={"accelerator": "cpu", "devices": 1, "max_epochs": epochs, "logger": False},
        verbose=False,
    ).run()
    return result.best_value


class Best(L.Callback):
    """The best val_acc over the validation runs of one fit."""

    value = 0.0

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.value = max(self.value, float(trainer.callback_metrics["val_acc"]))


def optuna_search(task: str, sampler: str, seed: int, trials: int, epochs: int) -> float | None:
    try:
        import optuna
    except ImportError:
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    model_f, data_f = factories(task)

    def objective(trial):
        p, bs = suggest(trial)
        L.seed_everything(trial_seed(seed, trial.number), verbose=False)
        best = Best()
        trainer = L.Trainer(
            accelerator="cpu",
            devices=1,
            max_epochs=epochs,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            callbacks=[L.callbacks.EarlyStopping("val_acc", mode="max", patience=3), best],
        )
        trainer.fit(model_f({"model": p}), datamodule=data_f({"data": {"batch_size": bs}}))
        return best.value  # the best epoch, as our trials are scored

    samplers = {
        "tpe": lambda: optuna.samplers.TPESampler(multivariate=True, seed=seed),
        "gp": lambda: optuna.samplers.GPSampler(seed=seed),
    }
    study = optuna.create_study(direction="maximize", sampler=samplers[sampler]())
    study.optimize(objective, n_trials=trials)
    return study.best_value


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--task", choices=("digits", "cancer"), default="digits")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--epochs", type=int, default=10)
    args = p.parse_args()
    quiet_single_thread()
    root = tempfile.mkdtemp(prefix="hpt_bo_digits_")
    rows: dict[str, list[float]] = {"bayes": [], "random": [], "optuna TPE (multivariate)": [], "optuna GPSampler": []}
    seconds: dict[str, float] = dict.fromkeys(rows, 0.0)
    for seed in range(args.seeds):
        for name in rows:
            t0 = time.perf_counter()
            v = (
                optuna_search(args.task, "tpe" if "TPE" in name else "gp", seed, args.trials, args.epochs)
                if name.startswith("optuna")
                else ours(args.task, name, seed, args.trials, args.epochs, root)
            )
            if v is not None:
                rows[name].append(v)
                seconds[name] += time.perf_counter() - t0
            print(f"seed {seed} {name:28s} best val_acc {v}", flush=True)
    print(f"\nmachine: {describe()}")
    print(f"{args.task} MLP, {args.trials} trials x <= {args.epochs} epochs, {args.seeds} seeds\n")
    print("| method | median best val_acc | mean | min | max | s per search |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, vs in rows.items():
        if vs:
            print(
                f"| {name} | {statistics.median(vs):.4f} | {statistics.fmean(vs):.4f} | {min(vs):.4f} | {max(vs):.4f} |"
                f" {seconds[name] / len(vs):.0f} |"
            )
    os.makedirs(os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"), exist_ok=True)
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", f"bo_{args.task}.json"), "w") as f:
        json.dump({"machine": describe(), "args": vars(args), "best": rows, "seconds": seconds}, f, indent=1)


if __name__ == "__main__":
    main()
