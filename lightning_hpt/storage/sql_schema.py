"""The tables of a study database, value encoding, and the database-specific hooks of :mod:`.sql`.

Parameter and metric names are stored as data (JSON text), never as table or column names.
Non-finite values (NaN, inf) are stored as ``NULL`` plus a flag, so they round-trip exactly.
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine

from lightning_hpt.exceptions import StorageError
from lightning_hpt.storage.base import StudyInfo
from lightning_hpt.trial import TrialRecord, TrialState

#: 2: a change counter per study (``hpt_studies.seq``) stamped on every trial it changes (``hpt_trials.seq``).
#: 3: several objectives and constraints: ``hpt_studies.definition``, ``objective_values`` of trials and steps.
SCHEMA_VERSION = 3
#: PostgreSQL schema of the tables unless the URL names another (``?schema=name``).
PG_SCHEMA = "lightning_hpt"
PG_SCHEMA_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

METADATA = sa.MetaData()
META = sa.Table(
    "hpt_meta", METADATA, sa.Column("key", sa.String(64), primary_key=True), sa.Column("value", sa.Text, nullable=False)
)
STUDIES = sa.Table(
    "hpt_studies",
    METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(128), nullable=False, unique=True),
    sa.Column("space", sa.Text, nullable=False),
    sa.Column("direction", sa.String(8), nullable=False),
    sa.Column("monitor", sa.Text, nullable=False),
    sa.Column("strategy", sa.Text, nullable=False),
    sa.Column("seed", sa.BigInteger),
    sa.Column("attrs", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False, server_default="0"),  # the study's change counter
    sa.Column("definition", sa.Text),  # JSON: objectives and constraints; NULL: one objective, no constraint
)
TRIALS = sa.Table(
    "hpt_trials",
    METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("study_id", sa.Integer, sa.ForeignKey("hpt_studies.id", ondelete="CASCADE"), nullable=False),
    sa.Column("number", sa.Integer, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("params", sa.Text, nullable=False),
    sa.Column("value", sa.Float),
    sa.Column("value_nonfinite", sa.String(4)),  # "nan", "inf", "-inf"; then value is NULL
    sa.Column("best_step", sa.Integer),
    sa.Column("error", sa.Text),
    sa.Column("checkpoint", sa.Text),
    sa.Column("started_at", sa.Float),
    sa.Column("finished_at", sa.Float),
    sa.Column("host", sa.String(255)),
    sa.Column("pid", sa.Integer),
    sa.Column("heartbeat_at", sa.Float),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("attrs", sa.Text, nullable=False),
    sa.Column("token", sa.String(32)),  # lets a retried create_trial find its own committed row
    sa.Column("seq", sa.BigInteger, nullable=False, server_default="0"),  # the study's counter at its last change
    sa.Column("objective_values", sa.Text),  # JSON list: every objective's value (several objectives only)
    sa.UniqueConstraint("study_id", "number", name="hpt_trials_study_number"),
    sa.Index("hpt_trials_study_state", "study_id", "state"),
    sa.Index("hpt_trials_study_seq", "study_id", "seq"),
)
VALUES = sa.Table(
    "hpt_trial_values",
    METADATA,
    sa.Column("trial_id", sa.Integer, sa.ForeignKey("hpt_trials.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("step", sa.Integer, primary_key=True),
    sa.Column("value", sa.Float),
    sa.Column("nonfinite", sa.String(4)),
    sa.Column("objective_values", sa.Text),  # JSON list: every objective's value at the step (several only)
)

#: the columns of a step as it is read: trial, step, value, non-finite flag, every objective's value.
STEP_COLUMNS = (VALUES.c.trial_id, VALUES.c.step, VALUES.c.value, VALUES.c.nonfinite, VALUES.c.objective_values)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAILED)
# OperationalErrors that retrying cannot cure: report them at once.
PERMANENT = (
    "disk is full",
    "disk full",
    "no space left",
    "not a database",
    "no such table",
    "no such column",
    "readonly",
    "read-only",
    "unable to open",
    "syntax error",
    "malformed",
    "authentication",
    "does not exist",
)
LOCKED = ("database is locked", "database table is locked", "database schema is locked", "lock timeout")
TRANSIENT_PG = ("could not serialize", "deadlock detected")


def encode_float(value: float | None, what: str) -> tuple[float | None, str | None]:
    """``(value, flag)`` columns: finite values as they are, NaN and inf as ``NULL`` plus a flag."""
    if value is None:
        return None, None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise StorageError(f"{what} must be a number, got {value!r} of type {type(value).__name__}") from None
    if math.isfinite(v):
        return v, None
    return None, "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")


def decode_float(value: float | None, flag: str | None) -> float | None:
    return float(flag) if flag else value


def json_default(obj: Any) -> Any:
    item = getattr(obj, "item", None)  # numpy scalars and one-element tensors
    if callable(item):
        try:
            return item()
        except (TypeError, ValueError, RuntimeError):
            pass
    raise TypeError(f"{obj!r} of type {type(obj).__name__} is not JSON data")


def dumps(obj: Any, what: str, *, allow_nan: bool = True) -> str:
    try:
        return json.dumps(obj, default=json_default, allow_nan=allow_nan)
    except (TypeError, ValueError) as e:
        raise StorageError(
            f"{what} must be JSON data (dicts with string keys, lists, str, finite numbers, bool, None), but {e};"
            " convert the value to one of these types before storing it"
        ) from None


def check_int(value: Any, what: str, minimum: int = 0) -> int:
    try:
        number = operator.index(value)  # int and numpy integers, not floats
    except TypeError:
        number = None
    if isinstance(value, bool) or number is None or number < minimum:
        raise StorageError(f"{what} must be an integer >= {minimum}, got {what}={value!r}")
    return number


def classify(e: BaseException) -> str:
    """``locked``, ``transient``, ``conflict`` or ``fatal``: what the retry loop does with an error."""
    if not isinstance(e, sa_exc.DBAPIError):
        return "fatal"
    msg = str(e.orig).lower()
    if any(m in msg for m in LOCKED):
        return "locked"
    if isinstance(e, sa_exc.IntegrityError):
        return "conflict"
    if e.connection_invalidated or any(m in msg for m in TRANSIENT_PG):
        return "transient"
    if isinstance(e, sa_exc.OperationalError) and not any(m in msg for m in PERMANENT):
        return "transient"
    return "fatal"


def hint(msg: str) -> str:
    msg = msg.lower()
    if "full" in msg or "no space" in msg:
        return "free disk space (or move the study to another disk) and resume: the records already stored are intact"
    if "not a database" in msg or "malformed" in msg:
        return (
            "the file is not a SQLite database or it is corrupt; it was left unchanged: pass the path of a new"
            " .db file, or restore this one from a backup"
        )
    if "unable to open" in msg:
        return "check that the path is a file (not a directory) in a directory you can write to"
    if "permission denied for database" in msg or "permission denied for schema" in msg:
        return (
            f"the database user may not create or use the tables' schema: ask its owner to run CREATE SCHEMA"
            f" {PG_SCHEMA} AUTHORIZATION <user>, or name a schema the user can write with ?schema=<name> in the URL"
        )
    return "check that the database is reachable and writable"


def orig_message(e: BaseException) -> str:
    orig = getattr(e, "orig", None) or e
    return f"{type(orig).__name__}: {str(orig).strip()}"


class RowValues:
    """Attribute access over a dict, so freshly written values build a record like a fetched row."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.__dict__.update(values)


