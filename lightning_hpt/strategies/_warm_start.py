"""The warm-start results of :class:`~lightning_hpt.strategies.bayesian.BayesianStrategy`, checked."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from lightning_hpt.exceptions import ConfigurationError
from lightning_hpt.trial import TrialRecord, TrialState

__all__ = ["warm_start_pairs"]


def warm_start_pairs(
    warm_start: Sequence[TrialRecord | tuple[Mapping[str, Any], float]] | None,
) -> list[tuple[dict[str, Any], float]]:
    """Normalize warm-start results to ``(params, value)`` pairs with finite values."""
    if warm_start is None:
        return []
    if isinstance(warm_start, (str, bytes, Mapping)) or not isinstance(warm_start, Sequence):
        raise ConfigurationError(
            f"warm_start must be a list of TrialRecord or (params, value) pairs, got {type(warm_start).__name__}"
        )
    out: list[tuple[dict[str, Any], float]] = []
    for i, item in enumerate(warm_start):
        if isinstance(item, TrialRecord):
            if item.state is TrialState.COMPLETE and item.value is not None and math.isfinite(item.value):
                out.append((dict(item.params), float(item.value)))
            continue
        if (
            isinstance(item, tuple)
            and len(item) == 2
            and isinstance(item[0], Mapping)
            and isinstance(item[1], (int, float))
            and not isinstance(item[1], bool)
        ):
            if math.isfinite(item[1]):
                out.append((dict(item[0]), float(item[1])))
            continue
        raise ConfigurationError(
            f"warm_start[{i}] must be a TrialRecord or a (params, value) pair such as ({{'model.lr': 0.01}}, 0.93),"
            f" got {item!r}"
        )
    return out
