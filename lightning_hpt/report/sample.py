"""Which trials a plot or a table of a large study shows: all of a small study, a fair sample of a big one.

A plot of tens of thousands of curves takes minutes to draw and shows nothing one can read; a
sample of a few thousand shows the same picture. The sample always keeps the best trials and the
running ones, and spreads the rest evenly over the trial numbers, so early and late trials are both
there. It depends on the trials alone (no random draw): the same study gives the same plots.
"""

from __future__ import annotations

from collections.abc import Sequence

from lightning_hpt.report.table import rank_trials
from lightning_hpt.trial import Direction, TrialRecord, TrialState

__all__ = ["MAX_CURVES", "MAX_PLOTTED", "MAX_ROWS", "plot_sample"]

#: the most trials a plot of the HTML report draws (the history plot draws them all).
MAX_PLOTTED = 1000
#: the most learning curves the HTML report draws (one line each: the slowest plot to draw), and the most
#: trials its parameter importance is fitted to (a Gaussian process: its cost grows with the cube of the trials).
MAX_CURVES = 300
#: the most rows of the HTML report's table of trials (best first).
MAX_ROWS = 2000


def plot_sample(
    trials: Sequence[TrialRecord], direction: Direction | str, limit: int = MAX_PLOTTED
) -> tuple[list[TrialRecord], str | None]:
    """At most ``limit`` trials, ordered by number, and a note saying what was left out (``None``: nothing).

    Kept: the best tenth of ``limit`` (best first as :func:`~.table.rank_trials` ranks them), every
    RUNNING trial while there is room, and an evenly spaced sample of the rest by trial number.
    """
    if len(trials) <= limit:
        return sorted(trials, key=lambda t: t.number), None
    ranked = rank_trials(trials, direction)
    keep = {t.number: t for t in ranked[: max(limit // 10, 1)]}
    for t in trials:
        if t.state is TrialState.RUNNING and len(keep) < limit // 5:
            keep[t.number] = t
    rest = [t for t in sorted(trials, key=lambda t: t.number) if t.number not in keep]
    room = limit - len(keep)
    stride = len(rest) / room
    keep.update((t.number, t) for t in (rest[int(i * stride)] for i in range(room)))
    note = (
        f"{len(keep):,} of the study's {len(trials):,} trials: the {max(limit // 10, 1):,} best, the running ones"
        " and an even sample of the rest by trial number"
    )
    return sorted(keep.values(), key=lambda t: t.number), note
