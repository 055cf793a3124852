"""One Ax run of the suite, in Ax's own interpreter (called by bo_peers.py; prints the run as JSON).

Usage::

    /work/venv-ax/bin/python benchmarks/bo_ax.py PROBLEM TRIALS SEED BATCH {ax,ax_fast}

``ax_fast`` is the Client's ``method="fast"`` generation strategy, ``ax`` its default.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from bo_peers import _evaluate, _new_run
from bo_problems import SUITE, SuiteProblem

from lightning_hpt.space import Categorical, Int


def _parameters(problem: SuiteProblem) -> list[Any]:
    from ax.api.configs import ChoiceParameterConfig, RangeParameterConfig

    out: list[Any] = []
    for name, d in problem.space.items():
        if isinstance(d, Categorical):
            out.append(ChoiceParameterConfig(name=name, values=list(d.choices), parameter_type="str", is_ordered=False))
        else:
            out.append(
                RangeParameterConfig(
                    name=name,
                    bounds=(d.low, d.high),
                    parameter_type="int" if isinstance(d, Int) else "float",
                    scaling="log" if d.log else "linear",
                )
            )
    return out


def main() -> None:
    name, trials, seed, batch, method = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    torch.set_num_threads(1)
    from ax.api.client import Client

    logging.disable(logging.WARNING)
    problem = SUITE[name]()
    client = Client(random_seed=seed)
    client.configure_experiment(parameters=_parameters(problem))
    client.configure_optimization(objective="-f")
    if method == "ax_fast":
        client.configure_generation_strategy(method="fast", initialization_random_seed=seed)
    run = _new_run()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        while len(run["true"]) < trials:
            t0 = time.perf_counter()
            asked = client.get_next_trials(max_trials=min(batch, trials - len(run["true"])))
            run["ask_s"].append(time.perf_counter() - t0)
            run["ask_at"].append(len(run["true"]))
            for index, params in asked.items():
                value = _evaluate(problem, dict(params), seed, len(run["true"]), run)
                client.complete_trial(trial_index=index, raw_data={"f": value})
    print(json.dumps(run))


if __name__ == "__main__":
    main()
