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
        self.kind, self.stacked = kind, stacked
        k = stacked[0].shape[0]
        self.steps = torch.zeros(k, dtype=torch.float64, device=stacked[0].device)
        self.state = [(torch.zeros_like(p.data), torch.zeros_like(p.data)) for p in stacked]
        self.hyper = hyper  # per parameter: [K] float64 vectors (bias corrections are computed from them)
        self.cols = [self._columns(h, d, p) for h, d, p in zip(hyper, decoupled, stacked, strict=True)]

    def _columns(self, hp: dict[str, Tensor], dec: Tensor, like: Tensor) -> dict[str, Tensor]:
        """The per-member factors of one parameter's update, shaped ``[K, 1, ...]`` in its dtype."""

        def col(v: Tensor) -> Tensor:
            return v.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))

        wd = hp["weight_decay"]
        if self.kind == "sgd":
            return {
                "lr": col(hp["lr"]),
                "l2": col(wd),
                "momentum": col(hp["momentum"]),
                "keep": col(1 - hp["dampening"]),
            }
        return {
            "decay": col(torch.where(dec, 1 - hp["lr"] * wd, torch.ones_like(wd))),
            "l2": col(torch.where(dec, torch.zeros_like(wd), wd)),
            "b1c": col(1 - hp["beta1"]),
            "beta2": col(hp["beta2"]),
            "b2c": col(1 - hp["beta2"]),
            "eps": col(hp["eps"]),
        }

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
        hyper = [
            {k: torch.tensor([c[k] for c in col], dtype=torch.float64, device=device) for k in col[0]}
            for col in columns
        ]
        decoupled = [torch.tensor(f, device=device) for f in flags]
        return cls(kind, stacked, hyper, decoupled)

    def step(self, active: Tensor | None) -> None:
        """Update the members in ``active`` (all of them when ``None``) from the stacked gradients."""
        steps = (self.steps if active is None else self.steps.index_select(0, active)) + 1
        for j, p in enumerate(self.stacked):
            if p.grad is None:
                continue
            tensors = (p.data, p.grad, *self.state[j])
            cols, hp = self.cols[j], self.hyper[j]
            if active is not None:  # the ended members' slices stay as they are
                tensors = tuple(t.index_select(0, active) for t in tensors)
                cols = {k: v.index_select(0, active) for k, v in cols.items()}
                hp = {k: v.index_select(0, active) for k, v in hp.items()}
            (self._adam if self.kind == "adam" else self._sgd)(*tensors, cols, hp, steps)
            if active is not None:
                for target, value in zip((p.data, None, *self.state[j]), tensors, strict=True):
                    if target is not None:
                        target.index_copy_(0, active, value)
        if active is None:
            self.steps.copy_(steps)
        else:
            self.steps.index_copy_(0, active, steps)

    def member_state(self, i: int) -> list[dict[str, Tensor]]:
        """Member ``i``'s state per stacked parameter, as its own ``torch.optim`` optimizer keeps it.

        The tensors are copies: a slice of a stacked tensor would save the whole group's state.
        """
        steps = float(self.steps[i])
        if steps == 0:  # torch keeps no state for a parameter before its first step
            return [{} for _ in self.stacked]
        if self.kind == "adam":
            return [
                {"step": torch.tensor(steps), "exp_avg": m[i].clone(), "exp_avg_sq": v[i].clone()}
                for m, v in self.state
            ]
        return [
            {"momentum_buffer": buf[i].clone()} if float(hp["momentum"][i]) != 0 else {}
            for (buf, _), hp in zip(self.state, self.hyper, strict=True)
        ]

    def load_member_state(self, i: int, states: Sequence[dict[str, Tensor]], steps: int) -> None:
        """Give member ``i`` the state :meth:`member_state` returned (``steps``: the updates it has had)."""
        self.steps[i] = float(steps)
        for (first, second), state in zip(self.state, states, strict=True):
            if self.kind == "adam" and "exp_avg" in state:
                first[i].copy_(state["exp_avg"])
                second[i].copy_(state["exp_avg_sq"])
                self.steps[i] = float(state["step"])
            elif self.kind == "sgd" and state.get("momentum_buffer") is not None:
                first[i].copy_(state["momentum_buffer"])

    @staticmethod
    def _col(v: Tensor, like: Tensor) -> Tensor:
        return v.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))

    def _adam(
        self, p: Tensor, g: Tensor, m: Tensor, v: Tensor, c: dict[str, Tensor], hp: dict[str, Tensor], steps: Tensor
    ) -> None:
        """In place: ``torch.optim.adam._single_tensor_adam`` with a column of hyperparameters per member."""
        if self._any_decay(hp):
            p.mul_(c["decay"])
            g = g.addcmul(c["l2"], p)
        m.lerp_(g, c["b1c"])
        v.mul_(c["beta2"]).addcmul_(g * c["b2c"], g)
        step_size = self._col(hp["lr"] / (1 - hp["beta1"] ** steps), p)
        bc2_sqrt = self._col((1 - hp["beta2"] ** steps) ** 0.5, p)
        p.addcdiv_(m * step_size, v.sqrt().div_(bc2_sqrt).add_(c["eps"]), value=-1.0)

    @staticmethod
    def _any_decay(hp: dict[str, Tensor]) -> bool:
        return bool(hp["weight_decay"].any())

    def _sgd(
        self,
        p: Tensor,
        g: Tensor,
        buf: Tensor,
        unused: Tensor,
        c: dict[str, Tensor],
        hp: dict[str, Tensor],
        steps: Tensor,
    ) -> None:
        """In place: ``torch.optim.sgd._single_tensor_sgd`` (without Nesterov) with a column per member."""
        g = g.addcmul(c["l2"], p)
        moved = buf * c["momentum"] + c["keep"] * g
        buf.copy_(torch.where(self._col(steps == 1, p).bool(), g, moved))
        p.sub_(c["lr"] * torch.where(c["momentum"] != 0, buf, g))
