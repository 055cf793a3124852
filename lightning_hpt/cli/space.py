"""The ``search.space`` section: YAML domains on config paths, checked against the CLI's parser.

Example (YAML)::

    space:
      model.hidden_dim: {type: int, low: 16, high: 256, log: true}
      optimizer.lr: {type: float, low: 1e-4, high: 0.1, log: true}   # short for optimizer.init_args.lr
      data.batch_size: {choices: [32, 64, 128]}
      trainer.max_epochs: [4, 8]                                      # a list is a set of choices
      optimizer.class_path: [torch.optim.SGD, torch.optim.AdamW]
      optimizer.momentum: {type: float, low: 0.0, high: 0.99, when: {optimizer.class_path: torch.optim.SGD}}

A ``when`` names other keys of the space (short or full forms). A conditional argument of a searched
class (``optimizer.momentum`` when ``optimizer.class_path`` is searched) need not be in the config:
it is that class's ``init_args`` entry. ``search.param_constraints`` and ``search.enqueue`` name the
space's keys in either form too (:func:`space_key`).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
from collections.abc import Mapping, Sequence
from typing import Any

from lightning_hpt.cli.parsing import config_paths, layer, parser_reason, resolve_key, short_key
from lightning_hpt.constraints import rename_params
from lightning_hpt.exceptions import ConfigurationError, SearchSpaceError
from lightning_hpt.space import Categorical, Domain, SearchSpace

__all__ = [
    "check_types",
    "domain_from_yaml",
    "representatives",
    "resolve_constraints",
    "resolve_params",
    "space_from_config",
    "space_key",
]

_NUMERIC_FIELDS = ("low", "high", "step")


def _number(text: str) -> Any:
    # PyYAML reads 1e-4 (no dot) as a string; the domain wants the number it obviously means
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def domain_from_yaml(key: str, spec: Any) -> Domain:
    """A domain from its YAML form: ``{type: float, low: ..., high: ..., log: ...}``, ``{choices: [...]}`` or a list.

    Raises:
        SearchSpaceError: naming the key, for anything else or an invalid domain.
    """
    if isinstance(spec, Domain):
        return spec
    if isinstance(spec, (list, tuple)):
        spec = {"choices": list(spec)}
    if not isinstance(spec, Mapping):
        raise SearchSpaceError(
            f"space[{key!r}] must be a domain such as {{type: float, low: 1e-4, high: 0.1, log: true}},"
            f" {{type: int, low: 1, high: 4}} or {{choices: [32, 64]}}; got {spec!r}"
        )
    spec = {k: _number(v) if k in _NUMERIC_FIELDS and isinstance(v, str) else v for k, v in spec.items()}
    try:
        return Domain.from_dict(spec)
    except SearchSpaceError as e:
        raise SearchSpaceError(f"space[{key!r}]: {e}") from None


def representatives(domain: Domain) -> list[Any]:
    """Values that show whether a domain fits an argument's type: its ends and an inner value, or every choice."""
    values = domain.values()
    if isinstance(domain, Categorical) or (values is not None and len(values) <= 3):
        return list(values)
    if values is not None:
        return [values[0], values[-1], values[len(values) // 2]]
    return [domain.from_unit(0.0), domain.from_unit(1.0), domain.from_unit(0.37)]


def check_types(parser: Any, base_cfg: Any, space: SearchSpace) -> None:
    """Parse each domain's representative values through the CLI's parser, before any trial runs.

    All parameters are layered at once, one round per representative, so a space that fits costs
    a few parses; a round that fails is retried key by key to name the culprit.

    Raises:
        ConfigurationError: a value the argument's type refuses, with the parser's reason.
    """
    exit_on_error = parser.exit_on_error
    parser.exit_on_error = False  # raise ArgumentError instead of printing usage and exiting
    try:
        for params in _probes(space):
            try:
                layer(parser, base_cfg, params)
                continue
            except argparse.ArgumentError as whole:
                error: BaseException = whole
            for key, value in params.items():
                needs = {a: params[a] for a in _ancestors(space, key) if a in params}  # e.g. its class_path
                try:
                    layer(parser, base_cfg, {**needs, key: value})
                except argparse.ArgumentError as e:
                    raise _unfit(space, key, value, parser_reason(e)) from None
            raise ConfigurationError(
                f"the configuration {params} is refused by the config parser: {parser_reason(error)}"
            )
    finally:
        parser.exit_on_error = exit_on_error


def _unfit(space: SearchSpace, key: str, value: Any, reason: str) -> ConfigurationError:
    """The error for a domain value the config parser refuses, with the parser's ``reason`` and the fix."""
    if "is not accepted" in reason:  # an argument the class (of the config, or chosen by a when) does not take
        fix = "search it only for the classes that take it: give it a when on the class_path that chooses them"
    else:
        fix = (
            "give a domain of values the argument accepts (Int for an int, Categorical of the allowed values"
            " for a Literal or a class path)"
        )
    return ConfigurationError(
        f"space[{key!r}] = {space[key]!r} does not fit the argument's type: the config parser refuses"
        f" {key}={value!r} ({reason}); {fix}"
    )


def _ancestors(space: SearchSpace, name: str) -> list[str]:
    """The parameters ``name``'s conditions depend on, directly or through other conditions."""
    out: list[str] = []
    todo = list(space[name].when or ())
    while todo:
        parent = todo.pop()
        if parent not in out:
            out.append(parent)
            todo.extend(space[parent].when or ())
    return out


def _holding(space: SearchSpace, name: str) -> dict[str, Any]:
    """Values of ``name``'s ancestors under which its conditions hold (each condition's first value)."""
    out: dict[str, Any] = {}
    for child in [name, *_ancestors(space, name)]:
        for parent, values in (space[child].when or {}).items():
            out.setdefault(parent, values[0])
    return out


def _probes(space: SearchSpace) -> list[dict[str, Any]]:
    """Configurations that together give every domain's representatives, each where its parameter is active.

    One round per representative, every parameter at once (inactive ones left out); then, for a
    conditional value no round reached, one more with its conditions set to hold.
    """
    reps = {k: representatives(d) for k, d in space.items()}
    probes = [space.active({k: v[r % len(v)] for k, v in reps.items()}) for r in range(max(map(len, reps.values())))]
    seen = {(k, repr(v)) for p in probes for k, v in p.items()}
    for name in space.conditions.rules:
        for value in reps[name]:
            if (name, repr(value)) in seen:
                continue
            probe = space.active({**{k: v[0] for k, v in reps.items()}, **_holding(space, name), name: value})
            seen.update((k, repr(v)) for k, v in probe.items())
            probes.append(probe)
    return probes


def space_key(name: str, keys: Sequence[str] | SearchSpace) -> str | None:
    """The key of the resolved space (full config paths) that ``name`` names, in its full or short form
    (``model.width`` for ``model.init_args.width``); ``None`` when it names none."""
    return next((k for k in keys if short_key(k) == short_key(name)), None)


def resolve_constraints(rules: Sequence[Any] | None, space: SearchSpace) -> list[Any] | None:
    """``search.param_constraints`` with each name resolved to its key of ``space`` (:func:`space_key`).

    An expression keeps its text but for the names; one already written with the full keys is unchanged.

    Raises:
        ConfigurationError: a name that is not a key of the space, with the nearest keys.
    """
    if rules is None or isinstance(rules, (str, Mapping)):
        return rules  # type: ignore[return-value]  # param_constraints() refuses what is not a list
    keys = list(space)

    def resolved(rule: str, name: str) -> str:
        full = space_key(name, keys)
        if full is not None:
            return full
        forms = sorted({*keys, *(short_key(k) for k in keys)})
        near = difflib.get_close_matches(name, forms, n=3, cutoff=0.6)
        raise ConfigurationError(
            f"search.param_constraints: {rule!r} names {name!r}, which is not a key of search.space"
            + (f"; nearest keys: {near}" if near else f"; its keys are {sorted(short_key(k) for k in keys)}")
            + " (the short form 'model.width' or the full 'model.init_args.width', as in search.space)"
        )

    return [rename_params(r, lambda name, r=r: resolved(r, name)) if isinstance(r, str) else r for r in rules]


def resolve_params(
    params: Mapping[str, Any], base: Mapping[str, Any], where: str, space: SearchSpace | None = None
) -> dict[str, Any]:
    """A configuration with its keys resolved to full config paths (``model.lr`` -> ``model.init_args.lr``).

    Keys of ``space`` (in short or full form) resolve to themselves: a conditional argument of a
    searched class is not in the config.
    """
    paths = list(config_paths(base))
    out: dict[str, Any] = {}
    for key, value in params.items():
        full = space_key(key, space or ()) or resolve_key(key, base, paths)
        if full in out:
            raise ConfigurationError(f"{where}: {key!r} and another key both name {full!r}; give it once")
        out[full] = value
    return out


def _resolve_space(domains: Mapping[str, Domain], base: Mapping[str, Any]) -> dict[str, Domain]:
    """The space's keys, and the names in its conditions, resolved to full config paths.

    A key that is not in the config but conditional on a searched ``<section>.class_path`` is that
    class's argument: ``optimizer.momentum`` -> ``optimizer.init_args.momentum``.
    """
    paths = list(config_paths(base))
    full: dict[str, str] = {}
    missing: list[tuple[str, ConfigurationError]] = []
    for key in domains:
        try:
            full[key] = resolve_key(key, base, paths)
        except ConfigurationError as e:
            missing.append((key, e))
    by_short = {short_key(path): path for path in full.values()}

    def resolved(name: str) -> str:
        return full.get(name) or by_short.get(short_key(name), name)

    for key, error in missing:
        parents = [resolved(p) for p in domains[key].when or ()]
        unknown = [p for p in parents if p not in full.values() and p not in domains]
        if unknown:  # the condition is the mistake, more likely than the key
            near = difflib.get_close_matches(unknown[0], list(full.values()), n=3)
            raise SearchSpaceError(
                f"space[{key!r}]: when={domains[key].when!r} names {unknown[0]!r}, which is not a key of search.space"
                f" ({sorted(domains)})" + (f"; did you mean {near}?" if near else "")
            )
        sections = [p.removesuffix(".class_path") for p in parents if p.endswith(".class_path")]
        section = next((s for s in sections if short_key(key).startswith(short_key(s) + ".")), None)
        if section is None:
            raise _without_class_condition(key, error, [resolved(k) for k in domains])
        full[key] = f"{section}.init_args.{short_key(key)[len(short_key(section)) + 1 :]}"
    by_short = {short_key(path): path for path in full.values()}
    out: dict[str, Domain] = {}
    for key, domain in domains.items():
        if full[key] in out:
            raise ConfigurationError(f"search.space: {key!r} and another key both name {full[key]!r}; give it once")
        when = domain.when and {resolved(p): list(v) for p, v in domain.when.items()}
        out[full[key]] = dataclasses.replace(domain, when=when) if when else domain
    return out


def _without_class_condition(key: str, error: ConfigurationError, keys: Sequence[str]) -> ConfigurationError:
    """``error`` (the key is not in the config), with the fix when its section's class is searched: a condition."""
    choosers = [k for k in keys if k.endswith(".class_path")]
    chooser = next((k for k in choosers if short_key(key).startswith(short_key(k).removesuffix("class_path"))), None)
    if chooser is None:
        return error
    return ConfigurationError(
        f"{error}; if {key!r} is an argument of some of the classes that {short_key(chooser)!r} searches, give it"
        f" when: {{{short_key(chooser)}: <those classes>}} (e.g. momentum for torch.optim.SGD only)"
    )


def space_from_config(raw: Any, base: Mapping[str, Any], parser: Any, base_cfg: Any) -> SearchSpace:
    """The search space of a ``search.space`` section, keys resolved on ``base`` and values checked.

    Args:
        raw: the section: ``{config path: domain}``.
        base: the resolved config (loaded YAML) the keys must be in.
        parser: the CLI's parser.
        base_cfg: ``base`` parsed by ``parser``.

    Raises:
        ConfigurationError: no space, a key not in the config, a domain that does not fit its argument.
        SearchSpaceError: an invalid domain.
    """
    if not raw:
        raise ConfigurationError(
            "search.space is missing or empty: give at least one parameter, e.g.\n"
            "search:\n  space:\n    model.lr: {type: float, low: 1e-4, high: 0.1, log: true}"
        )
    if not isinstance(raw, Mapping):
        raise ConfigurationError(f"search.space must be a mapping of config paths to domains, got {raw!r}")
    space = SearchSpace(_resolve_space({k: domain_from_yaml(k, v) for k, v in raw.items()}, base))
    check_types(parser, base_cfg, space)
    return space
