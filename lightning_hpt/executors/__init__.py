"""Where trials run: in-process (default), worker processes, Ray."""

from __future__ import annotations

from typing import Any

from lightning_hpt.executors.base import Executor
from lightning_hpt.executors.local import LocalExecutor
from lightning_hpt.executors.process import ProcessExecutor
from lightning_hpt.registry import Registry

__all__ = ["EXECUTORS", "Executor", "LocalExecutor", "ProcessExecutor", "RayExecutor"]

#: the executors reachable by name (the CLI's ``search.executor``).
EXECUTORS: Registry[Executor] = Registry("executor", Executor)
EXECUTORS.register("local", LocalExecutor)
EXECUTORS.register("process", ProcessExecutor)
EXECUTORS.register("ray", "lightning_hpt.executors.ray:RayExecutor")  # Ray is an extra: imported when used


def __getattr__(name: str) -> Any:  # Ray is an extra: imported only when RayExecutor is asked for
    if name == "RayExecutor":
        from lightning_hpt.executors.ray import RayExecutor

        return RayExecutor
    raise AttributeError(f"module 'lightning_hpt.executors' has no attribute {name!r}")
