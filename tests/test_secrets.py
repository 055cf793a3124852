"""Database passwords never reach a message, a log line, a stored file or the HTML report.

Masking works on the URL's password *fields* (``mask_secrets``), never by searching the text for
the password, so a short password neither garbles a message nor shows which characters it has.
The runs against a server need ``HPT_TEST_POSTGRES_URL`` (CI starts one).
"""

from __future__ import annotations

import logging
import os
import traceback

import pytest
import sqlalchemy as sa

from lightning_hpt.cli import main
from lightning_hpt.exceptions import StorageError
from lightning_hpt.storage import SQLStorage, mask_secrets, open_storage
from lightning_hpt.testing.storage import study_info

POSTGRES_URL = os.environ.get("HPT_TEST_POSTGRES_URL")
SECRET = "Sup3r-s3cret"


def _everything(error: BaseException) -> str:
    """The error as a user sees it: its message and the whole printed traceback, chained causes included."""
    return str(error) + "".join(traceback.format_exception(error))


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql+psycopg://hpt@127.0.0.1:1/hpt?password={SECRET}",  # query string; the server is not there
        f"postgresql+psycopg://hpt:{SECRET}@127.0.0.1:notaport/hpt",  # a bad port: the URL does not parse
        f"postgresql+psycopg://hpt:{SECRET}@[::1/hpt",  # an unclosed IPv6 bracket
        f"hpt:{SECRET}@127.0.0.1/hpt",  # no scheme
        f"postgresql+psycopg:/hpt:{SECRET}@127.0.0.1/hpt",  # a slash missing
        f"postgresql+psycopg://hpt:p@ss{SECRET}@127.0.0.1:1/hpt",  # an '@' not percent-encoded
    ],
)
def test_no_password_in_storage_errors(url: str) -> None:
    with pytest.raises(StorageError) as err:
        open_storage(url, retries=0)
    assert SECRET not in _everything(err.value) and "***" in str(err.value), str(err.value)


def test_a_short_password_does_not_garble_the_message() -> None:
    """The old masking replaced every 'a' of the message when the password was 'a'."""
    pytest.importorskip("psycopg", reason="the PostgreSQL driver (the postgres extra) reports the failed connection")
    with pytest.raises(StorageError) as err:
        SQLStorage("postgresql+psycopg://hpt:a@127.0.0.1:1/hpt", retries=0)
    message = str(err.value)
    assert "hpt:***@127.0.0.1:1/hpt" in message and "OperationalError" in message and "database" in message


def test_retry_warnings_mask_the_password(caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("psycopg", reason="the PostgreSQL driver (the postgres extra) retries the failed connection")
    with caplog.at_level(logging.WARNING), pytest.raises(StorageError):
        SQLStorage(f"postgresql+psycopg://hpt@127.0.0.1:1/hpt?password={SECRET}", retries=1)
    assert "retrying" in caplog.text and SECRET not in caplog.text and "password=***" in caplog.text


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("postgresql://u:pw@h/d?sslmode=require", "postgresql://u:***@h/d?sslmode=require"),
        ("postgresql://u@h/d?password=pw&x=1", "postgresql://u@h/d?password=***&x=1"),
        ("host=h password='a b' user=u", "host=h password='***' user=u"),
        ("{'password': 'pw', 'port': 5}", "{'password': '***', 'port': 5}"),
        ("sqlite:////tmp/runs/studies.db", "sqlite:////tmp/runs/studies.db"),
        ("password authentication failed for user 'u'", "password authentication failed for user 'u'"),
        ("OperationalError: connection refused at a:a", "OperationalError: connection refused at a:a"),
    ],
)
def test_mask_secrets_masks_fields_only(text: str, masked: str) -> None:
    assert mask_secrets(text) == masked
    assert mask_secrets(sa.make_url("postgresql://u:p%40w@h/d")) == "postgresql://u:***@h/d"


def test_cli_errors_and_output_mask_the_password(tmp_path, capsys) -> None:
    code = main(["show", "x", "--storage", f"postgresql+psycopg://hpt@127.0.0.1:1/hpt?password={SECRET}"])
    out, err = capsys.readouterr()
    assert code == 1 and SECRET not in out + err and "password=***" in err


@pytest.mark.skipif(POSTGRES_URL is None, reason="set HPT_TEST_POSTGRES_URL to run against a PostgreSQL server")
def test_a_query_string_password_on_a_real_server_is_never_shown(tmp_path, capsys) -> None:
    """storage.url (the live display, show, the HTML report) never holds a password given in the query string."""
    url = sa.make_url(POSTGRES_URL).update_query_dict({"password": SECRET})  # trust auth: any password is accepted
    text = url.render_as_string(hide_password=False)
    storage = SQLStorage(text)
    assert SECRET not in storage.url and SECRET not in repr(storage)
    study = f"masked_{os.getpid()}"
    storage.open_study(study_info(study))
    assert main(["show", study, "--storage", text]) == 0
    out, err = capsys.readouterr()
    assert SECRET not in out + err and "password=***" in out
    assert main(["report", study, "--storage", text, "-o", str(tmp_path / "r.html")]) == 0
    assert SECRET not in (tmp_path / "r.html").read_text()
    storage.delete_study(study)


AUTH_URL = os.environ.get("HPT_TEST_POSTGRES_AUTH_URL")


@pytest.mark.skipif(AUTH_URL is None, reason="set HPT_TEST_POSTGRES_AUTH_URL to a server that checks passwords")
@pytest.mark.parametrize("where", ["user part", "query string"])
def test_a_wrong_password_on_a_real_server_is_never_shown(where: str) -> None:
    """The server refuses the password; neither it nor the right one appears in the error or its traceback."""
    url = sa.make_url(AUTH_URL)
    wrong = url.set(password=SECRET) if where == "user part" else url.set(password=None)
    if where == "query string":
        wrong = wrong.update_query_dict({"password": SECRET})
    with pytest.raises(StorageError, match="password authentication failed") as err:
        SQLStorage(wrong.render_as_string(hide_password=False), retries=0)
    assert SECRET not in _everything(err.value) and "***" in str(err.value)
    assert str(url.password) not in _everything(err.value)
