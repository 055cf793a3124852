"""Names of parameters and studies: dotted identifiers of at most 128 characters.

Names flow into database rows and file paths (``<root>/<study>``), so anything that could escape
a directory (``../x``, ``/``, NUL) or be mistaken for a path is refused.
"""

from __future__ import annotations

import re

from lightning_hpt.exceptions import ConfigurationError, HPTError, SearchSpaceError

__all__ = ["MAX_NAME_LENGTH", "validate_name", "validate_study_name"]

MAX_NAME_LENGTH = 128
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
#: a study name may also have '-' and start a part with a digit (``2024-11.lr-sweep``), as Optuna's do
_STUDY_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*(\.[A-Za-z0-9_][A-Za-z0-9_-]*)*$")
_RULES = {
    _NAME_RE: "use letters, digits and '_' in dot-separated parts, each starting with a letter or '_'",
    _STUDY_RE: "use letters, digits, '_' and '-' in dot-separated parts, each starting with a letter, digit or '_'",
}


def validate_name(
    name: object,
    what: str = "parameter name",
    *,
    error: type[HPTError] = SearchSpaceError,
    examples: str = "'model.lr' or 'trainer.max_epochs'",
    pattern: re.Pattern[str] = _NAME_RE,
) -> str:
    """Check a parameter or study name: dotted identifiers, at most 128 characters.

    Names flow into database rows and file paths, so anything that could escape a directory
    (``../x``, ``/``, NUL) or be mistaken for a path is refused.

    Args:
        name: the name to check.
        what: what the name is, for the message.
        error: the error to raise.
        examples: valid names of this kind, for the message.
        pattern: the rule (parameter names by default).
    """
    if not isinstance(name, str):
        raise error(f"{what} must be a string, got {name!r} of type {type(name).__name__}")
    if not name:
        raise error(f"{what} must not be empty; use a name such as {examples}")
    if len(name) > MAX_NAME_LENGTH:
        raise error(f"{what} must be at most {MAX_NAME_LENGTH} characters, got {len(name)}: {name[:40]!r}...")
    if not pattern.match(name):
        raise error(f"{what} {name!r} is invalid: {_RULES[pattern]} (for example {examples})")
    return name


def validate_study_name(name: object) -> str:
    """Check a study name (it names a database row and the directory ``<root>/<study>``); see :func:`validate_name`.

    Raises:
        ConfigurationError: the name is not dot-separated parts of letters, digits, '_' and '-' (none
            starting with '-'), of at most 128 characters.
    """
    return validate_name(
        name, "study_name", error=ConfigurationError, examples="'mnist' or 'resnet.lr-sweep'", pattern=_STUDY_RE
    )
