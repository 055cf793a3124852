"""A trial made of several runs (cross-validation folds, repeated seeds), scored by the mean of its runs.

Each run is an ordinary run of the trial (:func:`~lightning_hpt.lightning.runner.run_trial`) and records
what a single run records: its best step (by the first objective), and at that step the value of every
objective and of every metric an outcome constraint bounds. The trial's values are the mean of its runs'
(:func:`~lightning_hpt.lightning.folds.mean_of`, the same mean its steps report), and its outcome
constraints are judged on the mean of the constrained metrics.
"""

from __future__ import annotations

import math
import os
import statistics
from dataclasses import replace
from typing import Any

from lightning_hpt.lightning.folds import MeanReporter, mean_of
from lightning_hpt.lightning.monitor import TrialReporter
from lightning_hpt.lightning.resume import Score, load_finished_runs, save_finished_runs
from lightning_hpt.lightning.runner import TrialBuild, TrialJob, TrialOutcome, end_resume, judge, run_trial
from lightning_hpt.trial import Direction, TrialState

__all__ = ["run_parts"]


def _run_dir(b: TrialBuild, fold: int, repeat: int) -> str:
    if b.repeats == 1:
        return f"fold_{fold}"
    return f"repeat_{repeat}" if b.cv is None else f"fold_{fold}_repeat_{repeat}"


def _first(score: Score) -> float:
    return score[0] if isinstance(score, tuple) else score


def _entry(fold: int, repeat: int, out: TrialOutcome) -> dict[str, Any]:
    """What ``attrs["runs"]`` (and ``resume/runs.json``) keep of one run: every metric at its best step."""
    entry = {
        "fold": fold,
        "repeat": repeat,
        "state": out.state.value,
        "value": out.value,
        "best_step": out.best_step,
        "steps": len(out.intermediate),
        "checkpoint": out.checkpoint,
    }
    if out.values is not None:
        entry["values"] = list(out.values)
    if "constraint_values" in out.attrs:
        entry["constraint_values"] = dict(out.attrs["constraint_values"])
    return entry


def run_parts(job: TrialJob, reporter: TrialReporter | None) -> TrialOutcome:
    """Run every fold/repeat of a trial in turn; the trial's values are the mean of the runs' values.

    Steps continue across runs and carry the running mean (see :class:`MeanReporter`), so pruning
    acts on the mean so far; a pruned or failed run ends the trial.
    """
    b = job.build
    done, runs, sent = load_finished_runs(job)
    last: TrialOutcome | None = None
    for fold, repeat in b.runs[len(runs) :]:
        channel = MeanReporter(reporter, done, len(sent), b.direction)
        run_dir = os.path.join(job.trial_dir, _run_dir(b, fold, repeat))
        attempt = job.attempt if os.path.isdir(run_dir) else 1
        last = run_trial(replace(job, part=(fold, repeat), trial_dir=run_dir, attempt=attempt), channel)
        sent.update(channel.sent)
        runs.append(_entry(fold, repeat, last))
        if last.state is not TrialState.COMPLETE:
            break
        done.append(last.value if last.values is None else tuple(last.values))
        if b.resume is not None:
            save_finished_runs(job, done, runs, sent)
    if last is None:  # every run had finished and was kept (stopped before the trial was recorded): none to train
        last = TrialOutcome(TrialState.COMPLETE)
    outcome = _parts_outcome(b, runs, done, sent, last)
    end_resume(job, outcome)
    return outcome


def _constrained(b: TrialBuild, runs: list[dict[str, Any]]) -> dict[str, float]:
    """The mean over ``runs`` of each metric the outcome constraints bound, each run's taken at its best step."""
    names = list(dict.fromkeys(c.metric for c in b.constraints))
    means = mean_of([tuple(float(r["constraint_values"][n]) for n in names) for r in runs])
    return dict(zip(names, means, strict=True))  # type: ignore[arg-type]


def _run_holding(runs: list[dict[str, Any]], step: int) -> int:
    """The index of the run that reported trial step ``step`` (steps continue across runs)."""
    end = 0
    for i, r in enumerate(runs):
        end += r["steps"]
        if step < end:
            return i
    return len(runs) - 1


def _parts_outcome(
    b: TrialBuild, runs: list[dict[str, Any]], done: list[Score], sent: dict[int, Score], last: TrialOutcome
) -> TrialOutcome:
    """The trial's outcome from its runs: the last one's state, the mean of the runs' values.

    COMPLETE: the mean over every run. PRUNED: the running mean at its best step (by the first
    objective), which is the mean over the runs up to the one that reported that step.
    """
    attrs: dict[str, Any] = {"runs": runs}
    if len(done) > 1:
        attrs["std"] = statistics.stdev(_first(d) for d in done)
    common = {"intermediate": sent, "metrics": last.metrics, "attrs": attrs}
    if last.state is TrialState.FAILED:
        where = f"run {len(runs) - 1} (fold {runs[-1]['fold']}, repeat {runs[-1]['repeat']})"
        # an interrupted trial's error starts with the reason, so that a resumed search retries it
        error = f"{last.interrupted}: {where}: {last.error}" if last.interrupted else f"{where}: {last.error}"
        return TrialOutcome(TrialState.FAILED, error=error, fatal=last.fatal, interrupted=last.interrupted, **common)
    checkpoint = None
    if last.state is TrialState.PRUNED:
        sign = 1 if b.direction is Direction.MINIMIZE else -1
        finite = [(s, v) for s, v in sent.items() if math.isfinite(_first(v))]
        if not finite:
            return TrialOutcome(TrialState.PRUNED, **common)
        best_step, score = min(finite, key=lambda sv: sign * _first(sv[1]))
        upto = _run_holding(runs, best_step) + 1
    else:
        best_step, score, upto = max(sent) if sent else None, mean_of(done), len(runs)
        best_run = min(
            (r for r in runs if r["value"] is not None),
            key=lambda r: r["value"] if b.direction is Direction.MINIMIZE else -r["value"],
        )
        checkpoint = best_run["checkpoint"]
    if b.constraints:
        attrs.update(judge(b.constraints, _constrained(b, runs[:upto])))
    several = isinstance(score, tuple)
    return TrialOutcome(
        last.state,
        value=_first(score),
        values=score if several else None,
        best_step=best_step,
        checkpoint=checkpoint,
        **common,
    )
