"""Large studies: the incremental history agrees with a full read, old databases are upgraded, and
pruners decide the same from their kept-up-to-date lists as from the whole history.

The PostgreSQL runs need ``HPT_TEST_POSTGRES_URL`` (a database used only for tests; its ``hpt_``
tables are dropped first).
"""

from __future__ import annotations

import functools
import math
import multiprocessing
import os
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from lightning_hpt.exceptions import HPTError
from lightning_hpt.pruners import HyperbandPruner, MedianPruner, Pruner, StepIndex, SuccessiveHalvingPruner
from lightning_hpt.pruners._index import index_of
from lightning_hpt.storage import SCHEMA_VERSION, SQLStorage, sql_rows
from lightning_hpt.testing.storage import PARAMS, study_info
from lightning_hpt.trial import History, TrialRecord, TrialState

POSTGRES_URL = os.environ.get("HPT_TEST_POSTGRES_URL")
URLS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.skipif(POSTGRES_URL is None, reason="no PostgreSQL"))]


@pytest.fixture(params=URLS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    engine = sa.create_engine(SQLStorage(POSTGRES_URL)._url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS hpt_trial_values, hpt_trials, hpt_studies, hpt_meta CASCADE"))
    engine.dispose()
    return POSTGRES_URL


def full_history(storage: SQLStorage, study: str = "study") -> History:
    """The study read whole, as before the incremental history: the reference every read must equal."""
    info = storage.load_study(study)
    return History(info.space, info.direction, tuple(storage.trials(study)), info.seed)


def same(a: History, b: History) -> bool:
    """Equal studies; by ``repr``, since a NaN value is not equal to itself."""
    return (a.space, a.direction, a.seed, repr(a.trials)) == (b.space, b.direction, b.seed, repr(b.trials))


def both_in_one_snapshot(storage: SQLStorage, study: str = "study") -> tuple[History, list[TrialRecord]]:
    """The incremental read and a full read of the trials in the same transaction (one snapshot on SQLite)."""

    def fn(conn: sa.Connection, attempt: int) -> tuple[History, list[TrialRecord]]:
        row = sql_rows.study_row(conn, storage._where, study)
        with storage._cache_lock:
            history = storage._cache.history(
                conn, row, functools.partial(sql_rows.study_info, where=storage._where), None
            )
        return history, sql_rows.trial_records(conn, row.id)

    return storage._txn("read twice", fn, write=False)


def random_writes(storage: SQLStorage, seed: int, n: int, study: str = "study") -> None:
    """``n`` random changes of every kind a driver makes; refusals (another writer got there first) are fine."""
    rng = random.Random(seed)
    for _ in range(n):
        trials = storage.trials(study)
        running = [t.number for t in trials if t.state is TrialState.RUNNING]
        failed = [t.number for t in trials if t.state is TrialState.FAILED]
        op = rng.random()
        try:
            if op < 0.2 or not running:
                params = {**PARAMS, "model.lr": rng.uniform(1e-4, 1e-1)}
                state = TrialState.QUEUED if rng.random() < 0.3 else TrialState.RUNNING
                storage.create_trial(study, params, state=state)
            elif op < 0.55:
                value = rng.choice([rng.random(), rng.random(), rng.random(), math.nan, math.inf])
                storage.report(study, rng.choice(running), rng.randrange(12), value)
            elif op < 0.7:
                state = rng.choice([TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAILED])
                storage.finish_trial(study, rng.choice(running), state=state, value=rng.random())
            elif op < 0.8:
                storage.requeue_trial(study, rng.choice(running + failed))
            elif op < 0.9:
                storage.set_trial_attrs(study, rng.choice(running), {"k": rng.random()})
            else:
                storage.claim_queued(study)
        except HPTError:
            pass


# ------------------------------------------------------------------ incremental history


def test_every_incremental_read_equals_a_full_read(url: str) -> None:
    storage = SQLStorage(url)
    storage.open_study(study_info())
    writer = SQLStorage(url)  # another handle, as another driver: the reader's cache must see its writes too
    for i in range(60):
        random_writes(storage if i % 2 else writer, seed=i, n=3)
        assert same(storage.history("study"), full_history(storage))
    assert storage._cache.full_reads == 1  # one full read, then only changes
    storage.close()
    writer.close()


def test_a_recreated_study_or_a_counter_that_went_back_is_read_whole(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    storage = SQLStorage(url)
    storage.open_study(study_info())
    random_writes(storage, seed=1, n=20)
    storage.history("study")
    with sqlite3.connect(tmp_path / "study.db") as conn:  # as if restored from an older backup
        conn.execute("UPDATE hpt_studies SET seq = 1")
        conn.execute("UPDATE hpt_trials SET seq = 0")
    assert same(storage.history("study"), full_history(storage))
    with sqlite3.connect(tmp_path / "study.db") as conn:  # deleted and created again under the same name
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("DELETE FROM hpt_studies")
    storage.open_study(study_info())
    storage.create_trial("study", PARAMS)
    history = storage.history("study")
    assert [t.number for t in history.trials] == [0] and same(history, full_history(storage))
    assert storage._cache.full_reads == 3


def _write_for_a_while(url: str, seed: int) -> None:
    storage = SQLStorage(url, lock_timeout=60)
    random_writes(storage, seed, 40)
    storage.close()


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs the fork start method")
def test_incremental_reads_stay_right_while_other_drivers_write(url: str) -> None:
    storage = SQLStorage(url, lock_timeout=60)
    storage.open_study(study_info())
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_write_for_a_while, args=(url, seed)) for seed in range(3)]
    for p in procs:
        p.start()
    reads = 0
    while any(p.is_alive() for p in procs) or reads < 5:
        history, trials = both_in_one_snapshot(storage)
        if storage._sqlite:  # one snapshot for both reads: they agree at every moment
            assert repr(history.trials) == repr(tuple(trials))
        reads += 1
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert same(storage.history("study"), full_history(storage))
    assert len(storage.trials("study")) > 10 and storage._cache.full_reads == 1
    storage.close()


# ------------------------------------------------------------------ upgrade from schema_version 1


def test_a_version_1_database_is_upgraded_in_place_and_keeps_every_record(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    storage = SQLStorage(f"sqlite:///{path}")
    storage.open_study(study_info())
    random_writes(storage, seed=3, n=40)
    before = storage.trials("study")
    storage.close()
    with sqlite3.connect(path) as conn:  # back to the layout of schema_version 1, exactly
        for table, column in (("hpt_studies", "definition"), ("hpt_trials", "objective_values")):  # version 3's
            conn.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        conn.execute("ALTER TABLE hpt_trial_values DROP COLUMN objective_values")
        conn.execute("DROP INDEX hpt_trials_study_seq")
        conn.execute("ALTER TABLE hpt_trials DROP COLUMN seq")
        conn.execute("ALTER TABLE hpt_studies DROP COLUMN seq")
        conn.execute("UPDATE hpt_meta SET value = '1' WHERE key = 'schema_version'")
        values = conn.execute("SELECT count(*) FROM hpt_trial_values").fetchone()
    upgraded = SQLStorage(f"sqlite:///{path}")
    assert repr(upgraded.trials("study")) == repr(before)
    assert same(upgraded.history("study"), full_history(upgraded))
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM hpt_meta WHERE key = 'schema_version'").fetchone() == (
            str(SCHEMA_VERSION),
        )
        assert conn.execute("SELECT count(*) FROM hpt_trial_values").fetchone() == values
        assert "hpt_trials_study_seq" in {r[1] for r in conn.execute("PRAGMA index_list(hpt_trials)")}
    random_writes(upgraded, seed=4, n=20)  # and it goes on incrementally from there
    assert same(upgraded.history("study"), full_history(upgraded))
    assert upgraded._cache.full_reads == 1
    upgraded.close()


# ------------------------------------------------------------------ pruners: both paths decide alike


def pruners() -> list[Pruner]:
    return [
        MedianPruner(n_startup_trials=2),
        MedianPruner(n_startup_trials=0, n_warmup_steps=2, interval_steps=3),
        SuccessiveHalvingPruner(),
        SuccessiveHalvingPruner(min_resource=2, reduction_factor=2, max_resource=12),
        SuccessiveHalvingPruner(reduction_factor=4, min_early_stopping_rate=1),
        HyperbandPruner(),
        HyperbandPruner(min_resource=1, max_resource=12, reduction_factor=2),
    ]


def replay(
    storage: SQLStorage, seed: int, direction: str, n_events: int = 300
) -> Iterator[tuple[History, TrialRecord]]:
    """A study played out as a driver would: trials start, report (skipping steps at times), end or fail.

    Yields the indexed history as the driver reads it after each report, and the reporting trial.
    """
    rng = random.Random(seed)
    storage.open_study(study_info(direction=direction, seed=seed))
    running: dict[int, int] = {}  # number -> next step
    for _ in range(n_events):
        if len(running) < 4:
            running[storage.create_trial("study", PARAMS).number] = 0
        number = rng.choice(list(running))
        step = running[number] + (2 if rng.random() < 0.1 else 1) - 1  # sometimes a step is skipped
        value = rng.choice([math.nan, math.inf, -math.inf]) if rng.random() < 0.03 else rng.gauss(1.0, 0.3)
        storage.report("study", number, step, value)
        running[number] = step + 1
        history = storage.history("study", max_steps=12 if seed % 2 else None, index=StepIndex)
        yield history, history.trials[number]
        end = rng.random()
        if step >= 11 or end < 0.08:
            state = TrialState.COMPLETE if step >= 11 else rng.choice([TrialState.PRUNED, TrialState.FAILED])
            storage.finish_trial("study", number, state=state, value=value)
            del running[number]
        elif end < 0.1:
            storage.requeue_trial("study", number)
            storage.claim_queued("study")
            running[number] = 0


@pytest.mark.parametrize(("seed", "direction"), [(0, "min"), (1, "max"), (2, "max"), (3, "min")])
def test_pruners_decide_alike_from_the_index_and_from_the_whole_history(seed: int, direction: str) -> None:
    storage = SQLStorage("sqlite://")
    decisions = {"both": 0, "prune": 0}
    for history, trial in replay(storage, seed, direction):
        assert index_of(history) is not None
        plain = History(history.space, history.direction, history.trials, history.seed, history.max_steps)
        for pruner in pruners():
            fast, slow = pruner.should_prune(history, trial), pruner.should_prune(plain, trial)
            assert fast == slow, (pruner, trial.number, dict(trial.intermediate))
            decisions["both"] += 1
            decisions["prune"] += fast
    assert 0.05 < decisions["prune"] / decisions["both"] < 0.95  # the replay exercised both answers
    storage.close()


def test_a_stale_or_changed_history_is_never_judged_by_the_index() -> None:
    storage = SQLStorage("sqlite://")
    storage.open_study(study_info())
    trial = storage.create_trial("study", PARAMS)
    storage.report("study", trial.number, 0, 0.5)
    old = storage.history("study", index=StepIndex)
    storage.report("study", storage.create_trial("study", PARAMS).number, 0, 0.9)
    new = storage.history("study", index=StepIndex)
    assert index_of(new) is not None and index_of(old) is None  # the index moved on with the study
    narrowed = type(new)(new.space, new.direction, new.trials[:1], new.seed, index=new.index)
    assert index_of(narrowed) is None
    storage.close()


# ------------------------------------------------------------------ reports of big studies


def many_trials(n: int) -> list[TrialRecord]:
    rng = random.Random(0)
    states = [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAILED, TrialState.RUNNING]
    return [
        TrialRecord(i, {"model.lr": rng.random()}, s, value=None if s is TrialState.FAILED else rng.random())
        for i, s in enumerate(rng.choice(states) for _ in range(n))
    ]


def test_plots_of_a_big_study_draw_a_sample_that_keeps_the_best_and_says_so() -> None:
    from lightning_hpt.report.sample import plot_sample
    from lightning_hpt.report.table import rank_trials

    trials = many_trials(5000)
    small, note = plot_sample(trials[:300], "max", limit=1000)
    assert small == trials[:300] and note is None
    shown, note = plot_sample(trials, "max", limit=1000)
    assert len(shown) == 1000 and [t.number for t in shown] == sorted({t.number for t in shown})
    assert {t.number for t in rank_trials(trials, "max")[:100]} <= {t.number for t in shown}
    assert shown[0].number < 100 and shown[-1].number > 4900  # spread over the whole study
    assert note is not None and "1,000 of the study's 5,000 trials" in note


def test_the_html_table_of_a_big_study_shows_the_best_rows_and_says_where_the_rest_is() -> None:
    from lightning_hpt.report.html import _trials_table
    from lightning_hpt.report.sample import MAX_ROWS

    info = study_info()
    html = _trials_table(info, many_trials(MAX_ROWS + 10))
    assert html.count("<tr>") == MAX_ROWS + 1  # the header and the best rows
    assert f"The best {MAX_ROWS:,} of {MAX_ROWS + 10:,} trials" in html
    assert "lightning-hpt show" not in _trials_table(info, many_trials(10))


# ------------------------------------------------------------------ per-epoch writes


@pytest.mark.parametrize("pruner", [None, "median"])
def test_without_a_pruner_a_trials_values_are_stored_in_batches_and_none_is_lost(
    tmp_path: Path, fast_trainer: dict, monkeypatch: pytest.MonkeyPatch, pruner: str | None
) -> None:
    from conftest import TinyData, TinyModel

    from lightning_hpt import Float, HyperparameterSearch

    batches: list[dict[int, float]] = []
    store = SQLStorage.report_many
    monkeypatch.setattr(SQLStorage, "report_many", lambda s, st, n, v: (batches.append(dict(v)), store(s, st, n, v)))
    finish = SQLStorage.finish_trial

    def finish_trial(s: SQLStorage, st: str, n: int, **kw: Any) -> Any:  # the last values go with the trial's end
        batches.append(dict(kw.get("steps") or {}))
        return finish(s, st, n, **kw)

    monkeypatch.setattr(SQLStorage, "finish_trial", finish_trial)
    search = HyperparameterSearch(
        TinyModel,
        TinyData,
        {"model.lr": Float(0.01, 0.2, log=True)},
        monitor="val_loss",
        mode="min",
        root=tmp_path,
        n_trials=2,
        seed=0,
        verbose=False,
        pruner=pruner,
        trainer_kwargs={**fast_trainer, "max_epochs": 6},
    )
    result = search.run()
    assert all(len(t.intermediate) == 6 for t in result.trials)  # every value stored
    stored = [v for b in batches if b for v in b]
    assert len(stored) == 12
    if pruner is None:  # the first value at once, the rest every 2 s and with the trial's end: fewer writes
        assert len([b for b in batches if b]) <= 6
    else:  # the pruner judges each value as it comes: each is stored first
        assert all(len(b) == 1 for b in batches if b) and len([b for b in batches if b]) == 12
