"""A search space written as a function: ``trial.suggest(name, domain)`` calls, with Python's own ``if``.

Example:
    >>> from lightning_hpt import Categorical, Float, Int
    >>> def space(trial):
    ...     n = trial.suggest("layers", Int(1, 3))
    ...     for i in range(n):
    ...         trial.suggest(f"width{i}", Int(8, 128, log=True))
    ...     if trial.suggest("opt", Categorical(["sgd", "adam"])) == "sgd":
    ...         trial.suggest("momentum", Float(0.0, 0.99))
    >>> traced = trace_space(space)
    >>> traced["width2"].when, traced["momentum"].when
    ({'layers': [3]}, {'opt': ['sgd']})

The function is traced once, when the space is made: it runs once for every branch of its choices,
and each parameter gets the condition (``when``) under which the function asks for it. The result is
an ordinary space with conditions (:mod:`lightning_hpt.conditions`): every strategy, the grid, the
study's stored definition and its check on resume work as they do for a dict of domains.

What a function can do:

* Branch on a parameter with at most :data:`MAX_BRANCH_VALUES` values (a ``Categorical``, an ``Int``
  or a ``Float`` with ``step``): every value is tried. Parameters with more values (``Int(8, 128)``,
  a ``Float``) are tried at their low, middle and high values, and the function must ask for the
  same parameters at each; tracing refuses a function that branches on one.
* Ask for a parameter only under a conjunction of such choices (``if a == 1 and b == "x"``); an
  ``or`` across two parameters is not a condition a space can hold, and is refused.
* Ask for each name with one domain: a range that depends on another parameter (``Int(1, n)``) is
  refused.

The function should only ask for values (no training, no files): it runs many times, and must ask for
the same names with the same domains each time it makes the same choices (no random numbers, no state
kept between calls); a run repeated while tracing checks this.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from lightning_hpt.conditions import Conditions
from lightning_hpt.domains import Domain, make_when, value_key
from lightning_hpt.exceptions import SearchSpaceError
from lightning_hpt.names import validate_name

__all__ = ["MAX_BRANCHES", "MAX_BRANCH_VALUES", "answer", "trace_space"]

#: a parameter with at most this many values is traced at every value (a function may branch on it).
MAX_BRANCH_VALUES = 16
#: the most branches (runs of the function) a trace may take.
MAX_BRANCHES = 4096


class _AskError(SearchSpaceError):
    """A call of ``trial.suggest`` that tracing refuses; it names the call, so it is raised as it is."""


class _Tracer:
    """One run of a space function: the choices it is forced to take, and what it asked for."""

    def __init__(self, forced: list[int], overrides: Mapping[str, Any] | None = None) -> None:
        self.forced, self.overrides = forced, dict(overrides or {})
        self.options: list[int] = []  # at each branching point, how many values it has
        self.asked: dict[str, Domain] = {}
        self.values: dict[str, Any] = {}

    def suggest(self, name: str, domain: Domain) -> Any:
        validate_name(name)
        if not isinstance(domain, Domain):
            raise _AskError(
                f"trial.suggest({name!r}, {domain!r}): the domain must be a Float, Int or Categorical,"
                f" for example trial.suggest({name!r}, Float(1e-4, 1e-1, log=True))"
            )
        if domain.when:
            raise _AskError(
                f"trial.suggest({name!r}, {domain!r}): a space function's own `if` says when it asks for a"
                " parameter; drop when=..."
            )
        if name in self.asked:
            if self.asked[name] != domain:
                raise _AskError(
                    f"trial.suggest({name!r}, ...) is asked twice with different domains, {self.asked[name]!r} and"
                    f" {domain!r}; give one name one domain"
                )
            return self.values[name]
        values = domain.values()
        if values is not None and len(values) <= MAX_BRANCH_VALUES:
            point = len(self.options)
            self.options.append(len(values))
            value = values[self.forced[point] if point < len(self.forced) else 0]
        else:
            value = self.overrides.get(name, domain.from_unit(0.5))
        self.asked[name], self.values[name] = domain, value
        return value

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_"):
            raise AttributeError(attr)
        if attr.startswith("suggest_"):
            raise _AskError(
                f"trial.{attr} is Optuna's; write trial.suggest('lr', Float(1e-4, 1e-1, log=True)) (or an Int or"
                " Categorical domain) in a space function"
            )
        raise _AskError(
            f"trial.{attr}: a space function's trial has only trial.suggest(name, domain), which returns the value;"
            " branch on that value (x = trial.suggest('x', Categorical([1, 2])); if x == 2: ...)"
        )


def _run(fn: Callable[[Any], Any], forced: list[int], overrides: Mapping[str, Any] | None = None) -> _Tracer:
    tracer = _Tracer(forced, overrides)
    try:
        fn(tracer)
    except _AskError:
        raise
    except Exception as exc:
        raise SearchSpaceError(
            f"the space function {_name(fn)} raised {type(exc).__name__}: {exc} (while traced with"
            f" {tracer.values!r}); it should only call trial.suggest(name, domain) and branch on the values"
        ) from exc
    if not tracer.asked:
        raise SearchSpaceError(
            f"the space function {_name(fn)} asked for no parameter (with {tracer.values!r}); call trial.suggest(name,"
            " domain) for each hyperparameter, e.g. trial.suggest('lr', Float(1e-4, 1e-1, log=True))"
        )
    return tracer


def _name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def _branches(fn: Callable[[Any], Any]) -> list[_Tracer]:
    """Every branch of the function's choices, depth first: each run is forced down one more path."""
    out: list[_Tracer] = []
    todo: list[list[int]] = [[]]
    while todo:
        forced = todo.pop()
        run = _run(fn, forced)
        if not out:
            _check_same(fn, run, _run(fn, forced))
        out.append(run)
        if len(out) > MAX_BRANCHES:
            raise SearchSpaceError(
                f"the space function {_name(fn)} has more than {MAX_BRANCHES} branches of its choices (parameters"
                f" with at most {MAX_BRANCH_VALUES} values are each tried at every value); give the space as a dict"
                " with when= conditions, or use fewer such choices"
            )
        taken = forced + [0] * (len(run.options) - len(forced))
        for point in reversed(range(len(forced), len(run.options))):
            for choice in reversed(range(1, run.options[point])):
                todo.append([*taken[:point], choice])
    return out


