"""Live progress of a running search in a terminal (rich), and the factory that picks the display.

On an interactive terminal the display shows the study, trials finished / running / pruned /
failed out of the total, the best value so far with its parameters (with several objectives, the
Pareto front so far: how many trials, and the first few with their values and parameters), each
running trial's epoch and current value (every objective's), the elapsed time and an estimate of
the time left; a line per finished trial
scrolls above it. Elsewhere (CI logs, ``nohup``, a file) :func:`make_progress` returns the plain
:class:`~lightning_hpt.report.progress.LineProgress`: one line per finished trial.

Example:
    >>> progress = make_progress(verbose=True)  # LiveProgress on a terminal, LineProgress in a log
    >>> progress.start("mnist", 20, 0, "sqlite:///runs/studies.db", monitor="val_acc")  # doctest: +SKIP
"""

from __future__ import annotations

import atexit
import math
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from lightning_hpt.exceptions import ConfigurationError
from lightning_hpt.failures import short_error
from lightning_hpt.report.progress import LineProgress, best_text
from lightning_hpt.report.table import format_duration, format_value, outcome_text, param_labels
from lightning_hpt.trial import TrialRecord, TrialState

__all__ = ["LiveProgress", "make_progress"]

_VERBOSE = (True, False, "auto", "live", "lines")


@dataclass
class _Running:
    record: TrialRecord
    started: float = field(default_factory=time.monotonic)
    step: int | None = None
    value: float | tuple[float, ...] | None = None


def _params_text(params: Any, limit: int = 90) -> str:
    labels = param_labels(list(params))
    text = ", ".join(f"{labels[k]}={format_value(v)}" for k, v in params.items())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _reported_text(value: float | tuple[float, ...] | None) -> str:
    """A running trial's last value; with several objectives every one's, ``"0.1234, 41"``."""
    if isinstance(value, tuple):
        return ", ".join(format_value(v) for v in value)
    return format_value(value)


