"""Hyperparameter domains and the search space.

Every domain maps its values to and from the unit interval. Numeric domains use their natural
scale (log-scale domains are modelled in log space); discrete domains (integers, stepped floats,
categories) split the interval into equal bins, one per value, so that a uniform draw in the unit
cube is a uniform draw over the values and every point of the cube decodes to a valid value.

Example:
    >>> space = SearchSpace({"model.lr": Float(1e-4, 1e-1, log=True), "data.batch_size": Categorical([32, 64])})
    >>> params = space.sample(np.random.default_rng(0))
    >>> space.from_unit(space.to_unit(params)) == params
    True
"""

from __future__ import annotations

import itertools
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lightning_hpt.checks import check_bool
from lightning_hpt.exceptions import SearchSpaceError
from lightning_hpt.names import validate_name, validate_study_name

__all__ = ["Categorical", "Domain", "Float", "Int", "SearchSpace", "validate_name", "validate_study_name"]

_SCALARS = (str, int, float, bool, type(None))


def _number(value: object, arg: str, cls: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise SearchSpaceError(f"{cls}: {arg} must be a number, got {value!r} of type {type(value).__name__}")
    if not math.isfinite(float(value)):
        raise SearchSpaceError(f"{cls}: {arg} must be finite, got {arg}={value!r}")
    return float(value)


class Domain(ABC):
    """The set of values one hyperparameter can take."""

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
        raise SearchSpaceError(
            f"{cls}: low < high must hold, but got low={low!r}, high={high!r};"
            " to fix a parameter, pass it to the model directly instead of searching it"
        )
    if log and low <= 0:
        raise SearchSpaceError(f"{cls}: log=True needs low > 0, but got low={low!r}; use log=False or a positive low")


@dataclass(frozen=True)
class Float(Domain):
    """A real interval ``[low, high]``, optionally on a log scale or on a grid of ``step``.

    Example:
        >>> Float(1e-4, 1e-1, log=True).from_unit(0.5)  # the geometric middle
        0.0031622776601683794
    """

    low: float
    high: float
    log: bool = False
    step: float | None = None

    def __post_init__(self) -> None:
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
            v = math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
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
            return (math.log(v) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))
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
        return {"type": "float", "low": self.low, "high": self.high, "log": self.log, "step": self.step}


@dataclass(frozen=True)
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

    def __post_init__(self) -> None:
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
        return {"type": "int", "low": self.low, "high": self.high, "log": self.log, "step": self.step}


def _key(value: Any) -> tuple[str, Any]:
    # 1 == True == 1.0 in Python; choices of different types are different choices
    return (type(value).__name__, value)


@dataclass(frozen=True)
class Categorical(Domain):
    """An unordered set of choices: strings, numbers, booleans or ``None``.

    Example:
        >>> Categorical(["adam", "sgd"]).values()
        ['adam', 'sgd']
    """

    choices: tuple[Any, ...]

    def __post_init__(self) -> None:
        choices = self.choices
        if isinstance(choices, (str, bytes)) or not isinstance(choices, Sequence):
            raise SearchSpaceError(f"Categorical: choices must be a list, got {choices!r}")
        choices = tuple(c.item() if isinstance(c, np.generic) else c for c in choices)
        if not choices:
            raise SearchSpaceError("Categorical: choices must not be empty; give at least one value")
        seen = set()
        for c in choices:
            if not isinstance(c, _SCALARS):
                raise SearchSpaceError(
                    f"Categorical: choices must be str, int, float, bool or None (so the study can be stored),"
                    f" got {c!r} of type {type(c).__name__}; name classes by their import path, e.g."
                    " 'torch.optim.AdamW'"
                )
            if isinstance(c, float) and not math.isfinite(c):
                raise SearchSpaceError(f"Categorical: choices must be finite, got {c!r}")
            if _key(c) in seen:
                raise SearchSpaceError(
                    f"Categorical: duplicate choice {c!r} in {list(choices)!r}; list each value once"
                )
            seen.add(_key(c))
        object.__setattr__(self, "choices", choices)

    def values(self) -> list[Any]:
        return list(self.choices)

    def index(self, value: Any) -> int:
        for i, c in enumerate(self.choices):
            if _key(c) == _key(value):
                return i
        raise SearchSpaceError(f"{value!r} is not one of the choices {list(self.choices)!r}")

    def from_unit(self, u: float) -> Any:
        u = min(max(float(u), 0.0), 1.0)
        return self.choices[min(int(u * len(self.choices)), len(self.choices) - 1)]

    def to_unit(self, value: Any) -> float:
        return (self.index(value) + 0.5) / len(self.choices)

    def contains(self, value: Any) -> bool:
        return any(_key(c) == _key(value) for c in self.choices)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "categorical", "choices": list(self.choices)}


