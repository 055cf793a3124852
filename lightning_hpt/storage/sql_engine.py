"""The connection to a study database: its URL, engine, schema check, transactions and retries.

:class:`SQLDatabase` is the part of :class:`~lightning_hpt.storage.sql.SQLStorage` that knows
databases, not studies: it opens SQLite files and PostgreSQL servers, checks (and creates) the
tables, runs each unit of work in one transaction that takes the write lock up front, and retries
lock waits and transient errors. Every text it shows passes through
:func:`~lightning_hpt.masking.mask_secrets`.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.pool import StaticPool

from lightning_hpt.exceptions import DatabaseLockedError, HPTError, StorageError
from lightning_hpt.masking import get_logger, mask_secrets, safe_cause
from lightning_hpt.storage.sql_migrate import migrate
from lightning_hpt.storage.sql_schema import (
    META,
    METADATA,
    PG_SCHEMA,
    PG_SCHEMA_RE,
    SCHEMA_VERSION,
    check_int,
    classify,
    enable_wal,
    hint,
    orig_message,
    sqlite_begin,
    sqlite_connect,
)

__all__ = ["SQLDatabase", "parse_url"]

log = get_logger(__name__)
T = TypeVar("T")


def parse_url(url: str | URL) -> URL:
    """The SQLAlchemy URL of ``url``, or :class:`StorageError` quoting it masked (it does not parse)."""
    try:
        u = make_url(url)
    except (sa_exc.ArgumentError, TypeError, ValueError) as e:
        raise StorageError(
            f"storage url {mask_secrets(url)!r} is not a database URL ({mask_secrets(e)}); use"
            " 'sqlite:///path/to/study.db' or 'postgresql+psycopg://user@host/dbname'"
        ) from None
    if u.host and "@" in u.host:  # the driver would quote this "host", the rest of the password in it
        raise StorageError(
            f"storage url {mask_secrets(url)!r} has an '@' in its password (or user name): percent-encode it as"
            " %40 (urllib.parse.quote_plus(password) encodes every special character)"
        )
    return u


def _read_only(u: URL, path: str) -> URL:
    """A SQLite file to read in a directory this process cannot write (read-only media, another user's files).

    SQLite's WAL mode needs its ``-shm`` file beside the database, even to read; opened ``immutable`` it
    reads the file as it is, without it. The last changes of a search still running, or killed, may be in
    the ``-wal`` file, which is not read then: a warning says so.
    """
    wal = path + "-wal"
    if os.path.exists(wal) and os.path.getsize(wal) > 0:
        log.warning(
            "the study database %s is in a directory this process cannot write, so it is read as it is: the last"
            " changes in %s (a search running or killed) are not read",
            path,
            wal,
        )
    return u.set(database=f"file:{path}", query={"mode": "ro", "immutable": "1", "uri": "true"})


class SQLDatabase:
    """A SQLite file or PostgreSQL database with lightning-hpt's tables; arguments as :class:`SQLStorage`'s."""

    def __init__(
        self,
        url: str | URL,
        *,
        lock_timeout: float = 30.0,
        retries: int = 3,
        engine_kwargs: Mapping[str, Any] | None = None,
        create: bool = True,
    ) -> None:
        if not isinstance(create, bool):
            raise StorageError(f"create must be True or False, got create={create!r}")
        self.create = create
        if isinstance(lock_timeout, bool) or not isinstance(lock_timeout, (int, float)) or not lock_timeout > 0:
            raise StorageError(f"lock_timeout must be a positive number of seconds, got lock_timeout={lock_timeout!r}")
        self.lock_timeout = float(lock_timeout)
        self.retries = check_int(retries, "retries")
        self._engine_kwargs = dict(engine_kwargs or {})
        self._url, self._schema = self._normalise_url(url)
        self._setup()
        _ = self.engine  # open now, so a bad file or URL is reported where the storage is created

    # ------------------------------------------------------------------ connection management

    def _normalise_url(self, url: str | URL) -> tuple[URL, str | None]:
        u = parse_url(url)
        if u.get_backend_name() == "sqlite" and not self._is_memory(u) and "uri" not in u.query:
            path = os.path.abspath(os.path.expanduser(u.database))
            if not self.create and not os.path.isfile(path):
                raise StorageError(
                    f"there is no study database at {path!r} (no such file); check the path (reading a study never"
                    " creates its database)"
                )
            if not self.create and not os.access(os.path.dirname(path), os.W_OK):
                return _read_only(u, path), None
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
            except OSError as e:
                raise StorageError(
                    f"cannot create the directory of the study database file {path!r}: {e}; give a study database"
                    " path (storage=, or root= for ROOT/studies.db) whose directories exist or can be created"
                ) from e
            u = u.set(database=path)
        schema = None
        if u.get_backend_name() == "postgresql":
            schema = u.query.get("schema", PG_SCHEMA)
            if isinstance(schema, tuple) or not PG_SCHEMA_RE.match(schema):
                raise StorageError(
                    f"schema={schema!r} in the storage URL is not a schema name: use letters, digits and '_'"
                    f" (default {PG_SCHEMA!r})"
                )
            u = u.difference_update_query(["schema"])
        # SQLAlchemy's default PostgreSQL driver is psycopg2; use psycopg 3 when that is what is installed.
        if u.drivername == "postgresql":
            try:
                import psycopg2  # noqa: F401
            except ImportError:
                u = u.set(drivername="postgresql+psycopg")
        return u, schema

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
        shown = self._url
        if self._schema not in (None, PG_SCHEMA):
            shown = shown.update_query_dict({"schema": self._schema})
        self.url = mask_secrets(shown.render_as_string(hide_password=True))
        path = (self._url.database or "").removeprefix("file:")  # a read-only file's is a URI (_read_only)
        self._where = f"file {path!r}" if self._sqlite and not self._memory else self.url

    def __getstate__(self) -> dict[str, Any]:
        if self._memory:
            raise StorageError(
                "an in-memory SQLite storage ('sqlite://') cannot be sent to another process: its data lives in this"
                " one; use a file, e.g. 'sqlite:///runs/study.db'"
            )
        return {
            "url": self._url,
            "schema": self._schema,
            "create": self.create,
            "lock_timeout": self.lock_timeout,
            "retries": self.retries,
            "kw": self._engine_kwargs,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._url, self._schema, self.create = state["url"], state["schema"], state["create"]
        self.lock_timeout, self.retries, self._engine_kwargs = state["lock_timeout"], state["retries"], state["kw"]
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
                self._forked()
            if self._engine is None:
                engine = self._create_engine()
                try:
                    self._check_schema(engine)
                except BaseException:
                    engine.dispose()
                    raise
                self._engine, self._pid = engine, os.getpid()
            return self._engine

    def _forked(self) -> None:
        """Called in a forked child before its first connection: drop what the parent's threads may hold."""

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
        if self._schema is not None:  # our tables, in our schema: nothing is added beside other programs' tables
            options = dict(kwargs.pop("execution_options", {}))
            options["schema_translate_map"] = {None: self._schema}
            kwargs["execution_options"] = options
        try:
            engine = sa.create_engine(self._url, **kwargs)
        except sa_exc.NoSuchModuleError as e:  # a scheme or driver name SQLAlchemy does not know: a typo, mostly
            raise StorageError(
                f"cannot open {self.url}: {self._url.drivername!r} is not a database kind SQLAlchemy knows"
                f" ({mask_secrets(e)}); a URL starts with 'sqlite:///' (a file) or 'postgresql+psycopg://'"
                " (PostgreSQL, with pip install 'psycopg[binary]'), or give a file path ending in .db"
            ) from None
        except ImportError as e:
            raise StorageError(
                f"cannot open {self.url}: the database driver is missing ({mask_secrets(e)}); for PostgreSQL install"
                " it with pip install 'psycopg[binary]' and use a URL starting with 'postgresql+psycopg://'"
            ) from None
        except (sa_exc.ArgumentError, TypeError) as e:
            raise StorageError(f"cannot open {self.url}: {mask_secrets(e)}; check the URL and engine_kwargs") from None
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
                        ) from safe_cause(e)
                    delay = min(0.02 * 2 ** min(attempt, 6), 1.0, self.lock_timeout - elapsed)
                elif (kind == "transient" or (kind == "conflict" and conflicts)) and failures < self.retries:
                    failures += 1
                    delay = 0.05 * 2**failures
                    log.warning(
                        "retrying after a database error while trying to %s in %s: %s",
                        what,
                        self.url,
                        mask_secrets(orig_message(e)),
                    )
                else:
                    detail = mask_secrets(orig_message(e))
                    retried = f" (after {failures} retries)" if failures else ""
                    raise StorageError(
                        f"could not {what} in {self._where}{retried}: {detail}; {hint(detail)}"
                    ) from safe_cause(e)
                time.sleep(delay * random.uniform(0.5, 1.0))  # jitter: do not wake in step with the other writer
                attempt += 1

    # ------------------------------------------------------------------ schema

    def _check_schema(self, engine: Engine) -> None:
        status = self._txn("read the tables", lambda c, a: self._inspect(c), write=False, engine=engine)
        if status == "empty" and not self.create:
            raise StorageError(
                f"the database {self._where} holds no lightning-hpt studies (it has none of its tables); check the"
                " storage (reading a study never creates its tables)"
            )
        if status == "empty":
            self._txn("create the study tables", self._initialise, write=True, engine=engine)
        if status == "old" and not self.create:
            raise StorageError(
                f"the database {self._where} was written by an older lightning-hpt (schema_version < {SCHEMA_VERSION});"
                " reading never upgrades it: resume a search on it once (it is upgraded in place, losing nothing),"
                " then read it"
            )
        if status == "old":
            self._txn("upgrade the study tables", self._upgrade, write=True, engine=engine)
        if self._sqlite and not self._memory and self.create:
            self._retry("switch the database to WAL mode", lambda a: enable_wal(engine))

    def _inspect(self, conn: Connection) -> str:
        inspector = sa.inspect(conn)
        names = set(inspector.get_table_names(schema=self._schema))
        names |= set(inspector.get_view_names(schema=self._schema))
        ours = {n for n in names if n.startswith("hpt_")}
        if not ours:
            if names:  # a file, or our schema on a server, that another program uses
                where = self._where if self._schema is None else f"{self._where} (schema {self._schema!r})"
                fix = "pass the path of a new .db file" if self._sqlite else "name another schema with ?schema=..."
                raise StorageError(
                    f"the database {where} belongs to another program (it has tables {sorted(names)[:10]}"
                    f" but none of lightning-hpt's); it was left unchanged: {fix}"
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
        if self._schema is not None:
            quoted = conn.dialect.identifier_preparer.quote_schema(self._schema)
            conn.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {quoted}"))  # a checked identifier, quoted
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