class LiveProgress:
    """A live terminal display of a search (rich), with the interface of :class:`LineProgress`.

    The driver calls :meth:`start`, then for each trial :meth:`trial_started`, :meth:`trial_reported`
    (once per validation run) and :meth:`trial_finished`, and at the end :meth:`end`; :meth:`close`
    (idempotent) restores the terminal if the search stops on an exception. The hooks may be called
    from any thread.

    Args:
        stream: where to draw (standard output by default).
        force_terminal: draw even if ``stream`` is not a terminal (for tests and recordings).
        width: the display width in characters (default: the terminal's).
        refresh_per_second: how often the elapsed time and estimates are redrawn.
        max_rows: the most running trials listed (the rest are counted).
        front_rows: with several objectives, the most trials of the Pareto front listed (the rest are counted).
    """

    def __init__(
        self,
        stream: IO[str] | None = None,
        *,
        force_terminal: bool | None = None,
        width: int | None = None,
        refresh_per_second: float = 2.0,
        max_rows: int = 8,
        front_rows: int = 3,
    ) -> None:
        try:
            from rich.console import Console
        except ImportError:
            raise ImportError("the live progress display needs rich: pip install rich") from None
        self.console = Console(file=stream, force_terminal=force_terminal, width=width, highlight=False)
        # route stray prints through the display only when it owns the process' own output
        self._redirect = stream is None or stream in (sys.stdout, sys.stderr)
        self._refresh = refresh_per_second
        self.max_rows, self.front_rows = max_rows, front_rows
        self._lock = threading.RLock()
        self._live: Any = None
        self.study, self.monitor, self.storage_url = "", "value", ""
        self.total: int | None = None
        self.done = 0
        self.counts = dict.fromkeys((TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAILED), 0)
        self.finished_now = 0  # trials finished by this run: the rate behind the time estimate
        self.best: TrialRecord | None = None
        self.front: list[TrialRecord] | None = None  # with several objectives: the Pareto front so far
        self.running: dict[int, _Running] = {}
        self._t0 = time.monotonic()

    # ----------------------------------------------------------------- hooks called by the driver
    def start(
        self,
        study: str,
        n_trials: int | None,
        done: int,
        storage_url: str,
        *,
        monitor: str | None = None,
        trials: Sequence[TrialRecord] | None = None,
    ) -> None:
        """The search starts with ``done`` trials already finished (resumed); ``trials`` fills the counts."""
        from rich.live import Live

        with self._lock:
            self.study, self.total, self.done, self.storage_url = study, n_trials, done, storage_url
            self.monitor = monitor or self.monitor
            self._t0 = time.monotonic()
            for t in trials or ():
                if t.state in self.counts:
                    self.counts[t.state] += 1
            if self._live is None:
                self._live = Live(
                    console=self.console,
                    get_renderable=self._render,
                    refresh_per_second=self._refresh,
                    transient=True,
                    redirect_stdout=self._redirect,
                    redirect_stderr=self._redirect,
                )
                self._live.start()
                atexit.register(self.close)  # never leave the terminal's cursor hidden
        self.console.print(
            f"study [bold]{study}[/]: {done}/{'?' if n_trials is None else n_trials} trials done,"
            f" storage {storage_url}",
            markup=True,
            highlight=False,
        )

    def trial_started(self, record: TrialRecord) -> None:
        """A trial was submitted (its ``number`` and ``params`` are shown while it runs)."""
        with self._lock:
            self.running[record.number] = _Running(record)
        self._redraw()

    def trial_reported(self, number: int, step: int, value: float | tuple[float, ...]) -> None:
        """A running trial reported its monitored ``value`` for validation run ``step`` (from 0); with
        several objectives a tuple of every objective's value."""
        with self._lock:
            run = self.running.get(number)
            if run is not None:
                run.step, run.value = step, value
        self._redraw()

    def trial_finished(
        self,
        t: TrialRecord,
        best: TrialRecord | None,
        monitor: str,
        done: int,
        total: int | None,
        front: Sequence[TrialRecord] | None = None,
    ) -> None:
        """A trial ended; ``best`` is the study's best trial now (with several objectives ``front``, its
        Pareto front now, best first by the first objective), ``done`` the finished count."""
        with self._lock:
            self.running.pop(t.number, None)
            self.monitor, self.done, self.total, self.best = monitor, done, total, best
            self.front = None if front is None else list(front)
            if t.state in self.counts:
                self.counts[t.state] += 1
            self.finished_now += 1
        self._redraw()
        value = outcome_text(t, monitor) or short_error(t.error, 120)
        style = {TrialState.COMPLETE: "green", TrialState.PRUNED: "yellow", TrialState.FAILED: "red"}.get(t.state, "")
        best_txt = best_text(best, front)
        from rich.text import Text

        line = Text.assemble(
            f"[{done}/{'?' if total is None else total}] trial {t.number} ",
            (f"{t.state.value:<8}", style),
            f" {value} epochs={len(t.intermediate)} {format_duration(t.duration)}{best_txt} | {_params_text(t.params)}",
        )
        self.console.print(line, highlight=False)

    def end(self, summary: str, table: str | None = None) -> None:
        """The search is over: remove the live display, print the summary (and the table of top trials)."""
        self.close()
        self.console.print(f"finished in {format_duration(time.monotonic() - self._t0)}", highlight=False)
        self.console.print(summary, markup=False, highlight=False)
        if table:
            self.console.print(table, markup=False, highlight=False)

    def close(self) -> None:
        """Stop the live display and restore the terminal; safe to call more than once."""
        with self._lock:
            live, self._live = self._live, None
        if live is not None:
            live.stop()
            atexit.unregister(self.close)

    # ----------------------------------------------------------------- rendering
    def _redraw(self) -> None:
        # called without holding our lock: the refresh thread holds the display's lock while it takes ours
        live = self._live
        if live is not None:
            live.refresh()

    def eta(self) -> float | None:
        """Seconds left, from this run's rate of finished trials; ``None`` when unknown."""
        if self.total is None or self.finished_now == 0 or self.done >= self.total:
            return None
        left = self.total - self.done
        return left * (time.monotonic() - self._t0) / self.finished_now

    def _render(self) -> Any:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        with self._lock:
            elapsed = time.monotonic() - self._t0
            eta = self.eta()
            head = Text.assemble(
                ("Study ", "bold"),
                (self.study, "bold cyan"),
                f"  {self.done}/{'?' if self.total is None else self.total} finished",
                "  (",
                (f"{self.counts[TrialState.COMPLETE]} complete", "green"),
                ", ",
                (f"{self.counts[TrialState.PRUNED]} pruned", "yellow"),
                ", ",
                (f"{self.counts[TrialState.FAILED]} failed", "red"),
                ")  ",
                (f"{len(self.running)} running", "bold"),
            )
            clock = f"elapsed {format_duration(elapsed)}" + (
                f", ~{format_duration(eta)} left" if eta is not None else ""
            )
            bar = Table.grid(padding=(0, 1))  # a grid row ends the line, which a bare ProgressBar does not
            if self.total:
                bar.add_row(
                    ProgressBar(total=self.total, completed=min(self.done, self.total), width=40),
                    f"{100 * min(self.done, self.total) / self.total:.0f}%",
                    clock,
                )
            else:
                bar.add_row(clock)
            parts: list[Any] = [head, bar, *self._best_lines()]
            if self.running:
                table = Table(box=None, pad_edge=False, header_style="bold", show_edge=False)
                for col, justify in (
                    ("#", "right"),
                    ("epoch", "right"),
                    (self.monitor, "right"),
                    ("time", "right"),
                    ("params", "left"),
                ):
                    table.add_column(col, justify=justify, no_wrap=col != "params")
                rows = sorted(self.running.items())
                for number, run in rows[: self.max_rows]:
                    epoch = "-" if run.step is None else str(run.step + 1)  # steps count from 0, people from 1
                    table.add_row(
                        str(number),
                        epoch,
                        _reported_text(run.value),
                        format_duration(time.monotonic() - run.started),
                        _params_text(run.record.params),
                    )
                if len(rows) > self.max_rows:
                    table.add_row("…", "", "", "", f"and {len(rows) - self.max_rows} more running")
                parts.append(table)
        return Group(*parts)

    def _best_lines(self) -> list[Any]:
        """The best trial's line; with several objectives, the Pareto front's head and its first members."""
        from rich.text import Text

        if self.front is not None:
            lines = [Text.assemble(("Pareto front ", "bold"), f"{len(self.front)} trials")]
            for t in self.front[: self.front_rows]:
                values = outcome_text(t, self.monitor)
                lines.append(Text.assemble("  ", (f"#{t.number}", "dim"), f" {values}  {_params_text(t.params, 100)}"))
            if len(self.front) > self.front_rows:
                lines.append(Text(f"  and {len(self.front) - self.front_rows} more on the front", "dim"))
            return lines
        best = self.best
        if best is None or best.value is None or not math.isfinite(best.value):
            return []
        return [
            Text.assemble(
                ("best ", "bold"),
                f"{self.monitor}={best.value:.6g} ",
                (f"(#{best.number})", "dim"),
                f"  {_params_text(best.params, 110)}",
            )
        ]


def make_progress(verbose: bool | str = True, stream: IO[str] | None = None) -> LineProgress | LiveProgress:
    """The progress display a search should use.

    Args:
        verbose: ``True`` or ``"auto"``: the live display on an interactive terminal, plain lines
            otherwise (CI logs, ``nohup``, ``TERM=dumb``, a file); ``"live"``: the live display
            always; ``"lines"``: plain lines always; ``False``: nothing.
        stream: where to write (standard output by default).

    Raises:
        ConfigurationError: ``verbose`` is none of these.
    """
    if not (isinstance(verbose, bool) or verbose in _VERBOSE[2:]):
        raise ConfigurationError(
            f"verbose must be True, False, 'auto', 'live' or 'lines',"
            f" got verbose={verbose!r} of type {type(verbose).__name__}"
        )
    if verbose is False:
        return LineProgress(stream, enabled=False)
    if verbose == "lines":
        return LineProgress(stream)
    if verbose == "live":
        return LiveProgress(stream, force_terminal=True)
    try:
        from rich.console import Console
    except ImportError:  # without rich, lines are still a readable display
        return LineProgress(stream)
    if Console(file=stream or sys.stdout).is_interactive:
        return LiveProgress(stream)
    return LineProgress(stream)
