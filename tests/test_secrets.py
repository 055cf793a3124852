"""Passwords (of databases, of tracking servers in a trial's error) never reach a message, a log, a file or a report.

Masking works on the URL's password *fields* (``mask_secrets``), never by searching the text for
the password, so a short password neither garbles a message nor shows which characters it has.
The runs against a server need ``HPT_TEST_POSTGRES_URL`` (CI starts one).
"""

from __future__ import annotations

import io
import logging
import os
import traceback

import pytest
import sqlalchemy as sa
import torch
import yaml
from conftest import FAST, TinyData, TinyModel

from lightning_hpt import Float, HyperparameterSearch, Int, SearchFailedError
from lightning_hpt.cli import main
from lightning_hpt.exceptions import StorageError
from lightning_hpt.masking import get_logger, mask_config
from lightning_hpt.report import export_trials, write_report
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


class _TrackerDown(TinyModel):
    """A model whose training fails as a logger does when its tracking server is down: the error quotes its URL."""

    def training_step(self, batch, batch_idx):
        raise ConnectionError(f"API request to http://bob:{SECRET}@127.0.0.1:1/api/2.0/runs/create failed")


def test_a_trial_error_quoting_a_password_is_masked_everywhere(tmp_path, caplog) -> None:
    """The trial's error reaches the log, error.txt, the study database, the stop message, export and report masked."""
    search = HyperparameterSearch(
        model=_TrackerDown,
        datamodule=TinyData,
        space={"model.lr": Float(1e-3, 1e-1, log=True), "model.hidden": Int(4, 16)},
        monitor="val_loss",
        n_trials=3,
        root=tmp_path / "runs",
        study_name="leak",
        trainer_kwargs=dict(FAST),
        verbose=False,
    )
    with caplog.at_level(logging.WARNING), pytest.raises(SearchFailedError) as err:
        search.run()
    assert "http://bob:***@127.0.0.1:1/api" in str(err.value) and SECRET not in _everything(err.value)
    assert "bob:***@" in caplog.text and SECRET not in caplog.text
    storage = open_storage(tmp_path / "runs" / "studies.db", create=False)
    trials = storage.trials("leak")
    assert trials and all(t.error and "bob:***@" in t.error for t in trials)
    export_trials(trials, tmp_path / "trials.json")
    write_report(storage, "leak", tmp_path / "report.html")
    storage.close()
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "error.txt" for p in files) and any(p.name.startswith("studies.db") for p in files)
    assert [p for p in files if SECRET.encode() in p.read_bytes()] == []


def test_log_records_and_their_tracebacks_are_masked(caplog) -> None:
    log = get_logger("lightning_hpt.test_masking")
    with caplog.at_level(logging.WARNING):
        log.warning("cannot reach %s", f"postgresql://u:{SECRET}@h/d")
        try:
            raise ConnectionError(f"https://u:{SECRET}@tracker.example.com refused")
        except ConnectionError:
            log.exception("the logger failed")
    assert SECRET not in caplog.text and "postgresql://u:***@h/d" in caplog.text
    assert "https://u:***@tracker.example.com" in caplog.text and "ConnectionError" in caplog.text


def test_mask_config_masks_secret_keys_and_url_passwords() -> None:
    config = {
        "trainer": {
            "logger": [{"init_args": {"api_key": "k3y", "tracking_uri": f"https://u:{SECRET}@h", "name": "x"}}]
        },
        "model": {"init_args": {"token": "t0k", "pad_token": 0, "hidden": 8, "password": None}},
    }
    assert mask_config(config) == {
        "trainer": {"logger": [{"init_args": {"api_key": "***", "tracking_uri": "https://u:***@h", "name": "x"}}]},
        "model": {"init_args": {"token": "***", "pad_token": 0, "hidden": 8, "password": None}},
    }


class Tracked(TinyModel):
    """A model given a tracking server's URL with its password, as a project's config gives a logger one."""

    def __init__(self, tracking_uri: str = "", lr: float = 0.05, hidden: int = 8) -> None:
        super().__init__(lr=lr, hidden=hidden)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self(x), y))


def _cli_search(tmp_path, password: str) -> tuple[int, str]:
    fit = {
        "model": {"class_path": f"{__name__}.Tracked", "init_args": {"tracking_uri": f"https://u:{password}@h/x"}},
        "data": {"class_path": "conftest.TinyData"},
        "trainer": {**FAST, "enable_progress_bar": False},
    }
    space = {"model.lr": {"type": "float", "low": 1e-3, "high": 0.1, "log": True}}
    search = {"space": space, "n_trials": 1, "seed": 0, "root": str(tmp_path / "runs"), "verbose": False}
    (tmp_path / "fit.yaml").write_text(yaml.safe_dump(fit))
    (tmp_path / "search.yaml").write_text(yaml.safe_dump({"search": search}))
    err = io.StringIO()
    code = main(
        ["search", "--config", str(tmp_path / "fit.yaml"), "--config", str(tmp_path / "search.yaml")], stderr=err
    )
    return code, err.getvalue()


def test_the_stored_cli_config_has_its_secrets_masked(tmp_path) -> None:
    """The study keeps the config every trial shares without the password; a rotated password is no change of it."""
    assert _cli_search(tmp_path, SECRET) == (0, "")
    storage = open_storage(tmp_path / "runs" / "studies.db", create=False)
    stored = storage.load_study("default").attrs["cli_config"]
    storage.close()
    assert stored["model"]["init_args"]["tracking_uri"] == "https://u:***@h/x"
    assert SECRET.encode() not in (tmp_path / "runs" / "studies.db").read_bytes()
    # the trial's own config.yaml is the project's config, password included: `python train.py fit --config` needs it
    assert SECRET in (tmp_path / "runs" / "default" / "trial_0" / "config.yaml").read_text()
    (tmp_path / "search.yaml").unlink()
    assert _cli_search(tmp_path, "rotated-password") == (0, "")  # resumes: n_trials reached, nothing is refused


@pytest.mark.parametrize("url", ["sqlit:///runs/studies.db", f"postgress://hpt:{SECRET}@h/hpt"])
def test_a_misspelt_database_kind_is_named_as_such(tmp_path, url: str) -> None:
    """Issue: 'sqlit:///x.db' was 'the database driver is missing', with advice to install PostgreSQL's driver."""
    with pytest.raises(StorageError) as err:
        open_storage(url, retries=0)
    kind = url.split(":", 1)[0]
    assert f"{kind!r} is not a database kind SQLAlchemy knows" in str(err.value) and "'sqlite:///'" in str(err.value)
    assert "driver is missing" not in str(err.value) and SECRET not in _everything(err.value)
