"""Upgrades of a study database written by an older lightning-hpt, in place and in one transaction.

Every step only adds (columns with a default, indexes): no record is rewritten or dropped, and a
failure rolls the whole upgrade back, leaving the database as it was.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from lightning_hpt.storage.sql_schema import META, SCHEMA_VERSION, STUDIES, TRIALS

__all__ = ["migrate"]


def _to_2(conn: Connection) -> None:
    # The change counter of the incremental history: 0 everywhere, so the first read of each study is a full one.
    schema = (conn.get_execution_options().get("schema_translate_map") or {}).get(None)  # PostgreSQL's own schema
    quote = conn.dialect.identifier_preparer
    for table in (STUDIES, TRIALS):
        name = quote.quote(table.name) if schema is None else f"{quote.quote_schema(schema)}.{quote.quote(table.name)}"
        conn.execute(sa.text(f"ALTER TABLE {name} ADD COLUMN seq BIGINT NOT NULL DEFAULT 0"))
    index = next(i for i in TRIALS.indexes if i.name == "hpt_trials_study_seq")
    index.create(conn)


STEPS = {1: _to_2}  # from version k to k + 1


def migrate(conn: Connection, version: int) -> None:
    """Bring the tables from schema ``version`` to :data:`SCHEMA_VERSION`; the caller holds the write lock."""
    for v in range(version, SCHEMA_VERSION):
        STEPS[v](conn)
    conn.execute(sa.update(META).where(META.c.key == "schema_version").values(value=str(SCHEMA_VERSION)))
