"""Cross-validation and repeated seeds: one trial made of several runs, scored by their mean.

A DataModule takes part in cross-validation through one method, ``cv_dataset()``: the map-style
dataset that training and validation are drawn from (the test split stays out of it). Optionally
``cv_targets()`` returns the class of each item for stratified folds. Fold ``i`` trains on the
other folds and validates on fold ``i``, with the DataModule's own ``batch_size`` (and
``num_workers`` and ``collate_fn`` if it has them). :class:`KFoldDataModule` wraps any map-style
dataset in a DataModule that follows this protocol.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as L
import numpy as np
from torch.utils.data import DataLoader, Dataset, Subset
from typing_extensions import override

from lightning_hpt.exceptions import ConfigurationError
from lightning_hpt.trial import Direction

__all__ = ["CrossValidation", "KFoldDataModule", "MeanReporter", "fold_view", "full_view", "mean_of"]


@dataclass(frozen=True)
class CrossValidation:
    """k-fold cross-validation settings.

    Args:
        k: number of folds (>= 2).
        shuffle: shuffle the items before splitting (with ``seed``).
        stratify: keep each class's share equal across folds (needs ``cv_targets()`` or ``(x, y)`` items).
        seed: the shuffle's seed; the same for every trial, so all trials see the same folds.

    Example:
        >>> [len(v) for _, v in CrossValidation(k=3).splits(10)]
        [4, 3, 3]
    """

    k: int = 5
    shuffle: bool = True
    stratify: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 2:
            raise ConfigurationError(
                f"CrossValidation: k must be an integer >= 2, got k={self.k!r}; use cv=None for no folds"
            )

    @classmethod
    def parse(cls, cv: int | CrossValidation | None) -> CrossValidation | None:
        if cv is None or isinstance(cv, CrossValidation):
            return cv
        if isinstance(cv, bool) or not isinstance(cv, int):
            raise ConfigurationError(f"cv must be None, a number of folds or a CrossValidation, got cv={cv!r}")
        return cls(k=cv)

    def splits(self, n: int, targets: Sequence[Any] | None = None) -> list[tuple[list[int], list[int]]]:
        """``k`` pairs ``(train indices, validation indices)`` over ``n`` items."""
        if n < self.k:
            raise ConfigurationError(
                f"cross-validation with k={self.k} needs at least {self.k} items, the dataset has {n}"
            )
        rng = np.random.default_rng(self.seed)
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        folds: list[list[int]] = [[] for _ in range(self.k)]
        if self.stratify:
            if targets is None:
                raise ConfigurationError("stratify=True needs class targets: give the DataModule a cv_targets() method")
            by_class: dict[Any, list[int]] = {}
            for i in order:
                by_class.setdefault(_hashable(targets[i]), []).append(int(i))
            j = 0
            for items in by_class.values():  # deal each class round-robin so every fold gets its share
                for i in items:
                    folds[j % self.k].append(i)
                    j += 1
        else:
            for j, chunk in enumerate(np.array_split(order, self.k)):
                folds[j] = [int(i) for i in chunk]
        return [(sorted(i for f in folds[:j] + folds[j + 1 :] for i in f), sorted(folds[j])) for j in range(self.k)]


def _hashable(y: Any) -> Any:
    return y.item() if hasattr(y, "item") else y


class KFoldDataModule(L.LightningDataModule):
    """A DataModule over a map-style dataset that supports cross-validation and refitting.

    Args:
        dataset: the items that training and validation are drawn from.
        batch_size: training batch size (tunable through ``data.batch_size`` with a factory).
        val_fraction: without folds, the last part of ``dataset`` (after a seeded shuffle) validates.
        test_dataset: the held-out test split for ``result.test()``.
        num_workers: DataLoader workers.
        seed: seed of the train/validation shuffle.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int = 32,
        val_fraction: float = 0.2,
        test_dataset: Dataset | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not 0.0 < val_fraction < 1.0:
            raise ConfigurationError(
                f"KFoldDataModule: val_fraction must be in (0, 1), got val_fraction={val_fraction!r}"
            )
        self.dataset, self.batch_size, self.val_fraction = dataset, batch_size, val_fraction
        self.test_dataset, self.num_workers, self.seed = test_dataset, num_workers, seed

    def cv_dataset(self) -> Dataset:
        return self.dataset

    def _split(self) -> tuple[list[int], list[int]]:
        n = len(self.dataset)  # type: ignore[arg-type]
        order = np.random.default_rng(self.seed).permutation(n)
        n_val = max(1, round(n * self.val_fraction))
        return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())

    @override
    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            Subset(self.dataset, self._split()[0]),
            batch_size=self.batch_size,
            shuffle=True,
            num_workers=self.num_workers,
        )

    @override
    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            Subset(self.dataset, self._split()[1]), batch_size=self.batch_size, num_workers=self.num_workers
        )

    @override
    def test_dataloader(self) -> DataLoader:
        if self.test_dataset is None:
            raise ConfigurationError("KFoldDataModule has no test_dataset; pass test_dataset= to test the winner")
        return DataLoader(self.test_dataset, batch_size=self.batch_size, num_workers=self.num_workers)


