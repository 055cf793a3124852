"""Several objectives with real Lightning trials: every objective recorded, stored, resumed and refused on change."""

from __future__ import annotations

import math
import sqlite3

import pytest
from conftest import TinyData, TinyModel

from lightning_hpt import (
    ConfigurationError,
    Float,
    HyperparameterSearch,
    Int,
    MetricNotFoundError,
    SearchFailedError,
    StudyMismatchError,
    TrialState,
)

SPACE = {"model.lr": Float(0.01, 0.2, log=True), "model.hidden": Int(2, 32)}


class SizedModel(TinyModel):
    """Logs its parameter count next to the validation loss (and optionally a broken third metric)."""

    def __init__(self, nan_size: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.nan_size = nan_size

    def validation_step(self, batch, batch_idx):
        super().validation_step(batch, batch_idx)
        size = float(sum(p.numel() for p in self.parameters()))
        self.log("n_params", float("nan") if self.nan_size else size)
        self.log("neg_size", -size)


def make(tmp_path, fast_trainer, **kw):
    kw.setdefault("n_trials", 3)
    kw.setdefault("seed", 0)
    kw.setdefault("verbose", False)
    kw.setdefault("monitor", ["val_loss", "n_params"])
    kw.setdefault("mode", ["min", "min"])
    return HyperparameterSearch(
        kw.pop("model", SizedModel),
        TinyData,
        kw.pop("space", SPACE),
        root=tmp_path,
        trainer_kwargs={**fast_trainer, **kw.pop("trainer", {})},
        **kw,
    )


def test_every_objective_is_recorded_per_trial_and_per_step(tmp_path, fast_trainer):
    result = make(tmp_path, fast_trainer, trainer={"max_epochs": 3}, patience=None).run()
    assert [t.state for t in result.trials] == [TrialState.COMPLETE] * 3
    for t in result.trials:
        hidden = t.params["model.hidden"]
        size = 4 * hidden + hidden + hidden + 1
        assert t.value == min(t.intermediate.values()) and t.values == (t.value, size)
        assert sorted(t.intermediate_values) == [0, 1, 2]
        assert all(v == (t.intermediate[s], size) for s, v in t.intermediate_values.items())
        assert t.intermediate_values[t.best_step] == t.values  # every value is taken at the best step
    assert [o.name for o in result.objectives] == ["val_loss", "n_params"]
    again = make(tmp_path, fast_trainer).trials
    assert [t.values for t in again] == [t.values for t in result.trials]  # read back from storage


def test_objectives_of_opposite_directions_and_the_study_definition(tmp_path, fast_trainer):
    result = make(tmp_path, fast_trainer, monitor=["val_loss", "neg_size"], mode=["min", "max"], n_trials=2).run()
    assert all(t.values[1] < 0 for t in result.trials)
    con = sqlite3.connect(tmp_path / "studies.db")
    (definition,) = con.execute("SELECT definition FROM hpt_studies").fetchone()
    con.close()
    assert '"neg_size", "max"' in definition


def test_a_single_monitor_stores_exactly_what_it_did(tmp_path, fast_trainer):
    result = make(tmp_path, fast_trainer, monitor="val_loss", mode="min", n_trials=2).run()
    assert all(t.values is None and t.intermediate_values == {} for t in result.trials)
    assert result.objectives == () and result.best_trial is not None
    con = sqlite3.connect(tmp_path / "studies.db")
    assert con.execute("SELECT definition FROM hpt_studies").fetchall() == [(None,)]
    assert con.execute("SELECT count(*) FROM hpt_trials WHERE objective_values IS NOT NULL").fetchone() == (0,)
    assert con.execute("SELECT count(*) FROM hpt_trial_values WHERE objective_values IS NOT NULL").fetchone() == (0,)
    con.close()


def test_changed_objectives_are_refused_on_resume(tmp_path, fast_trainer):
    make(tmp_path, fast_trainer, n_trials=1).run()
    with pytest.raises(StudyMismatchError, match=r"objectives changed from \['val_loss \(min\)', 'n_params \(min\)'\]"):
        make(tmp_path, fast_trainer, mode=["min", "max"], n_trials=2).run()
    # one objective is shown as itself, not as an empty list
    single = r"objectives changed from \['val_loss \(min\)', 'n_params \(min\)'\] to \['val_loss \(min\)'\]"
    with pytest.raises(StudyMismatchError, match=single):
        make(tmp_path, fast_trainer, monitor="val_loss", mode="min", n_trials=2).run()
    make(tmp_path, fast_trainer, monitor="val_loss", mode="min", n_trials=1, study_name="one").run()
    several = r"objectives changed from \['val_loss \(min\)'\] to \['val_loss \(min\)', 'n_params \(min\)'\]"
    with pytest.raises(StudyMismatchError, match=several):
        make(tmp_path, fast_trainer, n_trials=2, study_name="one").run()
    # allow_changes: the stored objectives win, trials included
    search = make(tmp_path, fast_trainer, monitor="val_loss", mode="min", n_trials=2, allow_changes=True)
    result = search.run()
    assert [o.name for o in search.objectives] == ["val_loss", "n_params"]
    assert result.trials[1].values is not None and len(result.trials[1].values) == 2


@pytest.mark.parametrize(
    ("monitor", "mode", "match"),
    [
        (["val_loss", "n_params"], "min", r"mode must give one direction per objective"),
        (["val_loss", "n_params"], ["min"], r"monitor has 2 .* but mode has 1"),
        (["val_loss", "val_loss"], ["min", "min"], r"\['val_loss'\] appear twice"),
        ([], [], r"monitor must be the name of a logged metric"),
        (["val_loss", 3], ["min", "min"], r"monitor must be the name"),
        (
            ["val_loss", "n_params"],
            ["min", "down"],
            r"mode\[1\] \(for objective 'n_params'\): mode must be 'min' or 'max'.*got mode='down'",
        ),
    ],
)
def test_bad_objectives_are_refused_before_anything_is_written(tmp_path, fast_trainer, monitor, mode, match):
    with pytest.raises(ConfigurationError, match=match):
        make(tmp_path, fast_trainer, monitor=monitor, mode=mode)
    assert not (tmp_path / "studies.db").exists()


def test_a_missing_objective_stops_the_search(tmp_path, fast_trainer):
    with pytest.raises((MetricNotFoundError, SearchFailedError), match="'latency' was not logged"):
        make(tmp_path, fast_trainer, monitor=["val_loss", "latency"]).run()


def test_a_non_finite_second_objective_fails_the_trial(tmp_path, fast_trainer):
    search = make(tmp_path, fast_trainer, model=lambda cfg: SizedModel(nan_size=True, **cfg["model"]), n_trials=1)
    with pytest.raises(SearchFailedError):
        search.run()
    (t,) = search.trials
    assert t.state is TrialState.FAILED and t.error.startswith("non-finite: n_params was nan at step 0")
    assert len(t.intermediate) == 1  # it ended at once


def test_ask_and_tell_with_several_objectives(tmp_path, fast_trainer):
    search = make(tmp_path, fast_trainer, n_trials=3)
    t = search.ask()
    told = search.tell(t.number, [0.5, 100], intermediate={0: [0.7, 100], 1: [0.5, 100]})
    assert told.values == (0.5, 100.0) and told.value == 0.5 and told.best_step == 1
    assert told.intermediate_values == {0: (0.7, 100.0), 1: (0.5, 100.0)}
    with pytest.raises(ConfigurationError, match=r"value must be a list of 2 numbers"):
        search.tell(search.ask().number, 0.5)
    assert search.tell(search.ask().number, [0.5, math.nan]).state is TrialState.FAILED


def test_tensorboard_gets_every_objective(tmp_path, fast_trainer):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    fast_trainer.pop("logger")
    result = make(tmp_path, fast_trainer, n_trials=2).run()
    trial_tb = EventAccumulator(str(tmp_path / "default" / "trial_0" / "tb"))
    trial_tb.Reload()
    assert {"hp/val_loss", "hp/n_params"} <= set(trial_tb.Tags()["scalars"])
    assert trial_tb.Scalars("hp/n_params")[-1].value == pytest.approx(result.trials[0].values[1])
    study_tb = EventAccumulator(str(tmp_path / "default" / "tensorboard"))
    study_tb.Reload()
    sizes = [e.value for e in study_tb.Scalars("trial_n_params")]
    assert sizes == pytest.approx([t.values[1] for t in result.trials])
    assert [e.value for e in study_tb.Scalars("pareto_front_size")][-1] == len(result.pareto_trials)


def test_values_cross_process_channels(tmp_path, fast_trainer):
    from lightning_hpt import ProcessExecutor

    search = make(tmp_path, fast_trainer, n_trials=2, executor=ProcessExecutor(devices=[], workers=1))
    result = search.run()
    for t in result.trials:
        assert t.values is not None and sorted(t.intermediate_values) == [0, 1]


def test_the_report_channel_carries_every_objective():
    from lightning_hpt.executors.ipc import ChannelReporter, ReporterRegistry, ReportServer

    class Recorder:
        answers, seen = True, []

        def report(self, step, value):
            self.seen.append((step, value))
            return step == 1

    registry, recorder = ReporterRegistry(), Recorder()
    server = ReportServer(registry, lambda conn, hello: None)
    try:
        channel = ChannelReporter(server.address, server.authkey, registry.register(recorder))
        assert channel.report(0, (0.5, 10.0)) is False and channel.report(1, (0.4, 10.0)) is True
        channel.close()
    finally:
        server.close()
    assert recorder.seen == [(0, (0.5, 10.0)), (1, (0.4, 10.0))]


def test_a_version_2_database_is_upgraded_and_takes_several_objectives(tmp_path, fast_trainer):
    from lightning_hpt.storage import SCHEMA_VERSION, SQLStorage

    make(tmp_path, fast_trainer, monitor="val_loss", mode="min", n_trials=2, study_name="old").run()
    db = tmp_path / "studies.db"
    before = SQLStorage(f"sqlite:///{db}").trials("old")
    with sqlite3.connect(db) as conn:  # back to the layout of schema_version 2
        conn.execute("ALTER TABLE hpt_studies DROP COLUMN definition")
        conn.execute("ALTER TABLE hpt_trials DROP COLUMN objective_values")
        conn.execute("ALTER TABLE hpt_trial_values DROP COLUMN objective_values")
        conn.execute("UPDATE hpt_meta SET value = '2' WHERE key = 'schema_version'")
    result = make(tmp_path, fast_trainer, n_trials=1, study_name="new").run()
    assert result.trials[0].values is not None
    upgraded = SQLStorage(f"sqlite:///{db}")
    assert repr(upgraded.trials("old")) == repr(before) and upgraded.load_study("old").objectives == ()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT value FROM hpt_meta WHERE key = 'schema_version'").fetchone() == (
            str(SCHEMA_VERSION),
        )


