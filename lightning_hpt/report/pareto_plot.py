"""The Pareto plot of a study with several objectives: every trial's values, the front drawn as a staircase."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from lightning_hpt.objectives import Objective
from lightning_hpt.pareto import pareto_front
from lightning_hpt.report.plots import _BEST, _COLORS, _empty, _figure
from lightning_hpt.trial import TrialRecord, TrialState

__all__ = ["plot_pareto"]


def plot_pareto(trials: Sequence[TrialRecord], objectives: Sequence[Objective], *, x: int = 0, y: int = 1) -> Any:
    """Objective ``y`` against objective ``x`` for every COMPLETE trial; the Pareto front highlighted.

    The front is the one over every objective (with more than two, a front trial may look dominated
    in this projection). Infeasible trials (they broke an outcome constraint) are grey crosses;
    each front trial is labelled with its number.

    Args:
        trials: the study's trials.
        objectives: every objective of the study (two or more).
        x, y: the objectives on the axes, by position.
    """
    fig = _figure(6.5, 5.0)
    ax = fig.add_subplot()
    done = [t for t in trials if t.state is TrialState.COMPLETE and t.values is not None]
    points = [(t, t.values[x], t.values[y]) for t in done if math.isfinite(t.values[x]) and math.isfinite(t.values[y])]
    if not points:
        return _empty(fig, ax, "no COMPLETE trial yet")
    front = {t.number for t in pareto_front(trials, objectives)}
    for label, keep, style in (
        ("dominated", lambda t: t.feasible and t.number not in front, {"color": _COLORS[TrialState.COMPLETE]}),
        ("infeasible", lambda t: not t.feasible, {"color": "#9e9e9e", "marker": "x"}),
        ("Pareto front", lambda t: t.number in front, {"color": _BEST, "s": 48, "edgecolors": "black"}),
    ):
        chosen = [(px, py) for t, px, py in points if keep(t)]
        if chosen:
            xs, ys = zip(*chosen, strict=True)
            ax.scatter(xs, ys, label=label, zorder=3, **{"s": 28, **style})
    stairs = sorted((px, py) for t, px, py in points if t.number in front)
    if len(stairs) > 1:
        ax.step(*zip(*stairs, strict=True), where="post", color=_BEST, alpha=0.6, zorder=2)
    for t, px, py in points:
        if t.number in front:
            ax.annotate(f"#{t.number}", (px, py), textcoords="offset points", xytext=(4, 4), fontsize="x-small")
    ax.set_xlabel(f"{objectives[x].name} ({'lower' if objectives[x].direction.value == 'min' else 'higher'} is better)")
    ax.set_ylabel(f"{objectives[y].name} ({'lower' if objectives[y].direction.value == 'min' else 'higher'} is better)")
    ax.set_title(f"Pareto front ({len(front)} of {len(done)} COMPLETE trials)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return fig
