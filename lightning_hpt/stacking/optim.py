"""One vectorized update of every member's parameters, each with its own optimizer hyperparameters.

Each member builds its own optimizer (its own ``configure_optimizers``, over its views of the stacked
tensors). When those are ``torch.optim.Adam``, ``AdamW`` or ``SGD`` with options this module follows,
their hyperparameters (learning rate, weight decay, betas, eps, momentum, dampening, per parameter group)
are gathered into per-member tensors and one update runs over the stacked tensors: the same formulas as
``torch.optim``'s single-tensor implementations, so each member gets the update its own optimizer would
make (to float rounding). Anything else is stepped member by member with the member's own optimizer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["StackedOptimizer"]

_ADAM_KEYS = ("lr", "weight_decay", "beta1", "beta2", "eps")
_SGD_KEYS = ("lr", "weight_decay", "momentum", "dampening")


def _kind(opt: torch.optim.Optimizer) -> str | None:
    """``"adam"`` or ``"sgd"`` when this module reproduces ``opt``'s update, else ``None``."""
    groups = opt.param_groups
    if any(isinstance(g.get("lr"), Tensor) or g.get("maximize") or g.get("differentiable") for g in groups):
        return None
    if any(g.get("fused") or g.get("capturable") for g in groups):
        return None
    if type(opt) in (torch.optim.Adam, torch.optim.AdamW) and not any(g.get("amsgrad") for g in groups):
        return "adam"
    if type(opt) is torch.optim.SGD and not any(g.get("nesterov") for g in groups):
        return "sgd"
    return None


def _hyper(group: dict, kind: str) -> dict[str, float]:
    if kind == "adam":
        b1, b2 = group["betas"]
        return {"lr": group["lr"], "weight_decay": group["weight_decay"], "beta1": b1, "beta2": b2, "eps": group["eps"]}
    return {k: group[k] for k in _SGD_KEYS}


class StackedOptimizer:
    """Steps the stacked parameters with the members' own hyperparameters; see the module docstring.

    Args:
        kind: ``"adam"`` or ``"sgd"``.
        stacked: the stacked parameters, ``[K, ...]`` each.
        hyper: per stacked parameter, its hyperparameters as ``[K]`` tensors.
        decoupled: per stacked parameter, whether weight decay is decoupled (AdamW), ``[K]`` booleans.
    """

    def __init__(self, kind: str, stacked: list[Tensor], hyper: list[dict[str, Tensor]], decoupled: list[Tensor]):
        self.kind, self.stacked, self.hyper, self.decoupled = kind, stacked, hyper, decoupled
        k = stacked[0].shape[0]
        self.steps = torch.zeros(k, dtype=torch.float64, device=stacked[0].device)
        self.state = [(torch.zeros_like(p.data), torch.zeros_like(p.data)) for p in stacked]

    @classmethod
    def build(
        cls, optimizers: Sequence[torch.optim.Optimizer], pairs: Sequence[Sequence[tuple[Tensor, Tensor]]]
    ) -> StackedOptimizer | None:
        """The stacked update of ``optimizers`` (member ``i``'s views are ``pairs[i]``), or ``None`` if unsupported."""
        kinds = {_kind(o) for o in optimizers}
        if len(kinds) != 1 or None in kinds:
            return None
        kind = kinds.pop()
        stacked = [s for s, _ in pairs[0]]
        columns: list[list[dict[str, float]]] = [[] for _ in stacked]
        flags: list[list[bool]] = [[] for _ in stacked]
        for opt, member in zip(optimizers, pairs, strict=True):
            where = {id(p): g for g in opt.param_groups for p in g["params"]}
            for j, (_, view) in enumerate(member):
                group = where.get(id(view))
                if group is None:  # a parameter this member's optimizer does not update
                    return None
                columns[j].append(_hyper(group, kind))
                flags[j].append(type(opt) is torch.optim.AdamW or bool(group.get("decoupled_weight_decay")))
        device = stacked[0].device
        hyper = [{k: torch.tensor([c[k] for c in col], dtype=torch.float64, device=device) for k in col[0]} for col in columns]
        decoupled = [torch.tensor(f, device=device) for f in flags]
        return cls(kind, stacked, hyper, decoupled)

    def step(self, active: Tensor | None) -> None:
        """Update the members in ``active`` (all of them when ``None``) from the stacked gradients."""
        steps = (self.steps if active is None else self.steps.index_select(0, active)) + 1
        for j, p in enumerate(self.stacked):
            if p.grad is None:
                continue
            tensors = (p.data, p.grad, *self.state[j])
            if active is not None:  # the ended members' slices stay as they are
                tensors = tuple(t.index_select(0, active) for t in tensors)
            hp = self.hyper[j] if active is None else {k: v.index_select(0, active) for k, v in self.hyper[j].items()}
            dec = self.decoupled[j] if active is None else self.decoupled[j].index_select(0, active)
            (self._adam if self.kind == "adam" else self._sgd)(*tensors, hp, dec, steps)
            if active is not None:
                for target, value in zip((p.data, None, *self.state[j]), tensors, strict=True):
                    if target is not None:
                        target.index_copy_(0, active, value)
        if active is None:
            self.steps.copy_(steps)
        else:
            self.steps.index_copy_(0, active, steps)

    @staticmethod
    def _col(v: Tensor, like: Tensor) -> Tensor:
        """A ``[K]`` vector shaped to broadcast over ``[K, ...]`` tensors like ``like``."""
        return v.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))

    def _adam(
        self, p: Tensor, g: Tensor, m: Tensor, v: Tensor, hp: dict[str, Tensor], dec: Tensor, steps: Tensor
    ) -> None:
        """In place: ``torch.optim.adam._single_tensor_adam`` with a column of hyperparameters per member."""
        lr, wd, col = hp["lr"], hp["weight_decay"], self._col
        if bool((wd != 0).any()):
            p.mul_(col(torch.where(dec, 1 - lr * wd, torch.ones_like(lr)), p))
            g = g.add(col(torch.where(dec, torch.zeros_like(wd), wd), p) * p)
        m.lerp_(g, col(1 - hp["beta1"], p))
        v.mul_(col(hp["beta2"], p)).add_(g * g * col(1 - hp["beta2"], p))
        step_size = lr / (1 - hp["beta1"] ** steps)
        bc2_sqrt = (1 - hp["beta2"] ** steps) ** 0.5
        denom = v.sqrt().div_(col(bc2_sqrt, p)).add_(col(hp["eps"], p))
        p.sub_(m / denom * col(step_size, p))

    def _sgd(
        self, p: Tensor, g: Tensor, buf: Tensor, unused: Tensor, hp: dict[str, Tensor], dec: Tensor, steps: Tensor
    ) -> None:
        """In place: ``torch.optim.sgd._single_tensor_sgd`` (without Nesterov) with a column per member."""
        col = self._col
        g = g + col(hp["weight_decay"], p) * p
        mom = col(hp["momentum"], p)
        moved = buf * mom + col(1 - hp["dampening"], p) * g
        buf.copy_(torch.where(col(steps == 1, p).bool(), g, moved))
        p.sub_(col(hp["lr"], p) * torch.where(mom != 0, buf, g))
