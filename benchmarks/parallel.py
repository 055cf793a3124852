"""Trials per minute on the digits task: in-process vs ProcessExecutor (2 workers) vs RayExecutor (2 CPUs).

    python benchmarks/parallel.py [--trials 24] [--epochs 4] [--modes local,process,ray] [--repeats 3]

Every mode runs the same seeded random search (same configurations, same epochs), each trial on one
torch thread. "Search" is the wall time of ``search.run()`` including starting the workers (or Ray);
"steady" first runs one untimed trial in every worker (imports, first Trainer) and times the trials alone.
The machine is shared: the modes run in interleaved rounds and medians are reported, so that a busy
moment does not favour one mode.
To tell what the machine allowed, each round first times a plain torch loop in one process, then
in two at once ("raw scaling": 2.0x on idle cores). Each row also splits the CPU time of the
driver and every process it started (Linux's /proc): the trials' workers, the driver, and the rest
(Ray's daemons and report actor), which the machine's noise does not change the way it changes
wall time. Prints the figures; writes nothing else.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _env import describe
from digits import SPACE, DigitsDataModule, DigitsMLP

from lightning_hpt import HyperparameterSearch
from lightning_hpt.executors import LocalExecutor, ProcessExecutor

_SPIN = (
    "import time,torch;torch.set_num_threads(1);x=torch.randn(256,256);t=time.perf_counter()\n"
    "for _ in range(3000): x@x\nprint(time.perf_counter()-t)"
)


def raw_scaling() -> float:
    """Throughput of two single-threaded torch processes at once relative to one: what parallelism the CPUs give now."""

    def spin(n: int) -> float:
        procs = [subprocess.Popen([sys.executable, "-c", _SPIN], stdout=subprocess.PIPE, text=True) for _ in range(n)]
        return max(float(p.communicate()[0]) for p in procs)

    one = spin(1)
    return 2 * one / spin(2)


def cpu_seconds() -> dict[int, tuple[str, float]]:
    """CPU seconds so far of this process and its descendants: ``{pid: (command line, seconds)}`` ({} without /proc)."""
    tick, procs = os.sysconf("SC_CLK_TCK"), {}
    for pid in filter(str.isdigit, os.listdir("/proc") if os.path.isdir("/proc") else []):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # ended meanwhile
            continue
        procs[int(pid)] = (int(fields[1]), cmd, (int(fields[11]) + int(fields[12])) / tick)  # ppid, cmd, utime + stime
    ours, grew = {os.getpid()}, True
    while grew:
        grew = False
        for pid, (ppid, _, _) in procs.items():
            if ppid in ours and pid not in ours:
                ours.add(pid)
                grew = True
    return {pid: procs[pid][1:] for pid in ours if pid in procs}


def cpu_split(before: dict, after: dict) -> dict[str, float]:
    """CPU seconds spent between two :func:`cpu_seconds` snapshots: by the trials' workers, the driver, the rest."""
    out = {"trials": 0.0, "driver": 0.0, "other": 0.0}
    for pid, (cmd, secs) in after.items():
        used = secs - before.get(pid, ("", 0.0))[1]
        worker = "lightning_hpt.executors.worker" in cmd or cmd.startswith(("ray::IDLE", "ray::_run_remote"))
        out["driver" if pid == os.getpid() else "trials" if worker else "other"] += used
    return out


def executor(mode: str):
    if mode == "local":
        return LocalExecutor()
    if mode == "process":
        return ProcessExecutor(workers=2, devices=[], threads_per_worker=1)
    from lightning_hpt.executors import RayExecutor

    return RayExecutor({"cpu": 1}, init_kwargs={"num_cpus": 2, "log_to_driver": False})


def search(ex, trials: int, epochs: int, root: str, study: str, seed: int = 0) -> HyperparameterSearch:
    space = {k: v for k, v in SPACE.items() if k != "trainer.max_epochs"}
    return HyperparameterSearch(
        DigitsMLP,
        DigitsDataModule,
        space,
        monitor="val_acc",
        mode="max",
        n_trials=trials,
        seed=seed,
        root=root,
        study_name=study,
        patience=None,
        executor=ex,
        verbose=False,
        trainer_kwargs={"accelerator": "cpu", "devices": 1, "max_epochs": epochs, "log_every_n_steps": 5},
    )


def measure(mode: str, trials: int, epochs: int, root: str, steady: bool, tag: str = "") -> dict:
    ex = executor(mode)
    if steady:
        search(ex, ex.max_concurrency if mode != "ray" else 2, 1, root, f"{mode}_warmup{tag}", seed=1).run()
    s = search(ex, trials, epochs, root, f"{mode}_{'steady' if steady else 'cold'}{tag}")
    before = cpu_seconds()
    t0 = time.perf_counter()
    result = s.run()
    wall = time.perf_counter() - t0
    cpu = cpu_split(before, cpu_seconds())
    ex.shutdown()
    done = [t for t in result.trials if t.duration is not None]
    assert len(result.trials) == trials and all(t.state.value == "COMPLETE" for t in result.trials), result
    return {
        "wall": wall,
        "per_min": 60 * trials / wall,
        "trial_s": statistics.mean(t.duration for t in done),
        "cpu": cpu,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=24)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--modes", default="local,process,ray")
    p.add_argument("--repeats", type=int, default=3, help="rounds of every mode, interleaved; medians are reported")
    args = p.parse_args()
    torch.set_num_threads(1)  # the in-process trials: one thread, like each worker's
    print(describe())
    print(f"{args.trials} digits trials of {args.epochs} epochs, one torch thread each, {args.repeats} rounds\n")
    root = tempfile.mkdtemp(prefix="hpt-parallel-")
    rows: dict[tuple[str, bool], list[float]] = {}
    try:
        for round_ in range(args.repeats):
            print(
                f"round {round_ + 1}: raw scaling of 2 torch processes now {raw_scaling():.2f}x,"
                f" load {os.getloadavg()[0]:.1f}"
            )
            for mode in args.modes.split(","):
                for steady in (False, True):
                    if mode == "local" and steady:
                        continue  # nothing to start
                    r = measure(mode, args.trials, args.epochs, root, steady, f"r{round_}")
                    rows.setdefault((mode, steady), []).append(r["per_min"])
                    label = f"{mode}{' (steady)' if steady else ''}"
                    cpu = ", ".join(f"{k} {v:.1f}" for k, v in r["cpu"].items())
                    print(
                        f"  {label:18s} {r['wall']:7.1f} s  {r['per_min']:6.1f} trials/min"
                        f"  mean trial {r['trial_s']:.2f} s"
                        f"  load {os.getloadavg()[0]:.1f}  CPU s: {cpu}",
                        flush=True,
                    )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    base = statistics.median(rows[("local", False)]) if ("local", False) in rows else None
    print("\n| mode | trials/min (median) | all rounds | vs in-process |\n| --- | --- | --- | --- |")
    for (mode, steady), values in rows.items():
        median = statistics.median(values)
        ratio = f"{median / base:.2f}x" if base else "-"
        label = f"{mode}{' (steady)' if steady else ''}"
        print(f"| {label} | {median:.1f} | {', '.join(f'{v:.1f}' for v in values)} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
