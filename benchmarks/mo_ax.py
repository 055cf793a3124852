"""One Ax run of a multi-objective problem of mo_suite.py, in Ax's own interpreter (prints the points as JSON).

Usage::

    /work/venv-ax/bin/python benchmarks/mo_ax.py PROBLEM TRIALS SEED {ax,ax_ref}
    /work/venv-ax/bin/python benchmarks/mo_ax.py serve SEED    # ask and tell over stdin/stdout (see serve())

``ax`` is Ax's Client with its default generation strategy, every objective minimized and the
objective thresholds inferred by Ax; ``ax_ref`` is given the problem's reference point as thresholds
(``f0 <= r0`` on a minimized objective is an objective threshold in Ax's Client).
"""

from __future__ import annotations

import json
import logging
import sys
import warnings

import torch


def serve(seed: int) -> None:
    """Ax's Client as a peer for a task that trains in another interpreter (the Lightning task of mo_suite.py).

    Reads one JSON line ``{"parameters": [...], "objective": "...", "thresholds": [...] | null}`` (the
    keyword arguments of Ax's parameter configs, its objective string and outcome constraints), then
    for each line ``[v0, v1, ...]`` of the last trial's metric values (``null`` before the first) writes
    one JSON line ``{"index": i, "params": {...}}``: the next trial. Ends when its input ends.
    """
    from ax.api.client import Client
    from ax.api.configs import ChoiceParameterConfig, RangeParameterConfig

    logging.disable(logging.WARNING)
    spec = json.loads(sys.stdin.readline())
    configs = [
        ChoiceParameterConfig(**p) if "values" in p else RangeParameterConfig(**{**p, "bounds": tuple(p["bounds"])})
        for p in spec["parameters"]
    ]
    client = Client(random_seed=seed)
    client.configure_experiment(parameters=configs)
    client.configure_optimization(objective=spec["objective"], outcome_constraints=spec["thresholds"])
    names = spec["metrics"]
    index = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for line in sys.stdin:
            values = json.loads(line)
            if index is not None:
                client.complete_trial(trial_index=index, raw_data=dict(zip(names, values, strict=True)))
            ((index, params),) = client.get_next_trials(max_trials=1).items()
            print(json.dumps({"index": index, "params": params}), flush=True)


def main() -> None:
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]))
        return
    name, trials, seed, method = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    torch.set_num_threads(1)
    from ax.api.client import Client
    from ax.api.configs import RangeParameterConfig
    from botorch.test_functions.multi_objective import DTLZ2, ZDT1, BraninCurrin

    problems = {
        "branin_currin": lambda: BraninCurrin(),
        "dtlz2_d6": lambda: DTLZ2(dim=6, num_objectives=2),
        "zdt1_d4": lambda: ZDT1(dim=4),
    }
    logging.disable(logging.WARNING)
    problem = problems[name]()
    names = [f"f{i}" for i in range(problem.num_objectives)]
    client = Client(random_seed=seed)
    client.configure_experiment(
        parameters=[
            RangeParameterConfig(name=f"x{i}", bounds=(0.0, 1.0), parameter_type="float") for i in range(problem.dim)
        ]
    )
    ref = problem.ref_point.tolist()
    thresholds = [f"{n} <= {r}" for n, r in zip(names, ref, strict=True)] if method == "ax_ref" else None
    client.configure_optimization(objective=", ".join(f"-{n}" for n in names), outcome_constraints=thresholds)
    points: list[list[float]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        while len(points) < trials:
            for index, params in client.get_next_trials(max_trials=1).items():
                x = torch.tensor([[params[f"x{i}"] for i in range(problem.dim)]], dtype=torch.float64)
                values = problem(x)[0].tolist()
                points.append(values)
                client.complete_trial(trial_index=index, raw_data=dict(zip(names, values, strict=True)))
    print(json.dumps(points))


if __name__ == "__main__":
    main()
