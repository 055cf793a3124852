"""How a search space lives in the unit cube for the Bayesian strategy: kinds, allowed values, bounds."""

from __future__ import annotations

from collections.abc import Mapping
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
        total = 1
        for domain in self.space.values():
            if domain.cardinality is None:
                return None
            total *= domain.cardinality
        return total

    def encode(self, params: Mapping[str, Any]) -> torch.Tensor:
        return self.space.to_unit(params)

    def decode(self, x: torch.Tensor) -> dict[str, Any]:
        return self.space.from_unit(x)

    def snap(self, x: torch.Tensor) -> torch.Tensor:
        """``... x d`` points moved onto the values they decode to (the canonical encoding)."""
        flat = x.reshape(-1, self.dim)
        out = torch.stack([self.encode(self.decode(row)) for row in flat])
        return out.reshape(x.shape)
