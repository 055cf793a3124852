"""The ``search.space`` section: YAML domains on config paths, checked against the CLI's parser.

Example (YAML)::

    space:
      model.hidden_dim: {type: int, low: 16, high: 256, log: true}
      optimizer.lr: {type: float, low: 1e-4, high: 0.1, log: true}   # short for optimizer.init_args.lr
      data.batch_size: {choices: [32, 64, 128]}
      trainer.max_epochs: [4, 8]                                      # a list is a set of choices
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from lightning_hpt.cli.parsing import config_paths, layer, resolve_key
from lightning_hpt.exceptions import ConfigurationError, SearchSpaceError
from lightning_hpt.space import Categorical, Domain, SearchSpace

__all__ = ["check_types", "domain_from_yaml", "representatives", "resolve_params", "space_from_config"]

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


def _reason(error: BaseException) -> str:
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    detail = [ln for ln in lines if ln.startswith(("Expected", "- Expected", "Got value", "No action", "Key "))]
    return " ".join(detail or lines)[:400]


def check_types(parser: Any, base_cfg: Any, space: SearchSpace) -> None:
    """Parse each domain's representative values through the CLI's parser, before any trial runs.

    All parameters are layered at once, one round per representative, so a space that fits costs
    a few parses; a round that fails is retried key by key to name the culprit.

    Raises:
        ConfigurationError: a value the argument's type refuses, with the parser's reason.
    """
    reps = {k: representatives(d) for k, d in space.items()}
    exit_on_error = parser.exit_on_error
    parser.exit_on_error = False  # raise ArgumentError instead of printing usage and exiting
    try:
        for r in range(max(len(v) for v in reps.values())):
            params = {k: v[r % len(v)] for k, v in reps.items()}
            try:
                layer(parser, base_cfg, params)
                continue
            except argparse.ArgumentError as whole:
                error: BaseException = whole
            for key, value in params.items():
                try:
                    layer(parser, base_cfg, {key: value})
                except argparse.ArgumentError as e:
                    raise ConfigurationError(
                        f"space[{key!r}] = {space[key]!r} does not fit the argument's type: the config parser refuses"
                        f" {key}={value!r} ({_reason(e)}); give a domain of values the argument accepts"
                        " (Int for an int, Categorical of the allowed values for a Literal or a class path)"
                    ) from None
            raise ConfigurationError(f"the configuration {params} is refused by the config parser: {_reason(error)}")
    finally:
        parser.exit_on_error = exit_on_error


def resolve_params(params: Mapping[str, Any], base: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A configuration with its keys resolved to full config paths (``model.lr`` -> ``model.init_args.lr``)."""
    paths = list(config_paths(base))
    out: dict[str, Any] = {}
    for key, value in params.items():
        full = resolve_key(key, base, paths)
        if full in out:
            raise ConfigurationError(f"{where}: {key!r} and another key both name {full!r}; give it once")
        out[full] = value
    return out


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
    domains = resolve_params({k: domain_from_yaml(k, v) for k, v in raw.items()}, base, "search.space")
    space = SearchSpace(domains)
    check_types(parser, base_cfg, space)
    return space
