"""Where trials run: in-process (default), worker processes, Ray."""

from lightning_hpt.executors.base import Executor
from lightning_hpt.executors.local import LocalExecutor

__all__ = ["Executor", "LocalExecutor"]
