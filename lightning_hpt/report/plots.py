"""Plots of a study: each function returns a matplotlib ``Figure``; :func:`save_figure` writes a PNG.

matplotlib is an optional extra (``pip install 'lightning-hpt[plot]'``), imported only when a plot is
made. Figures are built without ``pyplot``: no global state, no GUI backend, safe in threads and on
machines without a display.

Example:
    >>> trials = storage.trials("mnist")                                         # doctest: +SKIP
    >>> save_figure(plot_history(trials, "max", monitor="val_acc"), "history.png")  # doctest: +SKIP
"""

from __future__ import annotations

import io
import math
import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_hpt.report.table import format_value, param_labels
from lightning_hpt.space import Categorical, Domain, SearchSpace
from lightning_hpt.trial import Direction, TrialRecord, TrialState

__all__ = [
    "figure_png",
    "plot_history",
    "plot_importance",
    "plot_learning_curves",
    "plot_parallel_coordinates",
    "plot_slices",
    "save_figure",
]

_COLORS = {
    TrialState.COMPLETE: "#1f77b4",
    TrialState.PRUNED: "#ff7f0e",
    TrialState.FAILED: "#d62728",
    TrialState.RUNNING: "#2ca02c",
    TrialState.QUEUED: "#7f7f7f",
}
_BEST = "#9467bd"


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'lightning-hpt[plot]'") from None
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _finite(v: float | None) -> bool:
    return v is not None and math.isfinite(v)


def _empty(fig: Any, ax: Any, why: str) -> Any:
    ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, color="#555555")
    ax.set_xticks([])
    ax.set_yticks([])
    return fig


