"""Which trials may share one stacked model: the per-member rule, the structural check and the refusals.

A group's members must run the same code on tensors of the same shapes; only values that each member
can carry on its own may differ. That is decided in two steps:

1. By name (:func:`group_key`): a parameter may differ inside a group only if it is per-member:
   every ``optimizer.*`` parameter (each member has its own optimizer), ``trainer.max_epochs`` (a
   member ends at its own epoch count) and the ``model.*`` parameters named in ``per_member``
   (by default learning rate, weight decay, momentum and dropout). Every other parameter is
   structural and equal within a group.
2. By building the members (:func:`signature`): same class, same parameter and buffer names, shapes
   and dtypes, the same modules with the same settings (``nn.Dropout``'s rate excepted). Members
   whose signatures differ go to different groups.

:func:`refusal` names what a stacked group cannot honour (batch norm statistics, the module's own
hooks, manual optimization, ...); such trials run as ordinary trials.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Iterable, Mapping
from typing import Any

from torch import nn

from lightning_hpt.exceptions import ConfigurationError, HPTError

__all__ = ["PER_MEMBER", "StackingRefused", "check_per_member", "group_key", "is_per_member", "refusal", "signature"]

#: ``model.*`` init arguments that may differ between the members of a group by default. They must reach
#: the model only through its optimizer (``configure_optimizers``) or through ``nn.Dropout`` modules.
PER_MEMBER: tuple[str, ...] = ("lr", "learning_rate", "weight_decay", "momentum", "dropout")

#: LightningModule methods a stacked group calls on each member (overriding them is fine).
_CALLED = frozenset(
    {"forward", "training_step", "validation_step", "configure_optimizers", "on_save_checkpoint", "on_load_checkpoint"}
)
#: LightningModule methods a stacked group never calls on a member, besides the ``on_*`` hooks.
_NOT_CALLED = (
    "setup",
    "teardown",
    "configure_callbacks",
    "configure_gradient_clipping",
    "configure_model",
    "optimizer_step",
    "optimizer_zero_grad",
    "backward",
    "lr_scheduler_step",
    "transfer_batch_to_device",
)
#: Trainer arguments that act through automatic optimization, which a stacked group replaces, with the
#: values that leave it as it is.
_TRAINER_REFUSED = {"gradient_clip_val": (None, 0), "accumulate_grad_batches": (None, 1)}


class StackingRefused(HPTError):
    """A group of trials cannot be trained as one stacked model; the message says why."""


def is_per_member(key: str, per_member: Iterable[str] = PER_MEMBER) -> bool:
    """Whether parameter ``key`` may take a different value in each member of a group."""
    section, _, name = key.partition(".")
    if section == "optimizer" or key == "trainer.max_epochs":
        return True
    return section == "model" and name in set(per_member)


def check_per_member(model: Any, per_member: Iterable[str]) -> None:
    """Refuse ``per_member`` names that are not init arguments of the model class (a misspelt ``"lrr"``).

    Such a name lets nothing differ inside a group. The defaults (:data:`PER_MEMBER`) need not all
    exist; a factory, or an ``__init__`` with ``**kwargs``, is not checked.

    Raises:
        ConfigurationError: naming the unknown names, the class's arguments and the closest ones.
    """
    cls = model.func if isinstance(model, functools.partial) else model
    if not isinstance(cls, type):
        return
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [n for n, p in params.items() if n != "self" and p.kind is not inspect.Parameter.VAR_POSITIONAL]
    unknown = [n for n in per_member if n not in PER_MEMBER and n.partition(".")[0] not in accepted]
    if unknown:
        near = {n: difflib.get_close_matches(n.partition(".")[0], accepted, n=1) for n in unknown}
        what = "is not an init argument" if len(unknown) == 1 else "are not init arguments"
        hint = "; ".join(f"did you mean {m[0]!r} for {n!r}?" for n, m in near.items() if m)
        raise ConfigurationError(
            f"StackedExecutor: per_member names {unknown}, which {what} of {cls.__name__} ({accepted}), so nothing"
            " would differ inside a group by it; give init arguments of the model" + (f" ({hint})" if hint else "")
        )


def group_key(params: Mapping[str, Any], per_member: Iterable[str] = PER_MEMBER) -> tuple:
    """The structural parameters of a configuration: trials with equal keys may be stacked."""
    per = tuple(per_member)
    return tuple(sorted((k, type(v).__name__, repr(v)) for k, v in params.items() if not is_per_member(k, per)))


def signature(model: nn.Module) -> tuple:
    """What must be equal between members: class, parameter/buffer layout and module settings."""
    params = tuple((n, tuple(p.shape), p.dtype, p.requires_grad) for n, p in model.named_parameters())
    buffers = tuple((n, tuple(b.shape), b.dtype) for n, b in model.named_buffers())
    modules = tuple(
        (n, type(m).__qualname__, "" if type(m) is nn.Dropout else m.extra_repr()) for n, m in model.named_modules()
    )
    return (type(model), params, buffers, modules)


def _overridden_hooks(cls: type, base: type) -> list[str]:
    names = [n for n in dir(base) if n.startswith("on_") or n in _NOT_CALLED]
    return [n for n in names if n not in _CALLED and getattr(cls, n, None) is not getattr(base, n, None)]


def refusal(model: Any, base: type, trainer_kwargs: Mapping[str, Any]) -> str | None:
    """Why ``model`` (one built member) cannot be stacked (every reason, joined by ``"; "``), or ``None``.

    Args:
        model: a member as built for its trial.
        base: the ``LightningModule`` class of the Lightning package in use.
        trainer_kwargs: the Trainer arguments of the group.
    """
    reasons = []
    if not getattr(model, "automatic_optimization", True):
        reasons.append(f"{type(model).__name__} uses manual optimization (automatic_optimization=False)")
    hooks = _overridden_hooks(type(model), base)
    if hooks:
        reasons.append(f"{type(model).__name__} overrides {', '.join(hooks)}, which a stacked group does not call")
    stats = next((nm for nm in model.named_modules() if getattr(nm[1], "track_running_stats", False)), None)
    if stats is not None:
        reasons.append(
            f"module {stats[0]!r} ({type(stats[1]).__name__}) updates running statistics in training mode, which"
            " vmap cannot do per member"
        )
    all_params = list(model.named_parameters(remove_duplicate=False))
    if len({id(p) for _, p in all_params}) != len(all_params):
        reasons.append(f"{type(model).__name__} shares (ties) parameters between modules")
    used = [k for k, inert in _TRAINER_REFUSED.items() if trainer_kwargs.get(k) not in inert]
    if used:
        reasons.append(f"trainer arguments {used} act through automatic optimization, which a stacked group replaces")
    return "; ".join(reasons) or None
