"""What a search is doing and what it found: progress displays, tables, exports, plots and reports.

- :func:`make_progress`: the live terminal display (:class:`LiveProgress`) or plain lines (:class:`LineProgress`);
- :func:`trials_table`: a plain-text table of trials (the end-of-search summary, ``lightning-hpt show``);
- :func:`export_trials`: every trial with its per-epoch values, as CSV or JSON;
- :mod:`~lightning_hpt.report.plots`: optimization history, learning curves, parallel coordinates,
  slices and parameter importance as matplotlib figures (the ``plot`` extra); :func:`plot_pareto`, the
  Pareto front of a study with several objectives;
- :func:`param_importance`: the first-order Sobol index of each parameter under a GP model;
- :func:`write_report`: one self-contained HTML file with all of the above (``lightning-hpt report``).

Everything here reads trials as stored, so it works on a finished study and on one that another
process is running.

Example:
    >>> from lightning_hpt.report import export_trials, trials_table, write_report
    >>> storage = open_storage("hpt_runs/studies.db")                            # doctest: +SKIP
    >>> print(trials_table(storage.trials("mnist"), "val_acc", "max", top=10))   # doctest: +SKIP
    >>> write_report(storage, "mnist", "mnist.html")                             # doctest: +SKIP
"""

from __future__ import annotations

from lightning_hpt.report.export import export_trials
from lightning_hpt.report.html import render_report, write_report
from lightning_hpt.report.importance import param_importance
from lightning_hpt.report.live import LiveProgress, make_progress
from lightning_hpt.report.pareto_plot import plot_pareto
from lightning_hpt.report.plots import (
    plot_history,
    plot_importance,
    plot_learning_curves,
    plot_parallel_coordinates,
    plot_slices,
    save_figure,
)
from lightning_hpt.report.progress import LineProgress
from lightning_hpt.report.table import trials_table

__all__ = [
    "LineProgress",
    "LiveProgress",
    "export_trials",
    "make_progress",
    "param_importance",
    "plot_history",
    "plot_importance",
    "plot_learning_curves",
    "plot_parallel_coordinates",
    "plot_pareto",
    "plot_slices",
    "render_report",
    "save_figure",
    "trials_table",
    "write_report",
]
