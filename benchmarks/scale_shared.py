"""Many drivers on one PostgreSQL study: how long a report waits for the driver's answer.

    nice -n 19 python benchmarks/scale_shared.py --postgres URL [--drivers 8] [--workers 4] [--seconds 60]

Each driver is a process with one storage and one lock for its reports, as a search's driver has;
each of its workers is a thread that plays a trial: one validation value every ``--epoch``
seconds, handed to the driver's reporter (store the value, read the history, ask successive
halving), then the next trial when it is pruned or done. No model is trained: what is measured is
the driver's side only. The study starts with ``--prefill`` finished trials (bulk inserts). The
wait of a report runs from the moment the value is ready to the driver's answer, the lock wait
included. Prints the median, 90th percentile and maximum wait over every report.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import os
import random
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _env import describe
from scale import database, hpt_fill, hpt_space, make_trials

STEPS = 30


def driver(url: str, workers: int, seconds: float, epoch: float, seed: int, out: multiprocessing.Queue) -> None:
    from lightning_hpt.pruners import StepIndex, SuccessiveHalvingPruner
    from lightning_hpt.reporting import StudyReporter
    from lightning_hpt.storage import SQLStorage
    from lightning_hpt.trial import TrialState

    storage = SQLStorage(url, lock_timeout=120)
    pruner = SuccessiveHalvingPruner()
    read = functools.partial(storage.history, "scale", STEPS, StepIndex)  # what the search's reader does
    lock = threading.Lock()  # the driver answers one report at a time
    waits: list[float] = []
    deadline = time.monotonic() + seconds

    def worker(k: int) -> None:
        rng = random.Random(seed * 100 + k)
        time.sleep(rng.uniform(0, epoch))  # workers out of step, as real ones are
        while time.monotonic() < deadline:
            with lock:
                rec = storage.create_trial("scale", {"lr": rng.uniform(1e-4, 0.1)})
                reporter = StudyReporter(storage, "scale", pruner, read, rec.number)
            base, pruned = rng.uniform(0.5, 1.0), False
            for step in range(STEPS):
                time.sleep(epoch)
                ready = time.perf_counter()
                with lock:
                    pruned = reporter.report(step, base * (1 - 0.3 * step / STEPS) + rng.gauss(0, 0.01))
                waits.append(time.perf_counter() - ready)
                if pruned or time.monotonic() >= deadline:
                    break
            with lock:
                state = TrialState.PRUNED if pruned else TrialState.COMPLETE
                storage.finish_trial("scale", rec.number, state=state, value=base)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put(waits)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--postgres", default=os.environ.get("HPT_TEST_POSTGRES_URL"), help="a PostgreSQL server URL")
    p.add_argument("--drivers", type=int, default=8)
    p.add_argument("--workers", type=int, default=4, help="trials at a time per driver")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--epoch", type=float, default=1.0, help="seconds between two values of a trial")
    p.add_argument("--prefill", type=int, default=1000, help="finished trials in the study at the start")
    args = p.parse_args()
    if not args.postgres:
        raise SystemExit("give --postgres URL (or set HPT_TEST_POSTGRES_URL): this measures a shared server study")
    from lightning_hpt.storage import SQLStorage, StudyInfo
    from lightning_hpt.trial import Direction

    print(describe())
    with database("postgresql", args.postgres, "shared") as url:
        storage = SQLStorage(url)
        storage.open_study(StudyInfo("scale", hpt_space(), Direction.MINIMIZE, "val_loss", "random", seed=0))
        hpt_fill(storage, "scale", make_trials(args.prefill, STEPS))
        storage.close()
        ctx = multiprocessing.get_context("spawn")
        out = ctx.Queue()
        procs = [
            ctx.Process(target=driver, args=(url, args.workers, args.seconds, args.epoch, i, out))
            for i in range(args.drivers)
        ]
        for proc in procs:
            proc.start()
        waits = [w for _ in procs for w in out.get()]
        for proc in procs:
            proc.join()
        total = len(SQLStorage(url).trials("scale"))
    waits.sort()
    ms = [1e3 * w for w in (statistics.median(waits), waits[int(0.9 * (len(waits) - 1))], waits[-1])]
    print(
        f"{args.drivers} drivers x {args.workers} workers, {args.epoch:g} s epochs, {args.seconds:g} s,"
        f" {args.prefill:,} trials at the start, {total:,} at the end: {len(waits):,} reports;"
        f" wait median {ms[0]:.1f} ms, p90 {ms[1]:.1f} ms, max {ms[2]:.1f} ms"
    )


if __name__ == "__main__":
    main()
