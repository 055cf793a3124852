"""How a search space lives in the unit cube for the Bayesian strategy: kinds, allowed values, bounds.

Conditional parameters (docs/bayesian.md): the cube keeps one dimension per parameter; an inactive
one sits at a fixed placeholder, the middle of its domain, in every trial, and the acquisition is
evaluated on projected points, so the model only ever sees configurations.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from lightning_hpt.space import Categorical, SearchSpace

# An integer or stepped float with more values than this is searched as a continuous relaxation
# and rounded (its value list would only slow the discrete search down).
_MAX_ENUMERATED = 1000


@dataclass(frozen=True)
class _Encoding:
    """How each parameter lives in the unit cube: kinds, allowed unit values, bounds."""

    space: SearchSpace
    kinds: tuple[str, ...]  # "cont" | "disc" | "cat" per dimension
    values: Mapping[int, tuple[float, ...]]  # sorted unit positions of finite dims

    @classmethod
    def of(cls, space: SearchSpace) -> _Encoding:
        kinds: list[str] = []
        values: dict[int, tuple[float, ...]] = {}
        for i, domain in enumerate(space.values()):
            card = domain.cardinality
            if isinstance(domain, Categorical):
                kinds.append("cat")
            elif card is not None and card <= _MAX_ENUMERATED:
                kinds.append("disc")
            else:
                kinds.append("cont")
                continue
            values[i] = tuple(sorted({domain.to_unit(v) for v in domain.values()}))
        return cls(space, tuple(kinds), values)

    @property
    def dim(self) -> int:
        return len(self.kinds)

    @property
    def cat_mask(self) -> torch.Tensor:
        return torch.tensor([k == "cat" for k in self.kinds], dtype=torch.bool)

    @property
    def all_continuous(self) -> bool:
        return all(k == "cont" for k in self.kinds)

    @property
    def bounds(self) -> torch.Tensor:
        """``2 x d``: finite dims span their first to last value, so the optimizers never leave them."""
        lo = [self.values[i][0] if i in self.values else 0.0 for i in range(self.dim)]
        hi = [self.values[i][-1] if i in self.values else 1.0 for i in range(self.dim)]
        return torch.tensor([lo, hi], dtype=torch.float64)

    @property
    def cardinality(self) -> int | None:
        """Number of configurations of a finite space (``None`` when a dimension is continuous)."""
        return self.space.cardinality

    def encode(self, params: Mapping[str, Any]) -> torch.Tensor:
        return self.space.to_unit(params)

    def decode(self, x: torch.Tensor) -> dict[str, Any]:
        return self.space.from_unit(x)

    def snap(self, x: torch.Tensor) -> torch.Tensor:
        """``... x d`` points moved onto the values they decode to (the canonical encoding)."""
        flat = x.reshape(-1, self.dim)
        out = torch.stack([self.encode(self.decode(row)) for row in flat])
        return out.reshape(x.shape)

    def wrap(self, acq: Any) -> Any:
        """The acquisition function as a function of configurations: unchanged without conditions.

        With conditional parameters the optimizer's point is projected first (every inactive
        coordinate at its placeholder, :meth:`SearchSpace.project`), so the acquisition never rates
        a coordinate the configuration does not have, and the maximizer is the value of what it decodes to.
        """
        if not self.space.conditions:
            return acq
        return _projected_class()(acq, self.space.project)


@functools.cache
def _projected_class() -> type:
    """The projecting wrapper class (defined on first use: BoTorch is imported only when the strategy proposes)."""
    from botorch.acquisition import AcquisitionFunction

    class Projected(AcquisitionFunction):
        """An acquisition function evaluated on projected points (pending points projected too)."""

        def __init__(self, acq: AcquisitionFunction, project: Callable[[torch.Tensor], torch.Tensor]) -> None:
            super().__init__(acq.model)
            self.acq_func, self._project = acq, project

        @property
        def X_pending(self) -> torch.Tensor | None:
            return self.acq_func.X_pending

        def set_X_pending(self, X_pending: torch.Tensor | None = None) -> None:
            self.acq_func.set_X_pending(None if X_pending is None else self._project(X_pending))

        def forward(self, X: torch.Tensor) -> torch.Tensor:
            return self.acq_func(self._project(X))

    return Projected
