"""SQLStorage: the storage contract on SQLite (and PostgreSQL when available), and the reliability rows.

The PostgreSQL runs need ``HPT_TEST_POSTGRES_URL`` pointing at a database used only for tests (its
``lightning_hpt`` schema is dropped before each test), e.g. ``postgresql+psycopg://postgres@127.0.0.1:5432/hpt_test``.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import pickle
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from lightning_hpt.exceptions import DatabaseLockedError, StorageError, StudyNotFoundError
from lightning_hpt.storage import SCHEMA_VERSION, SQLStorage, Storage, open_storage
from lightning_hpt.storage import sql as sql_module
from lightning_hpt.testing.storage import PARAMS, StorageContract, study_info
from lightning_hpt.trial import TrialState

POSTGRES_URL = os.environ.get("HPT_TEST_POSTGRES_URL")


class TestSQLiteFileStorage(StorageContract):
    @pytest.fixture
    def make_storage(self, tmp_path: Path) -> Callable[[], Storage]:
        return lambda: SQLStorage(f"sqlite:///{tmp_path / 'runs' / 'study.db'}", lock_timeout=20)


class TestSQLiteMemoryStorage(StorageContract):
    concurrent_handles = False

    @pytest.fixture
    def make_storage(self) -> Iterator[Callable[[], Storage]]:
        storage = SQLStorage("sqlite://")
        yield lambda: storage
        storage.close()


@pytest.mark.skipif(POSTGRES_URL is None, reason="set HPT_TEST_POSTGRES_URL to a test database to run on PostgreSQL")
class TestPostgresStorage(StorageContract):
    @pytest.fixture
    def make_storage(self) -> Callable[[], Storage]:
        engine = sa.create_engine(SQLStorage(POSTGRES_URL)._url)  # the URL with psycopg chosen as the driver
        with engine.begin() as conn:
            conn.execute(sa.text("DROP SCHEMA IF EXISTS lightning_hpt CASCADE"))
        engine.dispose()
        return lambda: SQLStorage(POSTGRES_URL)

    def test_url_hides_the_password(self, storage: Storage) -> None:
        password = sa.make_url(POSTGRES_URL).password
        if not password:
            pytest.skip("HPT_TEST_POSTGRES_URL has no password to hide")
        assert str(password) not in storage.url and "***" in storage.url


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "study.db"


@pytest.fixture
def storage(db: Path) -> Iterator[SQLStorage]:
    s = SQLStorage(f"sqlite:///{db}", lock_timeout=10)
    s.open_study(study_info())
    yield s
    s.close()


def _tables(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return sorted(r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))


# ---------------------------------------------------------------------- row 15: what the file holds


def test_new_file_gets_versioned_schema_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "study.db"
    SQLStorage(f"sqlite:///{path}").close()
    assert _tables(path) == ["hpt_meta", "hpt_studies", "hpt_trial_values", "hpt_trials"]
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM hpt_meta WHERE key = 'schema_version'").fetchone() == (
            str(SCHEMA_VERSION),
        )
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_a_study_in_a_directory_that_cannot_be_written_is_read_as_it_is(tmp_path: Path, monkeypatch) -> None:
    """Read-only media, or another user's files: SQLite's WAL mode would need to create its -shm file there."""
    folder = tmp_path / "archive"
    storage = SQLStorage(f"sqlite:///{folder / 'studies.db'}")
    storage.open_study(study_info())
    trial = storage.create_trial("study", PARAMS)
    storage.finish_trial("study", trial.number, state=TrialState.COMPLETE, value=0.5)
    storage.close()
    files = sorted(p.name for p in folder.iterdir())
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):  # root writes anywhere: play the read-only directory
            real = os.access
            monkeypatch.setattr(
                os, "access", lambda p, mode: not (mode & os.W_OK and Path(p) == folder) and real(p, mode)
            )
        reader = open_storage(str(folder / "studies.db"), create=False)
        assert [(t.number, t.value) for t in reader.trials("study")] == [(0, 0.5)]
        assert "file '" + str(folder / "studies.db") + "'" in reader._where
        with pytest.raises(StorageError, match="readonly"):
            reader.create_trial("study", PARAMS)
        reader.close()
        assert sorted(p.name for p in folder.iterdir()) == files  # nothing written beside it
    finally:
        folder.chmod(0o755)


def test_empty_file_is_initialised(db: Path) -> None:
    db.touch()
    SQLStorage(f"sqlite:///{db}").open_study(study_info())
    assert "hpt_trials" in _tables(db)


def test_corrupt_file_is_refused_and_left_unchanged(db: Path) -> None:
    content = os.urandom(8192)
    db.write_bytes(content)
    with pytest.raises(StorageError, match="not a SQLite database or it is corrupt") as err:
        SQLStorage(f"sqlite:///{db}")
    assert str(db) in str(err.value)
    assert db.read_bytes() == content


def test_foreign_database_is_refused_and_left_unchanged(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    content = db.read_bytes()
    with pytest.raises(StorageError, match=r"another program.*\['invoices'\]") as err:
        SQLStorage(f"sqlite:///{db}")
    assert str(db) in str(err.value)
    assert db.read_bytes() == content and _tables(db) == ["invoices"]


def test_newer_schema_is_refused_and_left_unchanged(db: Path) -> None:
    SQLStorage(f"sqlite:///{db}").close()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE hpt_meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    content = db.read_bytes()
    with pytest.raises(StorageError, match=f"newer lightning-hpt \\(schema_version={SCHEMA_VERSION + 1}") as err:
        SQLStorage(f"sqlite:///{db}")
    assert str(db) in str(err.value) and "upgrade" in str(err.value)
    assert db.read_bytes() == content


def test_damaged_schema_is_not_repaired(db: Path) -> None:
    SQLStorage(f"sqlite:///{db}").close()
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TABLE hpt_trial_values")
    with pytest.raises(StorageError, match=r"missing tables \['hpt_trial_values'\]"):
        SQLStorage(f"sqlite:///{db}")
    assert "hpt_trial_values" not in _tables(db)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="unable to open database file"):
        SQLStorage(f"sqlite:///{tmp_path}")


# ---------------------------------------------------------------------- row 19: a locked SQLite file


def _hold_exclusive(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN EXCLUSIVE")
    return conn


def test_lock_held_past_lock_timeout_raises_database_locked(db: Path) -> None:
    s = SQLStorage(f"sqlite:///{db}", lock_timeout=0.5)
    s.open_study(study_info())
    holder = _hold_exclusive(db)
    try:
        start = time.monotonic()
        with pytest.raises(DatabaseLockedError) as err:
            s.create_trial("study", PARAMS)
        elapsed = time.monotonic() - start
        assert s.trials("study") == []  # WAL: readers are not blocked by the writer
    finally:
        holder.rollback()
        holder.close()
    assert 0.5 <= elapsed < 5
    message = str(err.value)
    assert str(db) in message and "lock_timeout=0.5" in message and "PostgreSQL" in message
    assert s.create_trial("study", PARAMS).number == 0


def test_lock_released_within_lock_timeout_lets_the_write_through(db: Path) -> None:
    s = SQLStorage(f"sqlite:///{db}", lock_timeout=10)
    s.open_study(study_info())
    holder = _hold_exclusive(db)
    holder.execute("INSERT INTO hpt_meta (key, value) VALUES ('held', 'yes')")
    release = threading.Timer(0.4, holder.commit)
    start = time.monotonic()
    release.start()
    try:
        trial = s.create_trial("study", PARAMS)
    finally:
        release.join()
        holder.close()
    assert time.monotonic() - start >= 0.3
    assert trial.number == 0 and len(s.trials("study")) == 1


def test_writes_take_the_write_lock_before_reading(storage: SQLStorage, db: Path) -> None:
    """A write that read first and locked later could act on a stale read, or fail half-way."""
    seen: list[str] = []

    def probe(conn, cursor, statement, parameters, context, executemany) -> None:
        if statement.startswith("SELECT") and not seen:  # the first read inside create_trial's transaction
            other = sqlite3.connect(db, timeout=0, isolation_level=None)
            try:
                other.execute("BEGIN IMMEDIATE")
                seen.append("the write lock was free")
                other.execute("ROLLBACK")
            except sqlite3.OperationalError as e:
                seen.append(str(e))
            finally:
                other.close()

    event.listen(storage.engine, "before_cursor_execute", probe)
    storage.create_trial("study", PARAMS)
    assert seen == ["database is locked"]


# ---------------------------------------------------------------------- row 21: transient errors


def _fail_inserts(storage: SQLStorage, times: int, message: str = "disk I/O error") -> list[str]:
    """Make the next ``times`` inserts of a trial row fail as the driver would; returns the attempts."""
    attempts: list[str] = []

    def before(conn, cursor, statement, parameters, context, executemany):
        if statement.startswith("INSERT INTO hpt_trials"):
            attempts.append(statement)
            if len(attempts) <= times:
                raise sqlite3.OperationalError(message)

    event.listen(storage.engine, "before_cursor_execute", before)
    return attempts


def test_transient_error_is_retried_without_duplicates(storage: SQLStorage, db: Path) -> None:
    attempts = _fail_inserts(storage, 2)
    trial = storage.create_trial("study", PARAMS)
    assert len(attempts) == 3 and trial.number == 0
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM hpt_trials").fetchone() == (1,)


def test_persistent_transient_error_is_reported_after_bounded_retries(storage: SQLStorage) -> None:
    attempts = _fail_inserts(storage, 100)
    with pytest.raises(StorageError, match=r"after 3 retries\): OperationalError: disk I/O error"):
        storage.create_trial("study", PARAMS)
    assert len(attempts) == 4 and storage.trials("study") == []


def test_lost_commit_acknowledgement_does_not_duplicate_the_trial(storage: SQLStorage, db: Path, monkeypatch) -> None:
    dialect = storage.engine.dialect
    real_commit = dialect.do_commit
    lost: list[bool] = []

    def commit_then_lose_answer(dbapi_connection) -> None:
        real_commit(dbapi_connection)
        if not lost:  # the data is committed, but the caller hears an error
            lost.append(True)
            raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(dialect, "do_commit", commit_then_lose_answer)
    trial = storage.create_trial("study", PARAMS)
    assert lost == [True] and trial.number == 0
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM hpt_trials").fetchone() == (1,)


# ---------------------------------------------------------------------- row 16: a full disk


def test_full_database_reports_the_real_error_once(storage: SQLStorage, db: Path) -> None:
    storage.create_trial("study", PARAMS)
    with sqlite3.connect(db) as conn:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]

    def cap(dbapi_conn, record) -> None:  # SQLite says "full" past this many pages
        dbapi_conn.execute(f"PRAGMA max_page_count = {pages}")

    event.listen(storage.engine, "connect", cap)
    storage.engine.dispose()
    attempts = _fail_inserts(storage, 0)
    with pytest.raises(StorageError, match="database or disk is full") as err:
        storage.create_trial("study", {"blob": "x" * 200_000})
    assert len(attempts) == 1  # not retried
    assert str(db) in str(err.value) and "free disk space" in str(err.value)
    event.remove(storage.engine, "connect", cap)
    storage.engine.dispose()
    assert [t.number for t in storage.trials("study")] == [0]
    assert storage.create_trial("study", PARAMS).number == 1


def test_no_space_for_the_database_directory(tmp_path: Path, monkeypatch) -> None:
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(sql_module.os, "makedirs", full)
    with pytest.raises(StorageError, match="No space left on device") as err:
        SQLStorage(f"sqlite:///{tmp_path / 'new' / 'study.db'}")
    assert str(tmp_path / "new" / "study.db") in str(err.value)


# ---------------------------------------------------------------------- row 20: several processes


def _create_until_full(storage: SQLStorage) -> None:
    while storage.create_trial("study", PARAMS, max_trials=12) is not None:
        pass


def _claim_all(storage: SQLStorage) -> None:
    while storage.claim_queued("study") is not None:
        pass


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs the fork start method")
@pytest.mark.parametrize("work", [_create_until_full, _claim_all])
def test_forked_processes_share_a_sqlite_study(storage: SQLStorage, work: Callable[[SQLStorage], None]) -> None:
    if work is _claim_all:
        for _ in range(12):
            storage.create_trial("study", PARAMS, state=TrialState.QUEUED)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=work, args=(storage,)) for _ in range(3)]  # each inherits the open storage
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    trials = storage.trials("study")
    assert [t.number for t in trials] == list(range(12))
    assert all(t.state is TrialState.RUNNING and t.attempt == 1 for t in trials)
    assert {t.pid for t in trials} <= {p.pid for p in procs}


# ---------------------------------------------------------------------- handles, URLs, speed


def test_pickled_storage_reconnects(storage: SQLStorage) -> None:
    storage.create_trial("study", PARAMS)
    copy = pickle.loads(pickle.dumps(storage))
    assert copy.url == storage.url and copy.lock_timeout == storage.lock_timeout
    assert copy.trials("study") == storage.trials("study")
    assert copy.create_trial("study", PARAMS).number == 1


def test_in_memory_storage_refuses_to_be_pickled() -> None:
    with pytest.raises(StorageError, match="in-memory"):
        pickle.dumps(SQLStorage("sqlite://"))


def test_history_reads_every_curve_in_a_fixed_number_of_queries(storage: SQLStorage) -> None:
    statements: list[str] = []
    event.listen(storage.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    counts = []
    for _ in range(2):
        for _ in range(5):
            n = storage.create_trial("study", PARAMS).number
            for step in range(3):
                storage.report("study", n, step, 0.1 * step)
        statements.clear()
        history = storage.history("study")
        counts.append(len(statements))
    assert len(history.trials) == 10 and all(len(t.intermediate) == 3 for t in history.trials)
    assert counts[0] == counts[1] <= 5


def test_password_is_masked_in_errors() -> None:
    url = "postgresql+psycopg://alice:s3cr3t-pw@127.0.0.1:1/hpt"
    with pytest.raises(StorageError) as err:
        SQLStorage(url, retries=0)
    assert "s3cr3t-pw" not in str(err.value) and "alice:***@127.0.0.1" in str(err.value)


@pytest.mark.parametrize("bad", [0, -1.0, "30", True])
def test_bad_lock_timeout(bad: object) -> None:
    with pytest.raises(StorageError, match="lock_timeout must be a positive number"):
        SQLStorage("sqlite://", lock_timeout=bad)


def test_open_storage_accepts_paths_urls_and_storages(tmp_path: Path, storage: SQLStorage) -> None:
    assert open_storage(storage) is storage
    by_path = open_storage(tmp_path / "a.db")
    assert isinstance(by_path, SQLStorage) and by_path.url == f"sqlite:///{tmp_path / 'a.db'}"
    by_str = open_storage(str(tmp_path / "b.db"), lock_timeout=3)
    assert by_str.lock_timeout == 3 and (tmp_path / "b.db").exists()
    by_url = open_storage(f"sqlite:///{tmp_path / 'c.db'}")
    assert by_url.url.endswith("c.db") and (tmp_path / "c.db").exists()


@pytest.mark.parametrize("bad", ["study.txt", 42, None])
def test_open_storage_refuses_other_things(bad: object) -> None:
    with pytest.raises(StorageError, match=r"path ending in \.db"):
        open_storage(bad)  # type: ignore[arg-type]


def test_open_storage_refuses_options_for_an_existing_storage(storage: SQLStorage) -> None:
    with pytest.raises(StorageError, match="lock_timeout"):
        open_storage(storage, lock_timeout=1)


# ---------------------------------------------------------------------- readers write nothing


@pytest.mark.parametrize("where", ["missing_dir/typo.db", "typo.db"])
def test_reading_never_creates_a_database(tmp_path: Path, where: str) -> None:
    """Issue: `lightning-hpt show X --storage missing_dir/typo.db` created the directory and an empty database."""
    path = tmp_path / where
    with pytest.raises(StorageError, match=r"no study database at .*typo\.db.*no such file"):
        open_storage(path, create=False)
    with pytest.raises(StorageError, match="no study database"):
        SQLStorage(f"sqlite:///{path}", create=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_reading_an_empty_or_rollback_journal_database_changes_nothing(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    with pytest.raises(StorageError, match="holds no lightning-hpt studies"):
        SQLStorage(f"sqlite:///{empty}", create=False)
    assert _tables(empty) == []
    db = tmp_path / "study.db"
    writer = SQLStorage(f"sqlite:///{db}")
    writer.open_study(study_info())
    writer.close()
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA journal_mode = DELETE")  # e.g. a copy made with the sqlite3 shell
    reader = SQLStorage(f"sqlite:///{db}", create=False)
    assert reader.study_names() == ["study"]
    reader.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)  # not switched to WAL by a reader


def test_unknown_study_error_names_the_studies_without_python_advice(storage: SQLStorage) -> None:
    with pytest.raises(StudyNotFoundError, match=r"no study 'studdy' .*\['study'\]; did you mean \['study'\]") as e:
        storage.trials("studdy")
    assert "open_study" not in str(e.value)
    assert pickle.loads(pickle.dumps(e.value)).args == e.value.args  # crosses process boundaries intact


# ---------------------------------------------------------------------- retry and delete


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request, storage: SQLStorage) -> Iterator[SQLStorage]:
    """The SQLite storage with its study, or the same on PostgreSQL (when HPT_TEST_POSTGRES_URL is set)."""
    if request.param == "sqlite":
        yield storage
        return
    if POSTGRES_URL is None:
        pytest.skip("set HPT_TEST_POSTGRES_URL to a test database to run on PostgreSQL")
    pg = SQLStorage(POSTGRES_URL)
    for name in pg.study_names():
        if name in ("study", "other"):
            pg.delete_study(name, force=True)
    pg.open_study(study_info())
    yield pg
    for name in pg.study_names():
        if name in ("study", "other"):
            pg.delete_study(name, force=True)
    pg.close()


def _fail(storage: SQLStorage, error: str = "RuntimeError: boom") -> int:
    t = storage.create_trial("study", PARAMS)
    storage.report("study", t.number, 0, 1.0)
    storage.finish_trial("study", t.number, state=TrialState.FAILED, error=error)
    return t.number


def test_requeue_failed_queues_each_failed_trial_once(backend: SQLStorage) -> None:
    storage = backend
    failed = [_fail(storage), _fail(storage, "interrupted: x")]
    done = storage.create_trial("study", {**PARAMS, "model.lr": 0.5}).number
    storage.finish_trial("study", done, state=TrialState.COMPLETE, value=1.0)
    assert storage.requeue_failed("study") == failed
    assert storage.requeue_failed("study") == []  # a second driver asking finds nothing left to requeue
    by_number = {t.number: t for t in storage.trials("study")}
    assert [by_number[n].state for n in failed] == [TrialState.QUEUED] * 2
    assert by_number[failed[0]].attrs["attempts"][0]["error"] == "RuntimeError: boom"
    assert by_number[failed[0]].intermediate == {} and by_number[done].state is TrialState.COMPLETE


def test_delete_study_refuses_running_trials_unless_forced(backend: SQLStorage) -> None:
    storage = backend
    storage.open_study(study_info("other"))
    _fail(storage)
    running = storage.create_trial("study", {**PARAMS, "model.lr": 0.5})
    with pytest.raises(StorageError, match=rf"RUNNING trials: trial {running.number} .*force=True"):
        storage.delete_study("study")
    assert len(storage.trials("study")) == 2  # refused: nothing deleted
    assert storage.delete_study("study", force=True) == 2
    names = storage.study_names()  # the PostgreSQL database may hold other tests' studies
    assert "study" not in names and "other" in names
    with pytest.raises(StudyNotFoundError):  # a driver still running the study stops at its next write
        storage.finish_trial("study", running.number, state=TrialState.COMPLETE, value=1.0)
    trials, values, studies = sql_module.TRIALS, sql_module.VALUES, sql_module.STUDIES
    with storage.engine.connect() as conn:  # no row of the study is left behind
        orphans = sa.select(sa.func.count()).where(trials.c.study_id.not_in(sa.select(studies.c.id)))
        assert conn.execute(orphans).scalar() == 0
        orphans = sa.select(sa.func.count()).where(values.c.trial_id.not_in(sa.select(trials.c.id)))
        assert conn.execute(orphans).scalar() == 0


# ---------------------------------------------------------------------- PostgreSQL: a schema of our own


@pytest.mark.skipif(POSTGRES_URL is None, reason="set HPT_TEST_POSTGRES_URL to a test database to run on PostgreSQL")
def test_postgres_tables_live_in_their_own_schema_beside_other_programs_tables() -> None:
    """A database that other programs use gets one schema (lightning_hpt, or ?schema=) and no table beside theirs."""
    admin = sa.create_engine(SQLStorage(POSTGRES_URL)._url)
    with admin.begin() as conn:
        for schema in ("lightning_hpt", "hpt_probe", "hpt_taken"):
            conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        conn.execute(sa.text("DROP TABLE IF EXISTS public.their_orders"))
        for table in ("hpt_trial_values", "hpt_trials", "hpt_studies", "hpt_meta"):  # from an older test run
            conn.execute(sa.text(f"DROP TABLE IF EXISTS public.{table} CASCADE"))
        conn.execute(sa.text("CREATE TABLE public.their_orders (id int)"))
        conn.execute(sa.text("CREATE SCHEMA hpt_taken"))
        conn.execute(sa.text("CREATE TABLE hpt_taken.invoices (id int)"))
    try:
        SQLStorage(POSTGRES_URL).open_study(study_info())
        named = sa.make_url(POSTGRES_URL).update_query_dict({"schema": "hpt_probe"}).render_as_string(False)
        other = SQLStorage(named)
        assert other.study_names() == [] and "schema=hpt_probe" in other.url
        with pytest.raises(StorageError, match=r"schema 'hpt_taken'.*belongs to another program.*\['invoices'\]"):
            SQLStorage(sa.make_url(POSTGRES_URL).update_query_dict({"schema": "hpt_taken"}).render_as_string(False))
        with pytest.raises(StorageError, match="not a schema name"):
            SQLStorage(sa.make_url(POSTGRES_URL).update_query_dict({"schema": "x; drop"}).render_as_string(False))
        with admin.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names(schema="public"))
            assert "their_orders" in tables and not {t for t in tables if t.startswith("hpt_")}
            assert "hpt_trials" in sa.inspect(conn).get_table_names(schema="lightning_hpt")
            assert "hpt_trials" in sa.inspect(conn).get_table_names(schema="hpt_probe")
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text("DROP TABLE IF EXISTS public.their_orders"))
            for schema in ("hpt_probe", "hpt_taken"):
                conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        admin.dispose()
