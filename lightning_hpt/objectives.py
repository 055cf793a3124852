"""What a study optimizes: one metric, or several at once (each minimized or maximized).

A study with one objective is described by its ``monitor`` and ``direction`` alone, as it always
was. A study with several has a tuple of :class:`Objective`; the first one is its ``monitor`` and
``direction`` (what ``EarlyStopping`` and the kept checkpoint watch inside a trial, and the value
column of its trials), and every trial records the values of all of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lightning_hpt.exceptions import ConfigurationError
from lightning_hpt.trial import Direction

__all__ = ["Objective", "describe", "objectives_from_json", "objectives_to_json", "parse_objectives", "to_maximize"]


@dataclass(frozen=True)
class Objective:
    """One metric a study optimizes.

    Attributes:
        name: the metric as the trial logs it (``self.log(name, ...)`` in ``validation_step``).
        direction: whether it is minimized or maximized.
    """

    name: str
    direction: Direction

    def __str__(self) -> str:
        return f"{self.name} ({self.direction.value})"


def _names(monitor: Any) -> list[str]:
    if isinstance(monitor, str):
        names = [monitor]
    elif isinstance(monitor, Sequence) and not isinstance(monitor, (bytes, bytearray)):
        names = list(monitor)
    else:
        names = [monitor]
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ConfigurationError(
            "monitor must be the name of a logged metric such as 'val_loss', or a list of names such as"
            f" ['val_acc', 'val_latency_ms'] for several objectives, got monitor={monitor!r}"
        )
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigurationError(f"monitor names each objective once, but {twice} appear twice in monitor={monitor!r}")
    return names


def parse_objectives(monitor: Any, mode: Any) -> tuple[Objective, ...]:
    """The objectives of ``monitor=`` and ``mode=``: a name and ``"min"``/``"max"``, or lists of both.

    Raises:
        ConfigurationError: naming the argument, the rule and the fix.

    Example:
        >>> [str(o) for o in parse_objectives(["val_acc", "n_params"], ["max", "min"])]
        ['val_acc (max)', 'n_params (min)']
    """
    names = _names(monitor)
    if isinstance(mode, (str, Direction)):
        if len(names) > 1:
            raise ConfigurationError(
                f"mode must give one direction per objective of monitor={names}, got mode={mode!r};"
                f" write mode={['max' if i == 0 else 'min' for i in range(len(names))]} (one 'min' or 'max' each)"
            )
        modes = [mode]
    elif isinstance(mode, Sequence) and not isinstance(mode, (bytes, bytearray)):
        modes = list(mode)
    else:
        modes = [mode]
    if len(modes) != len(names):
        raise ConfigurationError(
            f"mode must give one direction per objective: monitor has {len(names)} ({names}) but mode has"
            f" {len(modes)} ({mode!r}); give a list of {len(names)} 'min'/'max'"
        )
    return tuple(
        Objective(n, _direction(m, i, n, len(names))) for i, (n, m) in enumerate(zip(names, modes, strict=True))
    )


def _direction(mode: Any, index: int, name: str, count: int) -> Direction:
    """``mode`` parsed; with several objectives an error names which one's mode is wrong."""
    try:
        return Direction.parse(mode)
    except ConfigurationError as e:
        if count == 1:
            raise
        raise ConfigurationError(f"mode[{index}] (for objective {name!r}): {e}") from None


def describe(objectives: Sequence[Objective]) -> str:
    """``"val_acc (max), n_params (min)"``."""
    return ", ".join(str(o) for o in objectives)


def objectives_to_json(objectives: Sequence[Objective]) -> list[list[str]]:
    """``[[name, "min"|"max"], ...]``: how the study's definition stores them."""
    return [[o.name, o.direction.value] for o in objectives]


def objectives_from_json(data: Any) -> tuple[Objective, ...]:
    """The objectives stored by :func:`objectives_to_json`."""
    return tuple(Objective(str(name), Direction(mode)) for name, mode in data or ())


def to_maximize(values: Sequence[float], objectives: Sequence[Objective]) -> list[float]:
    """``values`` with minimized objectives negated, so that larger is better in every coordinate.

    NaN and infinite values become ``-inf`` (the worst).
    """
    out = []
    for v, o in zip(values, objectives, strict=True):
        if v is None or not math.isfinite(v):
            out.append(-math.inf)
        else:
            out.append(float(v) if o.direction is Direction.MAXIMIZE else -float(v))
    return out
