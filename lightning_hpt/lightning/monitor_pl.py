"""The trial monitor for ``pytorch_lightning`` trainers (the standalone package); imported only for them."""

from __future__ import annotations

import pytorch_lightning as pl

from lightning_hpt.lightning.monitor import MonitorLogic

__all__ = ["TrialMonitor"]


class TrialMonitor(MonitorLogic, pl.Callback):
    """The trial's monitor for ``pytorch_lightning`` trainers: the same logic as ``lightning.pytorch``'s."""
