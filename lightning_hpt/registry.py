"""One pattern for plug-ins reached by name: strategies, pruners, executors and storage URL schemes.

A :class:`Registry` maps names to classes; a name may point to ``"module:Class"`` instead, so an
optional dependency (BoTorch, Ray) is imported only when that name is used. A plug-in outside
the package registers itself once and is then reachable wherever a name is accepted, e.g.
``STRATEGIES.register("tpe", MyTPEStrategy)`` makes ``HyperparameterSearch(strategy="tpe")`` work.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Generic, TypeVar

from lightning_hpt.exceptions import ConfigurationError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Classes of one kind by name (names are matched without case or surrounding spaces).

    Args:
        kind: what the classes are, for messages (``"strategy"``).
        base: the class every registered class must derive from.

    Example:
        >>> from lightning_hpt.strategies import STRATEGIES, RandomStrategy
        >>> STRATEGIES.get("random") is RandomStrategy
        True
    """

    def __init__(self, kind: str, base: type[T]) -> None:
        self.kind, self.base = kind, base
        self._entries: dict[str, type[T] | str] = {}

    def register(self, name: str, cls: type[T] | str) -> None:
        """Make ``name`` reach ``cls`` (a class, or ``"module:Class"`` imported on first use)."""
        if not isinstance(cls, str) and not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise ConfigurationError(
                f"a {self.kind} registered as {name!r} must be a {self.base.__name__}, got {cls!r}"
            )
        self._entries[name.strip().lower()] = cls

    def unregister(self, name: str) -> None:
        """Forget ``name`` (no error if it is not registered)."""
        self._entries.pop(name.strip().lower(), None)

    def get(self, name: str) -> type[T] | None:
        """The class registered as ``name``, or ``None``."""
        entry = self._entries.get(name.strip().lower()) if isinstance(name, str) else None
        if isinstance(entry, str):
            module, _, attr = entry.partition(":")
            entry = getattr(importlib.import_module(module), attr)
        return entry

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.strip().lower() in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"
