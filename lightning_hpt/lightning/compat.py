"""What the package must know about Lightning that Lightning's public API does not say.

Every check here reads a class *name* instead of testing ``isinstance`` against a Lightning
class, each for a reason given beside it. They live in this one module so that a Lightning
release that renames one breaks one place, and its test.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

__all__ = [
    "PROCESS_KEYS",
    "is_interrupt_exit",
    "is_lightning_class",
    "is_lightning_cli",
    "is_misconfiguration",
    "is_tensorboard_logger",
    "launches_subprocesses",
]

# Why names and not isinstance: the same Lightning class exists twice, as ``lightning.pytorch.X`` (and
# ``lightning.fabric.X``) and as ``pytorch_lightning.X`` (``lightning_fabric.X``), and users may pass
# either flavour. Testing the name (and the top-level package) covers both without importing a
# flavour the user does not have.
_FLAVOURS = ("lightning", "pytorch_lightning", "lightning_fabric")


def _named(cls: type, name: str) -> bool:
    return any(
        getattr(base, "__name__", None) == name and base.__module__.split(".")[0] in _FLAVOURS
        for base in inspect.getmro(cls)
    )


def is_lightning_class(obj: Any, name: str) -> bool:
    """Whether ``obj`` is a subclass of Lightning's ``name`` (``"LightningModule"``, ...), in either flavour."""
    return inspect.isclass(obj) and _named(obj, name)


def is_lightning_cli(cls: type) -> bool:
    """Whether ``cls`` is a ``LightningCLI`` (either flavour's)."""
    return is_lightning_class(cls, "LightningCLI")


def is_interrupt_exit(error: BaseException) -> bool:
    """Whether Lightning raised ``error`` because the process got SIGTERM (``SIGTERMException``).

    Lightning's signal connector turns SIGTERM into this exception (a ``SystemExit`` subclass in 2.x)
    in either flavour's own class.
    """
    return _named(type(error), "SIGTERMException")


def is_misconfiguration(error: BaseException) -> bool:
    """Whether ``error`` is Lightning's ``MisconfigurationException`` (every trial would fail the same way)."""
    return _named(type(error), "MisconfigurationException")


def is_tensorboard_logger(logger: Any) -> bool:
    """Whether ``logger`` is Lightning's ``TensorBoardLogger`` (either flavour's)."""
    return _named(type(logger), "TensorBoardLogger")


#: Trainer arguments that decide how many processes a Trainer starts.
PROCESS_KEYS = frozenset({"strategy", "devices", "num_nodes", "accelerator"})

#: Trainer arguments a throwaway Trainer is built without: they are objects with side effects
#: (loggers create directories, callbacks hold state) and do not decide how ranks start.
_NOT_FOR_PROBING = ("callbacks", "logger", "plugins")


def launches_subprocesses(pl: Any, trainer_kwargs: Mapping[str, Any]) -> bool:
    """Whether a Trainer built with ``trainer_kwargs`` starts its extra ranks by re-running the current command.

    That is right in a worker process (the command is the worker, given the same trial) and wrong in
    a user's script (it would run the whole search again on every rank). Decided by building a
    throwaway Trainer (it starts nothing) and looking at its strategy's launcher.

    Args:
        pl: the Lightning package (``lightning.pytorch`` or ``pytorch_lightning``).
        trainer_kwargs: the Trainer arguments the trial really uses.
    """
    from lightning_hpt.lightning.quiet import quiet_lightning

    kwargs = {k: v for k, v in trainer_kwargs.items() if k not in _NOT_FOR_PROBING}
    strategy = kwargs.get("strategy", "auto")
    if strategy == "auto" and kwargs.get("devices", "auto") in (1, "1", [0]) and kwargs.get("num_nodes", 1) == 1:
        return False
    try:
        with quiet_lightning(True):
            quiet = {"enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False}
            trainer = pl.Trainer(logger=False, **{**quiet, **kwargs})
    except Exception:  # e.g. accelerator="gpu" on a driver without one: judge from the arguments
        text = str(strategy).lower()
        many = kwargs.get("devices", "auto") not in (1, "1") or kwargs.get("num_nodes", 1) != 1
        return (
            many
            and any(s in text for s in ("ddp", "fsdp", "deepspeed"))
            and not any(s in text for s in ("spawn", "fork", "notebook"))
        )
    launcher = getattr(trainer.strategy, "launcher", None)
    environment = getattr(trainer.strategy, "cluster_environment", None)
    external = bool(environment is not None and environment.creates_processes_externally)
    # The launcher class is private to Lightning (``_SubprocessScriptLauncher``) and has no public flag
    # saying "re-runs the command"; its name is the only way to tell it from the spawn/fork launchers.
    return type(launcher).__name__ == "_SubprocessScriptLauncher" and not external
