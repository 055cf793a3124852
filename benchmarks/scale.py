"""The driver's cost per report, and of proposals, `show`, the HTML report and exports, as a study grows.

    nice -n 19 python benchmarks/scale.py [--sizes 100,1000,10000] [--steps 30] [--postgres URL]

For every size a study of that many finished trials (6 parameters, up to ``--steps`` validation
values each, pruned and complete as successive halving leaves them) is filled by bulk SQL inserts,
then one new trial reports its values the way the driver handles them: store the value, read the
history, ask the pruner (successive halving). Optuna's storage (``RDBStorage`` on the same kind of
database, behind its cached storage, which is what ``optuna.create_study`` uses) is filled with the
same trials and asked the same thing with Optuna's ``SuccessiveHalvingPruner`` in the same run.
"export": read every trial, write the CSV and the JSON export, and ``SearchResult.to_dataframe``.
Each (database, size) runs in a fresh child process, so the memory figure (the process's peak RSS
after the reports, before `show` and the rest) is that size's alone. PostgreSQL runs when
``--postgres`` or ``HPT_TEST_POSTGRES_URL`` is set; every size gets a database of its own there
(created and dropped). Prints a table; writes nothing else.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import io
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _env import describe

PARAMS = {"lr": (1e-4, 1e-1), "wd": (1e-6, 1e-2), "dropout": (0.0, 0.5), "momentum": (0.5, 0.99)}
CHOICES = {"width": [32, 64, 128, 256], "depth": [1, 2, 3, 4]}
REPORTS = 10  # steps 0..9 of a fresh trial per measurement: rungs at steps 0, 2 and 8 among them


def steps_of(rng: random.Random, steps: int) -> int:
    """How many values a trial of a successive-halving study recorded: most stop at the first rungs."""
    return rng.choices([1, 3, 9, steps], weights=[18, 6, 2, 1])[0]


def make_trials(n: int, steps: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for number in range(n):
        params = {k: rng.uniform(*b) for k, b in PARAMS.items()} | {k: rng.choice(c) for k, c in CHOICES.items()}
        k = steps_of(rng, steps)
        base = rng.uniform(0.5, 1.0)
        curve = {s: base * (1.0 - 0.3 * s / steps) + rng.gauss(0, 0.01) for s in range(k)}
        out.append({"number": number, "params": params, "curve": curve, "complete": k == steps})
    return out


# ------------------------------------------------------------------ lightning-hpt


def hpt_fill(storage: Any, study: str, trials: list[dict[str, Any]]) -> None:
    import sqlalchemy as sa

    from lightning_hpt.storage.sql_schema import STUDIES, TRIALS, VALUES

    now = time.time()
    with storage.engine.begin() as conn:
        study_id = conn.execute(sa.select(STUDIES.c.id).where(STUDIES.c.name == study)).scalar_one()
        rows = []
        for t in trials:
            last = max(t["curve"])
            rows.append(
                {
                    "study_id": study_id,
                    "number": t["number"],
                    "state": "COMPLETE" if t["complete"] else "PRUNED",
                    "params": json.dumps(t["params"]),
                    "value": min(t["curve"].values()),
                    "best_step": last,
                    "started_at": now - 100,
                    "finished_at": now - 50,
                    "heartbeat_at": now - 50,
                    "host": "bench",
                    "pid": 1,
                    "attempt": 1,
                    "attrs": "{}",
                }
            )
        for i in range(0, len(rows), 5000):
            conn.execute(sa.insert(TRIALS), rows[i : i + 5000])
        ids = dict(conn.execute(sa.select(TRIALS.c.number, TRIALS.c.id).where(TRIALS.c.study_id == study_id)).all())
        values = [
            {"trial_id": ids[t["number"]], "step": s, "value": v, "nonfinite": None}
            for t in trials
            for s, v in t["curve"].items()
        ]
        for i in range(0, len(values), 20000):
            conn.execute(sa.insert(VALUES), values[i : i + 20000])


def hpt_space() -> Any:
    from lightning_hpt import Categorical, Float, SearchSpace

    space = {k: Float(*b, log=k in ("lr", "wd")) for k, b in PARAMS.items()}
    return SearchSpace(space | {k: Categorical(c) for k, c in CHOICES.items()})


def hpt_measure(url: str, trials: list[dict[str, Any]], steps: int, repeats: int) -> dict[str, Any]:
    from lightning_hpt.cli.main import main as cli_main
    from lightning_hpt.pruners import StepIndex, SuccessiveHalvingPruner
    from lightning_hpt.report.export import export_trials
    from lightning_hpt.reporting import StudyReporter
    from lightning_hpt.result import SearchResult
    from lightning_hpt.storage import SQLStorage, StudyInfo
    from lightning_hpt.strategies import RandomStrategy
    from lightning_hpt.trial import Direction

    storage = SQLStorage(url)
    study = "scale"
    storage.open_study(StudyInfo(study, hpt_space(), Direction.MINIMIZE, "val_loss", "random", seed=0))
    t0 = time.perf_counter()
    hpt_fill(storage, study, trials)
    fill_s = time.perf_counter() - t0
    pruner = SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    read = functools.partial(storage.history, study, steps, StepIndex)  # what the search's reader does
    rng = random.Random(1)
    reports, rung_reports, proposals = [], [], []
    strategy = RandomStrategy()
    for i in range(repeats + 1):  # the first trial warms up (a pruner builds its rung lists once): not timed
        t0 = time.perf_counter()
        history = read()
        params = strategy.ask(history, 1)[0]
        rec = storage.create_trial(study, params, number=history.next_number)
        if i:
            proposals.append(time.perf_counter() - t0)
        reporter = StudyReporter(storage, study, pruner, read, rec.number)  # the driver's own report path
        for step in range(REPORTS):
            t0 = time.perf_counter()
            reporter.report(step, rng.uniform(0.3, 0.6))
            dt = time.perf_counter() - t0
            if i:
                reports.append(dt)
                rung_reports += [dt] if step in (0, 2, 8) else []
        storage.finish_trial(study, rec.number, state=_state("COMPLETE"), value=0.3)
    driver_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before show, report and exports
    out = io.StringIO()
    t0 = time.perf_counter()
    cli_main(["show", study, "--storage", url, "--top", "20"], stdout=out)
    show_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cli_main(["report", study, "--storage", url, "-o", os.path.join(tmp, "r.html")], stdout=out)
        html_s = time.perf_counter() - t0
        t0 = time.perf_counter()  # what a script does with a study: read it, export it, a data frame
        trials = storage.trials(study)
        export_trials(trials, os.path.join(tmp, "t.csv"))
        export_trials(trials, os.path.join(tmp, "t.json"))
        SearchResult(study, "val_loss", Direction.MINIMIZE, tuple(trials)).to_dataframe()
        export_s = time.perf_counter() - t0
    storage.close()
    return {
        "fill_s": fill_s,
        "report_ms": 1e3 * statistics.median(reports),
        "rung_report_ms": 1e3 * statistics.median(rung_reports),
        "propose_ms": 1e3 * statistics.median(proposals),
        "show_s": show_s,
        "html_s": html_s,
        "export_s": export_s,
        "driver_mb": driver_mb,
    }


def _state(name: str) -> Any:
    from lightning_hpt.trial import TrialState

    return TrialState(name)


# ------------------------------------------------------------------ Optuna


def optuna_fill(storage: Any, study_id: int, trials: list[dict[str, Any]]) -> None:
    import optuna
    import sqlalchemy as sa
    from optuna.distributions import CategoricalDistribution, FloatDistribution, distribution_to_json
    from optuna.storages._rdb import models

    dists = {k: FloatDistribution(*b, log=k in ("lr", "wd")) for k, b in PARAMS.items()}
    dists |= {k: CategoricalDistribution(c) for k, c in CHOICES.items()}
    dj = {k: distribution_to_json(d) for k, d in dists.items()}
    start = datetime.datetime.now()
    TS, VT = optuna.trial.TrialState, models.TrialValueModel.TrialValueType
    IVT = models.TrialIntermediateValueModel.TrialIntermediateValueType
    with storage.engine.begin() as conn:
        rows = [
            {
                "number": t["number"],
                "study_id": study_id,
                "state": TS.COMPLETE if t["complete"] else TS.PRUNED,
                "datetime_start": start,
                "datetime_complete": start,
            }
            for t in trials
        ]
        for i in range(0, len(rows), 5000):
            conn.execute(sa.insert(models.TrialModel.__table__), rows[i : i + 5000])
        T = models.TrialModel.__table__
        ids = dict(conn.execute(sa.select(T.c.number, T.c.trial_id).where(T.c.study_id == study_id)).all())
        params, values, inter = [], [], []
        for t in trials:
            tid = ids[t["number"]]
            for k, v in t["params"].items():
                internal = dists[k].to_internal_repr(v)
                params.append({"trial_id": tid, "param_name": k, "param_value": internal, "distribution_json": dj[k]})
            values.append({"trial_id": tid, "objective": 0, "value": min(t["curve"].values()), "value_type": VT.FINITE})
            for s, v in t["curve"].items():
                inter.append(
                    {"trial_id": tid, "step": s, "intermediate_value": v, "intermediate_value_type": IVT.FINITE}
                )
        for table, data in (
            (models.TrialParamModel, params),
            (models.TrialValueModel, values),
            (models.TrialIntermediateValueModel, inter),
        ):
            for i in range(0, len(data), 20000):
                conn.execute(sa.insert(table.__table__), data[i : i + 20000])


def optuna_measure(url: str, trials: list[dict[str, Any]], steps: int, repeats: int) -> dict[str, Any]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rdb = optuna.storages.RDBStorage(url)
    pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3, min_early_stopping_rate=0)
    study = optuna.create_study(
        study_name="scale", storage=rdb, pruner=pruner, sampler=optuna.samplers.RandomSampler(seed=0)
    )
    optuna_fill(rdb, study._study_id, trials)
    dists = {k: optuna.distributions.FloatDistribution(*b, log=k in ("lr", "wd")) for k, b in PARAMS.items()}
    dists |= {k: optuna.distributions.CategoricalDistribution(c) for k, c in CHOICES.items()}
    study.trials  # noqa: B018 - the cache reads the filled trials once, as a resumed study would
    rng = random.Random(1)
    reports, rung_reports, proposals = [], [], []
    for i in range(repeats + 1):  # the first trial warms up, as on the other side
        t0 = time.perf_counter()
        trial = study.ask(dists)
        if i:
            proposals.append(time.perf_counter() - t0)
        for step in range(REPORTS):
            t0 = time.perf_counter()
            trial.report(rng.uniform(0.3, 0.6), step)
            trial.should_prune()
            dt = time.perf_counter() - t0
            if i:
                reports.append(dt)
                rung_reports += [dt] if step in (0, 2, 8) else []
        study.tell(trial, 0.3)
    return {
        "report_ms": 1e3 * statistics.median(reports),
        "rung_report_ms": 1e3 * statistics.median(rung_reports),
        "propose_ms": 1e3 * statistics.median(proposals),
        "driver_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


# ------------------------------------------------------------------ one (database, size) per process


@contextlib.contextmanager
def database(kind: str, pg_url: str | None, tag: str):
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite:///{tmp}/{tag}.db"
        return
    import sqlalchemy as sa

    admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    name = f"hpt_scale_{tag}_{os.getpid()}"
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.make_url(pg_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def one(kind: str, n: int, steps: int, repeats: int, pg_url: str | None, which: str) -> dict[str, Any]:
    trials = make_trials(n, steps)
    with database(kind, pg_url, f"{which}_{n}") as url:
        result = (
            hpt_measure(url, trials, steps, repeats) if which == "hpt" else optuna_measure(url, trials, steps, repeats)
        )
    return result


def child(args: argparse.Namespace, kind: str, n: int, which: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--one", kind, str(n), which, "--steps", str(args.steps)]
    cmd += ["--repeats", str(args.repeats)] + (["--postgres", args.postgres] if args.postgres else [])
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"{which} {kind} {n}: failed")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="100,1000,10000", help="study sizes, comma-separated (50000 takes a while)")
    p.add_argument("--steps", type=int, default=30, help="validation runs of a complete trial")
    p.add_argument("--repeats", type=int, default=5, help="trials measured per size (10 reports each), after one more")
    p.add_argument("--postgres", default=os.environ.get("HPT_TEST_POSTGRES_URL"), help="a PostgreSQL server URL")
    p.add_argument("--no-optuna", action="store_true", help="measure lightning-hpt only")
    p.add_argument("--one", nargs=3, metavar=("KIND", "N", "WHICH"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        kind, n, which = args.one
        print(json.dumps(one(kind, int(n), args.steps, args.repeats, args.postgres, which)))
        return
    print(describe())
    kinds = ["sqlite"] + (["postgresql"] if args.postgres else [])
    head = (
        "| database | trials | report ms (median / at a rung) | Optuna report ms | propose ms | Optuna ask ms"
        " | show s | HTML report s | export s | driver RSS MB | Optuna RSS MB |"
    )
    print(head)
    print("| --- " * (head.count("|") - 1) + "|")
    for kind in kinds:
        for n in (int(s) for s in args.sizes.split(",")):
            h = child(args, kind, n, "hpt")
            o = {} if args.no_optuna else child(args, kind, n, "optuna")

            def f(d: dict[str, Any], k: str, fmt: str = ".1f") -> str:
                return format(d[k], fmt) if k in d else "-"

            print(
                f"| {kind} | {n:,} | {h['report_ms']:.1f} / {h['rung_report_ms']:.1f} |"
                f" {f(o, 'report_ms')} / {f(o, 'rung_report_ms')} | {h['propose_ms']:.1f} | {f(o, 'propose_ms')} |"
                f" {h['show_s']:.2f} | {h['html_s']:.2f} | {h['export_s']:.2f} | {h['driver_mb']:.0f} |"
                f" {f(o, 'driver_mb', '.0f')} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
