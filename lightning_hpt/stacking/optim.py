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

    The per-member factors are made once for the parameters that share hyperparameters (one
    optimizer parameter group, the usual case) and, but for the bias corrections, once until a member
    ends; a member that has ended is masked (its weights and state stay as they are) rather than cut
    out, so a step makes no copies.

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
        self._decoupled = decoupled
        self.groups = _share(hyper, decoupled)  # (parameter indices, their hyperparameters, decoupled)
        self._mask: Tensor | None = None  # 1 for the members that step, 0 for those that ended
        self._mask_key: tuple[int, ...] | None = None
        self._fixed: dict[int, _Columns] = {}
        self._decay = [bool(hp["weight_decay"].any()) for _, hp, _ in self.groups]  # read once: no sync per step

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

    def follows(self, optimizer: torch.optim.Optimizer, params: Sequence[Tensor]) -> bool:
        """Whether this update can be ``optimizer``'s over ``params`` (in the order of the stacked tensors)."""
        where = {id(p) for g in optimizer.param_groups for p in g["params"]}
        return _kind(optimizer) == self.kind and all(id(p) in where for p in params)

    def set_member(self, i: int, optimizer: torch.optim.Optimizer, views: Sequence[Tensor]) -> None:
        """Give slot ``i`` to a new member: its optimizer's hyperparameters, no state, no step yet.

        ``optimizer`` updates ``views`` (the member's views of the stacked tensors) and :meth:`follows` it.
        """
        where = {id(p): g for g in optimizer.param_groups for p in g["params"]}
        groups = [where[id(v)] for v in views]
        for j, group in enumerate(groups):
            for k, value in _hyper(group, self.kind).items():
                self.hyper[j][k][i] = value
            self._decoupled[j][i] = type(optimizer) is torch.optim.AdamW or bool(group.get("decoupled_weight_decay"))
            for buf in self.state[j]:
                buf[i].zero_()
        self.steps[i] = 0.0
        self.groups = _share(self.hyper, self._decoupled)
        self._decay = [bool(hp["weight_decay"].any()) for _, hp, _ in self.groups]
        self._mask, self._mask_key, self._fixed = None, None, {}  # the mask and factors are made again

    def step(self, active: Tensor | None) -> None:
        """Update the members in ``active`` (all of them when ``None``) from the stacked gradients."""
        key = None if active is None else tuple(active.tolist())
        if key != self._mask_key or self._mask is None:  # the members that step changed: new fixed factors
            mask = torch.ones_like(self.steps)
            self._mask = mask if active is None else torch.zeros_like(mask).index_fill_(0, active, 1)
            self._mask_key, self._fixed = key, {}
        self.steps.add_(self._mask)
        for g, (indices, hp, dec) in enumerate(self.groups):
            stepped = [j for j in indices if self.stacked[j].grad is not None]
            if not stepped:
                continue
            if g not in self._fixed:
                self._fixed[g] = _Columns(self._fixed_factors(hp, dec, self._mask))
            fixed, now = self._fixed[g], _Columns(self._step_factors(hp, self._mask))
            for j in stepped:
                p = self.stacked[j]
                if self.kind == "adam":
                    self._adam(p.data, p.grad, *self.state[j], fixed.like(p), now.like(p), self._decay[g])  # type: ignore[arg-type]
                else:
                    self._sgd(p.data, p.grad, self.state[j][0], fixed.like(p), now.like(p))  # type: ignore[arg-type]

    def _fixed_factors(self, hp: dict[str, Tensor], dec: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """The per-member factors that change only when members end; an ended member's are neutral."""
        on = mask.bool()
        if self.kind == "sgd":
            return {
                "l2": hp["weight_decay"],
                "momentum": hp["momentum"],
                "keep": torch.where(on, hp["momentum"], 1.0),  # an ended member keeps its buffer
                "damp": (1 - hp["dampening"]) * mask,
                "lr": hp["lr"] * mask,
            }
        return {
            "decay": torch.where(dec & on, 1 - hp["lr"] * hp["weight_decay"], 1.0),
            "l2": torch.where(dec, 0.0, hp["weight_decay"]),
            "b1c": (1 - hp["beta1"]) * mask,
            "beta2": torch.where(on, hp["beta2"], 1.0),
            "b2c": (1 - hp["beta2"]) * mask,
            "eps": hp["eps"],
        }

    def _step_factors(self, hp: dict[str, Tensor], mask: Tensor) -> dict[str, Tensor]:
        """The per-member factors of this step (bias corrections; SGD's first step)."""
        if self.kind == "sgd":
            return {"first": ((self.steps == 1) & mask.bool()).double()}
        steps = self.steps.clamp_min(1)  # a member not stepped yet: its (masked) factors stay finite
        return {
            "step_size": hp["lr"] / (1 - hp["beta1"] ** steps) * mask,
            "bc2_sqrt": (1 - hp["beta2"] ** steps) ** 0.5,
        }

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
    def _adam(
        p: Tensor, g: Tensor, m: Tensor, v: Tensor, c: dict[str, Tensor], now: dict[str, Tensor], decay: bool
    ) -> None:
        """In place: ``torch.optim.adam._single_tensor_adam`` with a column of hyperparameters per member."""
        if decay:
            p.mul_(c["decay"])
            g = g.addcmul(c["l2"], p)
        m.lerp_(g, c["b1c"])
        v.mul_(c["beta2"]).addcmul_(g * c["b2c"], g)
        p.addcdiv_(m * now["step_size"], v.sqrt().div_(now["bc2_sqrt"]).add_(c["eps"]), value=-1.0)

    @staticmethod
    def _sgd(p: Tensor, g: Tensor, buf: Tensor, c: dict[str, Tensor], now: dict[str, Tensor]) -> None:
        """In place: ``torch.optim.sgd._single_tensor_sgd`` (without Nesterov) with a column per member."""
        g = g.addcmul(c["l2"], p)
        moved = buf * c["keep"] + c["damp"] * g
        buf.copy_(torch.where(now["first"].bool(), g, moved))
        p.sub_(c["lr"] * torch.where(c["momentum"] != 0, buf, g))


class _Columns:
    """``[K]`` factors as columns ``[K, 1, ...]`` for tensors of each shape and dtype, made once for each."""

    def __init__(self, factors: dict[str, Tensor]) -> None:
        self.names, self.stacked = list(factors), torch.stack(list(factors.values()))
        self._made: dict[tuple[int, torch.dtype], dict[str, Tensor]] = {}

    def like(self, t: Tensor) -> dict[str, Tensor]:
        key = (t.dim(), t.dtype)
        if key not in self._made:
            cols = self.stacked.to(t.dtype).reshape(len(self.names), -1, *([1] * (t.dim() - 1)))
            self._made[key] = dict(zip(self.names, cols.unbind(0), strict=True))
        return self._made[key]


def _share(
    hyper: list[dict[str, Tensor]], decoupled: list[Tensor]
) -> list[tuple[list[int], dict[str, Tensor], Tensor]]:
    """The parameters grouped by equal hyperparameters (and weight-decay kind), in order of first appearance."""
    groups: list[tuple[list[int], dict[str, Tensor], Tensor]] = []
    for j, (hp, dec) in enumerate(zip(hyper, decoupled, strict=True)):
        for indices, ghp, gdec in groups:
            if torch.equal(gdec, dec) and all(torch.equal(ghp[k], hp[k]) for k in hp):
                indices.append(j)
                break
        else:
            groups.append(([j], hp, dec))
    return groups