def _check_wide(fn: Callable[[Any], Any], run: _Tracer, forced: list[int]) -> None:
    """A parameter with many values must not change what the function asks for: try its ends."""
    for name, domain in run.asked.items():
        values = domain.values()
        if values is not None and len(values) <= MAX_BRANCH_VALUES:
            continue
        for u in (0.0, 1.0):
            other = _run(fn, forced, {name: domain.from_unit(u)})
            upto = list(run.asked).index(name) + 1  # what it asks up to `name` cannot depend on `name`'s value
            _check_same(fn, run, other, upto)
            if list(other.asked.items()) != list(run.asked.items()):
                raise SearchSpaceError(
                    f"the space function {_name(fn)} asks for {sorted(other.asked)} when {name}={other.values[name]!r}"
                    f" and {sorted(run.asked)} when {name}={run.values[name]!r}: it branches on {name!r} ({domain!r}),"
                    " which has too many values to trace; branch only on a Categorical, or an Int or stepped Float"
                    f" with at most {MAX_BRANCH_VALUES} values"
                )


def _check_same(fn: Callable[[Any], Any], run: _Tracer, again: _Tracer, upto: int | None = None) -> None:
    """A run again with the same choices asks for the same names with the same domains (up to ``upto``)."""
    first, second = list(run.asked.items())[:upto], list(again.asked.items())[:upto]
    if first != second:
        raise SearchSpaceError(
            f"the space function {_name(fn)} asks for something else when run again with the same values:"
            f" {dict(first)!r}, then {dict(second)!r}; it must ask for the same names with the same domains every"
            " time it runs (no random numbers, no state kept between calls)"
        )


