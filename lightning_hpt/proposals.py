"""The next trials to start: queued configurations first, then the strategy's proposals."""

from __future__ import annotations

import dataclasses
import os
import random
import time
from collections.abc import Callable
from typing import Any

from lightning_hpt.exceptions import DuplicateTrialError
from lightning_hpt.recovery import HOST
from lightning_hpt.storage import Storage
from lightning_hpt.strategies import Strategy
from lightning_hpt.strategies.base import MAX_DRAWS, allowed, no_feasible_point
from lightning_hpt.trial import History, TrialRecord, TrialState

__all__ = ["next_trials"]

_BACKOFF = random.Random()  # its own generator: the pauses never touch the global random state


def _claim_queued(storage: Storage, study: str, k: int) -> list[TrialRecord]:
    out: list[TrialRecord] = []
    while len(out) < k:
        rec = storage.claim_queued(study, host=HOST, pid=os.getpid())
        if rec is None:
            break
        out.append(rec)
    return out


def _allowed_proposals(strategy: Strategy, history: History, want: int) -> list[dict[str, Any]]:
    """The strategy's proposals that keep the parameter constraints (:func:`~.strategies.base.allowed`).

    The built-in strategies keep them already. Another strategy's proposals that break them are
    dropped; when none is left it is asked again, with the rejected configurations in the history
    as QUEUED trials (so it proposes elsewhere), up to :data:`~.strategies.base.MAX_DRAWS` of them.
    """
    proposals = strategy.ask(history, want)
    rejected: list[dict[str, Any]] = []
    while proposals and history.param_constraints:
        kept = [p for p in proposals if allowed(history, p)]
        if kept:
            return kept
        rejected.extend(proposals)
        if len(rejected) >= MAX_DRAWS:
            raise no_feasible_point(history, history.next_number)
        start = history.next_number
        view = [TrialRecord(start + i, dict(p), TrialState.QUEUED) for i, p in enumerate(rejected)]
        proposals = strategy.ask(dataclasses.replace(history, trials=(*history.trials, *view), index=None), want)
    return proposals


def next_trials(
    storage: Storage,
    study: str,
    strategy: Strategy,
    n_trials: int | None,
    k: int,
    read_history: Callable[[], History],
    history: History | None = None,
) -> tuple[list[TrialRecord], str | None]:
    """Up to ``k`` trials created RUNNING now (queued first, then new proposals), and why there are none.

    Args:
        storage, study: the study.
        strategy: proposes configurations from the history.
        n_trials: trials in the whole study, or ``None`` (an exhaustive strategy runs out).
        k: how many trials are wanted.
        read_history: reads the study's current history.
        history: the study as just read, if it was (saves reading it again); a stale one only
            costs a refused proposal, made again from a fresh read, or a queued trial claimed at the
            next call (one with no QUEUED trial saves the claim's transaction).
    """
    queued = history is None or any(t.state is TrialState.QUEUED for t in history.trials)
    out = _claim_queued(storage, study, k) if queued else []
    if len(out) == k:
        return out, None
    # Another driver sharing the study may add a trial between our read and our write: then the proposal
    # (made for the number that trial took, e.g. the same seeded random draw, a grid point it now has, or
    # a model blind to it) is refused and made again from the new history. Every refusal means another
    # driver made progress, so this ends; a short random pause after each breaks up drivers in lockstep.
    unique = strategy.exhaustive
    refusals = 0
    while True:
        history = history if history is not None and not refusals else read_history()
        if n_trials is not None and len(history.trials) >= n_trials:
            return out, "n_trials reached"
        want = k - len(out) if n_trials is None else min(k - len(out), n_trials - len(history.trials))
        proposals = _allowed_proposals(strategy, history, want)
        if not proposals:
            return out, f"{strategy.name} strategy exhausted"
        for i, params in enumerate(proposals):
            try:
                rec = storage.create_trial(
                    study,
                    params,
                    max_trials=n_trials,
                    host=HOST,
                    pid=os.getpid(),
                    unique=unique,
                    number=history.next_number + i,
                )
            except DuplicateTrialError:
                refusals += 1
                time.sleep(_BACKOFF.uniform(0.0, min(0.05 * refusals, 0.5)))
                break
            if rec is None:
                return out, "n_trials reached"
            out.append(rec)
        else:
            return out, None
        if len(out) == k:
            return out, None
