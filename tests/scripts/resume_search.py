"""A one-trial search whose epochs are logged, so that a test can kill it at epoch k and rerun it.

Usage: python resume_search.py ROOT EXECUTOR MAX_EPOCHS SLEEP_PER_STEP EPOCH_LOG [CV [noresume]]
EXECUTOR is ``local`` or ``process``; CV is a number of folds (0: none). Each training epoch
appends ``<pid> <epoch>`` to EPOCH_LOG. The finished trial is printed as
``RESULT <value> <attempt> <intermediate as JSON>``.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from conftest import TinyData, TinyModel


class LoggedModel(TinyModel):
    """Appends ``<pid> <epoch>`` to ``$HPT_EPOCH_LOG`` at each training epoch's start (workers inherit it)."""

    def on_train_epoch_start(self) -> None:
        with open(os.environ["HPT_EPOCH_LOG"], "a") as f:
            f.write(f"{os.getpid()} {self.current_epoch}\n")


def factory(cfg):
    return LoggedModel(sleep=float(os.environ["HPT_STEP_SLEEP"]), **cfg["model"])


def main() -> None:
    from lightning_hpt import Float, HyperparameterSearch, ProcessExecutor

    root, executor, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    os.environ["HPT_STEP_SLEEP"], os.environ["HPT_EPOCH_LOG"] = sys.argv[4], sys.argv[5]
    cv = int(sys.argv[6]) if len(sys.argv) > 6 and int(sys.argv[6]) > 1 else None
    search = HyperparameterSearch(
        factory,
        TinyData,
        {"model.lr": Float(0.01, 0.2, log=True)},
        root=root,
        n_trials=1,
        seed=0,
        patience=None,
        cv=cv,
        retry_failed=True,
        resume="noresume" not in sys.argv,
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
    t = search.run().trials[0]
    curve = json.dumps({str(k): v for k, v in t.intermediate.items()})
    print("RESULT", repr(t.value), t.attempt, curve, flush=True)


if __name__ == "__main__":
    main()
