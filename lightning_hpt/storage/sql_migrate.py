"""Upgrades of a study database written by an older lightning-hpt, in place and in one transaction.

Every step only adds (columns with a default, indexes): no record is rewritten or dropped, and a
failure rolls the whole upgrade back, leaving the database as it was.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from lightning_hpt.storage.sql_schema import META, SCHEMA_VERSION, STUDIES, TRIALS, VALUES

__all__ = ["migrate"]


def _add_column(conn: Connection, table: sa.Table, column: str) -> None:
    schema = (conn.get_execution_options().get("schema_translate_map") or {}).get(None)  # PostgreSQL's own schema
    quote = conn.dialect.identifier_preparer
    name = quote.quote(table.name) if schema is None else f"{quote.quote_schema(schema)}.{quote.quote(table.name)}"
    conn.execute(sa.text(f"ALTER TABLE {name} ADD COLUMN {column}"))


def _to_2(conn: Connection) -> None:
    # The change counter of the incremental history: 0 everywhere, so the first read of each study is a full one.
    for table in (STUDIES, TRIALS):
        _add_column(conn, table, "seq BIGINT NOT NULL DEFAULT 0")
    index = next(i for i in TRIALS.indexes if i.name == "hpt_trials_study_seq")
    index.create(conn)


def _to_3(conn: Connection) -> None:
    # Several objectives and constraints; NULL everywhere: a study of one objective, as every older study is.
    _add_column(conn, STUDIES, "definition TEXT")
    _add_column(conn, TRIALS, "objective_values TEXT")
    _add_column(conn, VALUES, "objective_values TEXT")


STEPS = {1: _to_2, 2: _to_3}  # from version k to k + 1


def migrate(conn: Connection, version: int) -> None:
    """Bring the tables from schema ``version`` to :data:`SCHEMA_VERSION`; the caller holds the write lock."""
    for v in range(version, SCHEMA_VERSION):
        STEPS[v](conn)
    conn.execute(sa.update(META).where(META.c.key == "schema_version").values(value=str(SCHEMA_VERSION)))
