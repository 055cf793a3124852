"""The one-trial search of ``resume_search.py`` on a Ray cluster of this machine, whose worker node dies mid-trial.

Usage: python ray_node_search.py ROOT MAX_EPOCHS SLEEP_PER_STEP EPOCH_LOG KILL_EPOCH [unreachable]

Ray's own multi-node test utility (``ray.cluster_utils.Cluster``) starts a head node without CPUs
(the driver and the report channel live there) and worker node "a" with one CPU: the trial runs on
a. Once epoch KILL_EPOCH has started, node a is removed as a dead machine is (its raylet and
workers killed), then node "b" (one CPU) joins and Ray reruns the trial's task there
(``max_retries=1``): the head has no CPU, so b is the only place it can run. With ``unreachable``,
the trial's directory is removed between the two, which is what b sees when it does not share a's
filesystem. Prints ``RESULT <value> <attempt> <intermediate as JSON>`` as ``resume_search.py``.
"""

import os
import shutil
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from resume_search import make_search, print_result

HERE = os.path.dirname(os.path.abspath(__file__))
# Ray's health checks, fast: node a is found dead within about 2 s (the default takes 30 s or more)
HEALTH = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500, "health_check_failure_threshold": 3}


def _started(log: str, epoch: int) -> int | None:
    """The pid that started ``epoch``, once one has."""
    if not os.path.exists(log):
        return None
    with open(log) as f:
        pids = [int(p) for p, e in (line.split() for line in f if line.strip()) if int(e) == epoch]
    return pids[0] if pids else None


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def kill_node(cluster: object, node: object, log: str, epoch: int, trial_dir: str | None, search: object) -> None:
    """At ``epoch``, remove ``node``; remove ``trial_dir`` (if given) once its trial is gone; add a new node."""
    while (pid := _started(log, epoch)) is None:
        if not search.is_alive():
            raise SystemExit(f"the search ended before epoch {epoch}")
        time.sleep(0.05)
    time.sleep(0.2)  # mid-epoch
    cluster.remove_node(node, allow_graceful=False)
    while not _gone(pid):  # the trial's worker ends with its raylet
        time.sleep(0.05)
    print(f"NODE a REMOVED at epoch {epoch}; trial worker {pid} gone", flush=True)
    if trial_dir is not None:
        shutil.rmtree(trial_dir)
    cluster.add_node(num_cpus=1)
    print("NODE b ADDED", flush=True)


def main() -> None:
    import ray
    from ray.cluster_utils import Cluster

    from lightning_hpt import RayExecutor

    root, epochs, sleep, log, kill_epoch = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
    # the nodes' processes inherit this environment: the trial code's path and the model's settings
    paths = [os.path.dirname(os.path.dirname(HERE)), os.path.dirname(HERE), HERE, os.environ.get("PYTHONPATH", "")]
    os.environ.update(PYTHONPATH=os.pathsep.join(p for p in paths if p), HPT_STEP_SLEEP=sleep, HPT_EPOCH_LOG=log)
    head = {"num_cpus": 0, "include_dashboard": False, "_system_config": HEALTH}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    try:
        node_a = cluster.add_node(num_cpus=1)
        executor = RayExecutor({"cpu": 1}, address=cluster.address, max_retries=1)
        search = make_search(root, executor, epochs)
        # the search runs in a thread: Ray adds nodes only from the main thread
        trials: list[object] = []
        runner = threading.Thread(target=lambda: trials.extend(search.run().trials), daemon=True)
        runner.start()
        trial_dir = os.path.join(root, "default", "trial_0") if "unreachable" in sys.argv else None
        kill_node(cluster, node_a, log, kill_epoch, trial_dir, runner)
        runner.join()
        if not trials:
            raise SystemExit("the search failed")
        print_result(trials[0])
        executor.shutdown()  # before Ray goes: its report channel ends with it
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
