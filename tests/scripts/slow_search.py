"""A search whose training steps are slow, so that a test can signal or kill it mid-trial.

Usage: python slow_search.py ROOT N_TRIALS [SLEEP_PER_STEP]
Exit status: 0 done, 130 after Ctrl+C, 143 after SIGTERM (SearchPreempted).
HPT_SLOW_RECORD=S makes recording each trial take S seconds.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from conftest import FAST, TinyData, TinyModel

from lightning_hpt import Float, HyperparameterSearch, Int

root, n_trials = sys.argv[1], int(sys.argv[2])
sleep = float(sys.argv[3]) if len(sys.argv) > 3 else 0.1


def factory(cfg):
    return TinyModel(sleep=sleep, **cfg["model"])


search = HyperparameterSearch(
    factory,
    TinyData,
    {"model.lr": Float(0.01, 0.2, log=True), "model.hidden": Int(4, 16)},
    root=root,
    n_trials=n_trials,
    seed=0,
    trainer_kwargs=FAST,
    verbose=False,
)
slow = float(os.environ.get("HPT_SLOW_RECORD", "0"))
if slow:  # recording a finished or interrupted trial takes this long (a slow database)
    import time

    record = search.storage.finish_trial

    def slow_finish(*args, **kwargs):
        time.sleep(slow)
        return record(*args, **kwargs)

    search.storage.finish_trial = slow_finish
try:
    search.run()
except KeyboardInterrupt:
    sys.exit(130)
