"""Conditional parameters: a parameter that exists only when other parameters have some values.

A domain's ``when`` names the parameters it depends on and the values they must take::

    SearchSpace({
        "optimizer.class_path": Categorical(["torch.optim.SGD", "torch.optim.AdamW"]),
        "optimizer.momentum": Float(0.0, 0.99, when={"optimizer.class_path": "torch.optim.SGD"}),
        "model.num_layers": Int(1, 3),
        "model.width3": Int(8, 64, log=True, when={"model.num_layers": 3}),
    })

Rules:

* ``when={"p": v}`` holds when ``p`` is active and equals ``v``; ``when={"p": [v1, v2]}`` when it
  is one of them; several names must all hold.
* A condition names another parameter of the space with a finite set of values (``Categorical``,
  ``Int`` or a ``Float`` with ``step``), and only values of that parameter's domain.
* Conditions may nest (a condition on a conditional parameter) but never form a cycle, and each
  parameter must be active in some configuration: the conditions of it and of its ancestors must
  not ask one parameter for two disjoint sets of values (``c`` when ``{"p": 1, "q": "a"}`` while ``p``
  exists only when ``q`` is ``"b"`` could never be active).
* An inactive parameter is absent: from the configuration, from what the model receives, from the
  stored trial, from the tables and exports.

The search space owns the domains; this module checks their conditions against each other and
answers which parameters are active, in an order where every parent precedes its children.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lightning_hpt.domains import Categorical, Domain, value_key
from lightning_hpt.exceptions import SearchSpaceError

__all__ = ["Conditions", "placeholder"]


def placeholder(domain: Domain) -> float:
    """Where an inactive parameter sits in the unit cube: the middle of its domain (snapped to a value).

    Every trial in which the parameter is inactive gets the same coordinate, so the model sees no
    difference between them along that dimension (see docs/bayesian.md).
    """
    return float(domain.to_unit(domain.from_unit(0.5)))


@dataclass(frozen=True)
class _Rule:
    """One parent of a conditional parameter and the values it must take."""

    parent: str
    allowed: tuple[Any, ...]
    numeric: bool  # Int/Float parents compare as numbers, categories by type and value

    def holds(self, value: Any) -> bool:
        if self.numeric:
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                return False
            return any(abs(float(value) - a) <= 1e-9 * max(1.0, abs(a)) for a in self.allowed)
        return any(value_key(value) == value_key(a) for a in self.allowed)  # no hashing: any value may come


def _show(values: Sequence[Any]) -> str:
    return repr(values[0]) if len(values) == 1 else f"one of {list(values)!r}"


class Conditions:
    """The conditions of a space's domains, checked against each other.

    Args:
        domains: the space's ``{name: domain}``, in the space's order.

    Raises:
        SearchSpaceError: a condition on an unknown or continuous parameter, on a value outside
            the parent's domain, conditions that form a cycle, or a parameter whose conditions
            (its own and its ancestors') can never hold together.
    """

    def __init__(self, domains: Mapping[str, Domain]) -> None:
        self._domains = dict(domains)
        self.rules: dict[str, tuple[_Rule, ...]] = {
            name: tuple(self._rule(name, parent, values) for parent, values in d.when.items())
            for name, d in self._domains.items()
            if getattr(d, "when", None)
        }
        #: every name, each parent before its children, otherwise in the space's order.
        self.order: tuple[str, ...] = self._sorted()
        #: the names some condition depends on, in :attr:`order`.
        self.parents: tuple[str, ...] = tuple(
            n for n in self.order if any(r.parent == n for rules in self.rules.values() for r in rules)
        )
        for name in self.rules:
            self._check_reachable(name)

    def _rule(self, name: str, parent: str, values: tuple[Any, ...]) -> _Rule:
        where = f"space[{name!r}]: when={self._domains[name].when!r}"
        if parent not in self._domains:
            # only parameters a condition can name: those with a finite set of values
            others = sorted(n for n, d in self._domains.items() if n != name and d.values() is not None)
            near = difflib.get_close_matches(parent, others, n=3)
            hint = f"; did you mean {near}?" if near else ""
            raise SearchSpaceError(
                f"{where} names {parent!r}, which is not a parameter of the space; a condition must name another"
                f" searched parameter with a finite set of values ({others}){hint}"
            )
        domain = self._domains[parent]
        choices = domain.values()
        if choices is None:
            raise SearchSpaceError(
                f"{where} names {parent!r}, a continuous {type(domain).__name__} that never takes one exact value;"
                " a condition needs a parameter with a finite set of values (Categorical, Int, or Float with step)"
            )
        for v in values:
            if not domain.contains(v):
                raise SearchSpaceError(
                    f"{where}: {v!r} is not a value of {parent!r} ({domain!r}), so the condition could never hold;"
                    f" use values of that parameter: {choices[:10]!r}" + (" ..." if len(choices) > 10 else "")
                )
        numeric = not isinstance(domain, Categorical)
        return _Rule(parent, tuple(float(v) for v in values) if numeric else values, numeric)

    def _sorted(self) -> tuple[str, ...]:
        """Kahn's topological sort, taking the earliest name of the space whenever several are ready."""
        names = list(self._domains)
        waiting = {n: {r.parent for r in self.rules.get(n, ())} for n in names}
        order: list[str] = []
        while len(order) < len(names):
            ready = [n for n in names if n not in order and not waiting[n] - set(order)]
            if not ready:
                raise SearchSpaceError(self._cycle([n for n in names if n not in order], waiting))
            order.append(ready[0])
        return tuple(order)

    def _check_reachable(self, name: str) -> None:
        """Refuse ``name`` if it is active in no configuration.

        ``name`` is active iff each of its ancestors is active and equal to a value every rule of
        ``name`` and of the ancestors allows for it (a ``when`` is a conjunction), so it can be
        active iff, for every ancestor, the values those rules allow have a common one.
        """
        needs: dict[str, list[tuple[str, _Rule]]] = {}
        todo, seen = [name], {name}
        while todo:
            member = todo.pop(0)
            for rule in self.rules.get(member, ()):
                needs.setdefault(rule.parent, []).append((member, rule))
                if rule.parent not in seen:
                    seen.add(rule.parent)
                    todo.append(rule.parent)
        for parent, rules in needs.items():
            first = rules[0][1]
            if any(all(r.holds(v) for _, r in rules[1:]) for v in first.allowed):
                continue
            why = {m: "its own condition" if m == name else f"for {m!r} to exist" for m, _ in rules}
            asks = " and ".join(f"{_show(self._domains[m].when[parent])} ({why[m]})" for m, _ in rules)
            raise SearchSpaceError(
                f"space[{name!r}]: when={self._domains[name].when!r} can never hold: {name!r} needs {parent!r} to be"
                f" {asks} at once, so {name!r} would never be active; change these conditions so that they share a"
                f" value of {parent!r}, or drop {name!r}"
            )

    @staticmethod
    def _cycle(stuck: list[str], waiting: Mapping[str, set[str]]) -> str:
        path = [stuck[0]]
        while True:
            nxt = sorted(p for p in waiting[path[-1]] if p in stuck)[0]
            if nxt in path:
                loop = [*path[path.index(nxt) :], nxt]
                return (
                    f"the conditions form a cycle: {' -> '.join(repr(n) for n in loop)} (each exists only when the"
                    " next one has some value), so none of them could ever be active; remove one of these conditions"
                )
            path.append(nxt)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def describe(self, name: str) -> str:
        """``"optimizer.class_path is 'torch.optim.SGD'"``: when ``name`` exists, in words."""
        return " and ".join(f"{r.parent} is {_show(self._domains[name].when[r.parent])}" for r in self.rules[name])

    def active(self, values: Mapping[str, Any]) -> set[str]:
        """The names active in a configuration (a parent absent from ``values`` counts as inactive).

        Only parents' values are read, so ``values`` may hold values of inactive parameters too
        (a decoded point of the unit cube): they are ignored.
        """
        on: set[str] = set()
        for name in self.order:
            rules = self.rules.get(name, ())
            if all(r.parent in on and r.parent in values and r.holds(values[r.parent]) for r in rules):
                on.add(name)
        return on

    def expand(self, axes: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
        """Every configuration whose active parameters take values of ``axes``: a grid summed over branches.

        The first name of :attr:`order` varies slowest; each configuration lists its names in the space's order.
        """
        names, out = list(self._domains), []

        def walk(i: int, partial: dict[str, Any]) -> None:
            if i == len(self.order):
                out.append({n: partial[n] for n in names if n in partial})
                return
            name = self.order[i]
            if not self._holds(name, partial):
                walk(i + 1, partial)
                return
            for value in axes[name]:
                partial[name] = value
                walk(i + 1, partial)
            del partial[name]

        walk(0, {})
        return out

    def count(self) -> int | None:
        """Number of configurations (``None`` when an active parameter can be continuous): branches summed."""

        def walk(i: int, partial: dict[str, Any]) -> int | None:
            if i == len(self.order):
                return 1
            name = self.order[i]
            if not self._holds(name, partial):
                return walk(i + 1, partial)
            values = self._domains[name].values()
            if values is None:
                return None
            if name not in self.parents:
                rest = walk(i + 1, partial)
                return None if rest is None else len(values) * rest
            total = 0
            for value in values:
                partial[name] = value
                n = walk(i + 1, partial)
                if n is None:
                    return None
                total += n
            del partial[name]
            return total

        return walk(0, {})

    def _holds(self, name: str, partial: Mapping[str, Any]) -> bool:
        return all(r.parent in partial and r.holds(partial[r.parent]) for r in self.rules.get(name, ()))

    def project(self, x: torch.Tensor, decode: Callable[[int, float], Any]) -> torch.Tensor:
        """Points of the unit cube (``... x d``) with each inactive coordinate moved to its :func:`placeholder`.

        Args:
            x: points in the space's order of names; gradients flow through the active coordinates.
            decode: ``decode(i, u)`` is the value of parameter number ``i`` at coordinate ``u``.
        """
        if not self.rules:
            return x
        names = list(self._domains)
        cols = [names.index(p) for p in self.parents]
        flat = x.reshape(-1, len(names))
        keys, inverse = torch.unique(flat[:, cols].detach(), dim=0, return_inverse=True)
        masks = []
        for row in keys.tolist():
            on = self.active({p: decode(i, u) for p, i, u in zip(self.parents, cols, row, strict=True)})
            masks.append([n in on for n in names])
        mask = torch.tensor(masks, dtype=torch.bool, device=x.device)[inverse]
        fill = torch.tensor([placeholder(d) for d in self._domains.values()], dtype=x.dtype, device=x.device)
        return torch.where(mask, flat, fill.expand_as(flat)).reshape(x.shape)
