"""Hyperparameter domains: the values one parameter can take, and where they sit in the unit interval.

Every domain maps its values to and from the unit interval. Numeric domains use their natural
scale (log-scale domains are modelled in log space); discrete domains (integers, stepped floats,
categories) split the interval into equal bins, one per value, so that a uniform draw in the unit
cube is a uniform draw over the values and every point of the cube decodes to a valid value.

A domain's ``when`` makes its parameter conditional: it exists only when other parameters have
some values (:mod:`lightning_hpt.conditions` checks conditions against the space).

Example:
    >>> Int(1, 4).from_unit(0.6)
    3
    >>> Float(0.0, 0.99, when={"optimizer.class_path": "torch.optim.SGD"}).when
    {'optimizer.class_path': ['torch.optim.SGD']}
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lightning_hpt.checks import check_bool
from lightning_hpt.exceptions import SearchSpaceError
from lightning_hpt.names import validate_name

__all__ = ["SCALARS", "Categorical", "Domain", "Float", "Int", "When", "make_when", "value_key"]

#: the types a choice (and a condition's value) may have: what a study can store as JSON.
SCALARS = (str, int, float, bool, type(None))

_EXAMPLE = "when={'optimizer.class_path': 'torch.optim.SGD'} or when={'model.num_layers': [2, 3]}"


def value_key(value: Any) -> tuple[str, Any]:
    """A type-aware key of a value: ``1``, ``1.0`` and ``True`` are different choices (equal in Python)."""
    return (type(value).__name__, value)


class When(Mapping[str, tuple[Any, ...]]):
    """The condition of one domain: ``{parent name: allowed values}``, immutable and canonical.

    Names are sorted and values are sorted within each name, so equal conditions compare (and
    serialize) equal whatever order they were written in.
    """

    __slots__ = ("_items",)

    def __init__(self, items: tuple[tuple[str, tuple[Any, ...]], ...]) -> None:
        self._items = items

    def __getitem__(self, name: str) -> tuple[Any, ...]:
        return dict(self._items)[name]

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def _canonical(self) -> tuple:
        return tuple((name, tuple(value_key(v) for v in values)) for name, values in self._items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, When) and self._canonical() == other._canonical()

    def __hash__(self) -> int:
        return hash(self._canonical())

    def __repr__(self) -> str:
        return repr(self.to_dict())

    def to_dict(self) -> dict[str, list[Any]]:
        """``{parent: [values]}``: the JSON form stored with the study's space."""
        return {name: list(values) for name, values in self._items}


def _when_error(owner: str, why: str, when: Any) -> SearchSpaceError:
    return SearchSpaceError(f"{owner}: when {why}, got when={when!r}; for example {_EXAMPLE}")


def _values(owner: str, parent: str, raw: Any, when: Any) -> tuple[Any, ...]:
    values = list(raw) if isinstance(raw, (list, tuple)) else [raw]
    if not values:
        raise _when_error(owner, f"lists at least one value for {parent!r}", when)
    seen: set[tuple[str, Any]] = set()
    out = []
    for v in values:
        v = v.item() if isinstance(v, np.generic) else v
        if not isinstance(v, SCALARS) or (isinstance(v, float) and not math.isfinite(v)):
            raise _when_error(owner, f"values must be finite str, int, float, bool or None; {v!r} is not", when)
        if value_key(v) not in seen:
            seen.add(value_key(v))
            out.append(v)
    return tuple(sorted(out, key=value_key))


def make_when(when: Any, owner: str) -> When | None:
    """``when`` of a domain in canonical form: ``None``, or a :class:`When`.

    Args:
        when: ``None``, a ``When``, or ``{parent name: value or list of values}``.
        owner: the domain's class name, for messages.

    Raises:
        SearchSpaceError: not a non-empty mapping of valid names to storable values.
    """
    if when is None or isinstance(when, When):
        return when
    if not isinstance(when, Mapping) or not when:
        raise _when_error(owner, "must be a non-empty dict of parameter name -> value or list of values", when)
    items = []
    for parent, raw in when.items():
        validate_name(parent, f"{owner}: a parameter named in when")
        items.append((parent, _values(owner, parent, raw, when)))
    return When(tuple(sorted(items)))


