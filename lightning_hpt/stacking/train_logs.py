"""What a stacked group's members log in ``training_step``, named and reduced over the epoch as Lightning does.

A member's ``self.log(name, value, on_step=..., on_epoch=..., reduce_fx=...)`` in ``training_step`` is
captured under ``vmap`` once a step for all members. An ordinary trial's logs then hold, per name:

- ``on_step`` only (``training_step``'s default): the step's value, under ``name``;
- ``on_epoch`` only: the epoch's reduction (a mean weighted by batch size by default, or ``"sum"``,
  ``"max"``, ``"min"``), under ``name``;
- both: ``name_step`` and ``name_epoch``, and at the end of the trial ``name`` is the epoch's value.

:class:`TrainLogs` keeps the same for each member: the last step's values (what a monitor reads at a
validation run, as Lightning's ``callback_metrics`` holds them then) and the epoch's reductions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_hpt.stacking.grouping import StackingRefused

__all__ = ["TrainLogs"]

_REDUCE = {"mean": "mean", "avg": "mean", "sum": "sum", "max": "max", "amax": "max", "min": "min", "amin": "min"}


def _reduction(name: str, kwargs: Mapping[str, Any]) -> str:
    fx = kwargs.get("reduce_fx", "mean")
    key = fx if isinstance(fx, str) else getattr(fx, "__name__", "")
    if key not in _REDUCE:
        raise StackingRefused(
            f"training_step logs {name!r} with reduce_fx={fx!r}; a stacked group reduces a logged value over"
            " the epoch with 'mean', 'sum', 'max' or 'min' only"
        )
    return _REDUCE[key]


def _forks(on_step: bool, on_epoch: bool) -> tuple[str, str]:
    """The suffixes under which a value is logged per step and per epoch (``""``: its own name; ``"-"``: not)."""
    if on_step and on_epoch:
        return "_step", "_epoch"
    return ("", "-") if on_step else ("-", "")


class TrainLogs:
    """Each member's ``training_step`` logs: the last step's values and the running epoch's reductions.

    Args:
        size: the number of members.
    """

    def __init__(self, size: int) -> None:
        self.last: list[dict[str, Tensor]] = [{} for _ in range(size)]
        self._size = size
        self._kwargs: dict[str, Mapping[str, Any]] = {}
        self._acc: dict[str, tuple[str, Tensor, Tensor]] = {}  # name -> (reduction, value [K], weight [K])

    def start_epoch(self) -> None:
        """Forget the epoch's reductions (the last step's values stay until they are replaced)."""
        self._acc = {}

    def add(
        self,
        logged: Mapping[str, Tensor],
        kwargs: Mapping[str, Mapping[str, Any]],
        active: Sequence[int],
        batch_size: Callable[[], int],
    ) -> None:
        """One step's values of the ``active`` members (``logged[name][j]``: member ``active[j]``'s).

        Args:
            logged: the vmapped values, one row per active member.
            kwargs: each name's ``self.log`` keyword arguments.
            active: the members that trained this step.
            batch_size: the step's batch size (called only for a name with ``on_epoch`` and no ``batch_size``).
        """
        self._kwargs.update(kwargs)
        for name, value in logged.items():
            rows = value.detach().reshape(len(active), -1).float().mean(1)
            for j, i in enumerate(active):
                self.last[i][name] = rows[j]
            kw = kwargs.get(name, {})
            if kw.get("on_epoch"):  # the members' index is made only for a value reduced over the epoch
                index = torch.tensor(list(active), dtype=torch.long, device=rows.device)
                self._accumulate(name, kw, rows, index, batch_size)

    def _accumulate(
        self, name: str, kw: Mapping[str, Any], rows: Tensor, index: Tensor, batch_size: Callable[[], int]
    ) -> None:
        how = _reduction(name, kw)
        if name not in self._acc:
            start = {"max": -torch.inf, "min": torch.inf}.get(how, 0.0)
            size, device = (self._size,), rows.device
            self._acc[name] = (how, torch.full(size, start, device=device), torch.zeros(size, device=device))
        _, acc, weight = self._acc[name]
        n = float(kw.get("batch_size") or batch_size()) if how == "mean" else 1.0
        if how == "max":
            acc[index] = torch.maximum(acc[index], rows)
        elif how == "min":
            acc[index] = torch.minimum(acc[index], rows)
        else:
            acc.index_add_(0, index, rows * n)
        weight.index_add_(0, index, torch.full((len(index),), n, device=rows.device))

    def monitored(self, i: int) -> dict[str, float]:
        """Member ``i``'s values as a validation run reads them: each name's last step's value."""
        return {k: float(v) for k, v in self.last[i].items()}

    def logged(self, i: int) -> tuple[dict[str, float], dict[str, float]]:
        """Member ``i``'s values at the end of its epoch: for its loggers, and as its final metrics."""
        shown: dict[str, float] = {}
        final: dict[str, float] = {}
        for name, value in self.monitored(i).items():
            kw = self._kwargs.get(name, {})
            step, epoch = _forks(kw.get("on_step") is not False, bool(kw.get("on_epoch")))
            if step != "-":
                shown[name + step] = final[name + step] = value
            reduced = self._reduced(name, i)
            if epoch != "-" and reduced is not None:
                shown[name + epoch] = final[name + epoch] = final[name] = reduced
        return shown, final

    def _reduced(self, name: str, i: int) -> float | None:
        if name not in self._acc or not float(self._acc[name][2][i]):
            return None
        how, acc, weight = self._acc[name]
        return float(acc[i] / weight[i]) if how == "mean" else float(acc[i])
