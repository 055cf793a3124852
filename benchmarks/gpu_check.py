"""GPU check of the executors: mixed precision, GPU memory after each trial, small trials sharing one GPU.

    python benchmarks/gpu_check.py [--trials 8]

Needs a CUDA GPU; without one it says why and exits 0. Three checks, a few minutes in all:

1. digits trials on GPU 0 in a worker process with ``precision="16-mixed"`` and ``"bf16-mixed"``
   (bf16 only where the GPU supports it): every trial COMPLETE;
2. GPU memory after each trial, in-process (LocalExecutor: the driver's allocated bytes before and after
   each trial) and in a worker (its allocated bytes after each trial): back to the starting value;
3. throughput of 1, 2 and 4 small trials sharing GPU 0 (``ProcessExecutor(devices=[0], trials_per_gpu=k)``),
   after a warm-up trial in every worker.

``--cpu`` runs the same script on the CPU (bf16 only, no memory figures), to check the script itself.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _env import describe
from digits import DigitsDataModule, DigitsMLP

from lightning_hpt import Categorical, HyperparameterSearch, Int, TrialState
from lightning_hpt.executors import Executor, LocalExecutor, ProcessExecutor

SPACE = {
    "model.hidden_dim": Int(32, 256, log=True),
    "model.num_layers": Int(1, 3),
    "data.batch_size": Categorical([64]),
}


class _MemoryProbe:
    """A LocalExecutor that records the driver's CUDA memory before and after each trial."""

    def __init__(self) -> None:
        self.inner = LocalExecutor()
        self.pairs: list[tuple[int, int]] = []

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def submit(self, job, reporter):
        before = torch.cuda.memory_allocated()
        future = self.inner.submit(job, reporter)
        self.pairs.append((before, torch.cuda.memory_allocated()))
        return future


Executor.register(_MemoryProbe)


def run(root: str, name: str, executor, trials: int, accelerator: str, precision: str | None, epochs: int = 3):
    trainer = {"accelerator": accelerator, "devices": 1, "max_epochs": epochs, "log_every_n_steps": 5}
    if precision:
        trainer["precision"] = precision
    search = HyperparameterSearch(
        DigitsMLP,
        DigitsDataModule,
        SPACE,
        monitor="val_acc",
        mode="max",
        n_trials=trials,
        seed=0,
        root=root,
        study_name=name,
        trainer_kwargs=trainer,
        executor=executor,
        patience=None,
        verbose=False,
    )
    n = executor.max_concurrency
    if n > 1 or isinstance(executor, ProcessExecutor):  # warm every worker up (imports, CUDA context) before the clock
        HyperparameterSearch(
            DigitsMLP,
            DigitsDataModule,
            SPACE,
            monitor="val_acc",
            mode="max",
            n_trials=n,
            seed=1,
            root=root,
            study_name=f"{name}_warmup",
            trainer_kwargs={**trainer, "max_epochs": 1},
            executor=executor,
            patience=None,
            verbose=False,
        ).run()
    t0 = time.perf_counter()
    result = search.run()
    wall = time.perf_counter() - t0
    bad = [t for t in result.trials if t.state is not TrialState.COMPLETE]
    return result, wall, bad


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=8, help="trials per throughput measurement and per precision")
    p.add_argument("--cpu", action="store_true", help="check the script on the CPU")
    args = p.parse_args()
    if not args.cpu and not torch.cuda.is_available():
        print(
            f"skipped: no CUDA GPU is available here (torch {torch.__version__}, "
            f"CUDA build {torch.version.cuda}, CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})"
        )
        return 0
    accelerator = "cpu" if args.cpu else "gpu"
    print(describe())
    if not args.cpu:
        print(
            f"GPU 0: {torch.cuda.get_device_name(0)},"
            f" {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB"
        )
    devices = [] if args.cpu else [0]
    root = tempfile.mkdtemp(prefix="hpt-gpu-check-")
    failures = 0
    try:
        # 1. mixed precision in a worker process
        precisions = (
            ["bf16-mixed"] if args.cpu else ["16-mixed"] + (["bf16-mixed"] if torch.cuda.is_bf16_supported() else [])
        )
        for precision in precisions:
            ex = ProcessExecutor(workers=1, devices=devices)
            result, wall, bad = run(root, f"precision_{precision.replace('-', '_')}", ex, 2, accelerator, precision)
            ex.shutdown()
            failures += len(bad)
            print(
                f"[1] {precision}: {len(result.trials) - len(bad)}/{len(result.trials)} COMPLETE"
                f" (best val_acc {result.best_value:.3f}){'; ' + bad[0].error if bad else ''}"
            )
        # 2. GPU memory after each trial
        if not args.cpu:
            probe = _MemoryProbe()
            _, _, bad = run(root, "memory_local", probe, 4, accelerator, "16-mixed")
            grew = [(b, a) for b, a in probe.pairs if a != b]
            failures += len(bad) + len(grew)
            print(
                f"[2] in-process: allocated bytes before/after each trial {probe.pairs}: "
                f"{'back to the start' if not grew else 'GREW'}"
            )
            ex = ProcessExecutor(workers=1, devices=devices)
            result, _, bad = run(root, "memory_worker", ex, 4, accelerator, "16-mixed")
            ex.shutdown()
            after = [ex.trial_info[t.number].get("cuda_allocated") for t in result.trials]
            failures += len(bad) + (len(set(after)) != 1)
            print(
                f"[2] worker: allocated bytes after each trial {after}: "
                f"{'flat' if len(set(after)) == 1 else 'NOT FLAT'}"
            )
        # 3. k small trials sharing one GPU
        base = None
        for k in (1, 2, 4):
            if args.cpu:
                ex = ProcessExecutor(workers=k, devices=[], threads_per_worker=1)
            else:
                ex = ProcessExecutor(devices=devices, trials_per_gpu=k)
            result, wall, bad = run(
                root, f"share_{k}", ex, max(args.trials, k), accelerator, "16-mixed" if not args.cpu else None
            )
            ex.shutdown()
            failures += len(bad)
            rate = 60 * len(result.trials) / wall
            base = base or rate
            print(f"[3] {k} trial(s) per GPU: {rate:6.1f} trials/min ({rate / base:.2f}x), {len(bad)} not COMPLETE")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("all checks passed" if not failures else f"{failures} problem(s), see above")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
