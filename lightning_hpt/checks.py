"""Checks of plain arguments shared by several classes: booleans, integers, seeds, the trials' directory.

Each check raises an error of the package's family naming the argument, the rule, the value and
the fix, and writes nothing.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from lightning_hpt.exceptions import ConfigurationError, HPTError

__all__ = ["MAX_SEED", "check_bool", "check_int", "check_seed", "check_writable_dir", "known_keywords"]

_F = TypeVar("_F", bound=Callable[..., Any])

#: seeds are 32-bit: numpy's and Lightning's ``seed_everything`` range, and what every derived seed keeps.
MAX_SEED = 2**32 - 1


def check_bool(value: Any, name: str, error: type[HPTError] = ConfigurationError, owner: str = "") -> bool:
    """``value`` if it is a real boolean (``True``/``False``, or a numpy bool); else ``error``.

    Strings such as ``"yes"`` or ``"false"`` and numbers are refused: ``"false"`` is truthy.

    Args:
        value: the argument's value.
        name: the argument's name.
        error: the error to raise.
        owner: the class or function the argument belongs to, for the message.
    """
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    where = f"{owner}: " if owner else ""
    raise error(
        f"{where}{name} must be True or False, got {name}={value!r} of type {type(value).__name__};"
        f" write {name}=True or {name}=False (in YAML: true or false, without quotes)"
    )


def check_int(owner: str, arg: str, value: object, minimum: int, fix: str = "") -> int:
    """``value`` if it is an integer ``>= minimum``; otherwise a ConfigurationError that says how to fix it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigurationError(
            f"{owner}: {arg} must be an integer >= {minimum}, got {arg}={value!r}" + (f"; {fix}" if fix else "")
        )
    return int(value)


def check_seed(seed: Any, name: str = "seed") -> int | None:
    """``seed`` if it is ``None`` or an integer in ``[0, 2**32 - 1]``; else :class:`ConfigurationError`.

    Seeds outside that range would be folded into it (``2**32`` would act as ``0``), so they are refused.
    """
    if seed is None:
        return None
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise ConfigurationError(
            f"{name} must be an integer from 0 to 2**32 - 1 (or None), got {name}={seed!r} of type"
            f" {type(seed).__name__}"
        )
    if not 0 <= int(seed) <= MAX_SEED:
        raise ConfigurationError(
            f"{name} must be an integer from 0 to 2**32 - 1 = {MAX_SEED} (or None), got {name}={seed!r};"
            " pass a seed in that range"
        )
    return int(seed)


def check_writable_dir(path: str | os.PathLike[str], what: str) -> Path:
    """Check, without writing anything, that ``path`` is (or can be created as) a directory we can write.

    Args:
        path: the directory.
        what: what it is for, and how to choose another, for the message (e.g. ``"the trials' directory
            (root=..., study_name=...)"``).

    Raises:
        ConfigurationError: the path or one of its parents is not a directory, or the nearest existing
            directory is not writable (permissions, a read-only file system).
    """
    path = Path(path).absolute()
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        where = "" if existing == path else f" cannot be created: its parent {existing}"
        raise ConfigurationError(
            f"{what} {path}{where} is a regular file, not a directory; move the file away or choose another directory"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == path else f" cannot be created: {existing}"
        raise ConfigurationError(
            f"{what} {path}{where} is not writable (permissions or a read-only file system); choose a directory"
            " you can write to, or fix its permissions"
        )
    return path


def refuse_unknown_keywords(
    owner: str, kwargs: Mapping[str, Any], names: Sequence[str], hints: Mapping[str, str]
) -> None:
    """Raise for the first of ``kwargs`` not in ``names``: ``hints[key]`` (what to do instead), else its nearest
    name. The values are not quoted: a secret may be one."""
    unknown = [k for k in kwargs if k not in names]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
        fix = f"; {hints[key]}" if key in hints else f"; did you mean {close[0]}?" if close else ""
        raise ConfigurationError(f"{owner} takes no argument {key!r}{fix} (its arguments: {', '.join(names)})")


def known_keywords(owner: str, hints: Mapping[str, str]) -> Callable[[_F], _F]:
    """Refuse a keyword ``init`` does not take with what to write instead, before it runs.

    ``hints`` maps words other tools use (``direction``, ``sampler``) to what to write instead; any other unknown
    keyword gets its nearest names. Python's own ``TypeError`` names neither. The signature stays the
    function's own (``functools.wraps``), for editors and ``inspect``.
    """

    def wrap(init: _F) -> _F:
        names = [n for n in inspect.signature(init).parameters if n != "self"]

        @functools.wraps(init)
        def checked(*args: Any, **kwargs: Any) -> Any:
            refuse_unknown_keywords(owner, kwargs, names, hints)
            return init(*args, **kwargs)

        return checked  # type: ignore[return-value]

    return wrap
