"""The contract every :class:`~lightning_hpt.storage.base.Storage` must honour, as a reusable test class.

Subclass :class:`StorageContract` in a test module and override the ``make_storage`` fixture; the
subclass inherits every test:

    class TestMyStorage(StorageContract):
        @pytest.fixture
        def make_storage(self, tmp_path):
            return lambda: MyStorage(tmp_path / "study")

``make_storage()`` must return a new handle on one store that is fresh for each test: the tests call
it more than once to check that what one handle writes another one reads. A storage that can only
be used from one handle (an in-memory database) returns the same object every time and sets
``concurrent_handles = False``, which skips the tests that write from several threads at once.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from lightning_hpt.exceptions import DuplicateTrialError, StorageError
from lightning_hpt.space import SearchSpace
from lightning_hpt.storage.base import Storage
from lightning_hpt.testing.storage_objectives import ObjectivesContract
from lightning_hpt.testing.storage_studies import PARAMS, SPACE, StudyContract, study_info
from lightning_hpt.trial import Direction, History, TrialState

__all__ = ["PARAMS", "SPACE", "StorageContract", "study_info"]


class StorageContract(StudyContract, ObjectivesContract):
    """Tests that every Storage must pass; override ``make_storage`` in a subclass."""

    #: whether several handles may write the same store at once (from several threads)
    concurrent_handles: bool = True

    @pytest.fixture
    def make_storage(self) -> Callable[[], Storage]:
        raise NotImplementedError("override the make_storage fixture: it returns a function that opens the storage")

    @pytest.fixture
    def storage(self, make_storage: Callable[[], Storage]) -> Iterator[Storage]:
        s = make_storage()
        yield s
        s.close()

    @pytest.fixture
    def study(self, storage: Storage) -> str:
        return storage.open_study(study_info()).name

    def test_study_attrs_are_merged(self, storage: Storage, study: str) -> None:
        storage.set_study_attrs(study, {"a": 1, "b": [1, 2]})
        storage.set_study_attrs(study, {"b": "new", "c": None})
        assert dict(storage.load_study(study).attrs) == {"a": 1, "b": "new", "c": None}
        with pytest.raises(StorageError, match="JSON"):
            storage.set_study_attrs(study, {"bad": object()})
        assert dict(storage.load_study(study).attrs) == {"a": 1, "b": "new", "c": None}

    # ------------------------------------------------------------------ creating and claiming trials

    def test_create_running_trial(self, storage: Storage, study: str) -> None:
        before = time.time()
        trial = storage.create_trial(study, PARAMS, host="node-1", pid=1234)
        assert trial is not None and trial.number == 0 and trial.state is TrialState.RUNNING
        assert (trial.host, trial.pid, trial.attempt) == ("node-1", 1234, 1)
        assert trial.started_at is not None and before - 1 <= trial.started_at <= time.time() + 1
        assert storage.last_heartbeat(study, 0) == pytest.approx(trial.started_at, abs=1)
        assert [t.number for t in storage.trials(study)] == [0]
        assert storage.trials(study)[0] == trial

    def test_create_queued_trial(self, storage: Storage, study: str) -> None:
        trial = storage.create_trial(study, PARAMS, state=TrialState.QUEUED)
        assert trial is not None and trial.state is TrialState.QUEUED
        assert (trial.attempt, trial.started_at) == (0, None)
        assert storage.last_heartbeat(study, trial.number) is None
        assert storage.trials(study)[0].state is TrialState.QUEUED

    def test_numbers_are_consecutive_per_study(self, storage: Storage, study: str) -> None:
        storage.open_study(study_info("other"))
        numbers = [storage.create_trial(study, PARAMS).number for _ in range(3)]
        assert numbers == [0, 1, 2]
        assert storage.create_trial("other", PARAMS).number == 0
        assert [t.number for t in storage.trials(study)] == [0, 1, 2]
        assert len(storage.trials("other")) == 1

    def test_params_round_trip_with_their_types(self, storage: Storage, study: str) -> None:
        params = {"i": 3, "f": 0.1, "whole": 2.0, "s": "adam", "b": True, "n": None}
        storage.create_trial(study, params)
        stored = storage.trials(study)[0].params
        assert dict(stored) == params
        assert [type(stored[k]) for k in params] == [int, float, float, str, bool, type(None)]

    def test_max_trials_counts_every_state(self, storage: Storage, study: str) -> None:
        storage.create_trial(study, PARAMS)
        storage.create_trial(study, PARAMS, state=TrialState.QUEUED)
        assert storage.create_trial(study, PARAMS, max_trials=3) is not None
        assert storage.create_trial(study, PARAMS, max_trials=3) is None
        assert storage.create_trial(study, PARAMS, state=TrialState.QUEUED, max_trials=3) is None
        assert len(storage.trials(study)) == 3

    def test_create_trial_refuses_bad_input(self, storage: Storage, study: str) -> None:
        with pytest.raises(StorageError, match="RUNNING or QUEUED"):
            storage.create_trial(study, PARAMS, state=TrialState.COMPLETE)
        with pytest.raises(StorageError, match="JSON"):
            storage.create_trial(study, {"x": object()})
        with pytest.raises(StorageError, match="JSON"):
            storage.create_trial(study, {"x": math.nan})
        assert storage.trials(study) == []

    def test_unique_create_refuses_a_known_configuration(self, storage: Storage, study: str) -> None:
        storage.create_trial(study, PARAMS)
        with pytest.raises(DuplicateTrialError, match="already has trial 0"):
            storage.create_trial(study, dict(PARAMS), state=TrialState.QUEUED, unique=True)
        # the same values of another type are another configuration
        other = storage.create_trial(study, {**PARAMS, "model.layers": 2.0}, unique=True)
        assert other is not None and other.number == 1 and len(storage.trials(study)) == 2

    def test_create_with_an_expected_number_refuses_a_stale_one(self, storage: Storage, study: str) -> None:
        assert storage.create_trial(study, PARAMS, number=0).number == 0
        # a proposal made from a history read before trial 0 existed is refused, and writes nothing
        with pytest.raises(DuplicateTrialError, match=r"next free trial number .* is 1, not 0"):
            storage.create_trial(study, {**PARAMS, "model.layers": 3}, number=0)
        assert [t.number for t in storage.trials(study)] == [0]
        assert storage.create_trial(study, PARAMS, number=1).number == 1

    def test_claim_queued_takes_the_lowest_number_once(self, storage: Storage, study: str) -> None:
        storage.create_trial(study, PARAMS)  # RUNNING: never claimed
        for lr in (0.001, 0.002):
            storage.create_trial(study, {**PARAMS, "model.lr": lr}, state=TrialState.QUEUED)
        first = storage.claim_queued(study, host="node-2", pid=99)
        assert first is not None and first.number == 1 and first.params["model.lr"] == 0.001
        assert (first.state, first.attempt, first.host, first.pid) == (TrialState.RUNNING, 1, "node-2", 99)
        assert first.started_at is not None
        assert storage.claim_queued(study).number == 2
        assert storage.claim_queued(study) is None
        assert [t.state for t in storage.trials(study)] == [TrialState.RUNNING] * 3

    # ------------------------------------------------------------------ reporting

    def test_report_stores_and_overwrites(self, storage: Storage, study: str) -> None:
        n = storage.create_trial(study, PARAMS).number
        for step, value in [(0, 0.5), (1, 0.6), (2, 0.7), (1, 0.65)]:
            storage.report(study, n, step, value)
        assert dict(storage.trials(study)[0].intermediate) == {0: 0.5, 1: 0.65, 2: 0.7}

    def test_non_finite_values_round_trip(self, storage: Storage, study: str) -> None:
        n = storage.create_trial(study, PARAMS).number
        for step, value in enumerate([math.nan, math.inf, -math.inf, 0.0]):
            storage.report(study, n, step, value)
        curve = storage.trials(study)[0].intermediate
        assert math.isnan(curve[0]) and curve[1] == math.inf and curve[2] == -math.inf and curve[3] == 0.0
        finished = storage.finish_trial(study, n, state=TrialState.FAILED, value=math.nan, error="non-finite")
        assert math.isnan(finished.value) and math.isnan(storage.trials(study)[0].value)

    def test_report_refreshes_the_heartbeat(self, storage: Storage, study: str) -> None:
        trial = storage.create_trial(study, PARAMS)
        time.sleep(0.05)
        before = time.time()
        storage.report(study, trial.number, 0, 1.0)
        assert storage.last_heartbeat(study, trial.number) >= before > trial.started_at

    def test_report_refuses_trials_that_do_not_run(self, storage: Storage, study: str) -> None:
        n = storage.create_trial(study, PARAMS).number
        queued = storage.create_trial(study, PARAMS, state=TrialState.QUEUED).number
        storage.finish_trial(study, n, state=TrialState.COMPLETE, value=1.0)
        for number in (n, queued):
            with pytest.raises(StorageError, match="not RUNNING"):
                storage.report(study, number, 0, 1.0)
        with pytest.raises(StorageError, match="no trial number 7"):
            storage.report(study, 7, 0, 1.0)
        with pytest.raises(StorageError, match="step"):
            storage.report(study, n, -1, 1.0)
        assert all(not t.intermediate for t in storage.trials(study))

    def test_finish_trial_stores_the_steps_not_stored_yet_with_the_end(self, storage: Storage, study: str) -> None:
        n = storage.create_trial(study, PARAMS).number
        storage.report(study, n, 0, 0.5)
        done = storage.finish_trial(study, n, state=TrialState.COMPLETE, value=0.4, steps={1: 0.45, 2: 0.4})
        assert dict(done.intermediate) == dict(storage.trials(study)[0].intermediate) == {0: 0.5, 1: 0.45, 2: 0.4}
        queued = storage.create_trial(study, PARAMS, state=TrialState.QUEUED).number
        with pytest.raises(StorageError, match="not RUNNING"):  # nothing is stored, the trial stays QUEUED
            storage.finish_trial(study, queued, state=TrialState.COMPLETE, value=1.0, steps={0: 1.0})
        assert storage.trials(study)[1].state is TrialState.QUEUED and not storage.trials(study)[1].intermediate

    def test_heartbeat_marks_running_trials_only(self, storage: Storage, study: str) -> None:
        running = storage.create_trial(study, PARAMS)
        done = storage.create_trial(study, PARAMS)
        storage.finish_trial(study, done.number, state=TrialState.COMPLETE, value=1.0)
        storage.heartbeat(study, [])
        time.sleep(0.05)
        before = time.time()
        storage.heartbeat(study, [running.number, done.number])
        assert storage.last_heartbeat(study, running.number) >= before
        assert storage.last_heartbeat(study, done.number) < before

    # ------------------------------------------------------------------ finishing and requeueing

    def test_finish_trial_records_the_outcome(self, storage: Storage, study: str) -> None:
        n = storage.create_trial(study, PARAMS).number
        storage.report(study, n, 0, 0.8)
        storage.report(study, n, 1, 0.9)
        storage.set_trial_attrs(study, n, {"fold": 1, "keep": True})
        done = storage.finish_trial(
            study,
            n,
            state=TrialState.COMPLETE,
            value=0.9,
            best_step=1,
            checkpoint="trial_0/best.ckpt",
            attrs={"fold": 2, "test_acc": 0.88},
        )
        assert storage.trials(study)[0] == done
        assert (done.state, done.value, done.best_step, done.checkpoint) == (
            TrialState.COMPLETE,
            0.9,
            1,
            "trial_0/best.ckpt",
        )
        assert dict(done.intermediate) == {0: 0.8, 1: 0.9} and done.error is None
        assert dict(done.attrs) == {"fold": 2, "keep": True, "test_acc": 0.88}
        assert done.finished_at is not None and done.finished_at >= done.started_at

    def test_finish_failed_and_pruned(self, storage: Storage, study: str) -> None:
        a, b = storage.create_trial(study, PARAMS).number, storage.create_trial(study, PARAMS).number
        storage.finish_trial(study, a, state=TrialState.FAILED, error="out of memory")
        storage.finish_trial(study, b, state=TrialState.PRUNED, value=0.4, best_step=0)
        failed, pruned = storage.trials(study)
        assert (failed.state, failed.error, failed.value) == (TrialState.FAILED, "out of memory", None)
        assert (pruned.state, pruned.value) == (TrialState.PRUNED, 0.4)

    def test_finish_trial_refuses_bad_requests(self, storage: Storage, study: str) -> None:
        n = storage.create_trial(study, PARAMS).number
        with pytest.raises(StorageError, match="COMPLETE, PRUNED or FAILED"):
            storage.finish_trial(study, n, state=TrialState.RUNNING)
        with pytest.raises(StorageError, match="no trial number 5"):
            storage.finish_trial(study, 5, state=TrialState.COMPLETE, value=1.0)
        storage.finish_trial(study, n, state=TrialState.COMPLETE, value=1.0)
        with pytest.raises(StorageError, match="already COMPLETE"):
            storage.finish_trial(study, n, state=TrialState.FAILED, error="late")
        assert storage.trials(study)[0].state is TrialState.COMPLETE

    def test_requeue_keeps_number_and_params_and_records_the_attempt(self, storage: Storage, study: str) -> None:
        trial = storage.create_trial(study, PARAMS, host="node-1", pid=11)
        storage.report(study, trial.number, 0, 0.3)
        storage.report(study, trial.number, 1, 0.4)
        queued = storage.requeue_trial(study, trial.number)
        assert (queued.number, dict(queued.params), queued.state) == (0, PARAMS, TrialState.QUEUED)
        assert (queued.value, queued.error, queued.best_step, queued.checkpoint, dict(queued.intermediate)) == (
            None,
            None,
            None,
            None,
            {},
        )
        (first,) = queued.attrs["attempts"]
        assert (first["host"], first["pid"], first["last_step"], first["error"]) == ("node-1", 11, 1, None)
        assert first["started_at"] == pytest.approx(trial.started_at)
        assert storage.trials(study)[0] == queued

        again = storage.claim_queued(study)
        assert again.number == 0 and again.attempt == 2
        storage.finish_trial(study, 0, state=TrialState.FAILED, error="worker died")
        twice = storage.requeue_trial(study, 0)
        assert [a["error"] for a in twice.attrs["attempts"]] == [None, "worker died"]
        assert twice.attempt == 2 and len(storage.trials(study)) == 1

    def test_requeue_refuses_finished_successes(self, storage: Storage, study: str) -> None:
        n = storage.create_trial(study, PARAMS).number
        storage.finish_trial(study, n, state=TrialState.COMPLETE, value=1.0)
        queued = storage.create_trial(study, PARAMS, state=TrialState.QUEUED).number
        for number in (n, queued):
            with pytest.raises(StorageError, match="only RUNNING or FAILED"):
                storage.requeue_trial(study, number)
        assert [t.state for t in storage.trials(study)] == [TrialState.COMPLETE, TrialState.QUEUED]

    def test_trial_attrs_are_merged(self, storage: Storage, study: str) -> None:
        n = storage.create_trial(study, PARAMS).number
        storage.set_trial_attrs(study, n, {"a": 1, "b": 2})
        storage.set_trial_attrs(study, n, {"b": 3, "nested": {"x": [1, 2]}})
        assert dict(storage.trials(study)[0].attrs) == {"a": 1, "b": 3, "nested": {"x": [1, 2]}}
        with pytest.raises(StorageError, match="JSON"):
            storage.set_trial_attrs(study, n, {"bad": {1, 2}})
        with pytest.raises(StorageError, match="no trial number 3"):
            storage.set_trial_attrs(study, 3, {"a": 1})

    # ------------------------------------------------------------------ reading

    def test_history_is_a_frozen_view_of_the_study(self, storage: Storage, study: str) -> None:
        for i in range(3):
            n = storage.create_trial(study, {**PARAMS, "model.layers": i + 1}).number
            storage.report(study, n, 0, 0.1 * i)
            storage.finish_trial(study, n, state=TrialState.COMPLETE, value=0.1 * i)
        storage.create_trial(study, PARAMS, state=TrialState.QUEUED)
        history = storage.history(study, max_steps=10)
        assert isinstance(history, History)
        assert (history.space, history.direction, history.seed, history.max_steps) == (
            SearchSpace(SPACE),
            Direction.MAXIMIZE,
            7,
            10,
        )
        assert list(history.trials) == storage.trials(study)
        assert [t.number for t in history.trials] == [0, 1, 2, 3]
        assert history.best().number == 2 and [t.number for t in history.pending] == [3]

    def test_another_handle_sees_the_same_data(self, make_storage: Callable[[], Storage], storage: Storage) -> None:
        storage.open_study(study_info())
        n = storage.create_trial("study", PARAMS).number
        storage.report("study", n, 0, 0.5)
        other = make_storage()
        try:
            assert other.study_names() == ["study"]
            assert other.trials("study") == storage.trials("study")
            other.finish_trial("study", n, state=TrialState.COMPLETE, value=0.5)
            assert storage.trials("study")[0].state is TrialState.COMPLETE
        finally:
            if other is not storage:
                other.close()

    # ------------------------------------------------------------------ several writers

    def _handles(self, make_storage: Callable[[], Storage], count: int) -> list[Storage]:
        if not self.concurrent_handles:
            pytest.skip("this storage cannot be written from several handles at once")
        return [make_storage() for _ in range(count)]

    def test_concurrent_creates_give_unique_contiguous_numbers(
        self, make_storage: Callable[[], Storage], storage: Storage, study: str
    ) -> None:
        handles = self._handles(make_storage, 4)
        created: list[int] = []
        errors: list[BaseException] = []

        def work(s: Storage) -> None:
            try:
                while (t := s.create_trial(study, PARAMS, max_trials=20)) is not None:
                    created.append(t.number)
            except Exception as e:
                errors.append(e)

        _run_threads(work, handles)
        assert errors == []
        assert sorted(created) == list(range(20))
        assert [t.number for t in storage.trials(study)] == list(range(20))

    def test_concurrent_claims_run_each_queued_trial_once(
        self, make_storage: Callable[[], Storage], storage: Storage, study: str
    ) -> None:
        for _ in range(16):
            storage.create_trial(study, PARAMS, state=TrialState.QUEUED)
        handles = self._handles(make_storage, 4)
        claimed: list[int] = []
        errors: list[BaseException] = []

        def work(s: Storage) -> None:
            try:
                while (t := s.claim_queued(study)) is not None:
                    claimed.append(t.number)
            except Exception as e:
                errors.append(e)

        _run_threads(work, handles)
        assert errors == []
        assert sorted(claimed) == list(range(16))
        assert all(t.state is TrialState.RUNNING and t.attempt == 1 for t in storage.trials(study))


def _run_threads(work: Callable[[Storage], None], handles: list[Storage]) -> None:
    threads = [threading.Thread(target=work, args=(h,)) for h in handles]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for h in handles:
        h.close()
