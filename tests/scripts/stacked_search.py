"""A stacked search of three trials whose group epochs are logged, so that a test can kill it and rerun it.

Usage: python stacked_search.py ROOT EPOCH_LOG SLEEP_PER_STEP [WRITE_EVERY]

The three trials (learning rates 0.02, 0.05, 0.1; 2, 8 and 8 epochs) form one stacked group. Every
training epoch of a group appends ``<pid> <epoch of the group>`` to EPOCH_LOG. The batches come in
the same order in every epoch, so a member continued in another group sees what it would have seen.
WRITE_EVERY is the executor's ``write_every`` (default: its own).
Each trial is printed as ``TRIAL <number> <state> <attempt> <value> <resumed at step> <curve as JSON>``.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from conftest import TinyData, TinyModel
from torch.utils.data import DataLoader, Sampler

CONFIGS = [{"model.lr": lr, "trainer.max_epochs": n} for lr, n in ((0.02, 2), (0.05, 8), (0.1, 8))]


class LoggedOrder(Sampler):
    """The indices in order; each pass (a training epoch) is logged."""

    def __init__(self, n: int) -> None:
        self.n, self.epoch = n, 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        with open(os.environ["HPT_EPOCH_LOG"], "a") as f:
            f.write(f"{os.getpid()} {self.epoch}\n")
        self.epoch += 1
        return iter(range(self.n))


class FixedOrderData(TinyData):
    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, sampler=LoggedOrder(len(self.train_set)))


def factory(cfg):
    return TinyModel(sleep=float(os.environ["HPT_STEP_SLEEP"]), **cfg["model"])


def main() -> None:
    from lightning_hpt import Float, HyperparameterSearch, Int, StackedExecutor

    root = sys.argv[1]
    os.environ["HPT_EPOCH_LOG"], os.environ["HPT_STEP_SLEEP"] = sys.argv[2], sys.argv[3]
    write_every = {"write_every": float(sys.argv[4])} if len(sys.argv) > 4 else {}
    search = HyperparameterSearch(
        factory,
        FixedOrderData,
        {"model.lr": Float(0.01, 0.2, log=True), "trainer.max_epochs": Int(2, 8)},
        root=root,
        n_trials=3,
        seed=0,
        patience=None,
        executor=StackedExecutor(stack=3, linger=0.2, **write_every),
        trainer_kwargs={"accelerator": "cpu", "devices": 1, "logger": False},
        verbose=False,
    )
    for params in CONFIGS:
        search.enqueue(params)
    for t in search.run().trials:
        curve = json.dumps({str(k): v for k, v in t.intermediate.items()})
        resumed = t.attrs.get("resumed_at_step")
        print("TRIAL", t.number, t.state.value, t.attempt, repr(t.value), resumed, curve, flush=True)


if __name__ == "__main__":
    main()