def encode_values(values: Any, what: str) -> str | None:
    """A vector of objective values as JSON text (``None`` stays ``None``); NaN and inf round-trip."""
    if values is None:
        return None
    try:
        floats = [float(v) for v in values]
    except (TypeError, ValueError):
        raise StorageError(f"{what} must be a list of numbers, got {values!r}") from None
    return json.dumps(floats)


def decode_step(value: float | None, flag: str | None, vector: str | None) -> Any:
    """A stored step: its value, or ``(value, every objective's value)`` with several objectives."""
    first = decode_float(value, flag)
    return first if vector is None else (first, decode_values(vector))


def definition_to_json(info: StudyInfo) -> str | None:
    """The study's objectives and constraints as JSON text; ``None`` for one objective without constraints."""
    from lightning_hpt.constraints import constraints_to_json
    from lightning_hpt.objectives import objectives_to_json

    if not info.objectives and not info.constraints:
        return None
    data = {"objectives": objectives_to_json(info.objectives), "constraints": constraints_to_json(info.constraints)}
    return json.dumps(data)


def definition_from_json(text: str | None, what: str) -> tuple[tuple, tuple]:
    """``(objectives, constraints)`` of a stored definition (``((), ())`` for none)."""
    from lightning_hpt.constraints import constraints_from_json
    from lightning_hpt.objectives import objectives_from_json

    if text is None:
        return (), ()
    try:
        data = json.loads(text)
        return objectives_from_json(data.get("objectives")), constraints_from_json(data.get("constraints"))
    except (ValueError, KeyError, TypeError, SyntaxError) as e:
        raise StorageError(f"the stored objectives and constraints of {what} cannot be read: {e}") from None