def save_figure(fig: Any, path: str | os.PathLike[str], dpi: int = 100) -> Path:
    """Write ``fig`` to ``path`` (PNG, or any format matplotlib knows by the suffix); returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=dpi)
    return target


def figure_png(fig: Any, dpi: int = 100) -> bytes:
    """The PNG bytes of ``fig`` (for embedding in a report)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def plot_history(trials: Sequence[TrialRecord], direction: Direction | str, *, monitor: str = "value") -> Any:
    """Optimization history: each trial's value by trial number, and the best value so far.

    COMPLETE trials are dots, PRUNED ones triangles (their value is the best before they were
    stopped), FAILED ones red crosses along the bottom edge (they have no value); the line is the
    best COMPLETE value so far.

    Args:
        trials: the study's trials.
        direction: whether the value is minimized or maximized (for the best-so-far line).
        monitor: the metric's name, for the axis label.
    """
    direction = Direction.parse(direction)
    fig = _figure(7.5, 4.0)
    ax = fig.add_subplot()
    ordered = sorted(trials, key=lambda t: t.number)
    if not ordered:
        return _empty(fig, ax, "no trials yet")
    for state, marker in ((TrialState.COMPLETE, "o"), (TrialState.PRUNED, "^")):
        pts = [(t.number, t.value) for t in ordered if t.state is state and _finite(t.value)]
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.scatter(xs, ys, marker=marker, s=28, color=_COLORS[state], label=state.value.lower(), zorder=3)
    best_x, best_y, best = [], [], None
    for t in ordered:
        if t.state is TrialState.COMPLETE and _finite(t.value) and (best is None or direction.better(t.value, best)):
            best = t.value
        if best is not None:
            best_x.append(t.number)
            best_y.append(best)
    if best_x:
        ax.step(best_x, best_y, where="post", color=_BEST, linewidth=2, label="best so far", zorder=2)
    failed = [t.number for t in ordered if t.state is TrialState.FAILED]
    if failed:
        # failed trials have no value: mark them on the bottom edge, in axes coordinates
        ax.scatter(
            failed,
            [0.02] * len(failed),
            marker="x",
            s=36,
            color=_COLORS[TrialState.FAILED],
            transform=ax.get_xaxis_transform(),
            label="failed",
            zorder=3,
            clip_on=False,
        )
    ax.set_xlabel("trial number")
    ax.set_ylabel(monitor)
    ax.set_title(f"Optimization history ({'lower' if direction is Direction.MINIMIZE else 'higher'} is better)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return fig


def plot_learning_curves(trials: Sequence[TrialRecord], direction: Direction | str, *, monitor: str = "value") -> Any:
    """Learning curves: each trial's monitored value per validation run (epoch).

    COMPLETE trials are solid lines, the best one thick; PRUNED trials are dashed and end with a
    cross where they were stopped; RUNNING trials are dotted.
    """
    direction = Direction.parse(direction)
    fig = _figure(7.5, 4.0)
    ax = fig.add_subplot()
    curves = [t for t in sorted(trials, key=lambda t: t.number) if any(_finite(v) for v in t.intermediate.values())]
    if not curves:
        return _empty(fig, ax, "no per-epoch values yet")
    best = None
    for t in curves:
        if (
            t.state is TrialState.COMPLETE
            and _finite(t.value)
            and (best is None or direction.better(t.value, best.value))
        ):
            best = t
    labelled: set[TrialState] = set()
    for t in curves:
        steps = sorted(s for s, v in t.intermediate.items() if _finite(v))
        ys = [t.intermediate[s] for s in steps]
        style = {TrialState.PRUNED: "--", TrialState.RUNNING: ":"}.get(t.state, "-")
        label = t.state.value.lower() if t.state not in labelled else None
        labelled.add(t.state)
        ax.plot(steps, ys, style, color=_COLORS[t.state], alpha=0.6, linewidth=1.2, label=label)
        if t.state is TrialState.PRUNED:
            ax.plot(steps[-1:], ys[-1:], "x", color=_COLORS[TrialState.PRUNED], markersize=7)
    if best is not None:
        steps = sorted(s for s, v in best.intermediate.items() if _finite(v))
        ax.plot(
            steps,
            [best.intermediate[s] for s in steps],
            "-",
            color=_BEST,
            linewidth=2.5,
            label=f"best (#{best.number})",
            zorder=4,
        )
    ax.set_xlabel("validation run (epoch)")
    ax.set_ylabel(monitor)
    ax.set_title("Learning curves (pruned trials dashed, stopped at x)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return fig


def _scored(trials: Sequence[TrialRecord]) -> list[TrialRecord]:
    return [t for t in sorted(trials, key=lambda t: t.number) if t.state is TrialState.COMPLETE and _finite(t.value)]


def _space_of(
    trials: Sequence[TrialRecord], space: SearchSpace | Mapping[str, Domain] | None
) -> dict[str, Domain | None]:
    """The domain of each parameter; ``None`` when unknown (no space given), then the values decide."""
    if space is not None:
        return dict(space.items())
    names: list[str] = []
    for t in trials:
        names.extend(n for n in t.params if n not in names)
    return dict.fromkeys(names)


def _categories(dom: Domain | None, values: Sequence[Any]) -> list[Any] | None:
    """The ordered choices of a categorical axis, or ``None`` for a numeric one."""
    if isinstance(dom, Categorical):
        return list(dom.choices)
    if dom is None and any(isinstance(v, (str, bool)) or v is None for v in values):
        out: list[Any] = []
        for v in values:
            if v not in out:
                out.append(v)
        return out
    return None


def plot_parallel_coordinates(
    trials: Sequence[TrialRecord],
    direction: Direction | str,
    *,
    space: SearchSpace | Mapping[str, Domain] | None = None,
    monitor: str = "value",
) -> Any:
    """Parallel coordinates: one vertical axis per parameter plus the value, one line per COMPLETE trial.

    Each axis runs from its domain's low to high (on a log scale for log domains; categorical
    choices evenly spaced); lines are coloured by value, the best darkest.
    """
    from matplotlib import colormaps

    direction = Direction.parse(direction)
    fig = _figure(max(6.0, 1.6 * (len(_space_of(trials, space)) + 1)), 4.2)
    ax = fig.add_subplot()
    scored = _scored(trials)
    if not scored:
        return _empty(fig, ax, "no completed trials yet")
    domains = _space_of(scored, space)
    names = list(domains)
    columns: list[list[float]] = []
    ticks: list[tuple[list[float], list[str]]] = []
    for name in names:
        pos, tk = _unit_axis(domains[name], [t.params[name] for t in scored if name in t.params])
        found = iter(pos)  # a trial without the parameter (inactive in it) breaks its line at that axis
        columns.append([next(found) if name in t.params else math.nan for t in scored])
        ticks.append(tk)
    vals = [t.value for t in scored]
    lo, hi = min(vals), max(vals)
    span = (hi - lo) or 1.0
    columns.append([(v - lo) / span for v in vals])
    ticks.append(([0.0, 0.5, 1.0], [format_value(lo), format_value(lo + span / 2), format_value(hi)]))
    # quality in [0, 1], 1 = best: the best lines are drawn last, on top, darkest
    quality = [(hi - v) / span if direction is Direction.MINIMIZE else (v - lo) / span for v in vals]
    cmap = colormaps["viridis_r"]
    order = sorted(range(len(scored)), key=lambda i: quality[i])
    xs = list(range(len(columns)))
    for i in order:
        ys = [col[i] for col in columns]
        ax.plot(xs, ys, color=cmap(0.15 + 0.85 * quality[i]), alpha=0.75, linewidth=1.4)
    labels = param_labels(names)
    for x, (tick_pos, tick_labels) in zip(xs, ticks, strict=False):
        ax.axvline(x, color="#444444", linewidth=0.8)
        for p, label in zip(tick_pos, tick_labels, strict=False):
            ax.text(x + 0.03, p, label, fontsize=7, va="center", ha="left", color="#333333")
    ax.set_xticks(xs, [labels[n] for n in names] + [monitor], fontsize=8)
    ax.set_yticks([])
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlim(-0.2, len(columns) - 0.6)
    ax.set_title(f"Parallel coordinates ({len(scored)} completed trials; darker is better)")
    return fig


def _unit_axis(dom: Domain | None, values: Sequence[Any]) -> tuple[list[float], tuple[list[float], list[str]]]:
    """Positions in ``[0, 1]`` of ``values`` on one parameter's axis, and that axis' ticks."""
    cats = _categories(dom, values)
    if cats is not None:
        n = len(cats)
        pos_of = {repr(c): (i + 0.5) / n for i, c in enumerate(cats)}
        return [pos_of.get(repr(v), 0.5) for v in values], (list(pos_of.values()), [format_value(c) for c in cats])
    if dom is not None:
        low, high = dom.low, dom.high  # type: ignore[attr-defined]
        positions = [dom.to_unit(v) for v in values]
        mid = dom.from_unit(0.5)
        return positions, ([0.0, 0.5, 1.0], [format_value(low), format_value(mid), format_value(high)])
    nums = [float(v) for v in values]
    lo, hi = min(nums), max(nums)
    span = (hi - lo) or 1.0
    return [(v - lo) / span for v in nums], ([0.0, 1.0], [format_value(lo), format_value(hi)])


def _log_axis(ax: Any, xs: Sequence[float]) -> None:
    """A log x axis whose labels do not overlap: matplotlib labels minor ticks on a range under a decade or two.

    Labels only major ticks: decades on a wide range, 1, 2 and 5 per decade on a narrow one, in plain
    numbers (``0.005``, ``0.01``).
    """
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    positive = [x for x in xs if x > 0]
    if positive and math.log10(max(positive) / min(positive)) < 2:
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def plot_slices(
    trials: Sequence[TrialRecord],
    direction: Direction | str,
    *,
    space: SearchSpace | Mapping[str, Domain] | None = None,
    monitor: str = "value",
) -> Any:
    """Slice plots: the value of every COMPLETE trial against each parameter, one panel per parameter.

    Points are coloured by trial number (see the colour bar); the best trial is circled. Log
    domains use a log axis; categorical choices are evenly spaced.
    """
    direction = Direction.parse(direction)
    domains = _space_of(trials, space)
    names = list(domains) or ["(none)"]
    ncols = min(3, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig = _figure(3.2 * ncols + 0.6, 2.7 * nrows + 0.4)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    scored = _scored(trials)
    for ax in axes.flat[len(names) :]:
        ax.set_visible(False)
    if not scored:
        return _empty(fig, axes.flat[0], "no completed trials yet")
    best = scored[0]
    for t in scored:
        if direction.better(t.value, best.value):
            best = t
    labels = param_labels(list(domains))
    for ax, name in zip(axes.flat, domains, strict=False):
        dom = domains[name]
        having = [t for t in scored if name in t.params]  # a conditional parameter: the trials where it is active
        raw = [t.params[name] for t in having]
        cats = _categories(dom, raw)
        if cats is not None:
            where = {repr(c): i for i, c in enumerate(cats)}
            xs = [where.get(repr(v), -1) for v in raw]
            ax.set_xticks(range(len(cats)), [format_value(c) for c in cats], fontsize=8)
            ax.set_xlim(-0.5, len(cats) - 0.5)
            best_x = where.get(repr(best.params.get(name)), -1)
        else:
            xs = [float(v) for v in raw]
            best_x = float(best.params[name]) if name in best.params else math.nan
            if getattr(dom, "log", False):
                _log_axis(ax, xs)
        points = ax.scatter(
            xs,
            [t.value for t in having],
            c=[t.number for t in having],
            cmap="viridis",
            s=22,
            edgecolors="#333333",
            linewidths=0.3,
            zorder=3,
            vmin=scored[0].number,
            vmax=max(scored[-1].number, scored[0].number + 1),
        )
        if name in best.params:
            ax.scatter([best_x], [best.value], s=120, facecolors="none", edgecolors=_BEST, linewidths=2, zorder=4)
        ax.set_xlabel(labels[name])
        ax.grid(alpha=0.3)
    for row in axes:
        row[0].set_ylabel(monitor)
    fig.colorbar(points, ax=axes.ravel().tolist(), label="trial number", shrink=0.8)
    fig.suptitle(f"Value against each parameter (best trial #{best.number} circled)")
    return fig


def plot_importance(importances: Mapping[str, float], *, method: str | None = None) -> Any:
    """Horizontal bars of parameter importances (from :func:`~lightning_hpt.report.importance.param_importance`).

    Args:
        importances: ``{name: importance}``; drawn most important on top.
        method: a line saying how the numbers were computed, shown under the plot.
    """
    fig = _figure(7.0, 0.45 * max(len(importances), 2) + 1.4)
    ax = fig.add_subplot()
    if not importances:
        return _empty(fig, ax, "no parameters")
    labels = param_labels(list(importances))
    ranked = sorted(importances, key=lambda n: importances[n])  # barh draws bottom-up: most important last
    ax.barh([labels[n] for n in ranked], [importances[n] for n in ranked], color="#1f77b4")
    for y, n in enumerate(ranked):
        ax.text(importances[n], y, f" {importances[n]:.3f}", va="center", fontsize=8)
    top = max(importances.values())
    ax.set_xlim(0, max(top * 1.15, 0.05))
    ax.set_xlabel("importance" + (f"\n{textwrap.fill(method, 100)}" if method else ""), fontsize=8)
    ax.set_title("Parameter importance")
    ax.grid(axis="x", alpha=0.3)
    return fig