def require_cv(dm: Any, what: str) -> None:
    """Refuse a DataModule (class or instance) without ``cv_dataset()`` for ``what`` (cross-validation, refit)."""
    if dm is None or not callable(getattr(dm, "cv_dataset", None)):
        name = dm.__name__ if inspect.isclass(dm) else type(dm).__name__
        raise ConfigurationError(
            f"{what} needs a DataModule with a cv_dataset() method returning the train+validation dataset"
            f" (got {name}); add that method, or wrap your dataset in lightning_hpt.KFoldDataModule"
        )


def cv_items(base: Any) -> Dataset:
    """``base.cv_dataset()``, refused unless it is map-style: folds and the refit index its items."""
    ds = base.cv_dataset()
    if not (callable(getattr(ds, "__len__", None)) and callable(getattr(ds, "__getitem__", None))):
        raise ConfigurationError(
            f"{type(base).__name__}.cv_dataset() must return a map-style dataset (with __len__ and __getitem__),"
            f" got {type(ds).__name__}: cross-validation and refit index its items; return the items of the"
            " training and validation splits (a TensorDataset, a Subset or a ConcatDataset of them)"
        )
    return ds


def _view(base: Any, train_idx: list[int] | None, val_idx: list[int] | None, ready: bool = False) -> Any:
    """A DataModule of the same Lightning flavour as ``base`` that serves subsets of ``base.cv_dataset()``."""
    from lightning_hpt.lightning.config import namespace_of

    pl = namespace_of(base)

    class _View(pl.LightningDataModule):
        @override
        def prepare_data(self) -> None:
            base.prepare_data()

        @override
        def setup(self, stage: str | None = None) -> None:
            if not ready:  # fold_view already set the base up to count its items
                base.setup(stage)

        def _loader(self, idx: list[int] | None, shuffle: bool) -> DataLoader:
            ds = cv_items(base)
            return DataLoader(
                ds if idx is None else Subset(ds, idx),
                batch_size=getattr(base, "batch_size", 32),
                shuffle=shuffle,
                num_workers=getattr(base, "num_workers", 0),
                collate_fn=getattr(base, "collate_fn", None),
            )

        @override
        def train_dataloader(self) -> DataLoader:
            return self._loader(train_idx, True)

        @override
        def val_dataloader(self) -> Any:
            return self._loader(val_idx, False) if val_idx is not None else []

        @override
        def test_dataloader(self) -> Any:
            return base.test_dataloader()

    return _View()


def fold_view(base: Any, fold: int, cv: CrossValidation) -> Any:
    """The DataModule of fold ``fold``: trains on the other folds of ``base.cv_dataset()``, validates on this one."""
    require_cv(base, "cross-validation (cv=...)")
    base.prepare_data()
    base.setup("fit")
    ds = cv_items(base)
    targets = base.cv_targets() if callable(getattr(base, "cv_targets", None)) else None
    if cv.stratify and targets is None:
        targets = [ds[i][1] for i in range(len(ds))]
    train_idx, val_idx = cv.splits(len(ds), targets)[fold]
    return _view(base, train_idx, val_idx, ready=True)


def full_view(base: Any) -> Any:
    """A DataModule that trains on all of ``base.cv_dataset()`` (training plus validation data)."""
    require_cv(base, "refit")
    return _view(base, None, None)


def mean_of(records: Sequence[float | tuple[float, ...]]) -> float | tuple[float, ...]:
    """The mean of the runs' values: one number each, or with several objectives a tuple each, averaged per place.

    Example:
        >>> mean_of([(1.0, 10.0), (2.0, 30.0)])
        (1.5, 20.0)
    """
    if isinstance(records[0], tuple):
        return tuple(math.fsum(col) / len(records) for col in zip(*records, strict=True))
    return math.fsum(records) / len(records)


def _numbers(value: float | tuple[float, ...]) -> tuple[float, ...]:
    return value if isinstance(value, tuple) else (value,)


class MeanReporter:
    """Turns one run's reports into reports of the running mean over the trial's runs.

    Run ``i`` of a trial reports at steps ``offset, offset + 1, ...`` (steps continue across runs),
    with the value ``mean_of(finished runs' best values + [this run's best so far])``, so a pruner
    compares trials by their mean score so far. With several objectives each value is a tuple and a
    run's best so far is its tuple at the best step of the first objective so far, as a single run's
    values are taken at its best step; a value with a non-finite number passes unchanged (the run fails).
    """

    def __init__(
        self, reporter: Any, done: Sequence[float | tuple[float, ...]], offset: int, direction: Direction
    ) -> None:
        self.reporter, self.done, self.offset, self.direction = reporter, list(done), offset, direction
        self.best: float | tuple[float, ...] | None = None
        self.sent: dict[int, float | tuple[float, ...]] = {}

    def report(self, step: int, value: float | tuple[float, ...]) -> bool:
        if not all(math.isfinite(v) for v in _numbers(value)):
            mean = value
        else:
            if self.best is None or self.direction.better(_numbers(value)[0], _numbers(self.best)[0]):
                self.best = value
            mean = mean_of([*self.done, self.best])
        self.sent[self.offset + step] = mean
        return bool(self.reporter.report(self.offset + step, mean)) if self.reporter is not None else False
