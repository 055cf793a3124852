"""Per-trial overhead of HyperparameterSearch against direct Trainer.fit calls, and memory over many trials.

    python benchmarks/overhead.py [--trials 30] [--leak-trials 50]

Both sides train the same digits MLP with the same Trainer settings in the same process. "Like for like"
gives the direct calls what every trial of a search has (best-epoch checkpoint, EarlyStopping, CSV and
TensorBoard loggers); "bare" is a Trainer with none of them. Prints the figures; writes nothing else.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time

import lightning.pytorch as L

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _env import describe, quiet_single_thread
from digits import DigitsDataModule, DigitsMLP

from lightning_hpt import Categorical, HyperparameterSearch

EPOCHS = 5
TRAINER = {"accelerator": "cpu", "devices": 1, "max_epochs": EPOCHS, "log_every_n_steps": 5}


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def direct(n: int, root: str, like_for_like: bool) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        L.seed_everything(i, verbose=False)
        d = os.path.join(root, f"direct_{i}")
        if like_for_like:
            cbs = [
                L.callbacks.EarlyStopping("val_acc", patience=5, mode="max"),
                L.callbacks.ModelCheckpoint(
                    dirpath=os.path.join(d, "checkpoints"), filename="best", monitor="val_acc", mode="max"
                ),
            ]
            loggers = [
                L.loggers.CSVLogger(d, name="", version=""),
                L.loggers.TensorBoardLogger(d, name="", version="tb"),
            ]
            extra = {"callbacks": cbs, "logger": loggers}
        else:
            extra = {"logger": False, "enable_checkpointing": False}
        trainer = L.Trainer(
            enable_progress_bar=False, enable_model_summary=False, default_root_dir=d, **TRAINER, **extra
        )
        trainer.fit(DigitsMLP(hidden_dim=64), datamodule=DigitsDataModule(batch_size=64))
    return (time.perf_counter() - t0) / n


def search(n: int, root: str, study: str, probe: bool = False) -> tuple[float, list[float]]:
    rss: list[float] = []

    class Probe(DigitsMLP):
        def on_fit_end(self) -> None:
            gc.collect()
            rss.append(rss_mb())

    s = HyperparameterSearch(
        Probe if probe else DigitsMLP,
        DigitsDataModule,
        {"model.hidden_dim": Categorical([64]), "data.batch_size": Categorical([64])},
        monitor="val_acc",
        mode="max",
        strategy="random",
        n_trials=n,
        root=root,
        study_name=study,
        trainer_kwargs=TRAINER,
        verbose=False,
        seed=0,
    )
    t0 = time.perf_counter()
    s.run()
    return (time.perf_counter() - t0) / n, rss


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--leak-trials", type=int, default=50)
    args = p.parse_args()
    quiet_single_thread()
    root = tempfile.mkdtemp(prefix="hpt_overhead_")
    try:
        direct(2, root, True)  # warm-up: imports, first-call costs
        bare = direct(args.trials, root, False)
        like = direct(args.trials, root, True)
        per_trial, _ = search(args.trials, root, "overhead")
        _, rss = search(args.leak_trials, root, "leak", probe=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"machine: {describe()}")
    print(f"digits MLP, {EPOCHS} epochs per trial, {args.trials} trials each, 1 torch thread")
    print(f"direct Trainer.fit, bare:           {bare:.3f} s/trial")
    print(f"direct Trainer.fit, like for like:  {like:.3f} s/trial")
    print(f"HyperparameterSearch:               {per_trial:.3f} s/trial")
    over = per_trial - like
    print(
        f"search overhead vs like for like:   {over:+.3f} s/trial ({100 * over / like:+.1f}%)  target < 0.2 s and < 10%"
    )
    print(
        f"search overhead vs bare Trainer:    {per_trial - bare:+.3f} s/trial ({100 * (per_trial - bare) / bare:+.1f}%)"
    )
    k = min(5, len(rss)) - 1
    print(
        f"host RSS over {len(rss)} trials: {rss[k]:.1f} MB after trial {k + 1}, {rss[-1]:.1f} MB after trial {len(rss)}"
        f" (growth {rss[-1] - rss[k]:+.1f} MB; target < 50 MB)"
    )


if __name__ == "__main__":
    main()
