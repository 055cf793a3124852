"""How a ProcessExecutor divides the machine: one slot per trial at once, each with its GPUs and threads."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass

from lightning_hpt.exceptions import ConfigurationError


@dataclass(frozen=True)
class Slot:
    """One worker at a time: the GPUs it sees and its torch threads."""

    index: int
    gpus: str | None  # CUDA_VISIBLE_DEVICES of its worker; None on CPU
    threads: int


def _usable_cores() -> int:
    with contextlib.suppress(AttributeError, OSError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _visible_gpus() -> list[str]:
    """The GPUs this process may use, as names for ``CUDA_VISIBLE_DEVICES``; counted without starting CUDA."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # no CUDA build, no driver
        return []


def plan_slots(
    workers: int | None, devices: Sequence[int] | None, per_trial: int, per_gpu: int, threads: int | None
) -> list[Slot]:
    """The worker slots of a ProcessExecutor: each one's GPUs and torch threads (arguments as its own)."""
    visible = _visible_gpus()
    if devices is None:
        chosen = visible
    else:
        if isinstance(devices, (str, int)) or any(
            isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in devices
        ):
            raise ConfigurationError(
                "ProcessExecutor: devices must be a list of GPU indices such as [0, 1], or [] for CPU only;"
                f" got devices={devices!r}"
            )
        bad = [d for d in devices if d >= len(visible)]
        if bad:
            raise ConfigurationError(
                f"ProcessExecutor: devices={list(devices)} names GPUs {bad}, but {len(visible)} are visible"
                f" (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}); use indices below {len(visible)}"
            )
        chosen = [visible[d] for d in devices]
    groups: list[str] = []
    if chosen:
        if len(chosen) % per_trial:
            raise ConfigurationError(
                f"ProcessExecutor: gpus_per_trial={per_trial} must divide the {len(chosen)} GPUs used ({chosen});"
                " choose devices= accordingly"
            )
        groups = [",".join(chosen[i : i + per_trial]) for i in range(0, len(chosen), per_trial)] * per_gpu
        groups.sort(key=lambda g: chosen.index(g.split(",")[0]))  # a GPU's trials side by side
        n = workers or len(groups)
        if n > len(groups):
            raise ConfigurationError(
                f"ProcessExecutor: workers={n} exceeds the {len(groups)} GPU slots ({len(chosen)} GPUs,"
                f" gpus_per_trial={per_trial}, trials_per_gpu={per_gpu}); raise trials_per_gpu or lower workers"
            )
        groups = groups[:n]
    else:
        n = workers or _usable_cores()
    cores = _usable_cores()
    each = threads or max(1, cores // n)
    return [Slot(i, groups[i] if groups else None, each) for i in range(n)]
