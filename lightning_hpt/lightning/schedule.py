"""How many validation runs (the search's steps) a Trainer makes per epoch."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["validation_schedule"]


def validation_schedule(trainer_kwargs: Mapping[str, Any]) -> tuple[int, int] | None:
    """``(every, per_epoch)``: validation runs every ``every`` epochs, ``per_epoch`` times in such an epoch.

    ``val_check_interval=x`` (a float in (0, 1]) validates after each fraction ``x`` of the training
    epoch, so at ``x, 2x, ...`` up to the end: ``floor(1 / x)`` runs (0.25 -> 4, 0.3 -> 3: at 30%, 60%
    and 90%, not at the end of the epoch). Lightning counts it in batches (every ``int(n * x)``
    batches of ``n``), so a small epoch may validate once more; ``floor(1 / x)`` is the count its
    documentation promises and what a large epoch gets.

    Returns:
        ``None`` when ``val_check_interval`` is a number of batches (the count per epoch then
        depends on the data) or ``check_val_every_n_epoch`` is not an integer.
    """
    every = trainer_kwargs.get("check_val_every_n_epoch", 1) or 1
    interval = trainer_kwargs.get("val_check_interval", 1.0)
    if not isinstance(every, int) or isinstance(every, bool):
        return None
    if isinstance(interval, int) and not isinstance(interval, bool) and interval > 1:
        return None  # every k batches
    per_epoch = math.floor(1 / interval + 1e-9) if isinstance(interval, float) and 0 < interval < 1 else 1
    return max(1, every), max(1, per_epoch)
