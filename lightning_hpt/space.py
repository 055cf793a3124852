"""The search space: dotted parameter names mapped to domains, and configurations in the unit cube.

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
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from lightning_hpt.conditions import Conditions, placeholder
from lightning_hpt.define_by_run import trace_space
from lightning_hpt.domains import Categorical, Domain, Float, Int
from lightning_hpt.exceptions import SearchSpaceError
from lightning_hpt.names import validate_name, validate_study_name

__all__ = ["Categorical", "Domain", "Float", "Int", "SearchSpace", "validate_name", "validate_study_name"]


class SearchSpace(Mapping[str, Domain]):
    """A mapping of dotted parameter names to domains; immutable.

    A configuration holds the space's active parameters only: one whose domain has a ``when`` that
    does not hold is absent (see :mod:`lightning_hpt.conditions`).

    Args:
        domains: ``{"model.lr": Float(...), ...}``. Names are dotted identifiers. Or a function of a trial
            that asks for them, ``trial.suggest("model.lr", Float(...))``, and branches with ``if``: it is
            traced into domains with conditions (:mod:`lightning_hpt.define_by_run`).

    Example:
        >>> space = SearchSpace({"model.num_layers": Int(1, 3), "data.batch_size": Categorical([32, 64])})
        >>> len(space.grid())
        6
        >>> deep = SearchSpace({"model.num_layers": Int(1, 3), "model.width3": Int(8, 9, when={"model.num_layers": 3})})
        >>> len(deep.grid())  # 1 + 1 + 2: the width exists in one branch only
        4
    """

    def __init__(self, domains: Mapping[str, Domain] | SearchSpace) -> None:
        if isinstance(domains, SearchSpace):
            domains = {name: domains[name] for name in domains}
        elif callable(domains) and not isinstance(domains, (Mapping, type)):
            domains = trace_space(domains)
        if not isinstance(domains, Mapping):
            raise SearchSpaceError(
                f"space must be a dict of name -> domain, or a function of a trial that calls"
                f" trial.suggest(name, domain); got {type(domains).__name__}"
            )
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
                    + _range_hint(domain)
                )
            if not isinstance(domain, Domain):
                raise SearchSpaceError(
                    f"space[{name!r}] must be a Float, Int or Categorical, got {domain!r};"
                    " a fixed value belongs in the model's own arguments"
                )
            checked[name] = domain
        self._domains = checked
        self._conditions = Conditions(checked)

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
        """Number of hyperparameters (dimensions of the unit cube), conditional ones included."""
        return len(self._domains)

    @property
    def conditions(self) -> Conditions:
        """The conditions of the domains; false when every parameter always exists."""
        return self._conditions

    @property
    def cardinality(self) -> int | None:
        """Number of distinct configurations, each branch of the conditions counted once; ``None`` if infinite."""
        if self._conditions:
            return self._conditions.count()
        cards = [d.cardinality for d in self._domains.values()]
        return None if None in cards else math.prod(c for c in cards if c is not None)

    def active(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``params`` without the parameters that are inactive in it (and without unknown names)."""
        on = self._conditions.active(params)
        return {n: v for n, v in params.items() if n in on}

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        """One configuration drawn uniformly (per each domain's scale), its active parameters only.

        Every domain is drawn, active or not, so the draws of a seeded search do not depend on
        which branch an earlier parameter took.
        """
        return self.active({name: d.sample(rng) for name, d in self._domains.items()})

    def grid(self, points: int | Mapping[str, int] | None = None) -> list[dict[str, Any]]:
        """The product of every domain's grid, summed over the branches of conditions; the first name varies slowest.

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
        if self._conditions:  # a parameter multiplies only the branches where it is active
            return self._conditions.expand(dict(zip(names, axes, strict=True)))
        return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*axes)]

    def to_unit(self, params: Mapping[str, Any]) -> torch.Tensor:
        """Encode a configuration as a ``d``-vector (float64) in the unit cube, in key order.

        An inactive parameter sits at its domain's middle (:func:`~lightning_hpt.conditions.placeholder`).
        """
        self.validate(params)
        return torch.tensor(
            [d.to_unit(params[n]) if n in params else placeholder(d) for n, d in self._domains.items()],
            dtype=torch.float64,
        )

    def from_unit(self, x: torch.Tensor | Sequence[float]) -> dict[str, Any]:
        """Decode a ``d``-vector of the unit cube (clipped) into a valid configuration (its active parameters)."""
        xs = x.tolist() if isinstance(x, torch.Tensor) else list(x)
        if len(xs) != self.dim:
            raise SearchSpaceError(f"from_unit needs a vector of {self.dim} values, got {len(xs)}")
        return self.active({n: d.from_unit(u) for (n, d), u in zip(self._domains.items(), xs, strict=True)})

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Points of the unit cube (``... x d``) with every coordinate of an inactive parameter at its placeholder.

        Two points that decode to the same configuration then have the same coordinates, so a model
        of the cube sees a configuration, never where an absent parameter happened to be drawn.
        """
        domains = list(self._domains.values())
        return self._conditions.project(x, lambda i, u: domains[i].from_unit(u))

    def validate(self, params: Mapping[str, Any]) -> None:
        """Raise :class:`SearchSpaceError` unless ``params`` has exactly this space's active names and valid values."""
        on = self._conditions.active(params)
        missing = [n for n in self._domains if n in on and n not in params]
        extra = [n for n in params if n not in self._domains]
        if missing or extra:
            raise SearchSpaceError(f"configuration does not match the space: missing {missing}, unknown {extra}")
        for n, v in params.items():
            if not self._domains[n].contains(v):
                raise SearchSpaceError(
                    f"value {n}={v!r} is not in {self._domains[n]!r}; give a value of that domain, or widen it"
                )
        for n, v in params.items():
            if n not in on:
                raise SearchSpaceError(
                    f"{n}={v!r} is given, but {n} exists only when {self._conditions.describe(n)}, which does not"
                    f" hold in {dict(params)!r}; leave {n} out of this configuration"
                )

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


def _range_hint(pair: Any) -> str:
    """For two numbers, low < high (``(1e-4, 1e-1)``): the range domain that was likely meant."""
    numbers = len(pair) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pair)
    if not numbers or not pair[0] < pair[1]:
        return ""
    kind = "Int" if all(isinstance(v, int) for v in pair) else "Float"
    log = ", log=True" if pair[0] > 0 and pair[1] / pair[0] >= 100 else ""
    return f" for these values, or {kind}({pair[0]!r}, {pair[1]!r}{log}) for the range between them"
