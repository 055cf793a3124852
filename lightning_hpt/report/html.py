"""One self-contained HTML report of a study: summary, every trial, and every plot.

The file needs nothing else to be viewed: styles are inline and plots are embedded as base64 PNG,
so it opens offline, can be mailed or archived, and makes no network request. It reads the study
as it is stored now, so it works on a running study as well as a finished one.

Example:
    >>> write_report(open_storage("hpt_runs/studies.db"), "mnist", "mnist_report.html")  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning_hpt.exceptions import HPTError
from lightning_hpt.masking import get_logger
from lightning_hpt.pareto import pareto_front, rank_pareto
from lightning_hpt.report.export import write_text_atomic
from lightning_hpt.report.sample import MAX_CURVES, MAX_ROWS, plot_sample
from lightning_hpt.report.table import format_duration, format_value, param_cell, param_labels, rank_trials
from lightning_hpt.trial import Direction, TrialRecord, TrialState, best_trial, count_states

if TYPE_CHECKING:  # storage sits on the same floor as report: only its interface is used, never imported
    from lightning_hpt.storage.base import Storage, StudyInfo

__all__ = ["render_report", "write_report"]

log = get_logger(__name__)

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto; max-width: 1100px;
       padding: 0 1rem; color: #222; line-height: 1.4; }
h1 { margin-bottom: .2rem; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2rem; margin-top: 2rem; }
.meta { color: #555; font-size: .9rem; }
table { border-collapse: collapse; font-size: .85rem; }
th, td { border-bottom: 1px solid #e4e4e4; padding: .25rem .6rem; text-align: left; vertical-align: top; }
th { background: #f4f4f4; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.trials { display: block; overflow-x: auto; }
.state-COMPLETE { color: #1565c0; } .state-PRUNED { color: #c46200; } .state-FAILED { color: #c62828; }
.state-RUNNING { color: #2e7d32; } .state-QUEUED { color: #777; }
.error { color: #a33; max-width: 28rem; overflow-wrap: anywhere; white-space: pre-wrap; }
.counts span { display: inline-block; margin-right: 1.2rem; }
figure { margin: 1.5rem 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: .85rem; }
.note { color: #666; font-style: italic; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _summary(info: StudyInfo, trials: Sequence[TrialRecord]) -> str:
    spans = "".join(f"<span class='state-{s}'>{s.lower()}: <b>{n}</b></span>" for s, n in count_states(trials).items())
    parts = [f"<p class='counts'>{len(trials)} trials &mdash; {spans or 'none yet'}</p>"]
    durations = [t.duration for t in trials if t.duration is not None]
    if durations:
        parts.append(
            f"<p>Trial time: {_e(format_duration(sum(durations)))} in all,"
            f" {_e(format_duration(sum(durations) / len(durations)))} per finished trial on average.</p>"
        )
    infeasible = sum(t.state is TrialState.COMPLETE and not t.feasible for t in trials)
    if infeasible:
        rules = ", ".join(str(c) for c in info.constraints if hasattr(c, "metric"))
        parts.append(f"<p>{infeasible} COMPLETE trial(s) broke a constraint ({_e(rules)}): infeasible, never best.</p>")
    if len(info.objectives) > 1:
        return "\n".join([*parts, _front(info, trials)])
    best = best_trial(trials, info.direction)
    if best is None:
        parts.append("<p class='note'>No COMPLETE trial yet.</p>")
        return "\n".join(parts)
    rows = "".join(
        f"<tr><th>{_e(k)}</th><td>{_e(format_value(v) if isinstance(v, float) else repr(v))}</td></tr>"
        for k, v in best.params.items()
    )
    parts.append(
        f"<p>Best trial <b>#{best.number}</b>: <b>{_e(info.monitor)} = {_e(f'{best.value:.6g}')}</b>"
        f" at validation run {_e(best.best_step)}.</p>"
    )
    parts.append(f"<table class='best'>{rows}</table>")
    if best.checkpoint:
        parts.append(f"<p>Checkpoint: <code>{_e(best.checkpoint)}</code></p>")
    return "\n".join(parts)


def _front(info: StudyInfo, trials: Sequence[TrialRecord]) -> str:
    """The Pareto front as a table: each trial's values and parameters."""
    front = pareto_front(trials, info.objectives)
    if not front:
        return "<p class='note'>No COMPLETE feasible trial yet.</p>"
    names = list(dict.fromkeys(n for t in front for n in t.params))
    labels = param_labels(names)
    head = "".join(f"<th>{_e(o)}</th>" for o in info.objectives) + "".join(f"<th>{_e(labels[n])}</th>" for n in names)
    rows = "".join(
        f"<tr><td class='num'>{t.number}</td>"
        + "".join(f"<td class='num'>{_e(format_value(v))}</td>" for v in t.values or ())
        + "".join(f"<td>{_e(format_value(t.params.get(n)))}</td>" for n in names)
        + f"<td><code>{_e(t.checkpoint or '-')}</code></td></tr>"
        for t in front
    )
    return (
        f"<p>Pareto front: <b>{len(front)}</b> trials no other trial beats in every objective (best first by"
        f" {_e(info.objectives[0].name)}).</p><table class='trials'><thead><tr><th>#</th>{head}<th>checkpoint</th>"
        f"</tr></thead><tbody>{rows}</tbody></table>"
    )


