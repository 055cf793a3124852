"""Values that notice being looked at: how tracing tells which choices a space function branches on.

A watched value stands for an ``int``, ``float`` or ``str`` and calls ``on_use`` whenever code does
anything with it besides passing it along: compares it, hashes it, formats it, iterates it, calls a
method. Arithmetic on a watched number gives a watched number that looks at both operands when it
is looked at itself (``padding = k // 2`` only stored is not a use). A choice the function never
looked at cannot have changed what it asked for, so tracing need not try its other values.

A watched string is a ``str`` (a subclass); a watched number is not an ``int`` or ``float`` but acts
as one (``range(n)``, ``x * 2``, ``math.log(x)``, ``np.log2(x)``, ``{16: a}[n]``), because Python
reads the value of an ``int`` subclass without calling any of its methods (``range`` would go unseen).

Example:
    >>> seen = []
    >>> n = watched(3, lambda: seen.append("n"))
    >>> config = {"layers": n}  # stored: not a use
    >>> seen
    []
    >>> len(range(n)), seen
    (3, ['n'])
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["watched"]

# a str's attributes that only make, copy or describe the object: using them is not looking at the value
_PASS = frozenset(
    {
        "__new__",
        "__init__",
        "__getattribute__",
        "__setattr__",
        "__delattr__",
        "__init_subclass__",
        "__subclasshook__",
        "__class__",
        "__reduce__",
        "__reduce_ex__",
        "__getnewargs__",
        "__getstate__",
    }
)


def _str_hook(name: str) -> Callable[..., Any]:
    method = getattr(str, name)

    def hooked(self: Any, *args: Any, **kwargs: Any) -> Any:
        object.__getattribute__(self, "__dict__")["_on_use"]()
        return method(self, *map(_plain, args), **kwargs)  # ``a == b``: both are looked at

    hooked.__name__ = name
    return hooked


def _str_getattribute(self: Any, attr: str) -> Any:  # a method (``.startswith``): a use
    if not attr.startswith("__"):
        object.__getattribute__(self, "__dict__")["_on_use"]()
    return str.__getattribute__(self, attr)


_WatchedStr = type(
    "WatchedStr",
    (str,),
    {
        **{n: _str_hook(n) for n in dir(str) if n.startswith("__") and n not in _PASS and callable(getattr(str, n))},
        "__getattribute__": _str_getattribute,
    },
)


def _plain(x: Any) -> Any:
    """``x`` as the operation that gets it sees it: a watched operand is looked at too (``c * k``, ``a == b``)."""
    if isinstance(x, WatchedNumber):
        return x.value()
    if isinstance(x, _WatchedStr):
        object.__getattribute__(x, "__dict__")["_on_use"]()
    return x


class WatchedNumber:
    """A number that calls ``on_use`` when looked at; every operation gives what the number itself gives."""

    __slots__ = ("_on_use", "_value")

    def __init__(self, value: int | float, on_use: Callable[[], None]) -> None:
        self._value, self._on_use = value, on_use

    def value(self) -> int | float:
        """The number itself, for an operation that looks at it: counts as a use."""
        self._on_use()
        return self._value

    def __getattr__(self, attr: str) -> Any:  # .real, .bit_length(), .is_integer(), ...
        if attr.startswith("_"):  # not a number's: a copy being made (its slots not yet set), pickling
            raise AttributeError(attr)
        self._on_use()
        return getattr(self._value, attr)

    def __index__(self) -> int:
        self._on_use()
        return operator.index(self._value)

    def __repr__(self) -> str:
        self._on_use()
        return repr(self._value)

    def __str__(self) -> str:
        self._on_use()
        return str(self._value)

    def __format__(self, spec: str) -> str:
        self._on_use()
        return format(self._value, spec)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:  # ``np.log2(width)``
        self._on_use()
        return np.asarray(self._value, dtype=dtype)


def _looker(x: Any) -> Callable[[], None] | None:
    """What marks ``x`` as looked at, when it is watched."""
    if isinstance(x, WatchedNumber):
        return object.__getattribute__(x, "_on_use")
    if isinstance(x, _WatchedStr):
        return object.__getattribute__(x, "__dict__")["_on_use"]
    return None


def _derived(result: Any, *sources: Any) -> Any:
    """A number computed from watched numbers stays watched: looking at it looks at each of them.

    ``k // 2`` or ``sum(widths)`` only stored is not a use, so it does not make tracing try every value.
    """
    lookers = [f for f in map(_looker, sources) if f is not None]
    if type(result) not in (int, float) or not lookers:
        return result

    def on_use() -> None:
        for look in lookers:
            look()

    return WatchedNumber(result, on_use)


def _unwatched(x: Any) -> Any:
    return object.__getattribute__(x, "_value") if isinstance(x, WatchedNumber) else x


def _arithmetic(op: Callable[[Any, Any], Any], reflected: bool) -> Callable[[WatchedNumber, Any], Any]:
    def method(self: WatchedNumber, other: Any) -> Any:
        a, b = (_unwatched(other), self._value) if reflected else (self._value, _unwatched(other))
        if isinstance(other, bool) or not isinstance(other, (int, float, WatchedNumber)):  # [0] * n, "ab" * n
            self._on_use()
            return op(_plain(a), _plain(b))
        result = op(a, b)
        if isinstance(result, tuple):  # divmod
            return tuple(_derived(r, self, other) for r in result)
        return _derived(result, self, other)

    return method


def _binary(op: Callable[[Any, Any], Any], reflected: bool) -> Callable[[WatchedNumber, Any], Any]:
    def method(self: WatchedNumber, other: Any) -> Any:
        self._on_use()
        return op(_plain(other), self._value) if reflected else op(self._value, _plain(other))

    return method


def _unary(op: Callable[..., Any], derived: bool = False) -> Callable[..., Any]:
    def method(self: WatchedNumber, *args: Any) -> Any:
        if derived and not args:
            return _derived(op(self._value), self)
        self._on_use()
        return op(self._value, *map(_plain, args))

    return method


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "lshift", "rshift", "and", "or", "xor"):
    _op = getattr(operator, _name + "_" if _name in ("and", "or") else _name)
    setattr(WatchedNumber, f"__{_name}__", _arithmetic(_op, False))
    setattr(WatchedNumber, f"__r{_name}__", _arithmetic(_op, True))
for _name in ("eq", "ne", "lt", "le", "gt", "ge"):
    setattr(WatchedNumber, f"__{_name}__", _binary(getattr(operator, _name), False))
for _name, _reflected in (("divmod", False), ("rdivmod", True)):
    setattr(WatchedNumber, f"__{_name}__", _arithmetic(divmod, _reflected))
for _name, _fn in {"neg": operator.neg, "pos": operator.pos, "abs": abs, "invert": operator.invert}.items():
    setattr(WatchedNumber, f"__{_name}__", _unary(_fn, derived=True))
for _name, _fn in {"round": round, "trunc": math.trunc, "floor": math.floor, "ceil": math.ceil}.items():
    setattr(WatchedNumber, f"__{_name}__", _unary(_fn, derived=True))
for _name, _fn in {"bool": bool, "int": int, "float": float, "hash": hash}.items():
    setattr(WatchedNumber, f"__{_name}__", _unary(_fn))


def watched(value: Any, on_use: Callable[[], None]) -> Any | None:
    """``value`` watched: a ``str`` stays a ``str``, an ``int`` or ``float`` acts as one; ``None`` for other types."""
    if type(value) is str:
        out = _WatchedStr(value)
        out.__dict__["_on_use"] = on_use
        return out
    if type(value) in (int, float):
        return WatchedNumber(value, on_use)
    return None
