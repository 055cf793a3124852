"""Rows of a SQL study read as records, and reported values written as rows (used by :mod:`.sql`)."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from lightning_hpt.exceptions import (
    DuplicateTrialError,
    SearchSpaceError,
    StorageError,
    StudyMismatchError,
    StudyNotFoundError,
)
from lightning_hpt.space import SearchSpace, validate_study_name
from lightning_hpt.storage.base import StudyInfo
from lightning_hpt.storage.sql_schema import (
    STEP_COLUMNS,
    STUDIES,
    TRIALS,
    VALUES,
    check_int,
    decode_step,
    definition_from_json,
    definition_to_json,
    dumps,
    split_step_value,
    to_record,
)
from lightning_hpt.trial import INTERRUPTED, PREEMPTED, Direction, TrialRecord, TrialState, params_key

__all__ = [
    "check_unique",
    "encode_steps",
    "has_results",
    "mismatch",
    "new_trial_values",
    "normalized_study",
    "redefinition",
    "store_steps",
    "study_info",
    "study_row",
    "study_values",
    "trial_records",
    "trial_row",
    "trial_steps",
]


def study_row(conn: Connection, where: str, name: str, *, lock: bool = False) -> sa.Row:
    """The study row of ``name`` (locked for the transaction with ``lock``); unknown names are refused."""
    q = sa.select(STUDIES).where(STUDIES.c.name == name)
    row = conn.execute(q.with_for_update() if lock else q).first()  # FOR UPDATE: serialises writers on PostgreSQL
    if row is None:
        known = list(conn.execute(sa.select(STUDIES.c.name).order_by(STUDIES.c.name)).scalars())
        raise StudyNotFoundError(name, where, known)
    return row


def study_info(row: sa.Row, where: str) -> StudyInfo:
    """The study's definition from its row."""
    try:
        space = SearchSpace.from_json(row.space)
    except (SearchSpaceError, ValueError) as e:
        raise StorageError(f"the stored space of study {row.name!r} in {where} cannot be read: {e}") from None
    objectives, constraints = definition_from_json(row.definition, f"study {row.name!r} in {where}")
    return StudyInfo(
        row.name,
        space,
        Direction(row.direction),
        row.monitor,
        row.strategy,
        row.seed,
        json.loads(row.attrs),
        objectives,
        constraints,
    )


def trial_records(conn: Connection, study_id: int) -> list[TrialRecord]:
    """Every trial of the study, with its values."""
    steps: dict[int, dict[int, Any]] = {}
    q = (
        sa.select(*STEP_COLUMNS)
        .join(TRIALS, TRIALS.c.id == VALUES.c.trial_id)
        .where(TRIALS.c.study_id == study_id)
        .order_by(VALUES.c.trial_id, VALUES.c.step)
    )
    for trial_id, step, *value in conn.execute(q):  # one query for every trial's curve
        steps.setdefault(trial_id, {})[step] = decode_step(*value)
    rows = conn.execute(sa.select(TRIALS).where(TRIALS.c.study_id == study_id).order_by(TRIALS.c.number))
    return [to_record(r, steps.get(r.id, {})) for r in rows]


def trial_row(conn: Connection, where: str, study: str, number: int, *, lock: bool = False) -> sa.Row:
    """The row of trial ``number`` (locked for the transaction with ``lock``); unknown numbers are refused."""
    check_int(number, "trial number")
    q = sa.select(TRIALS).join(STUDIES, STUDIES.c.id == TRIALS.c.study_id)
    q = q.where(STUDIES.c.name == study, TRIALS.c.number == number)
    row = conn.execute(q.with_for_update(of=TRIALS) if lock else q).first()
    if row is None:
        study_id = study_row(conn, where, study).id  # raises if the study itself is unknown
        count = conn.execute(sa.select(sa.func.count()).where(TRIALS.c.study_id == study_id)).scalar()
        known = f"its trials are numbered 0 to {count - 1}" if count else "it has no trials yet"
        raise StorageError(f"study {study!r} in {where} has no trial number {number}; {known}")
    return row


def trial_steps(conn: Connection, trial_id: int) -> dict[int, Any]:
    """A trial's values by step."""
    q = sa.select(*STEP_COLUMNS[1:]).where(VALUES.c.trial_id == trial_id)
    return {step: decode_step(*value) for step, *value in conn.execute(q.order_by(VALUES.c.step))}


def encode_steps(values: Mapping[int, float | Sequence[float]]) -> dict[int, tuple]:
    """Reported values as columns, checked before any transaction."""
    return {
        check_int(step, "step"): split_step_value(v, f"the value reported at step {step}") for step, v in values.items()
    }