@pytest.mark.parametrize("strategy", ["grid", "sobol", "random"])
def test_grid_sobol_and_random_run_unchanged_on_several_objectives(tmp_path, fast_trainer, strategy):
    space = (
        {"model.hidden": Int(2, 4), "model.lr": Float(0.05, 0.1)} if strategy != "grid" else {"model.hidden": Int(2, 4)}
    )
    n = 5 if strategy == "grid" else 3
    one = make(tmp_path / "1", fast_trainer, monitor="val_loss", mode="min", strategy=strategy, space=space, n_trials=n)
    two = make(tmp_path / "2", fast_trainer, strategy=strategy, space=space, n_trials=n).run()
    one = one.run()
    assert [t.params for t in two.trials] == [t.params for t in one.trials]  # the same proposals as with one metric
    assert all(
        t.values is not None and t.values[0] == pytest.approx(o.value)
        for t, o in zip(two.trials, one.trials, strict=True)
    )
    if strategy == "grid":
        assert two.stopped_reason == "grid strategy exhausted" and len(two.trials) == 3


def test_an_interrupted_trial_continues_with_every_objective(tmp_path, fast_trainer):
    def model(interrupt):
        return lambda cfg: SizedModel(interrupt_at_epoch=interrupt, **cfg["model"])

    kw = {"n_trials": 1, "patience": None, "trainer": {"max_epochs": 4}}
    with pytest.raises(KeyboardInterrupt):
        make(tmp_path, fast_trainer, model=model(2), **kw).run()
    (t,) = make(tmp_path, fast_trainer, model=model(None), **kw).trials
    assert t.state is TrialState.FAILED and t.error.startswith("interrupted")
    result = make(tmp_path, fast_trainer, model=model(None), **kw).run()
    (t,) = result.trials
    assert t.state is TrialState.COMPLETE and t.attempt == 2 and t.attrs.get("resumed_at_step") == 2
    assert sorted(t.intermediate_values) == [0, 1, 2, 3]  # the first attempt's steps reported again
    assert t.values == t.intermediate_values[t.best_step] and t.values[0] == min(t.intermediate.values())


def test_the_progress_lines_show_the_pareto_front_so_far(tmp_path, fast_trainer, capsys):
    result = make(tmp_path, fast_trainer, verbose="lines").run()
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert len(lines) == 3
    for k, line in enumerate(lines):
        front = [t for t in result.pareto_trials if t.number <= k]  # the front after trial k, as the line saw it
        numbers = ", ".join(f"#{t.number}" for t in sorted(front, key=lambda t: (t.values[0], t.number)))
        assert f" | front {len(front)} ({numbers}) | " in line, line


def test_the_live_display_shows_the_pareto_front_and_every_objective_of_running_trials(tmp_path, fast_trainer, capsys):
    import re

    result = make(tmp_path, fast_trainer, verbose="live").run()
    out = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", capsys.readouterr().out)
    front = result.pareto_trials
    assert f"Pareto front {len(front)} trials" in out
    first = front[0]
    assert f"#{first.number} val_loss={first.values[0]:.4g}, n_params={first.values[1]:.4g}" in out
    last = result.trials[-1]
    shown = ", ".join(f"{v:.4g}" for v in last.intermediate_values[1])  # its report at epoch 2, both objectives
    assert re.search(rf"\b{last.number}\s+2\s+{shown}\s", out), out