def _number(value: object, arg: str, cls: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise SearchSpaceError(f"{cls}: {arg} must be a number, got {value!r} of type {type(value).__name__}")
    if not math.isfinite(float(value)):
        raise SearchSpaceError(
            f"{cls}: {arg} must be finite, got {arg}={value!r}; a search needs a bounded range: give a finite {arg}"
        )
    return float(value)


class Domain(ABC):
    """The set of values one hyperparameter can take.

    Every domain takes ``when``: the parameter exists only when other parameters have some values
    (see :mod:`lightning_hpt.conditions`).
    """

    when: When | None = None

    @abstractmethod
    def from_unit(self, u: float) -> Any:
        """Decode a point of ``[0, 1]`` (clipped) into a value of the domain."""

    @abstractmethod
    def to_unit(self, value: Any) -> float:
        """Encode a value of the domain into ``[0, 1]``."""

    @abstractmethod
    def contains(self, value: Any) -> bool:
        """Whether ``value`` is a value of this domain."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description, inverse of :meth:`Domain.from_dict`."""

    def values(self) -> list[Any] | None:
        """All values of a finite domain, in order; ``None`` for a continuous one."""
        return None

    @property
    def cardinality(self) -> int | None:
        """Number of values of a finite domain, ``None`` for a continuous one."""
        v = self.values()
        return None if v is None else len(v)

    def sample(self, rng: np.random.Generator) -> Any:
        """One value drawn uniformly on the domain's scale (log-uniform for log domains)."""
        return self.from_unit(float(rng.random()))

    def grid(self, points: int | None = None) -> list[Any]:
        """The grid values of this domain; continuous domains need ``points``."""
        values = self.values()
        if values is not None and points is None:
            return values
        if points is None:
            raise SearchSpaceError(
                f"{self!r} is continuous, so a grid needs a number of points: pass points=N to the grid"
                " (GridStrategy(points=N) or points={'name': N}), or use Categorical([...]) to list the values"
            )
        if isinstance(points, bool) or not isinstance(points, int) or points < 1:
            raise SearchSpaceError(f"grid points must be a positive integer, got points={points!r}")
        if values is not None and points >= len(values):
            return values
        us = [0.5] if points == 1 else [i / (points - 1) for i in range(points)]
        out: list[Any] = []
        for u in us:
            v = self.from_unit(u)
            if v not in out:
                out.append(v)
        return out

    def __repr__(self) -> str:
        shown = [f for f in dataclasses.fields(self) if f.name != "when" or self.when]
        return f"{type(self).__name__}({', '.join(f'{f.name}={getattr(self, f.name)!r}' for f in shown)})"

    def _with_when(self, d: dict[str, Any]) -> dict[str, Any]:
        # an unconditional domain keeps the form studies stored before conditions existed
        return {**d, "when": self.when.to_dict()} if self.when else d

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Domain:
        """Rebuild a domain from :meth:`to_dict` output (or the YAML form ``{type: float, ...}``)."""
        if not isinstance(d, Mapping):
            raise SearchSpaceError(f"a domain must be a mapping such as {{type: float, low: 0, high: 1}}, got {d!r}")
        d = dict(d)
        kind = d.pop("type", "categorical" if "choices" in d else None)
        kinds = {"float": Float, "int": Int, "categorical": Categorical}
        if kind not in kinds:
            raise SearchSpaceError(f"domain type must be one of {sorted(kinds)}, got type={kind!r} in {d!r}")
        try:
            return kinds[kind](**d)
        except TypeError as e:
            raise SearchSpaceError(f"invalid {kind} domain {d!r}: {e}") from None


def _check_range(cls: str, low: float, high: float, log: bool) -> None:
    if not low < high:
        fix = (
            f"swap them: {cls}({high!r}, {low!r})"
            if low > high
            else "to fix a parameter at one value, pass it to the model directly instead of searching it"
        )
        raise SearchSpaceError(f"{cls}: low < high must hold, but got low={low!r}, high={high!r}; {fix}")
    if log and low <= 0:
        raise SearchSpaceError(f"{cls}: log=True needs low > 0, but got low={low!r}; use log=False or a positive low")


@dataclass(frozen=True, repr=False)
class Float(Domain):
    """A real interval ``[low, high]``, optionally on a log scale or on a grid of ``step``.

    Example:
        >>> round(Float(1e-4, 1e-1, log=True).from_unit(0.5), 8)  # the geometric middle
        0.00316228
    """

    low: float
    high: float
    log: bool = False
    step: float | None = None
    when: When | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "when", make_when(self.when, "Float"))
        low, high = _number(self.low, "low", "Float"), _number(self.high, "high", "Float")
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)
        object.__setattr__(self, "log", check_bool(self.log, "log", SearchSpaceError, owner="Float"))
        _check_range("Float", low, high, self.log)
        if self.step is not None:
            step = _number(self.step, "step", "Float")
            if step <= 0:
                raise SearchSpaceError(f"Float: step must be > 0, got step={step!r}")
            if self.log:
                raise SearchSpaceError("Float: step and log=True cannot be combined; drop one of them")
            n = (high - low) / step
            if abs(n - round(n)) > 1e-8 * max(1.0, n):
                raise SearchSpaceError(
                    f"Float: step must divide high - low, but got low={low!r}, high={high!r}, step={step!r};"
                    f" choose high = low + k * step (for example high={low + math.floor(n) * step!r})"
                )
            object.__setattr__(self, "step", step)

    def values(self) -> list[float] | None:
        if self.step is None:
            return None
        n = round((self.high - self.low) / self.step)
        return [self._snap(self.low + k * self.step) for k in range(n + 1)]

    @staticmethod
    def _snap(v: float) -> float:
        return float(round(v, 12))

    def from_unit(self, u: float) -> float:
        u = min(max(float(u), 0.0), 1.0)
        values = self.values()
        if values is not None:
            return values[min(int(u * len(values)), len(values) - 1)]
        if u in (0.0, 1.0):  # exact ends: exp(log(x)) is not always x
            return self.low if u == 0.0 else self.high
        if self.log:
            # base 10: a decade range's points are round (the centre of [1e-4, 1] is 0.01, not 0.010000000000000004)
            lo, hi = math.log10(self.low), math.log10(self.high)
            v = 10.0 ** (lo + u * (hi - lo))
        else:
            v = self.low + u * (self.high - self.low)
        return min(max(v, self.low), self.high)

    def to_unit(self, value: Any) -> float:
        v = float(value)
        values = self.values()
        if values is not None:
            k = min(range(len(values)), key=lambda i: abs(values[i] - v))
            return (k + 0.5) / len(values)
        if self.log:
            return (math.log10(v) - math.log10(self.low)) / (math.log10(self.high) - math.log10(self.low))
        return (v - self.low) / (self.high - self.low)

    def contains(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            return False
        v = float(value)
        if not (math.isfinite(v) and self.low - 1e-12 <= v <= self.high + 1e-12):
            return False
        values = self.values()
        return values is None or any(abs(v - x) <= 1e-9 * max(1.0, abs(x)) for x in values)

    def to_dict(self) -> dict[str, Any]:
        return self._with_when(
            {"type": "float", "low": self.low, "high": self.high, "log": self.log, "step": self.step}
        )


@dataclass(frozen=True, repr=False)
class Int(Domain):
    """The integers ``low, low + step, ..., high``, optionally on a log scale (step 1 only).

    Example:
        >>> Int(1, 5).values()
        [1, 2, 3, 4, 5]
    """

    low: int
    high: int
    log: bool = False
    step: int = 1
    when: When | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "when", make_when(self.when, "Int"))
        for arg in ("low", "high", "step"):
            v = getattr(self, arg)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                if isinstance(v, float) and v.is_integer():
                    object.__setattr__(self, arg, int(v))
                    continue
                raise SearchSpaceError(f"Int: {arg} must be an integer, got {arg}={v!r}; use Float for real values")
            object.__setattr__(self, arg, int(v))
        object.__setattr__(self, "log", check_bool(self.log, "log", SearchSpaceError, owner="Int"))
        _check_range("Int", self.low, self.high, self.log)
        if self.step < 1:
            raise SearchSpaceError(f"Int: step must be >= 1, got step={self.step!r}")
        if self.log and self.step != 1:
            raise SearchSpaceError(f"Int: log=True needs step=1, got step={self.step!r}; drop one of them")
        if (self.high - self.low) % self.step:
            raise SearchSpaceError(
                f"Int: step must divide high - low, but got low={self.low}, high={self.high}, step={self.step};"
                f" use high={self.low + (self.high - self.low) // self.step * self.step}"
            )

    def values(self) -> list[int]:
        return list(range(self.low, self.high + 1, self.step))

    def from_unit(self, u: float) -> int:
        u = min(max(float(u), 0.0), 1.0)
        if self.log:
            lo, hi = math.log(self.low - 0.5), math.log(self.high + 0.5)
            return int(min(max(round(math.exp(lo + u * (hi - lo))), self.low), self.high))
        n = (self.high - self.low) // self.step + 1
        return self.low + min(int(u * n), n - 1) * self.step

    def to_unit(self, value: Any) -> float:
        v = int(value)
        if self.log:
            lo, hi = math.log(self.low - 0.5), math.log(self.high + 0.5)
            return (math.log(v) - lo) / (hi - lo)
        n = (self.high - self.low) // self.step + 1
        return ((v - self.low) // self.step + 0.5) / n

    def contains(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            return False
        return self.low <= value <= self.high and (value - self.low) % self.step == 0

    def to_dict(self) -> dict[str, Any]:
        return self._with_when({"type": "int", "low": self.low, "high": self.high, "log": self.log, "step": self.step})


def _choice_fix(value: Any) -> str:
    """How to search a value that cannot be a choice: a class by its path, a sequence item by item."""
    if isinstance(value, (list, tuple)):
        return (
            "a list or tuple (Adam's betas, say) is not one choice: search its items as parameters of your"
            " module (model.beta1, model.beta2) and build it there"
        )
    return "name classes by their import path, e.g. 'torch.optim.AdamW'"


@dataclass(frozen=True, repr=False)
class Categorical(Domain):
    """An unordered set of choices: strings, numbers, booleans or ``None``.

    Example:
        >>> Categorical(["adam", "sgd"]).values()
        ['adam', 'sgd']
    """

    choices: tuple[Any, ...]
    when: When | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "when", make_when(self.when, "Categorical"))
        choices = self.choices
        if isinstance(choices, (str, bytes)) or not isinstance(choices, Sequence):
            raise SearchSpaceError(f"Categorical: choices must be a list, got {choices!r}")
        choices = tuple(c.item() if isinstance(c, np.generic) else c for c in choices)
        if not choices:
            raise SearchSpaceError("Categorical: choices must not be empty; give at least one value")
        seen = set()
        for c in choices:
            if not isinstance(c, SCALARS):
                raise SearchSpaceError(
                    f"Categorical: choices must be str, int, float, bool or None (so the study can be stored),"
                    f" got {c!r} of type {type(c).__name__}; {_choice_fix(c)}"
                )
            if isinstance(c, float) and not math.isfinite(c):
                raise SearchSpaceError(f"Categorical: choices must be finite, got {c!r}")
            if value_key(c) in seen:
                raise SearchSpaceError(
                    f"Categorical: duplicate choice {c!r} in {list(choices)!r}; list each value once"
                )
            seen.add(value_key(c))
        object.__setattr__(self, "choices", choices)

    def values(self) -> list[Any]:
        return list(self.choices)

    def index(self, value: Any) -> int:
        for i, c in enumerate(self.choices):
            if value_key(c) == value_key(value):
                return i
        raise SearchSpaceError(f"{value!r} is not one of the choices {list(self.choices)!r}")

    def from_unit(self, u: float) -> Any:
        u = min(max(float(u), 0.0), 1.0)
        return self.choices[min(int(u * len(self.choices)), len(self.choices) - 1)]

    def to_unit(self, value: Any) -> float:
        return (self.index(value) + 0.5) / len(self.choices)

    def contains(self, value: Any) -> bool:
        return any(value_key(c) == value_key(value) for c in self.choices)

    def to_dict(self) -> dict[str, Any]:
        return self._with_when({"type": "categorical", "choices": list(self.choices)})
