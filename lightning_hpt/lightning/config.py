"""From a flat trial configuration to the arguments of the model, datamodule, Trainer and optimizer."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any

import torch

from lightning_hpt.exceptions import ConfigurationError
from lightning_hpt.lightning.compat import is_lightning_class
from lightning_hpt.masking import get_logger

__all__ = ["SECTIONS", "check_keys", "is_lightning_class", "nest", "patch_optimizer", "split_params"]

log = get_logger(__name__)

#: the prefixes a parameter name may start with, and what they configure.
SECTIONS = {
    "model": "init arguments of the LightningModule (or the config passed to a model factory)",
    "data": "init arguments of the LightningDataModule (or the config passed to a datamodule factory)",
    "trainer": "arguments of lightning.pytorch.Trainer, e.g. trainer.max_epochs",
    "optimizer": "the trial's optimizer: optimizer.class_path and its init arguments (optimizer.lr, ...)",
}


def check_keys(keys: Any) -> None:
    """Raise :class:`ConfigurationError` for a parameter whose prefix is not a known section."""
    for key in keys:
        head, _, rest = key.partition(".")
        if head not in SECTIONS or not rest:
            known = ", ".join(f"'{s}.*' ({d})" for s, d in SECTIONS.items())
            raise ConfigurationError(f"parameter {key!r} must start with one of the sections {known}")


def split_params(params: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"model.lr": 0.1, "trainer.max_epochs": 5}`` -> ``{"model": {"lr": 0.1}, "trainer": {"max_epochs": 5}, ...}``.

    Deeper names nest: ``model.encoder.width`` -> ``{"model": {"encoder": {"width": ...}}}``.
    """
    check_keys(params)
    return {**{s: {} for s in SECTIONS}, **nest(params)}


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"model.init_args.lr": 0.1}`` -> ``{"model": {"init_args": {"lr": 0.1}}}``: dotted keys as nested dicts."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        parts = key.split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def namespace_of(obj: Any) -> Any:
    """The Lightning package (``lightning.pytorch`` or ``pytorch_lightning``) that ``obj``'s class comes from."""
    for base in inspect.getmro(obj if inspect.isclass(obj) else type(obj)):
        if base.__module__.startswith("pytorch_lightning"):
            return importlib.import_module("pytorch_lightning")
    return importlib.import_module("lightning.pytorch")


def resolve_class(path: str, arg: str) -> type:
    """Import ``"torch.optim.AdamW"``; a bare name is looked up in ``torch.optim``."""
    module, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module or "torch.optim"), name)
    except (ImportError, AttributeError):
        raise ConfigurationError(
            f"{arg}={path!r} cannot be imported; give an import path such as 'torch.optim.AdamW'"
            " or a name in torch.optim"
        ) from None
    return cls


def _walk(obj: Any, found: list) -> None:
    if isinstance(obj, (torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler)):
        found.append(obj)
    elif isinstance(obj, Mapping):
        for v in obj.values():
            _walk(v, found)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _walk(v, found)


def patch_optimizer(model: Any, settings: Mapping[str, Any]) -> None:
    """Make ``model.configure_optimizers`` apply the trial's ``optimizer.*`` settings.

    Without ``class_path`` the module's own optimizers keep their class, parameter groups and
    schedulers, and only the given hyperparameters (``lr``, ``weight_decay``, ...) change. With
    ``class_path`` the module's optimizer is replaced by that class over all parameters (its
    schedulers are dropped, with a warning, since they were built for the old optimizer).
    """
    if not settings:
        return
    settings = dict(settings)
    class_path = settings.pop("class_path", None)
    original = model.configure_optimizers

    def configure_optimizers() -> Any:
        if class_path is not None:
            cls = resolve_class(class_path, "optimizer.class_path")
            try:
                out = original()
            except Exception:  # a module without its own optimizer
                out = None
            found: list = []
            _walk(out, found)
            if any(isinstance(o, torch.optim.lr_scheduler.LRScheduler) for o in found):
                log.warning(
                    "optimizer.class_path=%r replaces the module's optimizer; its LR schedulers are dropped", class_path
                )
            return cls(model.parameters(), **settings)
        out = original()
        found = []
        _walk(out, found)
        optimizers = [o for o in found if isinstance(o, torch.optim.Optimizer)]
        if not optimizers:
            raise ConfigurationError(
                "optimizer.* parameters need configure_optimizers to return an optimizer, or optimizer.class_path"
            )
        for opt in optimizers:
            unknown = [k for k in settings if k not in opt.defaults]
            if unknown:
                raise ConfigurationError(
                    f"optimizer.{unknown[0]} is not an argument of {type(opt).__name__}; valid: {sorted(opt.defaults)}"
                )
            opt.defaults.update(settings)
            for group in opt.param_groups:
                group.update(settings)
                if "lr" in settings and "initial_lr" in group:
                    group["initial_lr"] = settings["lr"]
        for sched in found:
            if isinstance(sched, torch.optim.lr_scheduler.LRScheduler) and "lr" in settings:
                sched.base_lrs = [settings["lr"]] * len(sched.base_lrs)
        return out

    model.configure_optimizers = configure_optimizers