class SearchSpace(Mapping[str, Domain]):
    """A mapping of dotted parameter names to domains; immutable.

    Args:
        domains: ``{"model.lr": Float(...), ...}``. Names are dotted identifiers.

    Example:
        >>> space = SearchSpace({"model.num_layers": Int(1, 3), "data.batch_size": Categorical([32, 64])})
        >>> len(space.grid())
        6
    """

    def __init__(self, domains: Mapping[str, Domain] | SearchSpace) -> None:
        if isinstance(domains, SearchSpace):
            domains = {name: domains[name] for name in domains}
        if not isinstance(domains, Mapping):
            raise SearchSpaceError(f"space must be a dict of name -> domain, got {type(domains).__name__}")
        if not domains:
            raise SearchSpaceError("space must not be empty: give at least one hyperparameter to search")
        checked: dict[str, Domain] = {}
        for name, domain in domains.items():
            validate_name(name)
            if isinstance(domain, Mapping):
                domain = Domain.from_dict(domain)
            if isinstance(domain, (list, tuple)):
                raise SearchSpaceError(
                    f"space[{name!r}] is a {type(domain).__name__}; wrap it: Categorical({list(domain)!r})"
                )
            if not isinstance(domain, Domain):
                raise SearchSpaceError(
                    f"space[{name!r}] must be a Float, Int or Categorical, got {domain!r};"
                    " a fixed value belongs in the model's own arguments"
                )
            checked[name] = domain
        self._domains = checked

    def __getitem__(self, name: str) -> Domain:
        return self._domains[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._domains)

    def __len__(self) -> int:
        return len(self._domains)

    def __repr__(self) -> str:
        return f"SearchSpace({self._domains!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SearchSpace) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(self.to_json())

    @property
    def dim(self) -> int:
        """Number of hyperparameters (dimensions of the unit cube)."""
        return len(self._domains)

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        """One configuration drawn uniformly (per each domain's scale)."""
        return {name: d.sample(rng) for name, d in self._domains.items()}

    def grid(self, points: int | Mapping[str, int] | None = None) -> list[dict[str, Any]]:
        """The full product of every domain's grid; the first name varies slowest.

        Args:
            points: grid points: one number for every continuous domain, or a dict per name (which
                may also thin a discrete domain). Discrete domains otherwise use all their values.
        """
        if isinstance(points, Mapping):
            unknown = sorted(set(points) - set(self._domains))
            if unknown:
                raise SearchSpaceError(
                    f"grid points given for unknown parameters {unknown}; known: {sorted(self._domains)}"
                )
        axes = []
        for name, d in self._domains.items():
            # one number applies to continuous domains; a dict entry to any domain it names
            p = points.get(name) if isinstance(points, Mapping) else (points if d.values() is None else None)
            try:
                axes.append(d.grid(p))
            except SearchSpaceError as e:
                raise SearchSpaceError(f"parameter {name!r}: {e}") from None
        names = list(self._domains)
        return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*axes)]

    def to_unit(self, params: Mapping[str, Any]) -> torch.Tensor:
        """Encode a configuration as a ``d``-vector (float64) in the unit cube, in key order."""
        self.validate(params)
        return torch.tensor([d.to_unit(params[n]) for n, d in self._domains.items()], dtype=torch.float64)

    def from_unit(self, x: torch.Tensor | Sequence[float]) -> dict[str, Any]:
        """Decode a ``d``-vector of the unit cube (clipped) into a valid configuration."""
        xs = x.tolist() if isinstance(x, torch.Tensor) else list(x)
        if len(xs) != self.dim:
            raise SearchSpaceError(f"from_unit needs a vector of {self.dim} values, got {len(xs)}")
        return {n: d.from_unit(u) for (n, d), u in zip(self._domains.items(), xs, strict=True)}

    def validate(self, params: Mapping[str, Any]) -> None:
        """Raise :class:`SearchSpaceError` unless ``params`` has exactly this space's names and valid values."""
        missing = [n for n in self._domains if n not in params]
        extra = [n for n in params if n not in self._domains]
        if missing or extra:
            raise SearchSpaceError(f"configuration does not match the space: missing {missing}, unknown {extra}")
        for n, d in self._domains.items():
            if not d.contains(params[n]):
                raise SearchSpaceError(f"value {n}={params[n]!r} is not in {d!r}")

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {n: d.to_dict() for n, d in self._domains.items()}

    def to_json(self) -> str:
        """Canonical JSON: equal spaces give equal strings."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Mapping[str, Any]]) -> SearchSpace:
        return cls({n: Domain.from_dict(v) for n, v in d.items()})

    @classmethod
    def from_json(cls, s: str) -> SearchSpace:
        return cls.from_dict(json.loads(s))
