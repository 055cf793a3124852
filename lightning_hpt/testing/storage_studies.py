"""The study part of the storage contract: creating, reopening and redefining a study, and its name.

:class:`~lightning_hpt.testing.storage.StorageContract` inherits these tests; the ``storage`` fixture
is its.
"""

from __future__ import annotations

import pytest

from lightning_hpt.exceptions import HPTError, StorageError, StudyMismatchError
from lightning_hpt.space import Categorical, Float, Int, SearchSpace
from lightning_hpt.storage.base import Storage, StudyInfo
from lightning_hpt.trial import Direction, TrialState

__all__ = ["PARAMS", "SPACE", "StudyContract", "study_info"]

SPACE = {"model.lr": Float(1e-4, 1e-1, log=True), "model.layers": Int(1, 4), "optimizer": Categorical(["adam", "sgd"])}
PARAMS = {"model.lr": 0.01, "model.layers": 2, "optimizer": "adam"}


def study_info(name: str = "study", **changes: object) -> StudyInfo:
    """A small study definition; keyword arguments replace its fields."""
    fields: dict[str, object] = {
        "name": name,
        "space": SearchSpace(SPACE),
        "direction": Direction.MAXIMIZE,
        "monitor": "val_acc",
        "strategy": "random",
        "seed": 7,
        "attrs": {},
    }
    fields.update(changes)
    return StudyInfo(**fields)  # type: ignore[arg-type]


class StudyContract:
    """A storage creates a study once, keeps its definition, and refuses a changed one unless it has no result."""

    def test_open_study_creates_it(self, storage: Storage) -> None:
        info = study_info(attrs={"note": "first"})
        opened = storage.open_study(info)
        loaded = storage.load_study("study")
        for got in (opened, loaded):
            assert got.name == "study" and got.space == info.space and got.direction is Direction.MAXIMIZE
            assert (got.monitor, got.strategy, got.seed, dict(got.attrs)) == ("val_acc", "random", 7, {"note": "first"})
        assert storage.study_names() == ["study"]
        assert isinstance(storage.url, str) and storage.url

    def test_reopen_keeps_stored_seed_and_attrs(self, storage: Storage) -> None:
        storage.open_study(study_info(seed=1, attrs={"a": 1}))
        again = storage.open_study(study_info(seed=2, attrs={}), allow_changes=True)
        assert again.seed == 1 and dict(again.attrs) == {"a": 1}
        assert storage.study_names() == ["study"]

    def test_space_order_does_not_matter(self, storage: Storage) -> None:
        storage.open_study(study_info())
        reordered = SearchSpace(dict(reversed(list(SPACE.items()))))
        assert storage.open_study(study_info(space=reordered)).space == SearchSpace(SPACE)

    @pytest.mark.parametrize(
        ("change", "expected"),
        [
            ({"space": SearchSpace({**SPACE, "model.dropout": Float(0.0, 0.5)})}, r"added.*model\.dropout"),
            ({"space": SearchSpace({k: v for k, v in SPACE.items() if k != "optimizer"})}, r"removed.*optimizer"),
            ({"space": SearchSpace({**SPACE, "model.layers": Int(1, 8)})}, r"'model\.layers' changed"),
            ({"monitor": "val_loss"}, r"monitor changed from 'val_acc' to 'val_loss'"),
            ({"direction": Direction.MINIMIZE}, r"direction changed from 'max' to 'min'"),
            ({"strategy": "bayes"}, r"strategy changed from 'random' to 'bayes'"),
            ({"seed": 8}, r"seed changed from 7 to 8"),
            ({"seed": None}, r"seed changed from 7 to None"),
        ],
    )
    def test_changed_study_is_refused(self, storage: Storage, change: dict, expected: str) -> None:
        storage.open_study(study_info())
        done = storage.create_trial("study", PARAMS)
        storage.finish_trial("study", done.number, state=TrialState.COMPLETE, value=0.5)
        with pytest.raises(StudyMismatchError, match=expected) as err:
            storage.open_study(study_info(**change))
        assert "allow_changes=True" in str(err.value) and "new study name" in str(err.value)
        assert storage.load_study("study").space == SearchSpace(SPACE)  # nothing was overwritten

    @pytest.mark.parametrize(
        ("state", "error", "refused"),
        [
            (None, None, False),  # no trial ran
            (TrialState.FAILED, "MetricNotFoundError: the monitored metric 'val_acc' was not logged", False),
            (TrialState.FAILED, "interrupted: the search stopped (KeyboardInterrupt)", True),  # it runs again
            (TrialState.PRUNED, None, True),
            (TrialState.RUNNING, None, True),
        ],
    )
    def test_a_study_without_results_takes_the_setup_given(
        self, storage: Storage, state: TrialState | None, error: str | None, refused: bool
    ) -> None:
        """A misspelt monitor fails the first trial: fixed, the study goes on without being deleted."""
        storage.open_study(study_info())
        if state is not None:
            trial = storage.create_trial("study", PARAMS)
            if state is not TrialState.RUNNING:
                storage.finish_trial(
                    "study", trial.number, state=state, error=error, value=0.5 if error is None else None
                )
        changed = study_info(monitor="val_loss", direction=Direction.MINIMIZE, seed=8)
        if refused:
            with pytest.raises(StudyMismatchError, match="monitor changed from 'val_acc' to 'val_loss'"):
                storage.open_study(changed)
            assert storage.load_study("study").monitor == "val_acc"
            return
        got = storage.open_study(changed)
        stored = storage.load_study("study")
        assert (got.monitor, got.direction, got.seed) == (stored.monitor, stored.direction, stored.seed)
        assert (stored.monitor, stored.direction, stored.seed) == ("val_loss", Direction.MINIMIZE, 8)
        assert len(storage.trials("study")) == (0 if state is None else 1)  # the failed trial stays

    def test_allow_changes_continues_the_stored_study(self, storage: Storage) -> None:
        storage.open_study(study_info())
        got = storage.open_study(study_info(monitor="val_loss", strategy="grid"), allow_changes=True)
        assert (got.monitor, got.strategy) == ("val_acc", "random")

    @pytest.mark.parametrize("name", ["", "../x", "a/b", "nul\x00l", "x" * 200, "has space", "-x", "a.-b", ".."])
    def test_bad_study_names_are_refused(self, storage: Storage, name: str) -> None:
        with pytest.raises(HPTError, match=r"study.name"):
            storage.open_study(study_info(name))
        assert storage.study_names() == []

    def test_study_names_may_have_hyphens_and_start_with_digits(self, storage: Storage) -> None:
        for name in ("prec_bf16-mixed", "2024-11.lr-sweep"):
            assert storage.open_study(study_info(name)).name == name
        assert storage.study_names() == ["2024-11.lr-sweep", "prec_bf16-mixed"]

    def test_unknown_study_lists_the_known_ones(self, storage: Storage) -> None:
        storage.open_study(study_info("alpha"))
        storage.open_study(study_info("beta"))
        assert storage.study_names() == ["alpha", "beta"]
        for call in (
            lambda: storage.load_study("gamma"),
            lambda: storage.trials("gamma"),
            lambda: storage.create_trial("gamma", PARAMS),
        ):
            with pytest.raises(StorageError, match=r"'gamma'.*\['alpha', 'beta'\]"):
                call()
