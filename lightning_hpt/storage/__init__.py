"""Where studies live: the :class:`Storage` interface and its SQL implementation.

Example:
    >>> storage = open_storage("runs/mnist/study.db")          # a SQLite file
    >>> storage = open_storage("postgresql+psycopg://user@db-host/hpt")  # several drivers, several machines
"""

from __future__ import annotations

import os
from typing import Any

from lightning_hpt.exceptions import StorageError
from lightning_hpt.masking import mask_secrets
from lightning_hpt.storage.base import STORAGES, Storage, StudyInfo
from lightning_hpt.storage.sql import SCHEMA_VERSION, SQLStorage
from lightning_hpt.storage.sql_engine import parse_url

__all__ = [
    "SCHEMA_VERSION",
    "STORAGES",
    "SQLStorage",
    "Storage",
    "StudyInfo",
    "mask_secrets",
    "open_storage",
    "storage_spec",
]

STORAGES.register("sqlite", SQLStorage)
STORAGES.register("postgresql", SQLStorage)

_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")


def open_storage(url_or_storage: Storage | str | os.PathLike[str], **kwargs: Any) -> Storage:
    """The storage named by ``url_or_storage``.

    Args:
        url_or_storage: a :class:`Storage` (returned as it is), a URL whose scheme is registered in
            :data:`STORAGES`, any other SQLAlchemy URL (``"sqlite:///runs/study.db"``,
            ``"postgresql+psycopg://user:password@host/db"``), or a filesystem path ending in ``.db``
            (``.sqlite``, ``.sqlite3``), which means a SQLite file.
        **kwargs: passed to the backend (:class:`SQLStorage`: ``lock_timeout``, ``retries``,
            ``engine_kwargs``, ``create``: ``False`` to open an existing database only, writing nothing).

    Raises:
        StorageError: the argument is none of these, or the database cannot be opened.
    """
    spec = storage_spec(url_or_storage)
    if isinstance(spec, Storage):
        if kwargs:
            raise StorageError(
                f"open_storage got a Storage object and also options {sorted(kwargs)}; configure the object itself"
            )
        return spec
    return (STORAGES.get(_scheme(spec)) or SQLStorage)(spec, **kwargs)


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].split("+", 1)[0]


def storage_spec(url_or_storage: Any) -> Storage | str:
    """What :func:`open_storage` would open, checked without opening it: the Storage, or a database URL.

    A URL that does not parse is refused here, so a search can refuse it when it is created.

    Raises:
        StorageError: the argument is not a Storage, a parseable URL or a path ending in ``.db``.
    """
    if isinstance(url_or_storage, Storage):
        return url_or_storage
    if isinstance(url_or_storage, (str, os.PathLike)):
        text = os.fspath(url_or_storage)
        if isinstance(text, str) and "://" in text:
            if STORAGES.get(_scheme(text)) in (None, SQLStorage):  # another backend checks its own URLs
                parse_url(text)
            return text
        if isinstance(text, str) and text.lower().endswith(_SQLITE_SUFFIXES):
            return "sqlite:///" + os.path.abspath(os.path.expanduser(text))
    given = mask_secrets(repr(url_or_storage))
    raise StorageError(
        f"storage must be a Storage object, a database URL such as 'sqlite:///runs/study.db' or"
        f" 'postgresql+psycopg://user@host/dbname', or a file path ending in .db; got {given}"
    )
