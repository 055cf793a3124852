"""The incremental history of a SQL study: each read fetches only the trials changed since the last one.

Every write that changes a trial takes the study's change counter (``hpt_studies.seq``) up by one,
under the study row's write lock, and stamps the new value on the trial row (``hpt_trials.seq``) in
the same transaction (:func:`bump`). Writers therefore commit in counter order, so whatever a reader
sees is every change up to some counter value and none after it: the trials with ``seq`` above the
last value read are exactly those changed since, whichever driver changed them. The reader takes
the study row's counter first, then every trial stamped above the counter it had: all that committed
up to the counter it took is there, and anything newer is read again next time. A changed trial is
read whole, its row and all its values, which also covers values deleted by a requeue.

A full read is the fallback: on the first read, after the study was recreated under the same name
(another id or creation time), or when the counter went back (the database was restored from a
backup between two reads).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from lightning_hpt.storage.base import StudyInfo
from lightning_hpt.storage.sql_schema import STEP_COLUMNS, STUDIES, TRIALS, VALUES, decode_step, to_record
from lightning_hpt.trial import Direction, History, TrialRecord

__all__ = ["HistoryCache", "bump"]


def bump(conn: Connection, study: str) -> int | None:
    """Take the change counter of ``study`` up by one, locking its row until commit; the new value, or ``None``."""
    q = sa.update(STUDIES).where(STUDIES.c.name == study).values(seq=STUDIES.c.seq + 1).returning(STUDIES.c.seq)
    return conn.execute(q).scalar()


@dataclass
class _Study:
    """What one process knows of one study: its trials by number, up to change ``seq``."""

    key: tuple  # (id, created_at, space, direction, seed) of the study row: another value, another study
    seq: int
    info: StudyInfo
    records: list[TrialRecord] = field(default_factory=list)  # ordered by number
    where: dict[int, int] = field(default_factory=dict)  # number -> position in records
    index: Any = None  # see History.index: kept up to date with records
    trials: tuple[TrialRecord, ...] | None = None  # built on demand, dropped on change


class HistoryCache:
    """The trials of the studies this process read, brought up to date by incremental reads.

    Not shared between processes (a pickled storage starts empty); one lock in the storage keeps
    threads from updating it at once.
    """

    def __init__(self) -> None:
        self._studies: dict[str, _Study] = {}
        self.full_reads = 0  # how many reads fell back to reading the whole study (for tests and benchmarks)

    def history(
        self,
        conn: Connection,
        row: Any,
        make_info: Callable[[Any], StudyInfo],
        max_steps: int | None,
        index: Callable[[Direction], Any] | None = None,
    ) -> History:
        """The study's history as of this transaction.

        Args:
            conn: the reading transaction.
            row: the study's ``hpt_studies`` row, read in this transaction.
            make_info: reads the study's definition from ``row`` (only when it is not known yet).
            max_steps: see :class:`~lightning_hpt.trial.History`.
            index: makes the study's :attr:`History.index` (from its direction) the first time it is
                given; the index then has its ``replace(old, new)`` called for every changed trial
                and its ``trials`` set to the trials it reflects.
        """
        key = (row.id, row.created_at, row.space, row.direction, row.seed, row.definition)
        cached = self._studies.get(row.name)
        if cached is None or cached.key != key or row.seq < cached.seq:
            info = make_info(row)
            cached = self._studies[row.name] = _Study(key, -1, info)
            self.full_reads += 1
        info = cached.info
        if row.seq != cached.seq:
            self._apply(cached, _changed(conn, row.id, cached.seq))
            cached.seq = row.seq
        if cached.index is None and index is not None:  # made when first asked for, with every record known
            cached.index, cached.trials = index(info.direction), None
            for record in cached.records:
                cached.index.replace(None, record)
        if cached.trials is None:
            cached.trials = tuple(cached.records)
            if cached.index is not None:
                cached.index.trials = cached.trials
        return History(
            info.space,
            info.direction,
            cached.trials,
            info.seed,
            max_steps,
            index=cached.index,
            objectives=info.objectives,
        )

    @staticmethod
    def _apply(cached: _Study, changed: list[TrialRecord]) -> None:
        if not changed:
            return
        records, where = cached.records, cached.where
        for record in changed:
            at = where.get(record.number)
            old = None if at is None else records[at]
            if at is not None:
                records[at] = record
            elif not records or record.number > records[-1].number:  # the usual case: a new trial
                where[record.number] = len(records)
                records.append(record)
            else:  # numbers are allocated in order, so only a rare race lands here
                records.insert(bisect.bisect([t.number for t in records], record.number), record)
                where.clear()
                where.update((t.number, i) for i, t in enumerate(records))
            if cached.index is not None:
                cached.index.replace(old, record)
        cached.trials = None


def _changed(conn: Connection, study_id: int, since: int) -> list[TrialRecord]:
    """Every trial of the study stamped after change ``since``, with all its values, ordered by number.

    Two statements, as a full read has: the values may be newer than the rows they go with (on a
    database that gives each statement its own snapshot), and such a trial was stamped again, so
    the next read brings its row up to date. The values are looked up by trial: a join lets
    PostgreSQL's planner, on fresh statistics, scan every value of every trial.
    """
    q = sa.select(TRIALS).where(TRIALS.c.study_id == study_id, TRIALS.c.seq > since)
    rows = {r.id: r for r in conn.execute(q)}  # no ORDER BY: SQLite would walk the whole study in number order
    steps: dict[int, dict[int, Any]] = {}
    cols = STEP_COLUMNS
    if since < 0:  # everything: one statement over the study
        found = conn.execute(
            sa.select(*cols).join(TRIALS, TRIALS.c.id == VALUES.c.trial_id).where(TRIALS.c.study_id == study_id)
        )
    else:
        ids = list(rows)
        found = (
            r
            for i in range(0, len(ids), 500)
            for r in conn.execute(sa.select(*cols).where(VALUES.c.trial_id.in_(ids[i : i + 500])))
        )
    for trial_id, step, *value in found:
        steps.setdefault(trial_id, {})[step] = decode_step(*value)
    ordered = sorted(rows.values(), key=lambda r: r.number)
    return [to_record(r, dict(sorted(steps.get(r.id, {}).items()))) for r in ordered]
