"""A one-trial search whose epochs are logged, so that a test can kill it at epoch k and rerun it.

Usage: python resume_search.py ROOT EXECUTOR MAX_EPOCHS SLEEP_PER_STEP EPOCH_LOG [CV [noresume] [KEY=VALUE ...]]
EXECUTOR is ``local``, ``process``, ``ray`` or ``script`` (a ScriptSearch: the script's own loop and
``trainer.fit(..., ckpt_path=trial.ckpt_path)``); CV is a number of folds (0: none). Each training
epoch appends ``<pid> <epoch>`` to EPOCH_LOG. The finished trial is printed as
``RESULT <value> <attempt> <intermediate as JSON>``.

Options for a study shared by several drivers: ``host=NAME`` (this driver plays a machine of that
name: its trials are stored under it), ``stale_after=SECONDS``, ``storage=URL``, ``study=NAME``.
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


TRAINER = {
    "accelerator": "cpu",
    "devices": 1,
    "logger": False,
    "num_sanity_val_steps": 0,
    "enable_progress_bar": False,
}


def script_search(root: str, epochs: int) -> object:
    """The same trial through a ScriptSearch: the script builds, seeds and fits it itself."""
    import lightning.pytorch as L

    from lightning_hpt import Float, ScriptSearch

    search = ScriptSearch(
        space={"model.lr": Float(0.01, 0.2, log=True)},
        monitor="val_loss",
        root=root,
        n_trials=1,
        seed=0,
        resume="noresume" not in sys.argv,
    )
    for trial in search:
        L.seed_everything(0, verbose=False)
        model = factory({"model": trial.section("model")})
        trainer = L.Trainer(max_epochs=epochs, callbacks=[trial.callback()], default_root_dir=str(trial.dir), **TRAINER)
        trainer.fit(model, datamodule=TinyData(), ckpt_path=trial.ckpt_path)
    return search.trials[0]


def executor_named(name: str) -> object:
    if name == "ray":
        from lightning_hpt import RayExecutor

        # Ray reruns the task of a killed worker once, under the same number: it continues from the checkpoint
        return RayExecutor({"cpu": 1}, max_retries=1, init_kwargs={"num_cpus": 1, "log_to_driver": False})
    if name == "process":
        from lightning_hpt import ProcessExecutor

        return ProcessExecutor(1)
    return None


def make_search(root: str, executor: object, epochs: int, cv: int | None = None, **kwargs: object) -> object:
    """The one-trial search (``kwargs``: more of its arguments, e.g. ``resume``, ``storage``)."""
    from lightning_hpt import Float, HyperparameterSearch

    return HyperparameterSearch(
        factory,
        TinyData,
        {"model.lr": Float(0.01, 0.2, log=True)},
        root=root,
        n_trials=1,
        seed=0,
        patience=None,
        cv=cv,
        retry_failed=True,
        executor=executor,
        trainer_kwargs={**TRAINER, "max_epochs": epochs},
        verbose=False,
        **kwargs,
    )


def print_result(t: object) -> None:
    curve = json.dumps({str(k): v for k, v in t.intermediate.items()})
    print("RESULT", repr(t.value), t.attempt, curve, flush=True)


def main() -> None:
    options = dict(a.split("=", 1) for a in sys.argv[6:] if "=" in a)
    if "host" in options:  # this driver plays another machine (set before the package reads the host name)
        import socket

        socket.gethostname = lambda: options["host"]
    root, executor, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    os.environ["HPT_STEP_SLEEP"], os.environ["HPT_EPOCH_LOG"] = sys.argv[4], sys.argv[5]
    cv = int(sys.argv[6]) if len(sys.argv) > 6 and int(sys.argv[6]) > 1 else None
    if executor == "script":
        print_result(script_search(root, epochs))
        return
    shared = {"storage": options.get("storage"), "study_name": options.get("study", "default")}
    if "stale_after" in options:
        shared["stale_after"] = float(options["stale_after"])
    search = make_search(root, executor_named(executor), epochs, cv, resume="noresume" not in sys.argv, **shared)
    print_result(search.run().trials[0])


if __name__ == "__main__":
    main()