def decode_values(text: str | None) -> tuple[float, ...] | None:
    return None if text is None else tuple(float(v) for v in json.loads(text))


def split_step_value(value: Any, what: str) -> tuple[float | None, str | None, str | None]:
    """``(value, flag, objective_values)`` columns of a reported step: a number, or every objective's value."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise StorageError(f"{what} must be a number or a non-empty list of numbers, got {value!r}")
        return (*encode_float(value[0], what), encode_values(value, what))
    return (*encode_float(value, what), None)


def to_record(row: Any, intermediate: dict[int, Any]) -> TrialRecord:
    """A trial from its row and its steps ``{step: value}`` (a step of several objectives: ``(value, vector)``)."""
    vectors = {s: v[1] for s, v in intermediate.items() if isinstance(v, tuple)}
    if vectors:
        intermediate = {s: v[0] if isinstance(v, tuple) else v for s, v in intermediate.items()}
    return TrialRecord(
        number=row.number,
        params=json.loads(row.params),
        state=TrialState(row.state),
        value=decode_float(row.value, row.value_nonfinite),
        intermediate=intermediate,
        best_step=row.best_step,
        error=row.error,
        checkpoint=row.checkpoint,
        started_at=row.started_at,
        finished_at=row.finished_at,
        host=row.host,
        pid=row.pid,
        attempt=row.attempt,
        attrs=json.loads(row.attrs),
        values=decode_values(getattr(row, "objective_values", None)),
        intermediate_values=vectors,
    )


def differences(stored: StudyInfo, given: StudyInfo) -> list[str]:
    """What differs between a stored study and the one asked for, in words; order of parameters ignored."""
    diffs = []
    old, new = stored.space.to_dict(), given.space.to_dict()
    added, removed = sorted(set(new) - set(old)), sorted(set(old) - set(new))
    if added:
        diffs.append(f"parameters added to the space: {added}")
    if removed:
        diffs.append(f"parameters removed from the space: {removed}")
    for name in sorted(set(old) & set(new)):
        if old[name] != new[name]:
            diffs.append(f"parameter {name!r} changed from {old[name]} to {new[name]}")
    for field in ("monitor", "direction", "objectives", "constraints", "strategy", "seed"):
        a, b = getattr(stored, field), getattr(given, field)
        if a != b:
            a, b = (_objectives(stored), _objectives(given)) if field == "objectives" else (_shown(a), _shown(b))
            diffs.append(f"{field} changed from {a!r} to {b!r}")
    return diffs


def _objectives(info: StudyInfo) -> list[str]:
    """The study's objectives as the mismatch message shows them; one objective (stored as ``()``) is its monitor."""
    if info.objectives:
        return [str(o) for o in info.objectives]
    return [f"{info.monitor} ({info.direction.value})"]


def _shown(value: Any) -> Any:
    """A definition field as the mismatch message shows it."""
    if isinstance(value, tuple):  # objectives or constraints
        return [str(v) for v in value]
    return getattr(value, "value", value)


def sqlite_connect(dbapi_conn: Any, record: Any) -> None:
    # We emit BEGIN ourselves (see sqlite_begin): the sqlite3 module's implicit transactions would
    # start reads without a lock and upgrade to a write lock mid-transaction, which deadlocks.
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA foreign_keys = ON")
    # In WAL mode NORMAL never corrupts the file and loses nothing when a process is killed; only a
    # power cut can drop the last commits. It saves an fsync on every report.
    cursor.execute("PRAGMA synchronous = NORMAL")
    cursor.close()


def sqlite_begin(conn: Connection) -> None:
    # IMMEDIATE takes the write lock at BEGIN, so a writer waits (busy timeout) before reading
    # anything and never has to abort half-way through a read-then-write transaction.
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("hpt_write") else "BEGIN")


def enable_wal(engine: Engine) -> None:
    # Only after the schema check: a foreign or newer database must not be changed, not even its journal mode.
    # It runs outside any transaction (SQLite refuses to change the journal mode inside one), so on a
    # raw connection; its errors are wrapped like SQLAlchemy's so the retry loop understands them.
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        mode = cursor.execute("PRAGMA journal_mode").fetchone()[0]
        if str(mode).lower() != "wal":
            cursor.execute("PRAGMA journal_mode = WAL")
        cursor.close()
    except engine.dialect.loaded_dbapi.Error as e:
        raise sa_exc.OperationalError("PRAGMA journal_mode = WAL", None, e) from e
    finally:
        raw.close()
