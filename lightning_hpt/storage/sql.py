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

import contextlib
import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.pool import StaticPool

from lightning_hpt.exceptions import (
    DatabaseLockedError,
    DuplicateTrialError,
    HPTError,
    SearchSpaceError,
    StorageError,
    StudyMismatchError,
)
from lightning_hpt.space import SearchSpace, validate_name
from lightning_hpt.storage.base import Storage, StudyInfo
from lightning_hpt.storage.sql_history import HistoryCache, bump
from lightning_hpt.storage.sql_migrate import migrate
from lightning_hpt.storage.sql_schema import (
    FINISHED,
    META,
    METADATA,
    SCHEMA_VERSION,
    STUDIES,
    TRIALS,
    VALUES,
    RowValues,
    check_int,
    classify,
    decode_float,
    differences,
    dumps,
    enable_wal,
    encode_float,
    hint,
    orig_message,
    sqlite_begin,
    sqlite_connect,
    to_record,
)
from lightning_hpt.trial import Direction, History, TrialRecord, TrialState, params_key

__all__ = ["SCHEMA_VERSION", "SQLStorage"]

log = logging.getLogger(__name__)
T = TypeVar("T")


#: Version of the table layout; a database written by a newer layout is refused, never rewritten.
class SQLStorage(Storage):
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

    A storage object can be pickled: the copy reconnects lazily in its own process (not for
    in-memory SQLite). After ``fork`` the child opens its own connections too.

    Example:
        >>> storage = SQLStorage("sqlite:///runs/study.db", lock_timeout=60)
        >>> storage.study_names()
        []
    """

    def __init__(
        self,
        url: str | URL,
        *,
        lock_timeout: float = 30.0,
        retries: int = 3,
        engine_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if isinstance(lock_timeout, bool) or not isinstance(lock_timeout, (int, float)) or not lock_timeout > 0:
            raise StorageError(f"lock_timeout must be a positive number of seconds, got lock_timeout={lock_timeout!r}")
        self.lock_timeout = float(lock_timeout)
        self.retries = check_int(retries, "retries")
        self._engine_kwargs = dict(engine_kwargs or {})
        self._url = self._normalise_url(url)
        self._setup()
        _ = self.engine  # open now, so a bad file or URL is reported where the storage is created

    # ------------------------------------------------------------------ connection management

    def _normalise_url(self, url: str | URL) -> URL:
        try:
            u = make_url(url)
        except (sa_exc.ArgumentError, TypeError, ValueError) as e:
            raise StorageError(
                f"storage url {url!r} is not a database URL ({e}); use 'sqlite:///path/to/study.db' or"
                " 'postgresql+psycopg://user@host/dbname'"
            ) from None
        if u.get_backend_name() == "sqlite" and not self._is_memory(u) and "uri" not in u.query:
            path = os.path.abspath(os.path.expanduser(u.database))
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
            except OSError as e:
                raise StorageError(f"cannot create the directory of the study database file {path!r}: {e}") from e
            u = u.set(database=path)
        # SQLAlchemy's default PostgreSQL driver is psycopg2; use psycopg 3 when that is what is installed.
        if u.drivername == "postgresql":
            try:
                import psycopg2  # noqa: F401
            except ImportError:
                u = u.set(drivername="postgresql+psycopg")
        return u

    @staticmethod
    def _is_memory(u: URL) -> bool:
        return u.database in (None, "", ":memory:") or u.query.get("mode") == "memory"

    def _setup(self) -> None:
        self._engine: Engine | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._inherited: list[Engine] = []
        self._sqlite = self._url.get_backend_name() == "sqlite"
        self._memory = self._sqlite and self._is_memory(self._url)
        # An in-memory database is one shared connection: threads must take turns with it.
        self._memory_lock: Any = threading.RLock() if self._memory else contextlib.nullcontext()
        self.url = self._url.render_as_string(hide_password=True)
        self._where = f"file {self._url.database!r}" if self._sqlite and not self._memory else self.url
        self._cache, self._cache_lock = HistoryCache(), threading.Lock()  # this process's incremental history

    def __getstate__(self) -> dict[str, Any]:
        if self._memory:
            raise StorageError(
                "an in-memory SQLite storage ('sqlite://') cannot be sent to another process: its data lives in this"
                " one; use a file, e.g. 'sqlite:///runs/study.db'"
            )
        return {"url": self._url, "lock_timeout": self.lock_timeout, "retries": self.retries, "kw": self._engine_kwargs}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._url, self.lock_timeout, self.retries = state["url"], state["lock_timeout"], state["retries"]
        self._engine_kwargs = state["kw"]
        self._setup()  # the engine is created on first use, in the new process

    def __repr__(self) -> str:
        return f"SQLStorage({self.url!r})"

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine, created on first use in each process; the schema is checked then."""
        engine = self._engine
        if engine is not None and self._pid == os.getpid():
            return engine
        with self._lock:
            if self._engine is not None and self._pid != os.getpid():
                # A forked child must not use (or close) the parent's connections: keep them unused.
                self._engine.dispose(close=False)
                self._inherited.append(self._engine)
                self._engine = None
                self._cache, self._cache_lock = HistoryCache(), threading.Lock()  # a parent thread may hold it
            if self._engine is None:
                engine = self._create_engine()
                try:
                    self._check_schema(engine)
                except BaseException:
                    engine.dispose()
                    raise
                self._engine, self._pid = engine, os.getpid()
            return self._engine

    def _create_engine(self) -> Engine:
        kwargs = dict(self._engine_kwargs)
        if self._sqlite:
            connect_args = {"timeout": self.lock_timeout, **kwargs.pop("connect_args", {})}
            if self._memory:
                connect_args.setdefault("check_same_thread", False)
                # One shared connection: with a pool, every checkout would be a new, empty database.
                kwargs.setdefault("poolclass", StaticPool)
            kwargs["connect_args"] = connect_args
        else:
            kwargs.setdefault("pool_pre_ping", True)  # a server restart must not surface as an error
        try:
            engine = sa.create_engine(self._url, **kwargs)
        except (ImportError, sa_exc.NoSuchModuleError) as e:
            raise StorageError(
                f"cannot open {self.url}: the database driver is missing ({e}); for PostgreSQL install it with"
                " pip install 'psycopg[binary]' and use a URL starting with 'postgresql+psycopg://'"
            ) from None
        except (sa_exc.ArgumentError, TypeError) as e:
            raise StorageError(f"cannot open {self.url}: {e}; check the URL and engine_kwargs") from None
        if self._sqlite:
            event.listen(engine, "connect", sqlite_connect)
            event.listen(engine, "begin", sqlite_begin)
        return engine

    def close(self) -> None:
        """Release the connections; the storage reconnects if it is used again."""
        with self._lock:
            if self._engine is not None and self._pid == os.getpid():
                self._engine.dispose()
            self._engine = None

    # ------------------------------------------------------------------ transactions and retries

    def _txn(self, what: str, fn: Callable[[Connection, int], T], *, write: bool, engine: Engine | None = None) -> T:
        """Run ``fn(conn, attempt)`` in one transaction, retrying lock waits and transient errors."""

        def once(attempt: int) -> T:
            eng = engine or self.engine  # before the memory lock: self.engine may take self._lock
            with self._memory_lock, eng.connect() as conn:
                if write:
                    conn.execution_options(hpt_write=True)
                with conn.begin():
                    return fn(conn, attempt)

        return self._retry(what, once, conflicts=write)

    def _retry(self, what: str, call: Callable[[int], T], *, conflicts: bool = False) -> T:
        start = time.monotonic()
        failures = 0
        attempt = 0
        while True:
            try:
                return call(attempt)
            except HPTError:
                raise
            except (sa_exc.SQLAlchemyError, OSError) as e:
                kind = classify(e)
                elapsed = time.monotonic() - start
                if kind == "locked":
                    if elapsed >= self.lock_timeout:
                        raise DatabaseLockedError(
                            f"the database {self._where} stayed locked by another process for {elapsed:.1f} s"
                            f" (lock_timeout={self.lock_timeout:g} s) while trying to {what}: let the other program"
                            " finish, raise lock_timeout, or for many concurrent writers use PostgreSQL"
                            " (storage='postgresql+psycopg://user@host/dbname')"
                        ) from e
                    delay = min(0.02 * 2 ** min(attempt, 6), 1.0, self.lock_timeout - elapsed)
                elif (kind == "transient" or (kind == "conflict" and conflicts)) and failures < self.retries:
                    failures += 1
                    delay = 0.05 * 2**failures
                    log.warning(
                        "retrying after a database error while trying to %s in %s: %s",
                        what,
                        self.url,
                        self._mask(orig_message(e)),
                    )
                else:
                    detail = self._mask(orig_message(e))
                    retried = f" (after {failures} retries)" if failures else ""
                    raise StorageError(f"could not {what} in {self._where}{retried}: {detail}; {hint(detail)}") from e
                time.sleep(delay * random.uniform(0.5, 1.0))  # jitter: do not wake in step with the other writer
                attempt += 1

    def _mask(self, text: str) -> str:
        password = self._url.password
        return text.replace(str(password), "***") if password else text

    # ------------------------------------------------------------------ schema

    def _check_schema(self, engine: Engine) -> None:
        status = self._txn("read the tables", lambda c, a: self._inspect(c), write=False, engine=engine)
        if status == "empty":
            self._txn("create the study tables", self._initialise, write=True, engine=engine)
        if status == "old":
            self._txn("upgrade the study tables", self._upgrade, write=True, engine=engine)
        if self._sqlite and not self._memory:
            self._retry("switch the database to WAL mode", lambda a: enable_wal(engine))

    def _inspect(self, conn: Connection) -> str:
        inspector = sa.inspect(conn)
        names = set(inspector.get_table_names())
        if self._sqlite:
            names |= set(inspector.get_view_names())
        ours = {n for n in names if n.startswith("hpt_")}
        if not ours:
            if names and self._sqlite:  # a server database is shared by design; a file belongs to one program
                raise StorageError(
                    f"the database {self._where} belongs to another program (it has tables {sorted(names)[:10]}"
                    " but none of lightning-hpt's); it was left unchanged: pass the path of a new .db file"
                )
            return "empty"
        damaged = f"the database {self._where} has lightning-hpt tables {sorted(ours)} but"
        fix = "it was left unchanged; restore it from a backup or pass the path of a new database"
        if "hpt_meta" not in ours:
            raise StorageError(f"{damaged} no hpt_meta table with the schema version: it is damaged; {fix}")
        raw = conn.execute(sa.select(META.c.value).where(META.c.key == "schema_version")).scalar()
        try:
            version = int(raw)
        except (TypeError, ValueError):
            raise StorageError(
                f"{damaged} its schema_version is {raw!r}, not an integer: it is damaged; {fix}"
            ) from None
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"the database {self._where} was written by a newer lightning-hpt (schema_version={version}, this"
                f" version reads {SCHEMA_VERSION}); it was left unchanged: upgrade lightning-hpt to open it"
            )
        if version < 1:
            raise StorageError(f"{damaged} schema_version={version} is older than any release; {fix}")
        if version < SCHEMA_VERSION:
            return "old"
        missing = sorted(set(METADATA.tables) - ours)
        if missing:
            raise StorageError(f"{damaged} is missing tables {missing}: it is damaged; {fix}")
        return "ok"

    def _initialise(self, conn: Connection, attempt: int) -> None:
        if conn.dialect.name == "postgresql":  # two drivers creating the tables at once must not collide
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(7235890)"))
        if self._inspect(conn) == "ok":  # another process created them while we waited for the lock
            return
        METADATA.create_all(conn)
        conn.execute(
            sa.insert(META),
            [
                {"key": "schema_version", "value": str(SCHEMA_VERSION)},
                {"key": "created_at", "value": repr(time.time())},
            ],
        )

    def _upgrade(self, conn: Connection, attempt: int) -> None:
        if conn.dialect.name == "postgresql":  # two drivers upgrading at once must not collide
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(7235890)"))
        if self._inspect(conn) == "old":  # not upgraded by another process while we waited for the lock
            version = int(conn.execute(sa.select(META.c.value).where(META.c.key == "schema_version")).scalar())
            log.info("upgrading the study tables of %s from schema_version %d to %d", self.url, version, SCHEMA_VERSION)
            migrate(conn, version)

    def _bump(self, conn: Connection, study: str) -> int:
        """Take the study's change counter up (see :mod:`.sql_history`); every write that changes a trial does."""
        seq = bump(conn, study)
        if seq is None:
            self._study(conn, study)  # raises: no such study
        return seq

    # ------------------------------------------------------------------ studies

    def open_study(self, info: StudyInfo, *, allow_changes: bool = False) -> StudyInfo:
        validate_name(info.name, "study name")
        given = StudyInfo(
            info.name,
            SearchSpace(info.space),
            Direction.parse(info.direction),
            str(info.monitor),
            str(info.strategy),
            None if info.seed is None else check_int(info.seed, "seed"),
            dict(info.attrs),
        )
        row = {
            "name": given.name,
            "space": given.space.to_json(),
            "direction": given.direction.value,
            "monitor": given.monitor,
            "strategy": given.strategy,
            "seed": given.seed,
            "attrs": dumps(given.attrs, "study attrs"),
            "created_at": time.time(),
        }

        def fn(conn: Connection, attempt: int) -> StudyInfo:
            found = conn.execute(sa.select(STUDIES).where(STUDIES.c.name == given.name)).first()
            if found is None:
                conn.execute(sa.insert(STUDIES).values(**row))
                return given
            stored = self._info(found)
            if not allow_changes:
                diffs = differences(stored, given)
                if diffs:
                    raise StudyMismatchError(
                        f"study {given.name!r} in {self._where} was created with a different setup: "
                        + "; ".join(diffs)
                        + ". To keep both, pass a new study name; to continue the stored study as it is (its stored"
                        " space, monitor, direction and strategy are used), pass allow_changes=True"
                    )
            return stored

        return self._txn(f"open study {given.name!r}", fn, write=True)

    def load_study(self, name: str) -> StudyInfo:
        return self._txn(f"load study {name!r}", lambda c, a: self._info(self._study(c, name)), write=False)

    def study_names(self) -> list[str]:
        q = sa.select(STUDIES.c.name).order_by(STUDIES.c.name)
        return self._txn("list the studies", lambda c, a: list(c.execute(q).scalars()), write=False)

    def set_study_attrs(self, study: str, attrs: Mapping[str, Any]) -> None:
        dumps(dict(attrs), "study attrs")  # fail before touching the database

        def fn(conn: Connection, attempt: int) -> None:
            row = self._study(conn, study, lock=True)
            merged = {**json.loads(row.attrs), **attrs}
            conn.execute(sa.update(STUDIES).where(STUDIES.c.id == row.id).values(attrs=dumps(merged, "study attrs")))

        self._txn(f"set attrs of study {study!r}", fn, write=True)

    def _study(self, conn: Connection, name: str, *, lock: bool = False) -> sa.Row:
        q = sa.select(STUDIES).where(STUDIES.c.name == name)
        row = conn.execute(q.with_for_update() if lock else q).first()  # FOR UPDATE: serialises writers on PostgreSQL
        if row is None:
            known = list(conn.execute(sa.select(STUDIES.c.name).order_by(STUDIES.c.name)).scalars())
            raise StorageError(
                f"there is no study {name!r} in {self._where}; known studies: {known}; open it first with open_study"
            )
        return row

    def _info(self, row: sa.Row) -> StudyInfo:
        try:
            space = SearchSpace.from_json(row.space)
        except (SearchSpaceError, ValueError) as e:
            raise StorageError(f"the stored space of study {row.name!r} in {self._where} cannot be read: {e}") from None
        return StudyInfo(
            row.name, space, Direction(row.direction), row.monitor, row.strategy, row.seed, json.loads(row.attrs)
        )

    # ------------------------------------------------------------------ trials: reading

    def trials(self, study: str) -> list[TrialRecord]:
        return self._txn(
            f"read the trials of study {study!r}", lambda c, a: self._trials(c, self._study(c, study).id), write=False
        )

    def history(self, study: str, max_steps: int | None = None) -> History:
        """The study's history; after the first read, only the trials changed since are read."""

        def fn(conn: Connection, attempt: int) -> History:
            with self._cache_lock:  # one reader at a time: each sees the study no older than the last one did
                return self._cache.history(conn, self._study(conn, study), self._info, max_steps)

        return self._txn(f"read the history of study {study!r}", fn, write=False)

    def _trials(self, conn: Connection, study_id: int) -> list[TrialRecord]:
        steps: dict[int, dict[int, float]] = {}
        q = (
            sa.select(VALUES.c.trial_id, VALUES.c.step, VALUES.c.value, VALUES.c.nonfinite)
            .join(TRIALS, TRIALS.c.id == VALUES.c.trial_id)
            .where(TRIALS.c.study_id == study_id)
            .order_by(VALUES.c.trial_id, VALUES.c.step)
        )
        for trial_id, step, value, flag in conn.execute(q):  # one query for every trial's curve
            steps.setdefault(trial_id, {})[step] = decode_float(value, flag)
        rows = conn.execute(sa.select(TRIALS).where(TRIALS.c.study_id == study_id).order_by(TRIALS.c.number))
        return [to_record(r, steps.get(r.id, {})) for r in rows]

    def last_heartbeat(self, study: str, number: int) -> float | None:
        def fn(conn: Connection, attempt: int) -> float | None:
            row = self._trial(conn, study, number)
            return row.heartbeat_at if row.heartbeat_at is not None else row.started_at

        return self._txn(f"read the heartbeat of trial {number} of study {study!r}", fn, write=False)

    def _trial(self, conn: Connection, study: str, number: int, *, lock: bool = False) -> sa.Row:
        check_int(number, "trial number")
        q = sa.select(TRIALS).join(STUDIES, STUDIES.c.id == TRIALS.c.study_id)
        q = q.where(STUDIES.c.name == study, TRIALS.c.number == number)
        row = conn.execute(q.with_for_update(of=TRIALS) if lock else q).first()
        if row is None:
            study_id = self._study(conn, study).id  # raises if the study itself is unknown
            count = conn.execute(sa.select(sa.func.count()).where(TRIALS.c.study_id == study_id)).scalar()
            known = f"its trials are numbered 0 to {count - 1}" if count else "it has no trials yet"
            raise StorageError(f"study {study!r} in {self._where} has no trial number {number}; {known}")
        return row

    def _steps(self, conn: Connection, trial_id: int) -> dict[int, float]:
        q = sa.select(VALUES.c.step, VALUES.c.value, VALUES.c.nonfinite).where(VALUES.c.trial_id == trial_id)
        return {step: decode_float(v, f) for step, v, f in conn.execute(q.order_by(VALUES.c.step))}

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
        running = state is TrialState.RUNNING
        now = time.time()

        def fn(conn: Connection, attempt: int) -> TrialRecord | None:
            study_id = self._study(conn, study, lock=True).id
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
                key = params_key(json.loads(params_json))
                q = sa.select(TRIALS.c.number, TRIALS.c.params).where(TRIALS.c.study_id == study_id)
                for other, text in conn.execute(q):
                    if params_key(json.loads(text)) == key:
                        raise DuplicateTrialError(
                            f"study {study!r} already has trial {other} with params {json.loads(params_json)}"
                        )
            values = {
                "study_id": study_id,
                "number": free,
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
                "token": token,
                "seq": self._bump(conn, study),
            }
            conn.execute(sa.insert(TRIALS).values(**values))
            return to_record(RowValues(values), {})

        return self._txn(f"create a trial in study {study!r}", fn, write=True)

    def claim_queued(self, study: str, *, host: str | None = None, pid: int | None = None) -> TrialRecord | None:
        def fn(conn: Connection, attempt: int) -> TrialRecord | None:
            study_id = self._study(conn, study, lock=True).id
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
            return to_record(RowValues({**row._asdict(), **changes}), self._steps(conn, row.id))

        return self._txn(f"claim a queued trial of study {study!r}", fn, write=True)

    def report(self, study: str, number: int, step: int, value: float) -> None:
        self.report_many(study, number, {step: value})

    def report_many(self, study: str, number: int, values: Mapping[int, float]) -> None:
        """Store several intermediate values of a RUNNING trial in one transaction (see :meth:`report`)."""
        encoded = {
            check_int(step, "step"): encode_float(v, f"the value reported at step {step}") for step, v in values.items()
        }
        if not encoded:
            return
        steps = sorted(encoded)

        def fn(conn: Connection, attempt: int) -> None:
            seq = self._bump(conn, study)  # first: every writer locks the study row before a trial row
            row = self._trial(conn, study, number, lock=True)
            if row.state != TrialState.RUNNING.value:
                raise StorageError(
                    f"trial {number} of study {study!r} is {row.state}, not RUNNING: intermediate values can only be"
                    " reported while it runs (was it finished or requeued by another driver?)"
                )
            conn.execute(sa.delete(VALUES).where(VALUES.c.trial_id == row.id, VALUES.c.step.in_(steps)))
            rows = [{"trial_id": row.id, "step": k, "value": encoded[k][0], "nonfinite": encoded[k][1]} for k in steps]
            conn.execute(sa.insert(VALUES), rows)
            conn.execute(sa.update(TRIALS).where(TRIALS.c.id == row.id).values(heartbeat_at=time.time(), seq=seq))

        where = f"step {steps[0]}" if len(steps) == 1 else f"steps {steps[0]} to {steps[-1]}"
        self._txn(f"report {where} of trial {number} of study {study!r}", fn, write=True)

    def heartbeat(self, study: str, numbers: Sequence[int]) -> None:
        numbers = [check_int(n, "trial number") for n in numbers]
        if not numbers:
            return

        def fn(conn: Connection, attempt: int) -> None:
            study_id = self._study(conn, study).id
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
    ) -> TrialRecord:
        state = TrialState(state)
        if state not in FINISHED:
            raise StorageError(f"finish_trial needs state COMPLETE, PRUNED or FAILED, got state={state.value!r}")
        v, flag = encode_float(value, "value")
        if best_step is not None:
            check_int(best_step, "best_step")
        extra = dict(attrs or {})
        dumps(extra, "trial attrs")

        def fn(conn: Connection, attempt: int) -> TrialRecord:
            seq = self._bump(conn, study)
            row = self._trial(conn, study, number, lock=True)
            if row.state in {s.value for s in FINISHED}:
                same = row.state == state.value and (row.value, row.value_nonfinite) == (v, flag)
                if attempt and same:  # our own commit, retried after its answer was lost
                    return to_record(row, self._steps(conn, row.id))
                raise StorageError(
                    f"trial {number} of study {study!r} is already {row.state}; a finished trial is not overwritten"
                    " (requeue_trial puts a FAILED trial back in the queue)"
                )
            changes = {
                "state": state.value,
                "value": v,
                "value_nonfinite": flag,
                "best_step": best_step,
                "error": None if error is None else str(error),
                "checkpoint": None if checkpoint is None else os.fspath(checkpoint),
                "finished_at": time.time(),
                "attrs": dumps({**json.loads(row.attrs), **extra}, "trial attrs"),
                "seq": seq,
            }
            conn.execute(sa.update(TRIALS).where(TRIALS.c.id == row.id).values(**changes))
            return to_record(RowValues({**row._asdict(), **changes}), self._steps(conn, row.id))

        return self._txn(f"finish trial {number} of study {study!r}", fn, write=True)

    def requeue_trial(self, study: str, number: int) -> TrialRecord:
        def fn(conn: Connection, attempt: int) -> TrialRecord:
            seq = self._bump(conn, study)
            row = self._trial(conn, study, number, lock=True)
            if row.state not in (TrialState.RUNNING.value, TrialState.FAILED.value):
                raise StorageError(
                    f"trial {number} of study {study!r} is {row.state}: only RUNNING or FAILED trials can be requeued"
                )
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
            changes = dict.fromkeys(
                (
                    "value",
                    "value_nonfinite",
                    "best_step",
                    "error",
                    "checkpoint",
                    "started_at",
                    "finished_at",
                    "host",
                    "pid",
                    "heartbeat_at",
                ),
            )
            changes.update(state=TrialState.QUEUED.value, attrs=dumps(attrs, "trial attrs"), seq=seq)
            conn.execute(sa.delete(VALUES).where(VALUES.c.trial_id == row.id))
            conn.execute(sa.update(TRIALS).where(TRIALS.c.id == row.id).values(**changes))
            return to_record(RowValues({**row._asdict(), **changes}), {})

        return self._txn(f"requeue trial {number} of study {study!r}", fn, write=True)

    def set_trial_attrs(self, study: str, number: int, attrs: Mapping[str, Any]) -> None:
        dumps(dict(attrs), "trial attrs")

        def fn(conn: Connection, attempt: int) -> None:
            seq = self._bump(conn, study)
            row = self._trial(conn, study, number, lock=True)
            merged = dumps({**json.loads(row.attrs), **attrs}, "trial attrs")
            conn.execute(sa.update(TRIALS).where(TRIALS.c.id == row.id).values(attrs=merged, seq=seq))

        self._txn(f"set attrs of trial {number} of study {study!r}", fn, write=True)
