"""Machine and version facts printed with every benchmark's figures."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform


def describe() -> str:
    def v(name: str) -> str:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "-"

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores; Python {platform.python_version()}, torch {v('torch')}, "
        f"lightning {v('lightning')}, botorch {v('botorch')}, gpytorch {v('gpytorch')}, sqlalchemy {v('sqlalchemy')}"
    )


def quiet_single_thread() -> None:
    """One torch thread and no Lightning chatter or warnings: how every in-process benchmark trains."""
    import logging
    import warnings

    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)


def parse_seeds(text: str) -> list[int]:
    """``"0-4"`` or ``"0,3,5-7"`` as a list of seeds."""
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out