def _trials_table(info: StudyInfo, trials: Sequence[TrialRecord]) -> str:
    if not trials:
        return "<p class='note'>No trials yet.</p>"
    names: list[str] = []
    for t in trials:
        names.extend(n for n in t.params if n not in names)
    labels = param_labels(names)
    head = "".join(f"<th title='{_e(n)}'>{_e(labels[n])}</th>" for n in names)
    multi = len(info.objectives) > 1
    metrics = [o.name for o in info.objectives] if multi else [info.monitor]
    judged = any("infeasible" in t.attrs for t in trials)
    extra = "".join(f"<th>{_e(m)}</th>" for m in metrics) + ("<th>feasible</th>" if judged else "")
    out = [
        (
            f"<table class='trials'><thead><tr><th>#</th><th>state</th>{extra}{head}"
            "<th>epochs</th><th>duration</th><th>error</th></tr></thead><tbody>"
        )
    ]
    ranked = rank_pareto(trials, info.objectives) if multi else rank_trials(trials, info.direction)
    for t in ranked[:MAX_ROWS]:  # a big study: the best rows; the rest is in `lightning-hpt show` and the exports
        cells = "".join(f"<td>{_e(param_cell(t.params, n))}</td>" for n in names)
        error = t.error or ""  # whole: the report is where a failure is read in full
        shown = (t.values or (None,) * len(metrics)) if multi else (t.value,)
        values = "".join(f"<td class='num'>{_e(format_value(v))}</td>" for v in shown)
        if judged:
            values += f"<td>{'-' if 'infeasible' not in t.attrs else ('yes' if t.feasible else 'no')}</td>"
        out.append(
            f"<tr><td class='num'>{t.number}</td><td class='state-{t.state.value}'>{t.state.value}</td>"
            f"{values}{cells}<td class='num'>{len(t.intermediate)}</td>"
            f"<td class='num'>{_e(format_duration(t.duration))}</td><td class='error'>{_e(error)}</td></tr>"
        )
    out.append("</tbody></table>")
    if len(ranked) > MAX_ROWS:
        out.append(
            f"<p class='note'>The best {MAX_ROWS:,} of {len(ranked):,} trials; every trial is in"
            " <code>lightning-hpt show</code> and in the CSV or JSON export.</p>"
        )
    return "\n".join(out)


def _plots(info: StudyInfo, trials: Sequence[TrialRecord]) -> list[tuple[str, str, Callable[[], Any]]]:
    """``(title, caption, make figure)`` for every plot of the report; a big study's busy plots draw a sample."""
    from lightning_hpt.report import plots
    from lightning_hpt.report.importance import IMPORTANCE_METHOD, param_importance

    d, m, space = info.direction, info.monitor, info.space
    shown, note = plot_sample(trials, d)
    curves, curves_note = plot_sample(trials, d, MAX_CURVES)
    shown_says, curves_says = (f" Drawn: {n}." if n else "" for n in (note, curves_note))
    front = []
    if len(info.objectives) > 1:
        from lightning_hpt.report.pareto_plot import plot_pareto

        names = f"{info.objectives[1].name} against {info.objectives[0].name}"
        front = [
            (
                "Pareto front",
                f"{names} for every COMPLETE trial; the front over every objective is highlighted."
                " Plots below show the first objective.",
                lambda: plot_pareto(trials, info.objectives),
            )
        ]
    return [
        *front,
        (
            "Optimization history",
            (
                "Each trial's value and the best so far; pruned trials are triangles, failed ones"
                " crosses on the bottom edge."
            ),
            lambda: plots.plot_history(trials, d, monitor=m),
        ),
        (
            "Learning curves",
            "The monitored value per validation run; pruned trials are dashed and end with a cross." + curves_says,
            lambda: plots.plot_learning_curves(curves, d, monitor=m),
        ),
        (
            "Parallel coordinates",
            "One line per completed trial across every parameter and the value." + shown_says,
            lambda: plots.plot_parallel_coordinates(shown, d, space=space, monitor=m),
        ),
        (
            "Slices",
            "The value of every completed trial against each parameter." + shown_says,
            lambda: plots.plot_slices(shown, d, space=space, monitor=m),
        ),
        (
            "Parameter importance",
            f"Method: {IMPORTANCE_METHOD}." + curves_says,
            # a GP fit, cubic in trials: on the sample
            lambda: plots.plot_importance(param_importance(curves, space, direction=d), method=None),
        ),
    ]


