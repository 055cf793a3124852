"""Export every trial, with its per-epoch values, to CSV or JSON.

Example:
    >>> export_trials(storage.trials("mnist"), "mnist_trials.csv")   # doctest: +SKIP
    >>> export_trials(storage.trials("mnist"), "mnist_trials.json")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_hpt.exceptions import ConfigurationError, OutputError
from lightning_hpt.objectives import Objective
from lightning_hpt.pareto import pareto_front
from lightning_hpt.trial import TrialRecord

__all__ = ["export_trials", "trial_to_dict", "write_text_atomic"]

_FORMATS = (".csv", ".json")


def _finite(value: float | None) -> float | None:
    # strict JSON has no NaN or Infinity: a non-finite number is written as null
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def _plain(obj: Any) -> Any:
    """JSON-safe copy of stored data (attrs, params): non-finite floats become ``None``."""
    if isinstance(obj, float):
        return _finite(obj)
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def trial_to_dict(t: TrialRecord, objectives: Sequence[str] = (), pareto: bool | None = None) -> dict[str, Any]:
    """One trial as plain JSON data; ``intermediate`` maps the step (as text) to its value.

    Non-finite numbers (a NaN loss, say) are ``None``: strict JSON has no NaN. With several objectives
    it also has ``values`` (every objective's value) and ``intermediate_values`` (per step), and with
    their names given (``objectives``) ``objective_values`` (name -> value). A trial judged against
    outcome constraints has ``feasible``; ``pareto`` (given with several objectives) is ``pareto``.
    """
    out = {
        "number": t.number,
        "state": t.state.value,
        "value": _finite(t.value),
        "best_step": t.best_step,
        "params": _plain(dict(t.params)),
        "intermediate": {str(step): _finite(v) for step, v in sorted(t.intermediate.items())},
        "error": t.error,
        "checkpoint": t.checkpoint,
        "started_at": t.started_at,
        "finished_at": t.finished_at,
        "duration_s": t.duration,
        "host": t.host,
        "pid": t.pid,
        "attempt": t.attempt,
        "attrs": _plain(dict(t.attrs)),
    }
    if t.values is not None or t.intermediate_values:
        out["values"] = None if t.values is None else [_finite(v) for v in t.values]
        out["intermediate_values"] = {
            str(step): [_finite(v) for v in vs] for step, vs in sorted(t.intermediate_values.items())
        }
        if objectives and t.values is not None:
            out["objective_values"] = {n: _finite(v) for n, v in zip(objectives, t.values, strict=False)}
    if "infeasible" in t.attrs:
        out["feasible"] = t.feasible
    if pareto is not None:
        out["pareto"] = pareto
    return out


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to a temporary file next to ``path``, then rename it over ``path``; returns the path.

    A reader (or a crash, or a full disk) never sees a half-written file: the old one stays
    intact until the new one is complete. A path that cannot be written (a directory, a directory
    that is a file, no permission) raises :class:`~lightning_hpt.exceptions.OutputError` naming it.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        # mkstemp makes the file private (0600); a report or export is meant to be shared like any file
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.is_file() else 0o644)
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(e, OSError):
            raise _cannot_write(path, e) from None
        raise
    return path


def _cannot_write(path: Path, error: OSError) -> OutputError:
    if path.is_dir():
        why = f"it is a directory; name a file in it ({os.path.join(path, 'NAME')})"
    else:
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        why = f"{blocker} is a file, not a directory" if blocker else error.strerror or str(error)
    return OutputError(f"cannot write {str(path)!r}: {why}; give a file path in a directory you can write")


def _csv_text(trials: Sequence[TrialRecord], objectives: Sequence[str], front: set[int] | None) -> str:
    names: list[str] = []
    steps: set[int] = set()
    for t in trials:
        names.extend(n for n in t.params if n not in names)
        steps.update(t.intermediate)
    step_cols = sorted(steps)
    width = max((len(t.values) for t in trials if t.values is not None), default=0)  # several objectives
    labels = list(objectives) if len(objectives) == width else [str(i) for i in range(width)]
    judged = any("infeasible" in t.attrs for t in trials)  # outcome constraints: a feasible column
    header = [
        "number",
        "state",
        "value",
        *(f"values.{label}" for label in labels),
        *(["pareto"] if front is not None else []),
        *(["feasible"] if judged else []),
        "best_step",
        "epochs",
        "duration_s",
        "started_at",
        "finished_at",
        *(f"params.{n}" for n in names),
        *(f"step_{s}" for s in step_cols),
        "error",
    ]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for t in sorted(trials, key=lambda t: t.number):
        writer.writerow(
            [
                t.number,
                t.state.value,
                _cell(t.value),
                *(_cell(v) for v in (t.values or (None,) * width)),
                *([t.number in front] if front is not None else []),
                *([t.feasible] if judged else []),
                _cell(t.best_step),
                len(t.intermediate),
                _cell(t.duration),
                _cell(t.started_at),
                _cell(t.finished_at),
                *(_cell(t.params.get(n)) for n in names),
                *(_cell(t.intermediate.get(s)) for s in step_cols),
                _cell(t.error),
            ]
        )
    return out.getvalue()


def _cell(value: Any) -> Any:
    # an empty cell means "none"; floats keep every digit (repr), so a reader gets the stored number back
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)  # nan, inf, -inf: what pandas reads back
    return value


def export_trials(trials: Sequence[TrialRecord], path: str | os.PathLike[str], objectives: Sequence[Any] = ()) -> Path:
    """Write every trial, with its per-epoch values, to a CSV or JSON file chosen by the suffix.

    - ``.csv``: one row per trial, by number: ``number, state, value, best_step, epochs, duration_s,
      started_at, finished_at``, one ``params.<name>`` column per parameter, one ``step_<k>`` column
      per validation run ``k`` (empty where a trial has no value at that step, e.g. pruned early; the
      first objective's), and ``error``. With several objectives, ``values.<name>`` per objective
      (``values.0``, ``values.1``, ... without ``objectives``) and, given the study's ``Objective`` objects
      (``result.objectives``), ``pareto`` (``True`` on the front); with outcome constraints, ``feasible``.
      Empty cells mean "none"; non-finite values are written ``nan``/``inf``.
    - ``.json``: a list of objects (see :func:`trial_to_dict`): params and ``intermediate``
      (``{"<step>": value}``) are nested; non-finite values are ``null`` (strict JSON).

    Times are POSIX seconds; ``duration_s`` is in seconds. The file is written atomically (a
    temporary file renamed over the target), so it can be refreshed while someone reads it.

    Args:
        trials: the trials to export, for example ``storage.trials(study)``.
        path: the file to write; its suffix (``.csv`` or ``.json``, any case) picks the format.
        objectives: the study's objectives (names, or ``SearchResult.objectives``), to name their values.

    Returns:
        The path written.

    Raises:
        ConfigurationError: the suffix is neither ``.csv`` nor ``.json``.
    """
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in _FORMATS:
        raise ConfigurationError(
            f"export_trials chooses the format by the file suffix, which must be one of {list(_FORMATS)};"
            f" got path={os.fspath(path)!r}; name the file e.g. 'trials.csv' or 'trials.json'"
        )
    names = [getattr(o, "name", o) for o in objectives]
    if not all(isinstance(n, str) and n for n in names):
        raise ConfigurationError(
            f"export_trials(objectives=) takes the objectives' names (or Objective objects), got {objectives!r};"
            " e.g. objectives=['val_acc', 'n_params'] or objectives=result.objectives"
        )
    ordered = sorted(trials, key=lambda t: t.number)
    front = None  # the front needs each objective's direction: Objective objects, not names
    if len(objectives) > 1 and all(isinstance(o, Objective) for o in objectives):
        front = {t.number for t in pareto_front(ordered, objectives)}
    if suffix == ".csv":
        text = _csv_text(ordered, names, front)
    else:
        dicts = [trial_to_dict(t, names, None if front is None else t.number in front) for t in ordered]
        text = json.dumps(dicts, indent=2, allow_nan=False) + "\n"
    write_text_atomic(target, text)
    return target
