"""Pruners: when a running trial stops early. Each is a pure function of the stored history."""

from __future__ import annotations

from lightning_hpt.exceptions import ConfigurationError
from lightning_hpt.pruners._index import StepIndex
from lightning_hpt.pruners.base import Pruner
from lightning_hpt.pruners.hyperband import HyperbandPruner
from lightning_hpt.pruners.median import MedianPruner
from lightning_hpt.pruners.nop import NopPruner
from lightning_hpt.pruners.successive_halving import SuccessiveHalvingPruner
from lightning_hpt.registry import Registry

__all__ = [
    "PRUNERS",
    "HyperbandPruner",
    "MedianPruner",
    "NopPruner",
    "Pruner",
    "StepIndex",
    "SuccessiveHalvingPruner",
    "make_pruner",
]

#: the pruners reachable by name (``make_pruner``, the CLI's ``search.pruner``), each with its default arguments.
PRUNERS: Registry[Pruner] = Registry("pruner", Pruner)
PRUNERS.register("none", NopPruner)
PRUNERS.register("median", MedianPruner)
PRUNERS.register("asha", SuccessiveHalvingPruner)
PRUNERS.register("hyperband", HyperbandPruner)


def make_pruner(spec: str | Pruner | None) -> Pruner:
    """The pruner for ``HyperparameterSearch(pruner=spec)``.

    Args:
        spec: ``None`` (no pruning), a :class:`Pruner`, or one of the names ``"none"``,
            ``"median"``, ``"asha"``, ``"hyperband"`` (any case), which give that pruner with its
            default arguments.

    Example:
        >>> make_pruner("asha")
        SuccessiveHalvingPruner(min_resource=1, reduction_factor=3, min_early_stopping_rate=0, max_resource=None)
    """
    if spec is None:
        return NopPruner()
    if isinstance(spec, Pruner):
        return spec
    valid = ", ".join(repr(name) for name in PRUNERS)
    if isinstance(spec, type) and issubclass(spec, Pruner):
        raise ConfigurationError(f"pruner={spec.__name__} is a class; pass an instance such as {spec.__name__}()")
    if not isinstance(spec, str):
        raise ConfigurationError(
            f"pruner must be None, a Pruner or one of {valid}; got pruner={spec!r} of type {type(spec).__name__}"
        )
    cls = PRUNERS.get(spec)
    if cls is None:
        raise ConfigurationError(f"unknown pruner={spec!r}; use one of {valid}, None, or a Pruner object")
    return cls()