def _figures(info: StudyInfo, trials: Sequence[TrialRecord]) -> str:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "<p class='note'>Plots need matplotlib: <code>pip install 'lightning-hpt[plot]'</code>.</p>"
    from lightning_hpt.report.plots import figure_png

    out = []
    for title, caption, make in _plots(info, trials):
        try:
            png = figure_png(make())
        except HPTError as e:  # not enough data for this plot yet: say so instead of failing the report
            out.append(f"<h3>{_e(title)}</h3><p class='note'>{_e(e)}</p>")
            continue
        except Exception as e:  # one plot must not cost the whole report; the log keeps the traceback
            log.warning("the %s plot of study %r failed", title, info.name, exc_info=True)
            out.append(f"<h3>{_e(title)}</h3><p class='note'>This plot failed: {_e(type(e).__name__)}: {_e(e)}</p>")
            continue
        data = base64.b64encode(png).decode("ascii")
        out.append(
            f"<figure><h3>{_e(title)}</h3><img alt='{_e(title)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{_e(caption)}</figcaption></figure>"
        )
    return "\n".join(out)


def render_report(info: StudyInfo, trials: Sequence[TrialRecord], *, storage_url: str = "") -> str:
    """The report of a study as one HTML document (see :func:`write_report`).

    Args:
        info: the study's definition (``storage.load_study(name)``).
        trials: its trials (``storage.trials(name)``).
        storage_url: where the study lives, shown in the header (give a masked URL).
    """
    direction = "lower is better" if info.direction is Direction.MINIMIZE else "higher is better"
    running = sum(t.state is TrialState.RUNNING for t in trials)
    status = f"running ({running} trial{'s' if running != 1 else ''} in progress)" if running else "no trial running"
    now = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    seed = "" if info.seed is None else f" &middot; seed {_e(info.seed)}"
    where = f" &middot; storage <code>{_e(storage_url)}</code>" if storage_url else ""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Study {_e(info.name)} &ndash; lightning-hpt report</title>
<style>{_CSS}</style>
</head>
<body>
<h1>Study <code>{_e(info.name)}</code></h1>
<p class="meta">{_goal(info, direction)} &middot; strategy {_e(info.strategy)}{seed}
&middot; {len(info.space)} parameters{where}<br>{_e(status)} &middot; report written {_e(now)}</p>
<section id="summary">
<h2>Summary</h2>
{_summary(info, trials)}
</section>
<section id="plots">
<h2>Plots</h2>
{_figures(info, trials)}
</section>
<section id="trials">
<h2>All trials (best first{_nds(info)})</h2>
{_trials_table(info, trials)}
</section>
</body>
</html>
"""


def _nds(info: StudyInfo) -> str:
    return "; by non-dominated sorting, then crowding distance" if len(info.objectives) > 1 else ""


def _goal(info: StudyInfo, direction: str) -> str:
    """The header's words on what the study optimizes, under which constraints."""
    if len(info.objectives) > 1:
        goal = "objectives <b>" + _e(", ".join(str(o) for o in info.objectives)) + "</b>"
    else:
        goal = f"monitor <b>{_e(info.monitor)}</b> ({direction})"
    if info.constraints:
        goal += " &middot; constraints " + _e("; ".join(str(c) for c in info.constraints))
    return goal


def write_report(storage: Storage, study: str, path: str | os.PathLike[str]) -> Path:
    """Write the HTML report of ``study`` to ``path``: summary, every trial, and every plot.

    The file is self-contained (plots embedded as base64 PNG, no network access needed to view
    it) and written atomically, so it can be refreshed while a browser shows it. The study may
    be running: the report shows it as stored at that moment. Plots need the ``plot`` extra
    (matplotlib); without it the report says so and keeps the summary and the table.

    Args:
        storage: where the study lives (``open_storage(url)``).
        study: the study's name.
        path: the HTML file to write.

    Returns:
        The path written.

    Raises:
        StorageError: the study does not exist (the message lists those that do) or cannot be read.
    """
    info = storage.load_study(study)
    trials = storage.trials(study)
    target = Path(path)
    write_text_atomic(target, render_report(info, trials, storage_url=getattr(storage, "url", "")))
    return target
