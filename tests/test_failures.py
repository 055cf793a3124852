"""Failing trials: when the search stops early, what it says, and how a study goes on (retry_failed, retry, delete).

The trials are real Lightning runs of the tiny model on the CPU.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FAST, TinyData, TinyModel

from lightning_hpt import (
    Categorical,
    ConfigurationError,
    Float,
    HyperparameterSearch,
    Int,
    MetricNotFoundError,
    SearchFailedError,
    StudyMismatchError,
    TrialState,
)
from lightning_hpt.failures import MIN_FAILURES, error_signature, fail_fast, known_fix, no_complete_trial, short_error
from lightning_hpt.report.html import render_report
from lightning_hpt.report.table import trials_table
from lightning_hpt.space import SearchSpace
from lightning_hpt.storage import StudyInfo, open_storage
from lightning_hpt.trial import Direction, TrialRecord

SPACE = {"model.lr": Float(0.01, 0.2, log=True), "model.hidden": Int(4, 16)}


class Broken(TinyModel):
    """Fails in training_step while the file ``flag`` exists, with numbers and a path in the message."""

    def __init__(self, flag: str = "", **kwargs) -> None:
        super().__init__(**kwargs)
        self.flag = flag

    def training_step(self, batch, batch_idx):
        if self.flag and Path(self.flag).exists():
            raise RuntimeError(f"shape mismatch: {self.hparams.hidden} vs 3 in {self.flag}")
        return super().training_step(batch, batch_idx)


def search(tmp_path, model=TinyModel, space=SPACE, **kw) -> HyperparameterSearch:
    kw.setdefault("trainer_kwargs", dict(FAST))
    return HyperparameterSearch(model, TinyData, space, root=tmp_path, seed=0, verbose=False, **kw)


def broken(flag: Path):
    return lambda cfg: Broken(flag=str(flag), **cfg["model"])


# ---------------------------------------------------------------------------------------------- the rule


def test_error_signature_ignores_numbers_paths_and_addresses():
    a = error_signature("RuntimeError: shape mismatch: 8 vs 3 in /tmp/a/trial_0/x.ckpt at 0x7f3a")
    b = error_signature("RuntimeError: shape mismatch: 12 vs 3 in /tmp/b/trial_7/x.ckpt at 0x7f99")
    assert a == b == "RuntimeError: shape mismatch: # vs # in <path> at <addr>"
    assert error_signature("ValueError: shape mismatch") != error_signature("RuntimeError: shape mismatch")


def test_short_error_cuts_at_a_word_boundary():
    text = "RuntimeError: the monitored metric was never logged in a validation run of this trial"
    short = short_error(text, 40)
    assert len(short) <= 40 and short.endswith("…") and text.startswith(short[:-1])
    assert text[len(short) - 1] == " "  # cut where a word ends, not inside one
    assert short_error("a\nb  c") == "a b c" and short_error(None) == ""
    path = "/" + "x" * 80  # one long word: cut inside it rather than show nothing
    assert short_error(path, 30).endswith("…") and len(short_error(path, 30)) == 30


def _failed(number: int, params: dict, error: str) -> TrialRecord:
    return TrialRecord(number, params, TrialState.FAILED, error=error)


def test_a_failure_that_one_value_causes_never_stops_the_search():
    """Issue: 'gpu' fails on a CPU machine, 'cpu' works: the failing trials all share accelerator=gpu."""
    space = SearchSpace({"trainer.accelerator": Categorical(["gpu", "cpu"]), "model.lr": Float(0.01, 0.1)})
    err = "MisconfigurationException: No supported gpu backend found!"
    trials = [_failed(n, {"trainer.accelerator": "gpu", "model.lr": 0.01 * (n + 1)}, err) for n in range(6)]
    assert fail_fast(space, trials, trials[-1]) is None
    other = [*trials, _failed(6, {"trainer.accelerator": "cpu", "model.lr": 0.05}, err)]
    stop = fail_fast(space, other, other[-1])  # the other value fails the same way too: it is not the value
    assert isinstance(stop, SearchFailedError) and "trials 0, 1, 2, 3, 4, 5, 6" in str(stop)
    assert "set trainer.accelerator to 'cpu'" in str(stop) and str(stop).count(err) == 1


def test_fail_fast_needs_several_failures_and_no_success():
    space = SearchSpace(SPACE)
    fails = [_failed(n, {"model.lr": 0.01 * (n + 1), "model.hidden": 4 + n}, f"ValueError: bad {n}") for n in range(3)]
    assert fail_fast(space, fails[:2], fails[1]) is None  # fewer than MIN_FAILURES
    stop = fail_fast(space, fails, fails[2])
    assert MIN_FAILURES == 3 and isinstance(stop, SearchFailedError)
    assert "lightning-hpt retry STUDY" in str(stop) and "is taken as it is" in str(stop)  # both ways on
    done = [TrialRecord(9, {"model.lr": 0.1, "model.hidden": 8}, TrialState.COMPLETE, value=1.0), *fails]
    assert fail_fast(space, done, fails[2]) is None  # a configuration works: the error depends on the parameters
    stopped = [_failed(n, f.params, f"interrupted: the search stopped ({n})") for n, f in enumerate(fails)]
    assert fail_fast(space, stopped, stopped[2]) is None  # Ctrl+C and SIGTERM are not the trials' failures


def test_after_completed_trials_only_a_run_of_errors_of_the_code_or_machine_stops_the_search():
    """Completed trials show the code worked; the last MIN_FAILURES failing alike show it changed since."""
    space = SearchSpace(SPACE)
    done = TrialRecord(0, {"model.lr": 0.1, "model.hidden": 8}, TrialState.COMPLETE, value=1.0, finished_at=1.0)

    def failed(n: int, error: str) -> TrialRecord:
        return TrialRecord(
            n, {"model.lr": 0.01 * n, "model.hidden": 4 + n}, TrialState.FAILED, error=error, finished_at=float(n)
        )

    missing = "MetricNotFoundError: the search monitors 'val_acc' but trial {} did not log it"
    fails = [failed(n, missing.format(n)) for n in (1, 2, 3)]
    stop = fail_fast(space, [done, *fails], fails[-1])
    assert isinstance(stop, MetricNotFoundError) and "trials 1, 2, 3, the last to finish" in str(stop)
    assert fail_fast(space, [done, *fails[:2]], fails[1]) is None  # fewer than MIN_FAILURES
    later = TrialRecord(9, {"model.lr": 0.2, "model.hidden": 9}, TrialState.COMPLETE, value=1.0, finished_at=2.5)
    assert fail_fast(space, [done, *fails, later], fails[-1]) is None  # one completed among them
    disk = [failed(n, f"OSError: [Errno 28] No space left on device: '/runs/trial_{n}/x.ckpt'") for n in (1, 2, 3)]
    stop = fail_fast(space, [done, *disk], disk[-1])
    assert isinstance(stop, SearchFailedError) and "Fix: free disk space, then resume the study" in str(stop)
    bugs = [failed(n, f"RuntimeError: shape mismatch {n}") for n in (1, 2, 3)]
    assert fail_fast(space, [done, *bugs], bugs[-1]) is None  # may depend on the parameters: the search goes on


def test_a_metric_renamed_after_trials_completed_stops_the_resumed_search(tmp_path):
    """Outside probe: the module now logs another name; every trial left would fail, and stay FAILED."""
    assert search(tmp_path, n_trials=2).run().trials[-1].state is TrialState.COMPLETE
    renamed = lambda cfg: TinyModel(log_name="val_loss_renamed", **cfg["model"])  # noqa: E731
    s = search(tmp_path, renamed, n_trials=10)
    with pytest.raises(MetricNotFoundError, match=r"trials 2, 3, 4, the last to finish, failed"):
        s.run()
    assert [t.state for t in s.trials] == [TrialState.COMPLETE] * 2 + [TrialState.FAILED] * 3


def test_no_complete_trial_shows_each_error_once_with_its_fix():
    trials = [
        _failed(0, {}, "out of memory: CUDA out of memory. Tried to allocate 2.00 GiB"),
        _failed(1, {}, "out of memory: CUDA out of memory. Tried to allocate 4.00 GiB"),
        _failed(2, {}, "ValueError: something else"),
    ]
    text = no_complete_trial(trials, "n_trials reached")
    assert text.startswith("the search ended (n_trials reached) with no COMPLETE trial (3 FAILED)")
    assert "trials 0, 1: out of memory" in text and "trial 2: ValueError" in text and text.count("Tried") == 1
    assert "lower the batch size" in text and "retry_failed=True" in text
    assert known_fix("RuntimeError: whatever") is None
    assert no_complete_trial([*trials, TrialRecord(3, {}, TrialState.COMPLETE, value=1.0)], "done") is None


def test_end_of_search_table_shows_each_failed_trials_error():
    long = "RuntimeError: " + "word " * 30
    trials = [TrialRecord(0, {"model.lr": 0.1}, TrialState.FAILED, error=long)]
    trials.append(TrialRecord(1, {"model.lr": 0.2}, TrialState.COMPLETE, value=0.5))
    lines = trials_table(trials, "val_loss", Direction.MINIMIZE).splitlines()
    assert lines[0].split()[-1] == "error" and lines[1].endswith("word…") and "RuntimeError: word" in lines[1]
    assert not lines[2].rstrip().endswith("…")  # the COMPLETE trial has no error
    assert "error" not in trials_table(trials[1:], "val_loss", "min")  # no failed trial: no column


# ------------------------------------------------------------------------------------ real searches


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_a_setting_that_fails_for_one_value_does_not_stop_the_search(tmp_path):
    """Issue: trainer.accelerator: Categorical(["gpu", "cpu"]) without a GPU used to stop at trial 0."""
    trainer = {k: v for k, v in FAST.items() if k != "accelerator"}
    space = {"trainer.accelerator": Categorical(["gpu", "cpu"]), "model.lr": Float(0.01, 0.2, log=True)}
    s = search(
        tmp_path,
        space=space,
        n_trials=5,
        trainer_kwargs=trainer,
        enqueue=[{"trainer.accelerator": "gpu", "model.lr": 0.05}],
    )
    by_state = {}
    for t in s.run().trials:
        by_state.setdefault(t.state, []).append(t.params["trainer.accelerator"])
    assert by_state[TrialState.COMPLETE] and set(by_state[TrialState.COMPLETE]) == {"cpu"}
    assert by_state[TrialState.FAILED][0] == "gpu" and set(by_state[TrialState.FAILED]) == {"gpu"}


def test_the_same_error_over_different_configurations_stops_the_search(tmp_path):
    """Issue 13 item 5: the first trials fail alike, so the search stops after MIN_FAILURES, showing the error once."""
    flag = tmp_path / "broken"
    flag.touch()
    s = search(tmp_path, broken(flag), n_trials=10)
    with pytest.raises(SearchFailedError, match=r"trials 0, 1, 2 failed with this error") as err:
        s.run()
    assert str(err.value).count("shape mismatch") == 1 and "retry_failed=True" in str(err.value)
    assert [t.state for t in s.trials] == [TrialState.FAILED] * 3  # 7 trials not spent on the same failure


def test_retry_failed_reruns_the_failed_trials_under_their_numbers(tmp_path):
    flag = tmp_path / "broken"
    flag.touch()
    with pytest.raises(SearchFailedError):
        search(tmp_path, broken(flag), n_trials=3).run()
    first = search(tmp_path, broken(flag), n_trials=3).trials
    flag.unlink()  # the cause is fixed
    with pytest.raises(SearchFailedError, match=r"no COMPLETE trial.*\n.*\n.*retry_failed=True"):
        search(tmp_path, broken(flag), n_trials=3).run()  # the study is full of failures: it says how to go on
    result = search(tmp_path, broken(flag), n_trials=3, retry_failed=True).run()
    assert [(t.number, t.params, t.state) for t in result.trials] == [
        (t.number, t.params, TrialState.COMPLETE) for t in first
    ]
    assert all("shape mismatch" in t.attrs["attempts"][0]["error"] for t in result.trials)


# -------------------------------------------------------------------------- two drivers on one SQLite study

DRIVER = """
import sys
sys.path.insert(0, {tests!r})
from conftest import FAST, TinyData, TinyModel
from lightning_hpt import HyperparameterSearch, Float, Int
search = HyperparameterSearch(
    lambda cfg: TinyModel(sleep=0.05, **cfg["model"]), TinyData,
    {{"model.lr": Float(0.01, 0.2, log=True), "model.hidden": Int(4, 16)}},
    root={root!r}, seed=0, n_trials=6, trainer_kwargs=dict(FAST), verbose=False, retry_failed=True,
)
search.run()
"""


def test_two_drivers_retrying_one_study_run_each_failed_trial_once(tmp_path):
    """retry_failed from two drivers at once: every FAILED trial is queued once and run by one of them."""
    flag = tmp_path / "broken"
    flag.touch()
    with pytest.raises(SearchFailedError):
        search(tmp_path, broken(flag), n_trials=6).run()  # stops after 3 alike failures: trials 0, 1, 2
    script = DRIVER.format(tests=str(Path(__file__).parent), root=str(tmp_path))
    procs = [subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    trials = open_storage(tmp_path / "studies.db", create=False).trials("default")
    assert [t.number for t in trials] == list(range(6)) and all(t.state is TrialState.COMPLETE for t in trials)
    for t in trials[:3]:  # rerun exactly once: one earlier attempt (the failure), none from the other driver
        assert [a["error"].split(":")[0] for a in t.attrs["attempts"]] == ["RuntimeError"], t.attrs
        assert t.attempt == 2
    assert all("attempts" not in t.attrs for t in trials[3:])


# ------------------------------------------------------------------------- refused before anything runs


def test_a_resumed_study_with_another_seed_is_refused(tmp_path):
    """Issue: resuming with a different seed silently kept the stored one; now refused like a changed space."""
    search(tmp_path, n_trials=1).run()
    with pytest.raises(StudyMismatchError, match=r"seed changed from 0 to 1.*allow_changes=True"):
        HyperparameterSearch(
            TinyModel, TinyData, SPACE, root=tmp_path, seed=1, n_trials=2, trainer_kwargs=dict(FAST), verbose=False
        ).run()
    assert len(search(tmp_path, n_trials=1).trials) == 1  # nothing ran
    resumed = HyperparameterSearch(
        TinyModel,
        TinyData,
        SPACE,
        root=tmp_path,
        seed=1,
        n_trials=2,
        trainer_kwargs=dict(FAST),
        verbose=False,
        allow_changes=True,
    )
    resumed.run()
    assert resumed.seed == 0  # the stored seed wins, as the stored space does


@pytest.mark.parametrize("blocker", ["study_is_a_file", "root_is_a_file"])
def test_a_trials_directory_that_cannot_be_made_is_refused_before_any_record(tmp_path, blocker):
    """Issue: <root>/<study> as a regular file failed every trial alike, each counting towards n_trials."""
    root = tmp_path / "runs"
    root.mkdir()
    if blocker == "study_is_a_file":
        (root / "default").write_text("not a directory")
    else:  # the root itself is a file: <root>/<study> cannot be made
        root = tmp_path / "file"
        root.write_text("a file where the root should be")
    s = search(root, n_trials=2)
    with pytest.raises(ConfigurationError, match=r"the trials' directory .* regular file, not a directory") as err:
        s.run()
    assert " is is " not in str(err.value)  # it said "<root>/default is is a regular file"
    assert not (tmp_path / "runs" / "studies.db").exists()  # no study, no trial record


def test_a_file_where_a_trials_directory_goes_fails_that_trial_leaves_the_file_and_the_search_goes_on(tmp_path):
    """Issue: a file named trial_0 failed the trial with a logged traceback (NotADirectoryError in a clean-up)."""
    (tmp_path / "default").mkdir()
    (tmp_path / "default" / "trial_0").write_text("the user's file")
    trials = search(tmp_path, n_trials=2).run().trials
    assert [t.state for t in trials] == [TrialState.FAILED, TrialState.COMPLETE]
    assert "trial_0 is a file, not a directory; move or delete that file" in trials[0].error
    assert (tmp_path / "default" / "trial_0").read_text() == "the user's file"


def test_the_report_shows_a_failed_trials_error_whole():
    error = "RuntimeError: " + " ".join(f"word{i}" for i in range(120))  # ~900 characters
    info = StudyInfo("s", SearchSpace(SPACE), Direction.MINIMIZE, "val_loss", "random")
    html = render_report(info, [TrialRecord(0, {"model.lr": 0.1, "model.hidden": 4}, TrialState.FAILED, error=error)])
    assert "word119" in html and "word0 " in html