def trace_space(fn: Callable[[Any], Any]) -> dict[str, Domain]:
    """The domains a space function asks for, each with the condition under which it is asked.

    Raises:
        SearchSpaceError: the function fails, asks for nothing, asks for something else when run again,
            gives a name two domains, branches on a parameter with too many values, asks for a parameter
            under a condition a space cannot hold, or has more than :data:`MAX_BRANCHES` branches.
    """
    runs = _branches(fn)
    domains: dict[str, Domain] = {}
    for run in runs:
        for name, domain in run.asked.items():
            if domains.setdefault(name, domain) != domain:
                raise SearchSpaceError(
                    f"the space function {_name(fn)} asks for {name!r} with {domains[name]!r} in one branch and"
                    f" {domain!r} in another (with {run.values!r}); a parameter's domain may not depend on other"
                    " parameters: give it one domain, or a different name in each branch"
                )
    for run in runs:
        _check_wide(fn, run, _forced_of(run))
    out = {name: _conditional(name, domains, runs) for name in _ordered(runs)}
    conditions = Conditions(out)
    for run in runs:
        if conditions.active(run.values) != set(run.asked):
            odd = sorted(conditions.active(run.values) ^ set(run.asked))
            raise SearchSpaceError(
                f"the space function {_name(fn)} asks for {odd[0]!r} under a condition a space cannot hold (with"
                f" {run.values!r} it {'does not ask' if odd[0] in conditions.active(run.values) else 'asks'}); a"
                " parameter may depend on choices joined by `and`, not `or`: give it a different name in each branch"
            )
    return out


def _ordered(runs: list[_Tracer]) -> list[str]:
    """Every name asked, each after the names the function asks for before it (``width1`` after ``width0``)."""
    order: list[str] = []
    for run in runs:
        at = 0
        for name in run.asked:
            if name in order:
                at = max(at, order.index(name) + 1)
            else:
                order.insert(at, name)
                at += 1
    return order


def _forced_of(run: _Tracer) -> list[int]:
    """The choices that reproduce a run: the index of each branching parameter's value, in order."""
    out = []
    for name, domain in run.asked.items():
        values = domain.values()
        if values is not None and len(values) <= MAX_BRANCH_VALUES:
            out.append(next(i for i, v in enumerate(values) if value_key(v) == value_key(run.values[name])))
    return out


def _conditional(name: str, domains: Mapping[str, Domain], runs: list[_Tracer]) -> Domain:
    """``name``'s domain with a ``when``: the branching choices it always follows, at the values they take there."""
    with_it = [r for r in runs if name in r.asked]
    when: dict[str, list[Any]] = {}
    for parent, domain in domains.items():
        values = domain.values()
        if parent == name or values is None or len(values) > MAX_BRANCH_VALUES:
            continue
        if not all(parent in r.asked and list(r.asked).index(parent) < list(r.asked).index(name) for r in with_it):
            continue
        seen = {value_key(r.values[parent]) for r in with_it}
        if len(seen) < len(values):
            when[parent] = [v for v in values if value_key(v) in seen]
    return dataclasses.replace(domains[name], when=make_when(when, name)) if when else domains[name]


def answer(space: Mapping[str, Domain], params: Mapping[str, Any], name: str, domain: Domain, owner: str) -> Any:
    """``trial.suggest(name, domain)`` for a trial: its value of ``name``, checked against the space.

    Raises:
        SearchSpaceError: ``name`` is not in the space, has another domain there, or is inactive in
            this configuration.
    """
    if name not in space:
        raise SearchSpaceError(
            f"{owner}.suggest({name!r}, ...): {name!r} is not in the search space {sorted(space)}; a space function"
            " given to the search must ask for every parameter the script asks for (where it does, tracing missed"
            " the branch that asks: it branches on a Float, or an Int with more than"
            f" {MAX_BRANCH_VALUES} values, which is tried at its low, middle and high values only; branch on a"
            " Categorical)"
        )
    if dataclasses.replace(space[name], when=None) != dataclasses.replace(domain, when=None):
        raise SearchSpaceError(
            f"{owner}.suggest({name!r}, {domain!r}): the search space has {name!r} as {space[name]!r}; ask with the"
            " same domain (call the function the search was given; a study continued with allow_changes=True"
            " keeps the space it was created with)"
        )
    if name not in params:
        raise SearchSpaceError(
            f"{owner}.suggest({name!r}, ...): {name!r} is inactive in this trial (it exists when"
            f" {space[name].when!r}, and the trial has {dict(params)!r})"
        )
    return params[name]
