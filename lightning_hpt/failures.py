"""Trial failures: when the same error means every trial would fail, and how an error is shown.

The search stops early ("fails fast") when no trial of the study has COMPLETEd (or been PRUNED)
and the failures with the same error (the exception type and message up to numbers, paths and
addresses: :func:`error_signature`) show that the error does not come from the trial's
parameters:

- at once, for a failure that cannot depend on them (the monitored metric is never logged);
- otherwise once at least :data:`MIN_FAILURES` trials failed that way *and* every searched
  parameter that can take several values took at least two different values among them. A
  failure caused by one value of a setting (``trainer.accelerator: Categorical(["gpu", "cpu"])``
  on a machine without a GPU) never stops the search: the trials with the other value complete.

Once trials have completed, an error that can depend on the parameters never stops the search. One
that comes from the code or the machine does (a metric no longer logged, a full disk, a directory
that cannot be written, a module gone): when the last :data:`MIN_FAILURES` trials to finish, with
nothing COMPLETE or PRUNED among them, failed that way over different configurations, the code or
the machine changed since the trials that completed, and every trial left would fail too.

Trials stopped from outside (Ctrl+C, SIGTERM, a killed driver) do not count.

Example:
    >>> error_signature("RuntimeError: size 32 at /tmp/run/trial_3/x.ckpt")
    'RuntimeError: size # at <path>'
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from lightning_hpt.exceptions import HPTError, MetricNotFoundError, SearchFailedError
from lightning_hpt.space import SearchSpace
from lightning_hpt.trial import INTERRUPTED, PREEMPTED, TrialRecord, TrialState

__all__ = ["MIN_FAILURES", "error_signature", "fail_fast", "known_fix", "no_complete_trial", "short_error"]

#: failures with one error, over different configurations, after which the search stops.
MIN_FAILURES = 3

_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][\w.\-~@+=]+){2,}[\\/]?|(?:\.{1,2}[\\/])[\w.\-\\/]+")
_ADDRESS = re.compile(r"\b0x[0-9a-fA-F]+\b")
_NUMBER = re.compile(r"(?<![A-Za-z_])[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
#: (pattern, fix) of errors of the machine or the installation, which no configuration causes
_MACHINE: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"No space left on device|disk is full", re.I), "free disk space, then resume the study"),
    (
        re.compile(r"Permission denied|Read-only file system", re.I),
        "the trials' directory is not writable: choose another root",
    ),
    (
        re.compile(r"No module named '([\w.]+)'"),
        "install the missing module, or start the search from the project's directory",
    ),
)
# (pattern, fix) for errors whose cure is known; the first match wins.
_FIXES: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(r"No supported gpu backend|CUDA is not available|cuda.*not available|MPS.*not available", re.I),
        "this machine lacks the accelerator asked for: set trainer.accelerator to 'cpu' or 'auto', or remove the"
        " values it cannot use from the space",
    ),
    (
        re.compile(r"more than one stateful callback|state_key must be unique", re.I),
        "the project's own ModelCheckpoint or EarlyStopping collides with the search's: remove it from the"
        " Trainer's callbacks, or pass checkpoint=False / patience=None",
    ),
    (
        re.compile(r"out of memory", re.I),
        "lower the batch size or the model's size (or search smaller values), or run fewer trials per GPU",
    ),
    *_MACHINE,
    (
        re.compile(r"got an unexpected keyword argument '(\w+)'"),
        "a searched parameter is not an argument of the class it is given to: rename or remove it from the space",
    ),
)


def error_signature(error: str | None) -> str:
    """The error with numbers, paths and memory addresses replaced, so that errors that differ only there are equal.

    Args:
        error: a trial's stored error (``"Type: message"``).
    """
    text = " ".join((error or "").split())
    text = _PATH.sub("<path>", text)
    text = _ADDRESS.sub("<addr>", text)
    return _NUMBER.sub("#", text)


def known_fix(error: str | None) -> str | None:
    """How to fix ``error``, when the cure is known; else ``None``."""
    for pattern, fix in _FIXES:
        if pattern.search(error or ""):
            return fix
    return None


def short_error(error: str | None, width: int = 60) -> str:
    """``error`` on one line, cut at a word boundary with ``…`` if longer than ``width`` characters."""
    text = " ".join((error or "").split())
    if len(text) <= width:
        return text
    cut = text[: width - 1]
    space = cut.rfind(" ")
    if space >= width // 2:  # a word boundary not too far back; else cut inside a long path or word
        cut = cut[:space]
    return cut.rstrip(" ,;:.") + "…"


def _counted(t: TrialRecord) -> bool:
    return t.state is TrialState.FAILED and not (t.error or "").startswith((INTERRUPTED, PREEMPTED))


def _varied(space: SearchSpace, failed: Sequence[TrialRecord]) -> bool:
    """Whether every parameter that can take several values took at least two among ``failed``.

    A conditional parameter inactive in all of them is not asked to vary: it could not.
    """
    for name in space:
        if space[name].cardinality == 1 or not any(name in t.params for t in failed):
            continue
        if len({repr(t.params.get(name)) for t in failed}) < 2:
            return False
    return True


def _cannot_depend_on_params(error: str) -> bool:
    return f"{MetricNotFoundError.__name__}:" in error


def fail_fast(space: SearchSpace, trials: Sequence[TrialRecord], last: TrialRecord) -> HPTError | None:
    """The error that stops the search after ``last`` finished, or ``None`` to go on.

    Args:
        space: the study's space.
        trials: every trial of the study, as stored after ``last`` finished.
        last: the trial that just finished.
    """
    if not _counted(last):
        return None
    if any(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials):
        return _changed_since(space, trials, last)
    signature = error_signature(last.error)
    same = [t for t in trials if _counted(t) and error_signature(t.error) == signature]
    independent = _cannot_depend_on_params(last.error or "")
    if not independent and (len(same) < MIN_FAILURES or not _varied(space, same)):
        return None
    why = "it cannot depend on the parameters" if independent else "different configurations failed the same way"
    return _stop(
        f"{_trials(same)} failed with this error and no trial has completed ({why})",
        last.error,
        "The study has no result yet, so a fix that changes the study itself (monitor, mode, space, constraints) is"
        " taken as it is, unless a trial was interrupted (it runs again as it was: then a new study_name, or"
        " lightning-hpt delete STUDY first)",
    )


def _changed_since(space: SearchSpace, trials: Sequence[TrialRecord], last: TrialRecord) -> HPTError | None:
    """Stop a study with completed trials when its last trials failed alike on the code or the machine."""
    error = last.error or ""
    if not (_cannot_depend_on_params(error) or any(pattern.search(error) for pattern, _ in _MACHINE)):
        return None
    signature, streak = error_signature(last.error), []
    finished = sorted((t for t in trials if t.state.is_finished), key=lambda t: (t.finished_at or 0.0, t.number))
    for t in reversed(finished):  # back from the latest to finish, to the last trial that did not fail so
        if t.state is not TrialState.FAILED or (_counted(t) and error_signature(t.error) != signature):
            break
        if _counted(t):
            streak.append(t)
    if len(streak) < MIN_FAILURES or not _varied(space, streak):
        return None
    streak.reverse()
    return _stop(
        f"{_trials(streak)}, the last to finish, failed with this error over different configurations, after trials"
        " had completed, so the code or the machine changed since and every trial left would fail too",
        last.error,
        "A fix that changes the study itself (monitor, mode, space, constraints) needs a new study_name",
    )


def _stop(what: str, error: str | None, tail: str) -> HPTError:
    """The error that stops a search: what failed, the error once, its fix when known, and how to go on."""
    fix = known_fix(error)
    message = (
        f"the search stopped: {what}:\n  {error}\n" + (f"Fix: {fix}\n" if fix else "") + "Then run the search"
        " again: the failed trials count towards n_trials; retry_failed=True (lightning-hpt retry STUDY) runs them"
        f" again under their numbers. {tail}"
    )
    return MetricNotFoundError(message) if _cannot_depend_on_params(error or "") else SearchFailedError(message)


def _trials(trials: Sequence[TrialRecord]) -> str:
    numbers = [str(t.number) for t in trials]
    return f"trial {numbers[0]}" if len(numbers) == 1 else f"trials {', '.join(numbers)}"


def no_complete_trial(trials: Sequence[TrialRecord], stopped: str) -> str | None:
    """Why a search that ended with no COMPLETE trial failed (each distinct error once), or ``None`` if one completed.

    Args:
        trials: every trial of the study.
        stopped: why the search ended (``"n_trials reached"``, ``"timeout"``, ...).
    """
    if any(t.state is TrialState.COMPLETE for t in trials):
        return None
    groups: dict[str, list[TrialRecord]] = {}
    for t in trials:
        if t.state is TrialState.FAILED:
            groups.setdefault(error_signature(t.error), []).append(t)
    lines = [f"the search ended ({stopped}) with no COMPLETE trial"]
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.value] = counts.get(t.state.value, 0) + 1
    lines[0] += f" ({', '.join(f'{n} {s}' for s, n in counts.items()) or 'no trials'})"
    for same in groups.values():
        fix = known_fix(same[0].error)
        lines.append(f"  {_trials(same)}: {same[0].error}" + (f"\n    Fix: {fix}" if fix else ""))
    lines.append(
        "Fix the cause, then retry_failed=True (lightning-hpt retry STUDY) reruns the FAILED trials under their"
        " numbers; or raise n_trials, or start a new study_name. The study has no result yet, so a fix that changes"
        " the study itself (its space, monitor or constraints) is taken as it is, unless a trial was interrupted"
        " (it runs again as it was: then a new study_name, or lightning-hpt delete STUDY first)"
    )
    return "\n".join(lines)
