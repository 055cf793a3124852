"""Study storage in a SQL database through SQLAlchemy Core: SQLite files, or PostgreSQL for many drivers.

Every write is one transaction that takes the write lock up front (``BEGIN IMMEDIATE`` on SQLite,
``SELECT ... FOR UPDATE`` of the study row on PostgreSQL), so trial numbers are allocated atomically
and a queued configuration is claimed by exactly one driver. A busy SQLite file is waited for (WAL
mode, busy timeout, retries with backoff) up to ``lock_timeout`` seconds, then
:class:`~lightning_hpt.exceptions.DatabaseLockedError` names the file. Transient database errors
are retried a few times; a full disk is reported at once with the database's own words.

Parameter and metric names are stored as data (JSON text), never as table or column names, and
every statement uses bound parameters. Non-finite values (NaN, inf) are stored as ``NULL`` plus a
flag, so they round-trip exactly on every database.

Example:
    >>> storage = SQLStorage("sqlite:///runs/mnist/study.db")
    >>> info = storage.open_study(StudyInfo("mnist", space, Direction.MAXIMIZE, "val_acc", "random"))
    >>> trial = storage.create_trial("mnist", {"model.lr": 0.01})
    >>> storage.finish_trial("mnist", trial.number, state=TrialState.COMPLETE, value=0.97)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from lightning_hpt.exceptions import (
    DuplicateTrialError,
    StorageError,
)
from lightning_hpt.masking import get_logger, mask_secrets
from lightning_hpt.storage.base import Storage, StudyInfo
from lightning_hpt.storage.sql_engine import SQLDatabase
from lightning_hpt.storage.sql_history import HistoryCache, bump
from lightning_hpt.storage.sql_rows import (
    check_unique,
    encode_steps,
    has_results,
    mismatch,
    new_trial_values,
    normalized_study,
    redefinition,
    store_steps,
    study_info,
    study_row,
    study_values,
    trial_records,
    trial_row,
    trial_steps,
)
from lightning_hpt.storage.sql_schema import (
    FINISHED,
    SCHEMA_VERSION,
    STUDIES,
    TRIALS,
    VALUES,
    RowValues,
    check_int,
    differences,
    dumps,
    encode_float,
    encode_values,
    to_record,
)
from lightning_hpt.trial import Direction, History, TrialRecord, TrialState

__all__ = ["SCHEMA_VERSION", "SQLStorage"]

log = get_logger(__name__)
T = TypeVar("T")


class SQLStorage(SQLDatabase, Storage):
    """A :class:`~lightning_hpt.storage.base.Storage` in a SQL database (SQLite or PostgreSQL).

    Args:
        url: a SQLAlchemy URL: ``"sqlite:///runs/study.db"`` (relative paths are made absolute, the
            parent directory is created), ``"sqlite://"`` (in memory, one process, for tests) or
            ``"postgresql+psycopg://user:password@host/db"`` for several drivers on several machines.
        lock_timeout: seconds to wait for another process's write lock on a SQLite file before
            :class:`~lightning_hpt.exceptions.DatabaseLockedError`.
        retries: how many times a transient database error (a dropped connection, an I/O hiccup) is
            retried before it is reported.
        engine_kwargs: extra arguments for :func:`sqlalchemy.create_engine`.
        create: create the database (a SQLite file and its directory, the tables) if it does not exist;
            ``False`` for readers (``lightning-hpt show``): a missing database is an error and nothing
            is written, not even the switch of a SQLite file to WAL mode.

    On PostgreSQL the tables live in their own schema, ``lightning_hpt`` (``?schema=name`` in the URL
    names another), so a database that other programs use gets one schema added and nothing else.

    A storage object can be pickled: the copy reconnects lazily in its own process (not for
    in-memory SQLite). After ``fork`` the child opens its own connections too.

    Example:
        >>> storage = SQLStorage("sqlite:///runs/study.db", lock_timeout=60)
        >>> storage.study_names()
        []
    """

    def _setup(self) -> None:
        super()._setup()
        self._cache, self._cache_lock = HistoryCache(), threading.Lock()  # this process's incremental history

    def _forked(self) -> None:
        super()._forked()
        self._cache, self._cache_lock = HistoryCache(), threading.Lock()  # a parent thread may hold it

    def _bump(self, conn: Connection, study: str) -> int:
        """Take the study's change counter up (see :mod:`.sql_history`); every write that changes a trial does."""
        seq = bump(conn, study)
        if seq is None:
            study_row(conn, self._where, study)  # raises: no such study
        return seq

    # ------------------------------------------------------------------ studies

    def open_study(self, info: StudyInfo, *, allow_changes: bool = False) -> StudyInfo:
        given = normalized_study(info)
        row = study_values(given)

        def fn(conn: Connection, attempt: int) -> StudyInfo:
            found = conn.execute(sa.select(STUDIES).where(STUDIES.c.name == given.name)).first()
            if found is None:
                conn.execute(sa.insert(STUDIES).values(**row))
                return given
            stored = study_info(found, self._where)
            if not allow_changes:
                diffs = differences(stored, given)
                if diffs and not has_results(conn, found.id):  # every trial failed on its own error, or none ran
                    conn.execute(sa.update(STUDIES).where(STUDIES.c.id == found.id).values(**redefinition(row)))
                    log.warning(
                        "study %r in %s has no trial that completed, was pruned or runs, so it takes the setup"
                        " given now (%s); its failed trials stay in it",
                        given.name,
                        self._where,
                        "; ".join(diffs),
                    )
                    return dataclasses.replace(given, attrs=stored.attrs)
                if diffs:
                    raise mismatch(given.name, self._where, diffs)
            elif diffs := differences(stored, given):
                log.warning(
                    "study %r in %s is continued with allow_changes=True; what was given differs from what it was"
                    " created with: %s",
                    given.name,
                    self._where,
                    "; ".join(diffs),
                )
            return stored

        return self._txn(f"open study {given.name!r}", fn, write=True)

    def load_study(self, name: str) -> StudyInfo:
        return self._txn(
            f"load study {name!r}", lambda c, a: study_info(study_row(c, self._where, name), self._where), write=False
        )

    def study_names(self) -> list[str]:
        q = sa.select(STUDIES.c.name).order_by(STUDIES.c.name)
        return self._txn("list the studies", lambda c, a: list(c.execute(q).scalars()), write=False)

    def set_study_attrs(self, study: str, attrs: Mapping[str, Any]) -> None:
        dumps(dict(attrs), "study attrs")  # fail before touching the database

        def fn(conn: Connection, attempt: int) -> None:
            row = study_row(conn, self._where, study, lock=True)
            merged = {**json.loads(row.attrs), **attrs}
            conn.execute(sa.update(STUDIES).where(STUDIES.c.id == row.id).values(attrs=dumps(merged, "study attrs")))

        self._txn(f"set attrs of study {study!r}", fn, write=True)

    # ------------------------------------------------------------------ trials: reading

    def trials(self, study: str) -> list[TrialRecord]:
        return self._txn(
            f"read the trials of study {study!r}",
            lambda c, a: trial_records(c, study_row(c, self._where, study).id),
            write=False,
        )

    def history(
        self, study: str, max_steps: int | None = None, index: Callable[[Direction], Any] | None = None
    ) -> History:
        """The study's history; after the first read, only the trials changed since are read (and ``index`` updated)."""

        def fn(conn: Connection, attempt: int) -> History:
            with self._cache_lock:  # one reader at a time: each sees the study no older than the last one did
                info = functools.partial(study_info, where=self._where)
                return self._cache.history(conn, study_row(conn, self._where, study), info, max_steps, index)

        return self._txn(f"read the history of study {study!r}", fn, write=False)

    def last_heartbeat(self, study: str, number: int) -> float | None:
        def fn(conn: Connection, attempt: int) -> float | None:
            row = trial_row(conn, self._where, study, number)
            return row.heartbeat_at if row.heartbeat_at is not None else row.started_at

        return self._txn(f"read the heartbeat of trial {number} of study {study!r}", fn, write=False)

    # ------------------------------------------------------------------ trials: writing

    def create_trial(
        self,
        study: str,
        params: Mapping[str, Any],
        *,
        state: TrialState = TrialState.RUNNING,
        max_trials: int | None = None,
        host: str | None = None,
        pid: int | None = None,
        unique: bool = False,
        number: int | None = None,
    ) -> TrialRecord | None:
        state = TrialState(state)
        if number is not None:
            check_int(number, "number")
        if state not in (TrialState.RUNNING, TrialState.QUEUED):
            raise StorageError(f"a new trial must be RUNNING or QUEUED, got state={state.value!r}")
        if max_trials is not None:
            check_int(max_trials, "max_trials")
        params_json = dumps(dict(params), "params", allow_nan=False)
        token = uuid.uuid4().hex
        now = time.time()

        def fn(conn: Connection, attempt: int) -> TrialRecord | None:
            study_id = study_row(conn, self._where, study, lock=True).id
            if attempt:  # a commit whose answer was lost must not give a second row
                row = conn.execute(
                    sa.select(TRIALS).where(TRIALS.c.study_id == study_id, TRIALS.c.token == token)
                ).first()
                if row is not None:
                    return to_record(row, {})
            count, top = conn.execute(
                sa.select(sa.func.count(), sa.func.max(TRIALS.c.number)).where(TRIALS.c.study_id == study_id)
            ).one()
            if max_trials is not None and count >= max_trials:
                return None
            free = 0 if top is None else top + 1
            if number is not None and number != free:
                raise DuplicateTrialError(
                    f"the next free trial number of study {study!r} is {free}, not {number}: another driver added a"
                    " trial since this proposal was made"
                )
            if unique:  # under the study's write lock: no other driver can insert between this check and ours
                check_unique(conn, study, study_id, params_json)
            values = new_trial_values(study_id, free, state, params_json, host, pid, now)
            values.update(token=token, seq=self._bump(conn, study))
            conn.execute(sa.insert(TRIALS).values(**values))
            return to_record(RowValues(values), {})

        return self._txn(f"create a trial in study {study!r}", fn, write=True)

    def claim_queued(self, study: str, *, host: str | None = None, pid: int | None = None) -> TrialRecord | None:
        def fn(conn: Connection, attempt: int) -> TrialRecord | None:
            study_id = study_row(conn, self._where, study, lock=True).id
            q = sa.select(TRIALS).where(TRIALS.c.study_id == study_id, TRIALS.c.state == TrialState.QUEUED.value)
            row = conn.execute(q.order_by(TRIALS.c.number).limit(1)).first()
            if row is None:
                return None
            now = time.time()
            changes = {
                "state": TrialState.RUNNING.value,
                "attempt": row.attempt + 1,
                "started_at": now,
                "heartbeat_at": now,
                "host": host or socket.gethostname(),
                "pid": pid or os.getpid(),
                "seq": self._bump(conn, study),
            }
            conn.execute(sa.update(TRIALS).where(TRIALS.c.id == row.id).values(**changes))
            return to_record(RowValues({**row._asdict(), **changes}), trial_steps(conn, row.id))

        return self._txn(f"claim a queued trial of study {study!r}", fn, write=True)

    def report(self, study: str, number: int, step: int, value: float | Sequence[float]) -> None:
        self.report_many(study, number, {step: value})

    def report_many(self, study: str, number: int, values: Mapping[int, float | Sequence[float]]) -> None:
        """Store several intermediate values of a RUNNING trial in one transaction (see :meth:`report`)."""
        encoded = encode_steps(values)
        if not encoded:
            return

        def fn(conn: Connection, attempt: int) -> None:
            seq = self._bump(conn, study)  # first: every writer locks the study row before a trial row
            row = trial_row(conn, self._where, study, number, lock=True)
            store_steps(conn, study, row, encoded)
            conn.execute(sa.update(TRIALS).where(TRIALS.c.id == row.id).values(heartbeat_at=time.time(), seq=seq))

        steps = sorted(encoded)
        where = f"step {steps[0]}" if len(steps) == 1 else f"steps {steps[0]} to {steps[-1]}"
        self._txn(f"report {where} of trial {number} of study {study!r}", fn, write=True)

    def heartbeat(self, study: str, numbers: Sequence[int]) -> None:
        numbers = [check_int(n, "trial number") for n in numbers]
        if not numbers:
            return

        def fn(conn: Connection, attempt: int) -> None:
            study_id = study_row(conn, self._where, study).id
            where = (TRIALS.c.study_id == study_id) & TRIALS.c.number.in_(numbers)
            conn.execute(
                sa.update(TRIALS)
                .where(where & (TRIALS.c.state == TrialState.RUNNING.value))
                .values(heartbeat_at=time.time())
            )

        self._txn(f"record the heartbeat of study {study!r}", fn, write=True)

    def finish_trial(
        self,
        study: str,
        number: int,
        *,
        state: TrialState,
        value: float | None = None,
        best_step: int | None = None,
        error: str | None = None,
        checkpoint: str | None = None,
        attrs: Mapping[str, Any] | None = None,
        values: Sequence[float] | None = None,
        steps: Mapping[int, float | Sequence[float]] | None = None,
    ) -> TrialRecord:
        state = TrialState(state)
        encoded = encode_steps(steps or {})
        vector = encode_values(values, "values")
        if state not in FINISHED:
            raise StorageError(f"finish_trial needs state COMPLETE, PRUNED or FAILED, got state={state.value!r}")
        v, flag = encode_float(value, "value")
        if best_step is not None:
            check_int(best_step, "best_step")
        extra = dict(attrs or {})
        dumps(extra, "trial attrs")

        def fn(conn: Connection, attempt: int) -> TrialRecord:
            seq = self._bump(conn, study)
            row = trial_row(conn, self._where, study, number, lock=True)
            if row.state in {s.value for s in FINISHED}:
                same = row.state == state.value and (row.value, row.value_nonfinite) == (v, flag)
                if attempt and same:  # our own commit, retried after its answer was lost
                    return to_record(row, trial_steps(conn, row.id))
                raise StorageError(
                    f"trial {number} of study {study!r} is already {row.state}; a finished trial is not overwritten"
                    " (requeue_trial puts a FAILED trial back in the queue)"
                )
            if encoded:
                store_steps(conn, study, row, encoded)
            changes = {
                "state": state.value,
                "value": v,
                "value_nonfinite": flag,
                "best_step": best_step,
                "error": None if error is None else mask_secrets(error),  # a trial's error may quote a password
                "checkpoint": None if checkpoint is None else os.fspath(checkpoint),
                "finished_at": time.time(),
                "attrs": dumps({**json.loads(row.attrs), **extra}, "trial attrs"),
                "seq": seq,
                "objective_values": vector,
            }
            conn.execute(sa.update(TRIALS).where(TRIALS.c.id == row.id).values(**changes))
            return to_record(RowValues({**row._asdict(), **changes}), trial_steps(conn, row.id))

        return self._txn(f"finish trial {number} of study {study!r}", fn, write=True)

    def requeue_trial(self, study: str, number: int) -> TrialRecord:
        def fn(conn: Connection, attempt: int) -> TrialRecord:
            seq = self._bump(conn, study)
            row = trial_row(conn, self._where, study, number, lock=True)
            if row.state not in (TrialState.RUNNING.value, TrialState.FAILED.value):
                raise StorageError(
                    f"trial {number} of study {study!r} is {row.state}: only RUNNING or FAILED trials can be requeued"
                )
            return self._requeue(conn, row, seq)

        return self._txn(f"requeue trial {number} of study {study!r}", fn, write=True)

    def requeue_failed(self, study: str) -> list[int]:
        def fn(conn: Connection, attempt: int) -> list[int]:
            seq = self._bump(conn, study)  # first: every writer locks the study row before a trial row
            study_id = study_row(
                conn, self._where, study, lock=True
            ).id  # one driver at a time: each trial is requeued once
            q = sa.select(TRIALS).where(TRIALS.c.study_id == study_id, TRIALS.c.state == TrialState.FAILED.value)
            return [self._requeue(conn, row, seq).number for row in conn.execute(q.order_by(TRIALS.c.number)).all()]

        return self._txn(f"requeue the FAILED trials of study {study!r}", fn, write=True)

    def delete_study(self, study: str, *, force: bool = False) -> int:
        def fn(conn: Connection, attempt: int) -> int:
            study_id = study_row(conn, self._where, study, lock=True).id
            running = conn.execute(
                sa.select(TRIALS.c.number, TRIALS.c.host, TRIALS.c.pid).where(
                    TRIALS.c.study_id == study_id, TRIALS.c.state == TrialState.RUNNING.value
                )
            ).all()
            if running and not force:
                who = ", ".join(f"trial {n} ({h} pid {p})" for n, h, p in running)
                raise StorageError(
                    f"study {study!r} in {self._where} has RUNNING trials: {who}; a driver may be using it: stop"
                    " it first, or delete anyway with force=True (lightning-hpt delete --force) if those processes"
                    " are gone"
                )
            ids = sa.select(TRIALS.c.id).where(TRIALS.c.study_id == study_id).scalar_subquery()
            conn.execute(sa.delete(VALUES).where(VALUES.c.trial_id.in_(ids)))
            count = conn.execute(sa.delete(TRIALS).where(TRIALS.c.study_id == study_id)).rowcount
            conn.execute(sa.delete(STUDIES).where(STUDIES.c.id == study_id))
            return count

        return self._txn(f"delete study {study!r}", fn, write=True)

    def _requeue(self, conn: Connection, row: sa.Row, seq: int) -> TrialRecord:
        """Put a trial (its row locked by the caller) back in the queue; the attempt is kept in its attrs."""
        last_step = conn.execute(sa.select(sa.func.max(VALUES.c.step)).where(VALUES.c.trial_id == row.id)).scalar()
        attrs = json.loads(row.attrs)
        previous = attrs.get("attempts")
        attrs["attempts"] = [
            *(previous if isinstance(previous, list) else []),
            {
                "error": row.error,
                "started_at": row.started_at,
                "finished_at": row.finished_at,
                "host": row.host,
                "pid": row.pid,
                "last_step": last_step,
            },
        ]
        cleared = ("value", "value_nonfinite", "objective_values", "best_step", "error", "checkpoint")
        cleared = (*cleared, "started_at", "finished_at")
        changes: dict[str, Any] = dict.fromkeys((*cleared, "host", "pid", "heartbeat_at"))
        changes.update(state=TrialState.QUEUED.value, attrs=dumps(attrs, "trial attrs"), seq=seq)
        conn.execute(sa.delete(VALUES).where(VALUES.c.trial_id == row.id))
        conn.execute(sa.update(TRIALS).where(TRIALS.c.id == row.id).values(**changes))
        return to_record(RowValues({**row._asdict(), **changes}), {})

    def set_trial_attrs(self, study: str, number: int, attrs: Mapping[str, Any]) -> None:
        dumps(dict(attrs), "trial attrs")

        def fn(conn: Connection, attempt: int) -> None:
            seq = self._bump(conn, study)
            row = trial_row(conn, self._where, study, number, lock=True)
            merged = dumps({**json.loads(row.attrs), **attrs}, "trial attrs")
            conn.execute(sa.update(TRIALS).where(TRIALS.c.id == row.id).values(attrs=merged, seq=seq))

        self._txn(f"set attrs of trial {number} of study {study!r}", fn, write=True)