def store_steps(conn: Connection, study: str, row: Any, encoded: Mapping[int, tuple]) -> None:
    """Store (or replace) a RUNNING trial's values at these steps."""
    if row.state != TrialState.RUNNING.value:
        raise StorageError(
            f"trial {row.number} of study {study!r} is {row.state}, not RUNNING: intermediate values can only be"
            " reported while it runs (was it finished or requeued by another driver?)"
        )
    steps = sorted(encoded)
    conn.execute(sa.delete(VALUES).where(VALUES.c.trial_id == row.id, VALUES.c.step.in_(steps)))
    rows = [
        {"trial_id": row.id, "step": k, "value": v, "nonfinite": f, "objective_values": o}
        for k in steps
        for v, f, o in [encoded[k]]
    ]
    conn.execute(sa.insert(VALUES), rows)


def normalized_study(info: StudyInfo) -> StudyInfo:
    """``info`` with each field checked and in its stored type (before any transaction)."""
    validate_study_name(info.name)
    return StudyInfo(
        info.name,
        SearchSpace(info.space),
        Direction.parse(info.direction),
        str(info.monitor),
        str(info.strategy),
        None if info.seed is None else check_int(info.seed, "seed"),
        dict(info.attrs),
        tuple(info.objectives),
        tuple(info.constraints),
    )


def study_values(given: StudyInfo) -> dict[str, Any]:
    """The study row of a new study."""
    return {
        "name": given.name,
        "space": given.space.to_json(),
        "direction": given.direction.value,
        "monitor": given.monitor,
        "strategy": given.strategy,
        "seed": given.seed,
        "attrs": dumps(given.attrs, "study attrs"),
        "created_at": time.time(),
        "definition": definition_to_json(given),
    }


def check_unique(conn: Connection, study: str, study_id: int, params_json: str) -> None:
    """Refuse ``params_json`` if a trial of the study already has the same parameters."""
    key = params_key(json.loads(params_json))
    q = sa.select(TRIALS.c.number, TRIALS.c.params).where(TRIALS.c.study_id == study_id)
    for other, text in conn.execute(q):
        if params_key(json.loads(text)) == key:
            raise DuplicateTrialError(
                f"study {study!r} already has trial {other} with params {json.loads(params_json)}"
            )


def new_trial_values(
    study_id: int, number: int, state: TrialState, params_json: str, host: str | None, pid: int | None, now: float
) -> dict[str, Any]:
    """The trial row of a new RUNNING or QUEUED trial, but its ``token`` and ``seq``."""
    running = state is TrialState.RUNNING
    return {
        "study_id": study_id,
        "number": number,
        "state": state.value,
        "params": params_json,
        "value": None,
        "value_nonfinite": None,
        "best_step": None,
        "error": None,
        "checkpoint": None,
        "started_at": now if running else None,
        "finished_at": None,
        "host": (host or socket.gethostname()) if running else host,
        "pid": (pid or os.getpid()) if running else pid,
        "heartbeat_at": now if running else None,
        "attempt": 1 if running else 0,
        "attrs": "{}",
        "objective_values": None,
    }


def has_results(conn: Connection, study_id: int) -> bool:
    """Whether the study has a trial that completed, was pruned, runs, waits, or failed only because it was
    stopped (interrupted, pre-empted: it runs again): something its definition must stay valid for."""
    live = (TrialState.COMPLETE.value, TrialState.PRUNED.value, TrialState.RUNNING.value, TrialState.QUEUED.value)
    stopped = sa.or_(TRIALS.c.error.like(f"{INTERRUPTED}%"), TRIALS.c.error.like(f"{PREEMPTED}%"))
    q = sa.select(sa.func.count()).where(
        TRIALS.c.study_id == study_id,
        sa.or_(TRIALS.c.state.in_(live), sa.and_(TRIALS.c.state == TrialState.FAILED.value, stopped)),
    )
    return bool(conn.execute(q).scalar())


def redefinition(values: Mapping[str, Any]) -> dict[str, Any]:
    """The columns of a study row (:func:`study_values`) that define it: all but its name, creation and attrs."""
    return {k: v for k, v in values.items() if k not in ("name", "created_at", "attrs")}


def mismatch(name: str, where: str, diffs: Sequence[str]) -> StudyMismatchError:
    """The refusal of a study opened with another setup than the stored one (``diffs``: what differs)."""
    return StudyMismatchError(
        f"study {name!r} in {where} was created with a different setup: "
        + "; ".join(diffs)
        + ". To keep both, pass a new study name (search.study_name in a CLI config); to start this"
        " study over with the new setup, delete it first (lightning-hpt delete STUDY); to continue the"
        " stored study as it is (its stored space, objectives, constraints, strategy and seed are"
        " used), pass allow_changes=True (search.allow_changes: true)"
    )
