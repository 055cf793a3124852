"""Plain-text tables of trials: the summary at the end of a search and ``lightning-hpt show``.

Example:
    >>> print(trials_table(storage.trials("mnist"), "val_acc", Direction.MAXIMIZE, top=5))  # doctest: +SKIP
      #  state     val_acc  lr        hidden  epochs  duration
      7  COMPLETE  0.9812   0.003162  128     20      41.2s
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from lightning_hpt.exceptions import ConfigurationError
from lightning_hpt.failures import short_error
from lightning_hpt.objectives import Objective
from lightning_hpt.pareto import pareto_front, rank_pareto
from lightning_hpt.trial import Direction, TrialRecord, TrialState, rank_trials

__all__ = [
    "format_duration",
    "format_value",
    "front_text",
    "outcome_text",
    "param_cell",
    "param_labels",
    "rank_trials",
    "trials_table",
]

_MAX_CELL = 24


def format_value(value: Any) -> str:
    """A compact text form of a parameter or metric value (4 significant digits for floats)."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    return f"{value:.4g}"


def param_cell(params: Mapping[str, Any], name: str) -> str:
    """A parameter's value in a table: empty when the trial has no such parameter (inactive in it)."""
    return format_value(params[name]) if name in params else ""


def outcome_text(t: TrialRecord, monitor: str) -> str | None:
    """``val_acc=0.9812`` for a progress line; with several objectives (``monitor`` naming them
    ``"val_acc, n_params"``) every one's; ``infeasible`` appended when it broke a constraint."""
    if t.value is None:
        return None
    names, values = monitor.split(", "), t.values or (t.value,)
    pairs = zip(names, values, strict=True) if len(names) == len(values) else [(names[0], t.value)]
    text = ", ".join(f"{n}={v:.4g}" for n, v in pairs)
    return text if t.feasible else f"{text} infeasible"


def front_text(front: Sequence[TrialRecord], limit: int = 5) -> str:
    """``front 3 (#1, #0, #2)``: how many trials are on the Pareto front so far, and which (the first
    ``limit`` numbers, best first by the first objective, then ``+N`` for the rest)."""
    numbers = [f"#{t.number}" for t in front[:limit]]
    if len(front) > limit:
        numbers.append(f"+{len(front) - limit}")
    return f"front {len(front)} ({', '.join(numbers)})" if front else "front 0"


def format_duration(seconds: float | None) -> str:
    """``"41.2s"``, ``"3m05s"`` or ``"2h03m"``; ``"-"`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def param_labels(names: Sequence[str]) -> dict[str, str]:
    """Short labels: ``model.lr`` (or ``model.init_args.lr``) becomes ``lr``, unless two would get the same one."""
    short = {n: ".".join(p for p in n.split(".") if p != "init_args").split(".", 1)[-1] for n in names}
    counts: dict[str, int] = {}
    for label in short.values():
        counts[label] = counts.get(label, 0) + 1
    return {n: (label if counts[label] == 1 else n) for n, label in short.items()}


def _param_names(trials: Sequence[TrialRecord]) -> list[str]:
    names: list[str] = []
    for t in trials:
        names.extend(n for n in t.params if n not in names)
    return names


def _cell(text: str) -> str:
    text = " ".join(text.split())  # one line per row, whatever the value holds
    return text if len(text) <= _MAX_CELL else text[: _MAX_CELL - 1] + "…"


def _render(header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> str:
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) if rows else len(header[i]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "  ".join(parts).rstrip()

    return "\n".join([line(header), *(line(r) for r in rows)])


def _feasible(t: TrialRecord) -> str:
    """``yes``, ``no`` (it broke an outcome constraint) or ``-`` (not judged: the trial has no value)."""
    if "infeasible" not in t.attrs:
        return "-"
    return "yes" if t.feasible else "no"


def _row(t: TrialRecord, names: Sequence[str], width: int, front: set[int], judged: bool, errors: bool) -> list[str]:
    """One row of :func:`trials_table` (``width``: the number of objectives, 0 with one)."""
    params: Mapping[str, Any] = t.params
    shown = [format_value(t.value)]
    if width:
        shown = [format_value(v) for v in t.values or (None,) * width]
        shown.append("*" if t.number in front else "")
    return [
        str(t.number),
        t.state.value,
        *shown,
        *([_feasible(t)] if judged else []),
        *(_cell(param_cell(params, n)) for n in names),
        str(len(t.intermediate)),
        format_duration(t.duration),
        *([short_error(t.error if t.state is TrialState.FAILED else "")] if errors else []),
    ]


def trials_table(
    trials: Sequence[TrialRecord],
    monitor: str,
    direction: Direction | str,
    top: int | None = None,
    objectives: Sequence[Objective] = (),
) -> str:
    """A plain-text table of trials, one row each.

    Columns: trial number, state, the monitored value (the trial's best epoch; with several
    objectives, one column per objective and ``pareto``, ``*`` for a trial on the Pareto front), a
    ``feasible`` column when the study has outcome constraints, one column per parameter (empty
    where a conditional parameter is inactive), epochs (validation runs reported,
    ``len(intermediate)``), duration, and, when a shown trial FAILED, its error (shortened at a
    word boundary).

    Args:
        trials: the trials to show, for example ``storage.trials(study)``.
        monitor: the metric's name, used as the value column's header.
        direction: ``Direction`` or ``"min"``/``"max"``; decides what "best" means.
        top: show only the ``top`` best trials, best first (with several objectives, by non-dominated
            sorting, see :mod:`lightning_hpt.pareto`); ``None`` shows every trial by number.
        objectives: with several objectives, all of them.

    Returns:
        The table as lines of text (no trailing newline); ``"(no trials)"`` when there are none.

    Raises:
        ConfigurationError: ``top`` is not a positive integer.
    """
    direction = Direction.parse(direction)
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top < 1):
        raise ConfigurationError(f"top must be a positive integer or None (every trial), got top={top!r}")
    if not trials:
        return "(no trials)"
    multi = len(objectives) > 1
    if top is None:
        chosen = sorted(trials, key=lambda t: t.number)
    else:
        chosen = (rank_pareto(trials, objectives) if multi else rank_trials(trials, direction))[:top]
    names = _param_names(chosen)
    labels = param_labels(names)
    front = {t.number for t in pareto_front(trials, objectives)} if multi else set()
    judged = any("infeasible" in t.attrs for t in trials)
    values = [*(o.name for o in objectives), "pareto"] if multi else [monitor]
    header = ["#", "state", *values, *(["feasible"] if judged else []), *(labels[n] for n in names)]
    header += ["epochs", "duration"]
    errors = any(t.state is TrialState.FAILED and t.error for t in chosen)
    width = len(objectives) if multi else 0
    rows = [_row(t, names, width, front, judged, errors) for t in chosen]
    right = {0, *range(2, 2 + len(values)), len(header) - 2, len(header) - 1}
    if errors:
        header.append("error")
    return _render(header, rows, right)
