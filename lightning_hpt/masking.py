"""Secrets out of text: the password fields of URLs and connection strings, masked.

A database URL (or a tracking server's ``https://user:token@host``) can reach an error message, a
log line, the live display, a trial's stored error or the HTML report, whole or quoted inside a
driver's or a logger's message. :func:`mask_secrets` is the one function that
makes such text safe to show: it finds the *fields* that hold a password and replaces their
values with ``***``; it never searches the text for the password itself (a short password
would garble the message and show which characters it contains).

The fields are the password of a URL's user information (``scheme://user:PASSWORD@host``,
also without a scheme or in a URL that does not parse), a ``password=`` key in a query string
or a libpq connection string (``?password=...``, ``password='...'``), and a ``"password": ...``
entry of a printed mapping.

Example:
    >>> mask_secrets("could not open postgresql://hpt:s3cret@db:5432/hpt?sslpassword=x")
    'could not open postgresql://hpt:***@db:5432/hpt?sslpassword=***'
"""

from __future__ import annotations

import logging
import re
from typing import Any

__all__ = ["MASK", "get_logger", "mask_config", "mask_secrets", "safe_cause"]

MASK = "***"
_KEYS = r"(?:password|passwd|pwd|sslpassword|sslkey_?password)"
# scheme://user:password@host : the password runs to the last "@" on the line that is followed by a host,
# so an unencoded "@" or space inside it is masked too (at worst, more than the password is masked).
_SCHEME_USERINFO = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*:/{1,3}[^:/@\s'\"]*):(?P<secret>[^\n]*)@(?=[\w\[.\-]*(?:[:/?'\"\s]|$))"
)
# user:password@host without a scheme (a URL missing its "postgresql://").
_BARE_USERINFO = re.compile(r"(?P<head>(?<![\w:/.%+\-])[\w.%+\-~]+):(?P<secret>[^@\s'\"/]*)@(?=[\w\[])")
# password=value in a query string or a libpq connection string ('quoted' values may hold spaces).
_KEY_VALUE = re.compile(rf"(?P<head>(?i:\b{_KEYS})\s*=\s*)(?P<secret>'(?:[^'\\]|\\.)*'|[^\s&;'\",)]*)")
# 'password': 'value' in a printed dict (engine_kwargs, connect_args).
_MAPPING = re.compile(rf"(?P<head>(?P<q>['\"])(?i:{_KEYS})(?P=q)\s*:\s*)(?P<secret>'[^']*'|\"[^\"]*\"|[^\s,}}]+)")


def _masked(match: re.Match[str]) -> str:
    secret = match.group("secret")
    quote = secret[0] if secret[:1] in ("'", '"') and len(secret) > 1 else ""
    return f"{match.group('head')}{quote}{MASK}{quote}"


def _masked_userinfo(match: re.Match[str]) -> str:
    return f"{match.group('head')}:{MASK}@"


def mask_secrets(text: Any) -> str:
    """``text`` (a URL, a message, anything printable) with every password field's value as ``***``.

    Args:
        text: what is about to be shown; a SQLAlchemy ``URL`` is rendered with its password first.

    Returns:
        The text with the values of password fields masked; everything else unchanged.
    """
    render = getattr(text, "render_as_string", None)
    text = render(hide_password=False) if callable(render) else str(text)
    text = _SCHEME_USERINFO.sub(_masked_userinfo, text)
    text = _BARE_USERINFO.sub(_masked_userinfo, text)
    text = _KEY_VALUE.sub(_masked, text)
    return _MAPPING.sub(_masked, text)


#: keys of a config whose value is a secret: a password, a logger's API key (Comet, Neptune) or a token
_SECRET_KEY = re.compile(rf"(?i:{_KEYS}|api_?key|(?:access_|auth_|api_)?token|secret(?:_?key)?)")


def mask_config(node: Any) -> Any:
    """A copy of a config (mappings, lists, scalars) to store or show: secret keys' values and URL passwords masked.

    A value under a key that names a secret (``password``, ``api_key``, ``token``, ``secret``) becomes ``***``;
    every string goes through :func:`mask_secrets` (``tracking_uri: https://user:***@host``).
    """
    if isinstance(node, dict):
        return {k: MASK if _SECRET_KEY.fullmatch(str(k)) and v else mask_config(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [mask_config(v) for v in node]
    return mask_secrets(node) if isinstance(node, str) else node


def safe_cause(error: BaseException) -> BaseException | None:
    """``error`` if its text holds no secret, else ``None``: what to chain (``raise ... from``) to a masked error.

    A chained exception is printed whole in a traceback; one that quotes a password must not be.
    """
    cause: BaseException | None = error
    seen: set[int] = set()
    while cause is not None and id(cause) not in seen:
        if mask_secrets(cause) != str(cause):
            return None
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return error


class _MaskSecrets(logging.Filter):
    """Masks the password fields of a log record's message and traceback before any handler sees them."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_secrets(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:  # a trial's exception may quote a URL with its password
            text = logging.Formatter().formatException(record.exc_info)
            if mask_secrets(text) != text:
                record.exc_text = mask_secrets(text)  # what a Formatter prints instead of formatting exc_info
        elif record.exc_text:
            record.exc_text = mask_secrets(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_secrets(record.stack_info)
        return True


_FILTER = _MaskSecrets()


def get_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)`` whose records have their secrets masked (every module of the package uses one).

    A logger's filters apply to the records logged on it, not on its children, so each module's logger gets it.
    """
    logger = logging.getLogger(name)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger
