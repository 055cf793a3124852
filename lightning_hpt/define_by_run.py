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

The function is traced once, when the space is made, and each parameter gets the condition
(``when``) under which the function asks for it. The result is an ordinary space with conditions
(:mod:`lightning_hpt.conditions`): every strategy, the grid, the study's stored definition and its
check on resume work as they do for a dict of domains.

How: the function runs with a stand-in trial whose values notice being looked at
(:mod:`lightning_hpt._watched`). A choice with at most :data:`MAX_BRANCH_VALUES` values that the
function compares, hashes, computes with or formats is tried at each of its values (in every
combination with the other choices it looks at); a choice it only stores (``return {"bs": bs}``) is
not, so a flat space traces in one run. Parameters with more values (``Int(8, 128)``, a ``Float``) are
tried at their low, middle and high values. Last, the function runs on 64 seeded configurations of
the traced space and must ask for exactly the parameters the space says are active in each.

What a function can do:

* Branch on a choice with at most :data:`MAX_BRANCH_VALUES` values (a ``Categorical``, an ``Int``
  or a ``Float`` with ``step``); not on a parameter with more (a ``Float``, ``Int(8, 128)``).
* Ask for a parameter under a conjunction of such choices (``if a == 1 and b == "x"``); an ``or``
  across two parameters is not a condition a space can hold, and is refused.
* Ask for each name with one domain: a range that depends on another parameter (``Int(1, n)``) is
  refused.

While traced, a numeric choice acts as a number (``range(n)``, ``n * 2``) but is not an ``int``
instance. The function should only ask for values (no training, no files): it runs many times, and
must ask for the same names with the same domains each time it makes the same choices (no random
numbers, no state kept between calls). Each rule is checked, and the error names the parameter.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from lightning_hpt._watched import watched
from lightning_hpt.conditions import Conditions
from lightning_hpt.domains import Domain, make_when, value_key
from lightning_hpt.exceptions import SearchSpaceError
from lightning_hpt.names import validate_name

__all__ = ["MAX_BRANCHES", "MAX_BRANCH_VALUES", "answer", "replay", "trace_space"]

#: a parameter with at most this many values is traced at every value (a function may branch on it).
MAX_BRANCH_VALUES = 16
#: the most branches (distinct paths through the function's choices) a trace may take.
MAX_BRANCHES = 4096
#: the seeded configurations of the traced space the function is checked on.
DRAWS = 64


_STAND_IN = (
    "while traced, a numeric choice is a stand-in that acts as the number but is not an int or float, which"
    " json.dumps, torch.tensor and isinstance(x, int) need: do that with what the function returns, outside it"
    " (cfg = fn(trial) in the loop gets plain values)"
)


class _AskError(SearchSpaceError):
    """A call of ``trial.suggest`` that tracing refuses; it names the call, so it is raised as it is."""


class _Tracer:
    """One run of a space function: the choices it is forced to take, and what it asked for and looked at.

    Args:
        forced: the index of the value to take at each choice with at most :data:`MAX_BRANCH_VALUES` values
            (a branching point), in the order the function asks for them; the first value past its end.
        overrides: values to give as they are, by name (not watched): a wide parameter's probe, or a
            whole configuration to replay.
    """

    def __init__(self, forced: list[int] | tuple[int, ...], overrides: Mapping[str, Any] | None = None) -> None:
        self.forced, self.overrides = forced, dict(overrides or {})
        self.points: list[str] = []  # the branching points' names, in order
        self.options: list[int] = []  # how many values each has
        self.taken: list[int] = []  # the index each took
        self.used: set[str] = set()  # the branching points whose value the function looked at
        self.asked: dict[str, Domain] = {}
        self.values: dict[str, Any] = {}
        self._given: dict[str, Any] = {}

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
            return self._given[name]
        values = domain.values()
        value = domain.from_unit(0.5)
        if values is not None and len(values) <= MAX_BRANCH_VALUES:
            point = len(self.points)
            index = self.forced[point] if point < len(self.forced) and self.forced[point] < len(values) else 0
            self.points.append(name)
            self.options.append(len(values))
            self.taken.append(index)
            value = values[index]
        self.asked[name] = domain
        self.values[name] = self.overrides.get(name, value)
        self._given[name] = self._watch(name, values) if name not in self.overrides else self.values[name]
        return self._given[name]

    def _watch(self, name: str, values: list[Any] | None) -> Any:
        """A branching point's value, watched; one that cannot be (a bool, None, mixed types) counts as looked at."""
        value = self.values[name]
        if values is None or len(values) > MAX_BRANCH_VALUES or len(values) == 1:
            return value
        seen = watched(value, lambda: self.used.add(name)) if len({type(v) for v in values}) == 1 else None
        if seen is None:
            self.used.add(name)
            return value
        return seen

    def used_before(self, parent: str, name: str) -> bool:
        """``parent`` is a branching point whose value this run looked at, asked before ``name``."""
        order = list(self.asked)
        return parent in self.used and parent in order and order.index(parent) < order.index(name)

    def path(self) -> tuple[Any, ...]:
        """What makes this run's branch: the names it asked (with domains) and the values it looked at."""
        looked = tuple((n, value_key(self.values[n])) for n in self.points if n in self.used)
        return tuple(self.asked.items()), looked

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


