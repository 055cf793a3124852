"""A one-trial search whose epochs are logged, so that a test can kill it at epoch k and rerun it.

Usage: python resume_search.py ROOT EXECUTOR MAX_EPOCHS SLEEP_PER_STEP EPOCH_LOG [CV]
EXECUTOR is ``local`` or ``process``. Each training epoch appends ``<pid> <epoch>`` to EPOCH_LOG.
The finished trial is printed as ``RESULT <value> <attempt> <intermediate as JSON>``.
"""

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from conftest import TinyData, TinyModel

from lightning_hpt import Float, HyperparameterSearch, ProcessExecutor

root, executor, epochs, sleep, epoch_log = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
cv = int(sys.argv[6]) if len(sys.argv) > 6 else None


class LoggedModel(TinyModel):
    def on_train_epoch_start(self) -> None:
        with open(epoch_log, "a") as f:
            f.write(f"{os.getpid()} {self.current_epoch}\n")
        if os.environ.get("RNGDBG"):
            print("RNG", self.current_epoch, hash(torch.get_rng_state().numpy().tobytes()), sum(p.detach().sum().item() for p in self.parameters()), self.trainer.optimizers[0].state_dict()["param_groups"][0]["lr"], flush=True)


def factory(cfg):
    return LoggedModel(sleep=sleep, **cfg["model"])


search = HyperparameterSearch(
    factory,
    TinyData,
    {"model.lr": Float(0.01, 0.2, log=True)},
    root=root,
    n_trials=1,
    seed=0,
    patience=3,
    cv=cv,
    retry_failed=True,
    executor=ProcessExecutor(1) if executor == "process" else None,
    trainer_kwargs={
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": epochs,
        "logger": False,
        "num_sanity_val_steps": 0,
        "enable_progress_bar": False,
    },
    verbose=False,
)
result = search.run()
t = result.trials[0]
print("RESULT", repr(t.value), t.attempt, json.dumps({str(k): v for k, v in t.intermediate.items()}), flush=True)
