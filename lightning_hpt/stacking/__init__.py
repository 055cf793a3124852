"""Stacked trials: train many small trials that share an architecture as one model (opt-in).

``HyperparameterSearch(..., executor=StackedExecutor(stack=16))`` trains up to 16 trials at once; see
:class:`StackedExecutor` for what may differ inside a group and what is refused.
"""

from __future__ import annotations

from lightning_hpt.stacking.executor import StackedExecutor
from lightning_hpt.stacking.group import run_jobs
from lightning_hpt.stacking.grouping import PER_MEMBER, StackingRefused, group_key, refusal, signature

__all__ = ["PER_MEMBER", "StackedExecutor", "StackingRefused", "group_key", "refusal", "run_jobs", "signature"]