def _run(
    fn: Callable[[Any], Any], forced: list[int] | tuple[int, ...], overrides: Mapping[str, Any] | None = None
) -> _Tracer:
    tracer = _Tracer(forced, overrides)
    try:
        fn(tracer)
    except _AskError:
        raise
    except Exception as exc:
        domain = isinstance(exc, SearchSpaceError) and tracer.used  # a domain made from a choice: Int(0, n)
        fix = (
            "a parameter's domain may not depend on another parameter's value: give each name one domain"
            if domain
            else _STAND_IN
            if "WatchedNumber" in str(exc)
            else "it should only call trial.suggest(name, domain) and branch on the values"
        )
        raise SearchSpaceError(
            f"the space function {_name(fn)} raised {type(exc).__name__}: {exc} (while traced with"
            f" {tracer.values!r}); {fix}"
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
    """Every branch of the choices the function looks at: each run's looked-at choices tried at their other values."""
    out: list[_Tracer] = []
    paths: set[tuple[Any, ...]] = set()
    tried: set[tuple[int, ...]] = set()
    todo: list[tuple[int, ...]] = [()]
    while todo:
        forced = todo.pop()
        if forced in tried:
            continue
        tried.add(forced)
        run = _run(fn, forced)
        if not out:
            _check_same(fn, run, _run(fn, forced))
        if run.path() in paths:
            continue
        paths.add(run.path())
        out.append(run)
        if len(out) > MAX_BRANCHES:
            raise SearchSpaceError(
                f"the space function {_name(fn)} has more than {MAX_BRANCHES} branches: it looks at (compares,"
                f" computes with or formats) {[n for n in run.points if n in run.used]}, and each choice it looks at"
                " is tried at each of its values, in every combination; compute with the values where they are used"
                " (the model, after the function returns), branch on fewer choices, or give the space as a dict"
                " with when= conditions"
            )
        taken = tuple(run.taken)
        for point in reversed(range(len(run.points))):
            if run.points[point] in run.used:
                todo += [
                    (*taken[:point], c, *taken[point + 1 :]) for c in range(run.options[point]) if c != taken[point]
                ]
    return out


def _check_wide(fn: Callable[[Any], Any], run: _Tracer, forced: list[int] | tuple[int, ...]) -> None:
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
    for run in {tuple(run.asked): run for run in reversed(runs)}.values():  # one run of each sequence of asks
        _check_wide(fn, run, run.taken)
    out = {name: _conditional(name, domains, runs) for name in _ordered(runs)}
    conditions = Conditions(out)
    for run in runs:
        _check_run(fn, run, conditions, out)
    _check_draws(fn, out, conditions)
    return out


def _check_run(fn: Callable[[Any], Any], run: _Tracer, conditions: Conditions, domains: Mapping[str, Domain]) -> None:
    """The conditions say the run's parameters are active: at its values, and at any value of a choice it ignored."""
    variants = [run.values]
    for name in run.points:
        if name not in run.used:
            variants += [{**run.values, name: v} for v in domains[name].values() or () if v != run.values[name]]
    for values in variants:
        active = conditions.active(values)
        if active != set(run.asked):
            odd = sorted(active ^ set(run.asked))[0]
            raise SearchSpaceError(
                f"the space function {_name(fn)} asks for {odd!r} under a condition a space cannot hold (with"
                f" {values!r} it {'does not ask' if odd in active else 'asks'}); a parameter may depend on choices"
                " joined by `and`, not `or`: give it a different name in each branch"
            )


def _check_draws(fn: Callable[[Any], Any], domains: Mapping[str, Domain], conditions: Conditions) -> None:
    """On :data:`DRAWS` seeded configurations of the traced space, the function asks for exactly the active ones."""
    rng = np.random.default_rng(0)
    plain = {n: dataclasses.replace(d, when=None) for n, d in domains.items()}
    for _ in range(DRAWS):
        drawn = {name: d.sample(rng) for name, d in domains.items()}
        active = conditions.active(drawn)
        values = {n: v for n, v in drawn.items() if n in active}
        run = _run(fn, (), values)
        if set(run.asked) != active or any(plain.get(n) != d for n, d in run.asked.items()):
            extra, missing = sorted(set(run.asked) - active), sorted(active - set(run.asked))
            what = (
                f"asks for {extra}"
                if extra
                else f"does not ask for {missing}"
                if missing
                else "asks with other domains"
            )
            raise SearchSpaceError(
                f"the space function {_name(fn)} {what} with {values!r}, which tracing did not see: it decides with a"
                " value in a way tracing cannot follow (a Float or an Int with more than"
                f" {MAX_BRANCH_VALUES} values, a choice joined into a name with + or str.join, or an"
                " isinstance(x, int) check, false while traced); branch with"
                " ==, in or < on a choice with fewer values, build names with f-strings, or give the space as a dict"
                " with when= conditions"
            )


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


def _conditional(name: str, domains: Mapping[str, Domain], runs: list[_Tracer]) -> Domain:
    """``name``'s domain with a ``when``: the branching choices it always follows, at the values they take there."""
    with_it = [r for r in runs if name in r.asked]
    when: dict[str, list[Any]] = {}
    for parent, domain in domains.items():
        values = domain.values()
        if parent == name or values is None or len(values) > MAX_BRANCH_VALUES:
            continue
        if not all(r.used_before(parent, name) for r in with_it):
            continue  # a choice not looked at before ``name`` in some branch: ``name`` does not depend on it there
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


class _Replay:
    """A trial that answers each ``suggest`` with a configuration's value (see :func:`replay`)."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self._values = values

    def suggest(self, name: str, domain: Domain) -> Any:
        if name not in self._values:
            raise SearchSpaceError(
                f"replay: the space function asks for {name!r}, which this configuration does not have (its names:"
                f" {sorted(self._values)}); give replay the configuration of a trial of the search the function"
                " defined (the config a model factory receives, or trial.params)"
            )
        return self._values[name]


def replay(fn: Callable[[Any], Any], config: Mapping[str, Any]) -> Any:
    """What the space function ``fn`` returns for one trial: each ``trial.suggest(name, ...)`` answers its value.

    So a model factory of :class:`~lightning_hpt.HyperparameterSearch` builds with the function that
    defined the space, as a training loop of :class:`~lightning_hpt.ScriptSearch` does with ``fn(trial)``.

    Args:
        fn: the space function given to the search.
        config: the trial's configuration: the nested config a factory receives (``{"model": {...}, ...}``),
            or its flat parameters (``trial.params``).

    Example:
        >>> from lightning_hpt import Int
        >>> def space(trial):
        ...     n = trial.suggest("model.layers", Int(1, 3))
        ...     return {"widths": [trial.suggest(f"model.width{i}", Int(8, 64)) for i in range(n)]}
        >>> replay(space, {"model": {"layers": 2, "width0": 16, "width1": 32}})
        {'widths': [16, 32]}
        >>> # HyperparameterSearch(model=lambda cfg: MyMLP(**replay(space, cfg)), space=space, ...)
    """
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        flat[prefix] = value
        if isinstance(value, Mapping):
            for key, inner in value.items():
                walk(f"{prefix}.{key}", inner)

    for key, value in config.items():
        walk(str(key), value)
    return fn(_Replay(flat))
