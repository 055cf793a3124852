"""Plain progress lines: one per finished trial, readable in a terminal and in CI logs."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import IO

from lightning_hpt.failures import short_error
from lightning_hpt.report.table import front_text, outcome_text, param_labels
from lightning_hpt.trial import TrialRecord

__all__ = ["LineProgress", "best_text"]


def _fmt(v: object) -> str:
    return f"{v:.4g}" if isinstance(v, float) else repr(v)


def best_text(best: TrialRecord | None, front: Sequence[TrialRecord] | None) -> str:
    """What a finished trial's line says of the study so far: `` | best 0.75 (#2)``, or with several
    objectives (``front`` given) `` | front 3 (#1, #0, #2)``; empty before any trial counts."""
    if front is not None:
        return f" | {front_text(front)}"
    if best is None or best.value is None:
        return ""
    return f" | best {best.value:.4g} (#{best.number})"


class LineProgress:
    """Writes a line when the search starts, one per finished trial, and the summary at the end.

    The display for logs and non-interactive terminals; :class:`~lightning_hpt.report.live.LiveProgress`
    has the same interface.

    Args:
        stream: where to write (standard output by default).
        enabled: ``False`` writes nothing.
    """

    def __init__(self, stream: IO[str] | None = None, enabled: bool = True) -> None:
        self.stream = stream
        self.enabled = enabled
        self._t0 = time.monotonic()

    def _write(self, line: str) -> None:
        if self.enabled:
            stream = self.stream or sys.stdout
            stream.write(line + "\n")
            stream.flush()

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
        """The search starts with ``done`` trials finished (``monitor`` and ``trials`` are for live displays)."""
        self._t0 = time.monotonic()
        total = "?" if n_trials is None else n_trials
        self._write(f"study {study!r}: {done}/{total} trials done, storage {storage_url}")

    def trial_started(self, record: TrialRecord) -> None:
        """A trial was submitted; lines are written only when trials finish."""

    def trial_reported(self, number: int, step: int, value: float | tuple[float, ...]) -> None:
        """A running trial reported a value; lines are written only when trials finish."""

    def trial_finished(
        self,
        t: TrialRecord,
        best: TrialRecord | None,
        monitor: str,
        done: int,
        total: int | None,
        front: Sequence[TrialRecord] | None = None,
    ) -> None:
        """A trial ended: one line with its outcome, then ``best N (#k)``, or with several objectives
        (``front`` given: the study's Pareto front now) ``front N (#k, ...)``, and its parameters."""
        value = outcome_text(t, monitor) or short_error(t.error, 160)
        best_txt = best_text(best, front)
        labels = param_labels(list(t.params))
        params = ", ".join(f"{labels[k]}={_fmt(v)}" for k, v in t.params.items())
        dur = f"{t.duration:.1f}s" if t.duration is not None else "?"
        total_txt = "?" if total is None else total
        self._write(
            f"[{done}/{total_txt}] trial {t.number} {t.state.value:<8} {value} epochs={len(t.intermediate)} {dur}"
            f"{best_txt} | {params}"
        )

    def end(self, summary: str, table: str | None = None) -> None:
        """The search is over: the elapsed time, the summary and, if given, the table of top trials."""
        self._write(f"finished in {time.monotonic() - self._t0:.1f}s\n{summary}" + (f"\n\n{table}" if table else ""))

    def close(self) -> None:
        """Nothing to restore for plain lines (the live display restores the terminal here)."""
