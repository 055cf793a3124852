"""Bayesian optimization on real Lightning trials: best validation accuracy after N trials.

    python benchmarks/bo_digits.py [--task digits|cancer] [--monitor val_acc|val_loss] [--seeds 5] [--trials 20]

BayesianStrategy and RandomStrategy through HyperparameterSearch, and Optuna's
TPESampler(multivariate=True) and GPSampler driving the same Lightning model (when optuna is
installed), on the same space, budget and seeds. The tasks are ``benchmarks/tasks.py``'s MLPs on
scikit-learn's digits and breast-cancer data (``cancer`` is in no table of the Bayesian suite: a task
no default was chosen on). Every trial trains at most ``--epochs`` epochs with EarlyStopping
(patience 3) and is scored by its best epoch (``--monitor val_acc`` or ``val_loss``, which separates
methods where the accuracy reaches 1.0). Prints the table and writes results/bo_<task>_<monitor>.json.
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

#: the monitored metric and its mode (``--monitor``)
MODES = {"val_acc": "max", "val_loss": "min"}


def ours(task: str, strategy: str, seed: int, trials: int, epochs: int, root: str, monitor: str) -> float:
    model, data = factories(task)
    result = HyperparameterSearch(
        model,
        data,
        space(),
        monitor=monitor,
        mode=MODES[monitor],
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
    """The best value of ``monitor`` over the validation runs of one fit."""

    def __init__(self, monitor: str) -> None:
        self.monitor, self.values = monitor, []

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.values.append(float(trainer.callback_metrics[self.monitor]))

    @property
    def value(self) -> float:
        return (max if MODES[self.monitor] == "max" else min)(self.values)


def optuna_search(task: str, sampler: str, seed: int, trials: int, epochs: int, monitor: str) -> float | None:
    try:
        import optuna
    except ImportError:
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    model_f, data_f = factories(task)

    def objective(trial):
        p, bs = suggest(trial)
        L.seed_everything(trial_seed(seed, trial.number), verbose=False)
        best = Best(monitor)
        trainer = L.Trainer(
            accelerator="cpu",
            devices=1,
            max_epochs=epochs,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            callbacks=[L.callbacks.EarlyStopping(monitor, mode=MODES[monitor], patience=3), best],
        )
        trainer.fit(model_f({"model": p}), datamodule=data_f({"data": {"batch_size": bs}}))
        return best.value  # the best epoch, as our trials are scored

    samplers = {
        "tpe": lambda: optuna.samplers.TPESampler(multivariate=True, seed=seed),
        "gp": lambda: optuna.samplers.GPSampler(seed=seed),
    }
    direction = "maximize" if MODES[monitor] == "max" else "minimize"
    study = optuna.create_study(direction=direction, sampler=samplers[sampler]())
    study.optimize(objective, n_trials=trials)
    return study.best_value


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--task", choices=("digits", "cancer"), default="digits")
    p.add_argument("--monitor", choices=tuple(MODES), default="val_acc")
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
                optuna_search(args.task, "tpe" if "TPE" in name else "gp", seed, args.trials, args.epochs, args.monitor)
                if name.startswith("optuna")
                else ours(args.task, name, seed, args.trials, args.epochs, root, args.monitor)
            )
            if v is not None:
                rows[name].append(v)
                seconds[name] += time.perf_counter() - t0
            print(f"seed {seed} {name:28s} best {args.monitor} {v}", flush=True)
    print(f"\nmachine: {describe()}")
    print(f"{args.task} MLP, {args.trials} trials x <= {args.epochs} epochs, {args.seeds} seeds\n")
    print(f"| method | median best {args.monitor} | mean | min | max | s per search |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, vs in rows.items():
        if vs:
            print(
                f"| {name} | {statistics.median(vs):.4f} | {statistics.fmean(vs):.4f} | {min(vs):.4f} | {max(vs):.4f} |"
                f" {seconds[name] / len(vs):.0f} |"
            )
    results = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    os.makedirs(results, exist_ok=True)
    with open(os.path.join(results, f"bo_{args.task}_{args.monitor}.json"), "w") as f:
        json.dump({"machine": describe(), "args": vars(args), "best": rows, "seconds": seconds}, f, indent=1)


if __name__ == "__main__":
    main()
