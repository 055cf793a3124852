"""Pre-empt a search at random moments and count the epochs trained against an uninterrupted search.

Usage: nice -n 19 python benchmarks/preempt.py [--trials 3] [--epochs 10] [--kills 4] [--seed 0]
       nice -n 19 python benchmarks/preempt.py --mid-epoch 20

The search runs in a subprocess (``--child``); the parent sends it SIGTERM or SIGKILL (alternately)
at a random moment, then starts it again, until it finishes. Each training epoch is logged by the
child, so the figures are counts, not timings: epochs trained in all, against the uninterrupted
search's, and the excess per interruption (at most one checkpoint interval, here one epoch). The
children also time every write of the resumable checkpoint, printed as a share of training time.

``--mid-epoch N``: how far a trial continued from a mid-epoch checkpoint (Ctrl+C in the middle of
an epoch) ends from the uninterrupted run, over N seeds, against the spread between seeds (a
small regression, 8 batches an epoch, stopped after 4 batches of epoch 4 of 8; in this process).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _child(root: str, trials: int, epochs: int) -> None:
    import lightning.pytorch as L
    import torch
    from _env import quiet_single_thread
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_hpt import Float, HyperparameterSearch, Int

    quiet_single_thread()
    log = os.environ["HPT_BENCH_LOG"]
    save = L.Trainer.save_checkpoint

    def timed_save(self, filepath, *args, **kwargs):  # the resumable checkpoint's writes, timed
        t0 = time.perf_counter()
        save(self, filepath, *args, **kwargs)
        if f"{os.sep}resume{os.sep}" in str(filepath):
            with open(log, "a") as f:
                f.write(json.dumps({"write": time.perf_counter() - t0}) + "\n")

    L.Trainer.save_checkpoint = timed_save

    class Data(L.LightningDataModule):
        def setup(self, stage=None):
            g = torch.Generator().manual_seed(0)
            x = torch.randn(10240, 32, generator=g)
            y = (x[:, :8].sum(1) > 0).long()
            self.train, self.val = TensorDataset(x[:8192], y[:8192]), TensorDataset(x[8192:], y[8192:])

        def train_dataloader(self):
            return DataLoader(self.train, batch_size=64, shuffle=True)

        def val_dataloader(self):
            return DataLoader(self.val, batch_size=256)

    class Net(L.LightningModule):
        def __init__(self, lr=0.01, hidden=64):
            super().__init__()
            self.save_hyperparameters()
            self.net = nn.Sequential(nn.Linear(32, hidden), nn.ReLU(), nn.Linear(hidden, 2))

        def on_train_start(self):  # a SIGTERM checkpoint continues mid-epoch, without on_train_epoch_start
            self._t0 = time.perf_counter()

        def on_train_epoch_start(self):
            self._t0 = time.perf_counter()

        def on_train_batch_start(self, batch, batch_idx):
            with open(log, "a") as f:  # counts the batches trained, also by an attempt that is killed
                f.write('{"batch": 1}\n')

        def on_train_epoch_end(self):
            with open(log, "a") as f:
                f.write(json.dumps({"epoch": self.current_epoch, "seconds": time.perf_counter() - self._t0}) + "\n")

        def training_step(self, batch, _):
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def validation_step(self, batch, _):
            x, y = batch
            self.log("val_loss", nn.functional.cross_entropy(self.net(x), y))

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

    search = HyperparameterSearch(
        Net,
        Data,
        {"model.lr": Float(1e-3, 3e-2, log=True), "model.hidden": Int(32, 128)},
        root=root,
        n_trials=trials,
        seed=0,
        patience=None,
        trainer_kwargs={"max_epochs": epochs, "logger": False, "num_sanity_val_steps": 0},
        verbose=False,
    )
    result = search.run()
    for t in result.trials:
        if t.error:
            print(f"trial {t.number}: {t.state.value}: {t.error}", file=sys.stderr, flush=True)
    print("RESULT", json.dumps({t.number: t.value for t in result.trials}), flush=True)


def _run(root: Path, log: Path, args: argparse.Namespace, kill: tuple[int, float, int] | None) -> str | None:
    """Run the search; with ``kill = (epochs, delay, signal)``: send the signal ``delay`` s after that many
    epochs (of all attempts) have ended. Returns the printed result, or None when it was killed."""
    env = {**os.environ, "HPT_BENCH_LOG": str(log)}
    cmd = [sys.executable, __file__, "--child", str(root), "--trials", str(args.trials), "--epochs", str(args.epochs)]
    with open(f"{log}.err", "a") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
    if kill is not None:
        epochs, delay, sig = kill
        while proc.poll() is None and (not log.exists() or _read(log)[0] < epochs):
            time.sleep(0.02)
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(sig)
            proc.communicate()
            return None
    out, _ = proc.communicate()
    line = next((x for x in out.splitlines() if x.startswith("RESULT ")), None)
    return line[len("RESULT ") :] if line else None


def _mid_epoch(seeds: int) -> None:
    """Uninterrupted against stopped mid-epoch and continued, one one-trial search per seed and case."""
    import statistics

    import lightning.pytorch as L
    import torch
    from _env import quiet_single_thread
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_hpt import Float, HyperparameterSearch

    quiet_single_thread()
    epochs, stop_epoch, stop_batch = 8, 4, 4

    class Data(L.LightningDataModule):
        def setup(self, stage=None):
            g = torch.Generator().manual_seed(0)
            x = torch.randn(288, 4, generator=g)
            y = (x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(288, generator=g))[:, None]
            self.train, self.val = TensorDataset(x[:256], y[:256]), TensorDataset(x[256:], y[256:])

        def train_dataloader(self):
            return DataLoader(self.train, batch_size=32, shuffle=True)

        def val_dataloader(self):
            return DataLoader(self.val, batch_size=32)

    class Net(L.LightningModule):
        def __init__(self, lr=0.05, stop=None):
            super().__init__()
            self.save_hyperparameters()
            self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))

        def training_step(self, batch, i):
            stop = self.hparams.stop
            if stop and self.current_epoch == stop_epoch and i == stop_batch and not os.path.exists(stop):
                Path(stop).touch()
                raise KeyboardInterrupt  # as Ctrl+C: the state of this moment is saved
            x, y = batch
            return nn.functional.mse_loss(self.net(x), y)

        def validation_step(self, batch, _):
            x, y = batch
            self.log("val_loss", nn.functional.mse_loss(self.net(x), y))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    def value(root: str, seed: int, stop: str | None) -> float:
        trainer = {"max_epochs": epochs, "logger": False, "num_sanity_val_steps": 0, "enable_progress_bar": False}
        search = HyperparameterSearch(
            lambda cfg: Net(stop=stop, **cfg["model"]),
            Data,
            {"model.lr": Float(0.02, 0.1, log=True)},
            root=root,
            n_trials=1,
            seed=seed,
            patience=None,
            trainer_kwargs=trainer,
            verbose=False,
        )
        try:
            return float(search.run().trials[0].value)
        except KeyboardInterrupt:
            return value(root, seed, stop)  # the same study again: the trial continues from the checkpoint

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(seeds):
            ref = value(f"{tmp}/ref{seed}", seed, None)
            cont = value(f"{tmp}/run{seed}", seed, f"{tmp}/stopped{seed}")
            rows.append((ref, cont))
            print(f"seed {seed}: uninterrupted {ref:.4f}, continued mid-epoch {cont:.4f}", flush=True)
    diffs = [abs(c - r) / r for r, c in rows]
    refs = [r for r, _ in rows]
    print(
        f"continued against uninterrupted: mean {100 * statistics.fmean(diffs):.1f}%, max {100 * max(diffs):.1f}%;"
        f" between seeds: sd {100 * statistics.stdev(refs) / statistics.fmean(refs):.1f}% of the mean"
    )


def _read(log: Path) -> tuple[int, float, float, int, int]:
    """Epochs ended, their seconds, checkpoint-write seconds and count, batches trained."""
    rows = []
    for line in log.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:  # a line being written, or cut by a kill
            continue
    epochs = [r for r in rows if "epoch" in r]
    writes = [r["write"] for r in rows if "write" in r]
    batches = sum(1 for r in rows if "batch" in r)
    return len(epochs), sum(r["seconds"] for r in epochs), sum(writes), len(writes), batches


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", metavar="ROOT")
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--kills", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mid-epoch", type=int, metavar="SEEDS")
    args = p.parse_args()
    if args.child:
        _child(args.child, args.trials, args.epochs)
        return
    from _env import describe

    print(describe())
    if args.mid_epoch:
        _mid_epoch(args.mid_epoch)
        return
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        ref_log = Path(tmp, "ref.log")
        ref = _run(Path(tmp, "ref"), ref_log, args, None)
        ref_epochs, ref_train, _, _, ref_batches = _read(ref_log)
        per_epoch = ref_train / ref_epochs
        log, root, kills, result = Path(tmp, "pre.log"), Path(tmp, "pre"), [], None
        while result is None:
            if len(kills) < args.kills:
                sig = (signal.SIGTERM, signal.SIGKILL)[len(kills) % 2]
                done = _read(log)[0] if log.exists() else 0
                at = done + rng.randint(1, max(1, (ref_epochs - done) // 2))  # epochs of all attempts
                delay = rng.uniform(0, per_epoch)
                kills.append(f"{signal.Signals(sig).name} {delay:.2f} s after epoch {at}")
                result = _run(root, log, args, (at, delay, sig))
            else:
                result = _run(root, log, args, None)
        _, train, write, n_writes, batches = _read(log)
        errors = Path(f"{log}.err").read_text().splitlines() if result != ref else []
    interrupted = len(kills)
    print(f"search: {args.trials} trials x {args.epochs} epochs; interruptions: {', '.join(kills)}")
    per = ref_batches / ref_epochs
    extra = (batches - ref_batches) / per
    print(
        f"uninterrupted: {ref_epochs} epochs ({ref_batches} batches);"
        f" pre-empted {interrupted} times: {batches / per:.2f} epochs"
    )
    print(
        f"extra epochs trained: {extra:.2f} ({extra / max(interrupted, 1):.2f} per interruption;"
        " the bound is one checkpoint interval = 1 epoch)"
    )
    print(f"same values as uninterrupted: {result == ref} ({result} vs {ref})")
    print(
        f"resumable checkpoint writes: {n_writes}, {write:.2f} s = {100 * write / train:.1f}% of {train:.1f} s"
        " of training epochs"
    )
    print(f"(uninterrupted training epochs took {ref_train:.1f} s)")
    for line in errors[-30:]:
        print("  |", line)


if __name__ == "__main__":
    main()
