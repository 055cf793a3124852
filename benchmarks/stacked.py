"""Trials per minute of stacked trials (K = 1, 4, 16, 64) against ordinary sequential trials and ProcessExecutor.

    nice -n 19 python benchmarks/stacked.py [--tasks mlp,cnn] [--trials 32] [--stacks 1,4,16,64] [--repeats 2]
    python benchmarks/stacked.py --accelerator gpu --stacks 1,16,64,256 --trials 256   # on a GPU

Every mode runs the same seeded random search on scikit-learn's digits (the digits MLP of
``examples/digits.py`` and a small CNN defined here): the same configurations in the same trial
order, because a random proposal is a function of (seed, trial number). The architecture is fixed
(the structural parameters are not searched); learning rate, weight decay, dropout and the number of
epochs vary, which is what stacking is for. Modes:

- ``sequential``: the default in-process executor, one torch thread;
- ``sequential-threads``: the same with torch's default number of threads (what a user who does
  not set it gets; ``--modes sequential,sequential-threads,process``);
- ``process``: ``ProcessExecutor`` with 2 workers of one thread each (all cores of this machine);
- ``stack-K``: ``StackedExecutor(stack=K)`` in-process, one torch thread; a stacked run does
  ``max(trials, K)`` trials so that a group is full; ``--stack-threads`` adds ``stack-K-threads``,
  the same with torch's default number of threads (what a user who does not set it gets).

The modes run in interleaved rounds and medians are reported, so that a busy moment of a shared
machine hits every mode. Each search runs in a fresh Python process, as a user's search does: in one
shared process, the thread pools left by the modes before it slowed a stacked search with torch's
default threads by a third (``--shared-process`` runs them so). For each mode it prints trials per
minute, the best val_acc over the first ``--trials`` trials (equal trial count), and the best val_acc
reached after 15, 30 and 60 s of search.
Writes nothing but its temporary directories.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import lightning.pytorch as L
import torch
import torchmetrics
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _env import describe, quiet_single_thread
from digits import DigitsDataModule, DigitsMLP

from lightning_hpt import Float, HyperparameterSearch, Int
from lightning_hpt.executors import ProcessExecutor
from lightning_hpt.stacking import StackedExecutor

SPACE = {
    "model.lr": Float(1e-4, 1e-1, log=True),
    "model.weight_decay": Float(1e-6, 1e-2, log=True),
    "model.dropout": Float(0.0, 0.5),
    "trainer.max_epochs": Int(3, 8),
}
TIMES = (15, 30, 60)


class DigitsCNN(L.LightningModule):
    """Two 3x3 convolutions over the 8x8 digit images, then a linear classifier."""

    def __init__(self, lr: float = 1e-3, weight_decay: float = 0.0, dropout: float = 0.1, channels: int = 16) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(channels * 16, 10),
        )
        self.val_acc = torchmetrics.classification.MulticlassAccuracy(num_classes=10, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.reshape(-1, 1, 8, 8))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.val_acc(logits, y)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        self.log("val_acc", self.val_acc)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)


TASKS = {"mlp": DigitsMLP, "cnn": DigitsCNN}
DEFAULT_THREADS = torch.get_num_threads()  # torch's default, read before quiet_single_thread()


class GpuSampler:
    """GPU utilization sampled with nvidia-smi every half second while a search runs (GPU runs only)."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        query = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", "0"]
        while not self._stop.wait(0.5):
            out = subprocess.run(query, capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip():
                self.samples.append(float(out.stdout.split()[0]))

    def __enter__(self) -> GpuSampler:
        torch.cuda.reset_peak_memory_stats()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> str:
        util = statistics.mean(self.samples) if self.samples else float("nan")
        return f"GPU memory peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB, mean utilization {util:.0f}%"


def run_mode(task: str, mode: str, trials: int, root: str, accelerator: str = "cpu") -> dict[str, Any]:
    """One search; its rate, its best value over the first ``trials`` trials and its best value over time."""
    executor: Any = None
    n = trials
    if mode == "process" and accelerator == "gpu":
        executor = ProcessExecutor(devices=[0], trials_per_gpu=4)
    elif mode == "process":
        executor = ProcessExecutor(workers=2, devices=[], threads_per_worker=1)
    elif mode.startswith("stack-"):
        k = int(mode.split("-")[1])
        executor, n = StackedExecutor(stack=k, linger=0.5), max(trials, k)
    threads = torch.get_num_threads()
    if mode.endswith("-threads"):
        torch.set_num_threads(DEFAULT_THREADS)
    search = HyperparameterSearch(
        model=TASKS[task],
        datamodule=DigitsDataModule,
        space=SPACE,
        monitor="val_acc",
        mode="max",
        strategy="random",
        n_trials=n,
        seed=0,
        root=root,
        study_name=f"{task}_{mode}".replace("-", "_"),
        trainer_kwargs={"accelerator": accelerator, "devices": 1, "log_every_n_steps": 5},
        patience=3,
        executor=executor,
        verbose=False,
    )
    gpu = GpuSampler() if accelerator == "gpu" else contextlib.nullcontext()
    t0 = time.time()
    with gpu:
        result = search.run()
    wall = time.time() - t0
    torch.set_num_threads(threads)
    if isinstance(gpu, GpuSampler):
        print(f"  {task} {mode}: {gpu.summary()}")
    if executor is not None:
        executor.shutdown()
    done = sorted(result.trials, key=lambda t: t.finished_at or 0)
    first = [t for t in result.trials if t.number < trials and t.value is not None]
    over_time = {}
    for s in TIMES:
        values = [t.value for t in done if t.value is not None and (t.finished_at or 0) - t0 <= s]
        over_time[s] = max(values) if values else None
    return {
        "rate": 60 * len(result.trials) / wall,
        "best": max(t.value for t in first),
        "over_time": over_time,
        "failed": sum(t.value is None for t in result.trials),
    }


def _median(values: list[float | None]) -> str:
    real = [v for v in values if v is not None]
    return f"{statistics.median(real):.3f}" if real else "-"


def report(task: str, rows: dict[str, list[dict[str, Any]]], trials: int) -> None:
    modes = [m for m in ("sequential", "sequential-threads") if m in rows]
    sequential = [statistics.median(r["rate"] for r in rows[m]) for m in modes]
    base = max(sequential) if sequential else None  # the faster of the user's sequential choices
    times = " | ".join(f"best @{s}s" for s in TIMES)
    print(f"\n{task}: trials/min (median of rounds), best val_acc over the first {trials} trials, best over time")
    print(f"| mode | trials/min | rounds | vs sequential | best ({trials} trials) | {times} |")
    print("| --- " * (5 + len(TIMES)) + "|")
    for mode, rs in rows.items():
        rate = statistics.median(r["rate"] for r in rs)
        ratio = f"{rate / base:.1f}x" if base else "-"
        over = " | ".join(_median([r["over_time"][s] for r in rs]) for s in TIMES)
        rounds = ", ".join(f"{r['rate']:.0f}" for r in rs)
        failed = sum(r["failed"] for r in rs)
        note = f" ({failed} failed)" if failed else ""
        print(f"| {mode}{note} | {rate:.0f} | {rounds} | {ratio} | {_median([r['best'] for r in rs])} | {over} |")


def _fresh(task: str, mode: str, args: argparse.Namespace, root: str) -> dict[str, Any]:
    """:func:`run_mode` in a fresh Python process: no thread pool, cache or state left by the modes before it."""
    cmd = [sys.executable, __file__, "--one", task, mode, root, "--trials", str(args.trials)]
    done = subprocess.run([*cmd, "--accelerator", args.accelerator], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{task} {mode} failed (exit code {done.returncode}):\n{done.stderr[-4000:]}")
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    for line in lines[:-1]:  # the GPU summary, when there is one
        print(line)
    out = json.loads(lines[-1])
    out["over_time"] = {int(s): v for s, v in out["over_time"].items()}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="mlp,cnn")
    p.add_argument("--trials", type=int, default=32)
    p.add_argument("--stacks", default="1,4,16,64")
    p.add_argument("--modes", default="sequential,process", help="baselines to run besides the stacked ones")
    p.add_argument("--stack-threads", action="store_true", help="also run each stack-K with torch's default threads")
    p.add_argument("--repeats", type=int, default=2, help="interleaved rounds of every mode; medians are reported")
    p.add_argument("--accelerator", default="cpu", help="cpu | gpu (then GPU memory and utilization are printed)")
    p.add_argument(
        "--shared-process",
        action="store_true",
        help="run every search in this process (by default each runs in a fresh one, as a user's search does)",
    )
    p.add_argument("--one", nargs=3, metavar=("TASK", "MODE", "ROOT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    quiet_single_thread()
    if args.one:  # a child of the run below: one search, its figures as JSON on the last line
        print(json.dumps(run_mode(args.one[0], args.one[1], args.trials, args.one[2], args.accelerator)))
        return 0
    print(describe())
    print("load before:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    stacks = [f"stack-{k}" for k in args.stacks.split(",") if k]
    if args.stack_threads:
        stacks += [f"{m}-threads" for m in stacks]
    modes = [m for m in args.modes.split(",") if m] + stacks
    for task in args.tasks.split(","):
        rows: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
        for r in range(args.repeats):
            for mode in modes:
                root = tempfile.mkdtemp(prefix="hpt_stacked_")
                try:
                    if args.shared_process:
                        rows[mode].append(run_mode(task, mode, args.trials, root, args.accelerator))
                    else:
                        rows[mode].append(_fresh(task, mode, args, root))
                finally:
                    shutil.rmtree(root, ignore_errors=True)
                print(f"  {task} round {r} {mode}: {rows[mode][-1]['rate']:.1f} trials/min", flush=True)
        report(task, rows, args.trials)
    print("load after:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
