"""Progress displays, tables, exports, plots, parameter importance and the HTML report."""

from __future__ import annotations

import base64
import csv
import dataclasses
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from conftest import TinyData, TinyModel

from lightning_hpt import (
    Categorical,
    ConfigurationError,
    Direction,
    Float,
    HPTError,
    HyperparameterSearch,
    Int,
    SearchSpace,
    StorageError,
    TrialRecord,
    TrialState,
)
from lightning_hpt.report import (
    LineProgress,
    LiveProgress,
    export_trials,
    make_progress,
    param_importance,
    render_report,
    trials_table,
    write_report,
)
from lightning_hpt.storage import StudyInfo, open_storage

SPACE = SearchSpace(
    {"model.lr": Float(1e-4, 1e-1, log=True), "model.hidden": Int(8, 64), "data.batch_size": Categorical([16, 32, 64])}
)
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def plain(text: str) -> str:
    return ANSI.sub("", text)


def synthetic_study(db, n=12, study="demo", seed=0, space=SPACE):
    """A study written through the Storage API: COMPLETE, PRUNED (cut at 2 epochs) and FAILED trials.

    Trial ``k`` gets value curve ``target + 1/(e + 1)``; every 5th (from 2) is pruned, every 7th (from 4) fails.
    """
    storage = open_storage(f"sqlite:///{db}")
    storage.open_study(StudyInfo(study, space, Direction.MINIMIZE, "val_loss", "random", seed))
    rng = np.random.default_rng(seed)
    for i in range(n):
        params = space.sample(rng)
        t = storage.create_trial(study, params)
        target = (math.log10(params["model.lr"]) + 2) ** 2 + params["model.hidden"] / 64
        pruned, failed = i % 5 == 2, i % 7 == 4
        epochs = 2 if pruned else 5
        curve = {e: target + 1.0 / (e + 1) for e in range(epochs)}
        for e, v in curve.items():
            storage.report(study, t.number, e, v)
        if failed:
            storage.finish_trial(study, t.number, state=TrialState.FAILED, error="RuntimeError: <script>x</script>")
        else:
            best = min(curve, key=curve.get)
            storage.finish_trial(
                study,
                t.number,
                state=TrialState.PRUNED if pruned else TrialState.COMPLETE,
                value=curve[best],
                best_step=best,
            )
    return storage


def record(number, state=TrialState.COMPLETE, value=None, steps=(), **params):
    return TrialRecord(
        number,
        params or {"model.lr": 0.01},
        state,
        value=value,
        intermediate=dict(enumerate(steps)),
        started_at=100.0,
        finished_at=112.5,
    )


# ------------------------------------------------------------------------------------------ table


def test_trials_table_lists_every_trial_and_ranks_top_best_first():
    trials = [
        record(0, value=0.5, steps=[0.9, 0.5], **{"model.lr": 0.01, "data.batch_size": 32}),
        record(1, TrialState.PRUNED, 0.8, [0.8], **{"model.lr": 0.1, "data.batch_size": 64}),
        record(2, TrialState.FAILED, **{"model.lr": 0.001, "data.batch_size": 16}),
        record(3, value=0.2, steps=[0.4, 0.3, 0.2], **{"model.lr": 0.003, "data.batch_size": 64}),
    ]
    lines = trials_table(trials, "val_loss", Direction.MINIMIZE).splitlines()
    assert lines[0].split() == ["#", "state", "val_loss", "lr", "batch_size", "epochs", "duration"]
    assert [ln.split()[0] for ln in lines[1:]] == ["0", "1", "2", "3"]  # by number without top
    assert lines[4].split() == ["3", "COMPLETE", "0.2", "0.003", "64", "3", "12.5s"]
    assert lines[3].split()[2] == "-"  # a failed trial has no value
    top = trials_table(trials, "val_loss", "min", top=3).splitlines()
    assert [ln.split()[0] for ln in top[1:]] == ["3", "0", "1"]  # complete by value, then pruned
    top_max = trials_table(trials, "val_loss", "max", top=2).splitlines()
    assert [ln.split()[0] for ln in top_max[1:]] == ["0", "3"]
    assert trials_table([], "val_loss", "min") == "(no trials)"
    with pytest.raises(ConfigurationError, match=r"top must be a positive integer.*top=0"):
        trials_table(trials, "val_loss", "min", top=0)


# ------------------------------------------------------------------------------------------ export


def test_export_csv_and_json_keep_every_epoch(tmp_path):
    storage = synthetic_study(tmp_path / "s.db", n=8)
    storage.create_trial("demo", {"model.lr": 0.01, "model.hidden": 8, "data.batch_size": 16})  # a RUNNING one
    storage.report("demo", 8, 0, float("nan"))
    trials = storage.trials("demo")

    path = export_trials(trials, tmp_path / "out" / "trials.CSV")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["number"]) for r in rows] == list(range(9))
    for t, row in zip(trials, rows, strict=True):
        assert row["state"] == t.state.value and int(row["epochs"]) == len(t.intermediate)
        assert float(row["params.model.lr"]) == t.params["model.lr"] and row["params.data.batch_size"] == str(
            t.params["data.batch_size"]
        )
        for step in range(5):
            expected = t.intermediate.get(step)
            if expected is None:
                assert row[f"step_{step}"] == ""  # pruned after 2 epochs: nothing at later steps
            elif math.isnan(expected):
                assert row[f"step_{step}"] == "nan"
            else:
                assert float(row[f"step_{step}"]) == expected  # every digit kept
        assert (row["value"] == "") == (t.value is None)
    assert rows[4]["error"].startswith("RuntimeError")

    path = export_trials(trials, tmp_path / "trials.json")

    def no_constants(name):
        raise AssertionError(f"strict JSON has no {name}")

    data = json.loads(path.read_text(), parse_constant=no_constants)
    assert [d["number"] for d in data] == list(range(9))
    for t, d in zip(trials, data, strict=True):
        assert d["params"] == dict(t.params) and d["state"] == t.state.value and d["value"] == t.value
        assert {int(k): v for k, v in d["intermediate"].items() if v is not None} == {
            k: v for k, v in t.intermediate.items() if not math.isnan(v)
        }
    assert data[8]["intermediate"] == {"0": None}  # NaN is written as null
    assert oct(path.stat().st_mode & 0o777) == "0o644"

    with pytest.raises(ConfigurationError, match=r"suffix.*\.csv.*\.json.*'trials\.xlsx'"):
        export_trials(trials, "trials.xlsx")


# ------------------------------------------------------------------------------------------ importance


def test_param_importance_ranks_the_two_parameters_that_matter_first():
    space = SearchSpace(
        {
            "a": Float(0, 1),
            "noise1": Float(-3, 3),
            "b": Float(1e-4, 1, log=True),
            "noise2": Int(1, 9),
            "noise3": Categorical(["x", "y", "z"]),
        }
    )
    rng = np.random.default_rng(1)
    trials = []
    for i in range(40):
        p = space.sample(rng)
        # only a and b matter (b on its log scale); a little observation noise
        v = 4 * (p["a"] - 0.3) ** 2 + 0.3 * (math.log10(p["b"]) + 2) ** 2 + 0.01 * rng.normal()
        trials.append(TrialRecord(i, p, TrialState.COMPLETE, value=float(v)))
    trials.append(TrialRecord(40, space.sample(rng), TrialState.FAILED))  # ignored
    t0 = time.perf_counter()
    imp = param_importance(trials, space)
    elapsed = time.perf_counter() - t0
    assert set(list(imp)[:2]) == {"a", "b"}, imp
    assert min(imp["a"], imp["b"]) > 0.2 and max(imp["noise1"], imp["noise2"], imp["noise3"]) < 0.05, imp
    assert list(imp.values()) == sorted(imp.values(), reverse=True)
    assert param_importance(trials, space) == imp  # seeded: the same inputs give the same numbers
    assert elapsed < 20, elapsed

    flat = [TrialRecord(i, t.params, TrialState.COMPLETE, value=1.0) for i, t in enumerate(trials[:10])]
    assert param_importance(flat, space) == dict.fromkeys(space, 0.0)
    with pytest.raises(HPTError, match=r"at least 4 COMPLETE trials.*got 3"):
        param_importance(trials[:3], space)


def test_param_importance_uses_pruned_trials_like_the_proposals():
    # a search with ASHA: 10 of 12 trials pruned, 2 complete; only "a" matters
    space = SearchSpace({"a": Float(0, 1), "b": Float(0, 1), "c": Categorical(["x", "y"])})
    rng = np.random.default_rng(3)
    trials = []
    for i in range(12):
        p = space.sample(rng)
        value = float((p["a"] - 0.2) ** 2 + 0.001 * rng.normal())
        state = TrialState.COMPLETE if i in (4, 9) else TrialState.PRUNED
        trials.append(TrialRecord(i, p, state, value=value))
    imp = param_importance(trials, space, direction="min")
    assert next(iter(imp)) == "a" and imp["a"] > 0.5, imp
    assert param_importance(trials, space) == param_importance(trials, space)  # no direction: own values
    with pytest.raises(HPTError, match=r"at least 4 COMPLETE trials.*got 3"):
        param_importance(trials[:3], space, direction="min")


def test_param_importance_does_not_depend_on_the_keys_order_and_barely_on_the_seed():
    """A report reads the stored space (keys sorted) and a user passes their own order: the same numbers; and
    its quasi-Monte Carlo estimate moves little with the seed (uniform draws moved it by 0.1 on this study)."""
    doms = {
        "lr": Float(1e-4, 1e-1, log=True),
        "hidden": Int(8, 64),
        "dropout": Float(0, 0.5),
        "opt": Categorical(["a", "b"]),
    }
    space = SearchSpace(doms)
    rng = np.random.default_rng(0)
    trials = []
    for i in range(12):
        p = space.sample(rng)
        v = (
            (math.log10(p["lr"]) + 2.5) ** 2
            + 0.3 * p["dropout"]
            + (0.2 if p["opt"] == "a" else 0)
            + 0.05 * rng.normal()
        )
        trials.append(TrialRecord(i, p, TrialState.COMPLETE if i % 3 == 0 or i < 4 else TrialState.PRUNED, value=v))
    reordered = SearchSpace(dict(reversed(list(doms.items()))))
    assert param_importance(trials, space, direction="min") == param_importance(trials, reordered, direction="min")
    lr = [param_importance(trials, space, direction="min", seed=s)["lr"] for s in range(4)]
    assert max(lr) - min(lr) < 0.05 and min(lr) > 0.8, lr


# ------------------------------------------------------------------------------------------ plots


def test_plots_show_history_curves_coordinates_slices_and_importance(tmp_path):
    pytest.importorskip("matplotlib", reason="plots need the plot extra (matplotlib)")
    from lightning_hpt.report.plots import (
        plot_history,
        plot_importance,
        plot_learning_curves,
        plot_parallel_coordinates,
        plot_slices,
        save_figure,
    )

    trials = synthetic_study(tmp_path / "s.db", n=12).trials("demo")
    complete = [t for t in trials if t.state is TrialState.COMPLETE]

    fig = plot_history(trials, "min", monitor="val_loss")
    ax = fig.axes[0]
    best_line = next(line for line in ax.get_lines() if line.get_label() == "best so far")
    expected, best = [], math.inf
    for t in trials:
        if t.state is TrialState.COMPLETE:
            best = min(best, t.value)
        if best < math.inf:
            expected.append(best)
    assert list(best_line.get_ydata()) == pytest.approx(expected)
    labels = {c.get_label(): len(c.get_offsets()) for c in ax.collections}
    assert labels == {"complete": len(complete), "pruned": 2, "failed": 2}
    assert ax.get_ylabel() == "val_loss"

    fig = plot_learning_curves(trials, "min", monitor="val_loss")
    lines = fig.axes[0].get_lines()
    dashed = [ln for ln in lines if ln.get_linestyle() == "--"]
    assert len(dashed) == 2 and all(len(ln.get_xdata()) == 2 for ln in dashed)  # pruned: cut after 2 epochs
    solid = [ln for ln in lines if ln.get_linestyle() == "-" and len(ln.get_xdata()) == 5]
    assert len(solid) >= len(complete)

    fig = plot_parallel_coordinates(trials, "min", space=SPACE, monitor="val_loss")
    assert len(fig.axes[0].get_lines()) - 4 == len(complete)  # one per trial, plus the 4 axis lines
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["lr", "hidden", "batch_size", "val_loss"]

    fig = plot_slices(trials, "min", space=SPACE, monitor="val_loss")
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]
    assert [ax.get_xlabel() for ax in panels] == ["lr", "hidden", "batch_size"]
    assert panels[0].get_xscale() == "log" and panels[1].get_xscale() == "linear"
    # a log axis over less than two decades: plain labels at 1, 2 and 5 per decade, none on minor ticks
    narrow = [dataclasses.replace(t, params={**t.params, "model.lr": 0.003 + 0.001 * t.number}) for t in trials]
    fig = plot_slices(narrow, "min", space=SPACE, monitor="val_loss")
    fig.canvas.draw()
    ax = fig.axes[0]
    shown = [
        t.get_text()
        for t in ax.get_xticklabels()
        if t.get_text() and ax.get_xlim()[0] <= t.get_position()[0] <= ax.get_xlim()[1]
    ]
    assert shown and all(float(x) for x in shown) and not any(t.get_text() for t in ax.get_xticklabels(minor=True))

    fig = plot_importance({"model.lr": 0.7, "model.hidden": 0.2, "data.batch_size": 0.01}, method="a method")
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["batch_size", "hidden", "lr"]

    for name, empty in (
        ("history", plot_history([], "min")),
        ("curves", plot_learning_curves([], "max")),
        ("pc", plot_parallel_coordinates([], "min")),
        ("slices", plot_slices([], "min", space=SPACE)),
    ):
        path = save_figure(empty, tmp_path / f"{name}.png")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------ HTML report


def _images(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", html)]


def test_html_report_is_self_contained_and_escaped(tmp_path):
    pytest.importorskip("matplotlib", reason="plots need the plot extra (matplotlib)")
    storage = synthetic_study(tmp_path / "s.db", n=12)
    path = write_report(storage, "demo", tmp_path / "r" / "report.html")
    html = path.read_text()
    images = _images(html)
    assert len(images) == 5 and all(png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000 for png in images)
    # nothing to fetch: every src is inline data, no stylesheet or script from elsewhere
    assert re.findall(r"(?:src|href)\s*=\s*['\"](?!data:)", html) == []
    assert "http://" not in html and "https://" not in html and "<script" not in html and "<link" not in html
    assert "&lt;script&gt;x&lt;/script&gt;" in html  # a trial's error text is escaped, never markup
    rows = re.findall(r"<tr><td class='num'>(\d+)</td><td class='state-(\w+)'>", html)
    assert len(rows) == 12
    best = min((t for t in storage.trials("demo") if t.state is TrialState.COMPLETE), key=lambda t: t.value)
    assert rows[0] == (str(best.number), "COMPLETE") and f"Best trial <b>#{best.number}</b>" in html
    assert "complete: <b>8</b>" in html and "pruned: <b>2</b>" in html and "failed: <b>2</b>" in html

    with pytest.raises(StorageError, match="nope"):
        write_report(storage, "nope", tmp_path / "x.html")


def test_report_and_export_of_a_real_search(tmp_path, fast_trainer):
    pytest.importorskip("matplotlib", reason="plots need the plot extra (matplotlib)")
    search = HyperparameterSearch(
        TinyModel,
        TinyData,
        {"model.lr": Float(0.01, 0.2, log=True), "model.hidden": Int(4, 16)},
        monitor="val_loss",
        root=tmp_path,
        n_trials=4,
        seed=0,
        verbose=False,
        trainer_kwargs={**fast_trainer, "max_epochs": 3},
    )
    result = search.run()
    storage = open_storage(tmp_path / "studies.db")
    html = write_report(storage, "default", tmp_path / "report.html").read_text()
    assert len(_images(html)) == 5 and f"{result.best_value:.6g}" in html
    data = json.loads(export_trials(storage.trials("default"), tmp_path / "t.json").read_text())
    assert [d["intermediate"] for d in data] == [{str(k): v for k, v in t.intermediate.items()} for t in result.trials]
    assert all(len(d["intermediate"]) == 3 and d["duration_s"] > 0 for d in data)
    table = trials_table(result.trials, "val_loss", "min", top=2).splitlines()
    assert table[1].split()[:3] == [str(result.best_trial.number), "COMPLETE", f"{result.best_value:.4g}"]


def test_html_report_of_a_young_study_explains_missing_plots(tmp_path):
    storage = synthetic_study(tmp_path / "s.db", n=2)
    html = render_report(storage.load_study("demo"), storage.trials("demo"))
    assert "needs at least 4 COMPLETE trials" in html  # importance: said, not crashed
    assert "Best trial" in html


def test_without_matplotlib_plots_name_the_extra_and_the_report_keeps_the_rest(tmp_path, monkeypatch):
    from lightning_hpt.report.plots import plot_history

    for name in ("matplotlib", "matplotlib.figure"):
        monkeypatch.setitem(sys.modules, name, None)  # what an environment without the extra looks like
    with pytest.raises(ImportError, match=r"pip install 'lightning-hpt\[plot\]'"):
        plot_history([], "min")
    storage = synthetic_study(tmp_path / "s.db", n=5)
    html = render_report(storage.load_study("demo"), storage.trials("demo"))
    assert _images(html) == [] and "Plots need matplotlib" in html and "All trials (best first)" in html


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("chromium") is None and shutil.which("chromium-browser") is None,
    reason="needs a headless browser: apt-get install chromium",
)
def test_html_report_renders_in_headless_chromium_without_network(tmp_path):
    pytest.importorskip("matplotlib", reason="plots need the plot extra (matplotlib)")
    Image = pytest.importorskip("PIL.Image", reason="reading the screenshot needs pillow (installed with matplotlib)")

    storage = synthetic_study(tmp_path / "s.db", n=12)
    path = write_report(storage, "demo", tmp_path / "report.html")
    shot = tmp_path / "shot.png"
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    # a dead proxy: any network request the page made would fail, so what renders came from the file
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--proxy-server=127.0.0.1:9",
        "--window-size=1200,4800",
        f"--screenshot={shot}",
        path.as_uri(),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120, cwd=tmp_path)
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 4800)
    pixels = np.asarray(image).reshape(-1, 3).astype(int)
    # the plots' complete-trial blue (#1f77b4) and the best line's purple (#9467bd) are drawn by the images only
    for rgb in ((0x1F, 0x77, 0xB4), (0x94, 0x67, 0xBD)):
        assert (np.abs(pixels - rgb).sum(axis=1) < 20).sum() > 500, rgb


@pytest.mark.slow
def test_reading_a_study_while_another_process_writes_it(tmp_path):
    """Tables, exports and the report work on a running study; what they see only grows."""
    db = tmp_path / "s.db"
    synthetic_study(db, n=4).close()
    n_new = 20
    writer = textwrap.dedent(f"""
        import time
        from lightning_hpt.storage import open_storage
        from lightning_hpt.trial import TrialState
        s = open_storage("sqlite:///{db}")
        for i in range({n_new}):
            t = s.create_trial("demo", {{"model.lr": 0.01, "model.hidden": 8 + i, "data.batch_size": 32}})
            for e in range(3):
                s.report("demo", t.number, e, 1.0 / (i + e + 1))
                time.sleep(0.03)
            s.finish_trial("demo", t.number, state=TrialState.COMPLETE, value=1.0 / (i + 3), best_step=2)
        """)
    proc = subprocess.Popen([sys.executable, "-c", writer], cwd=os.getcwd(), stderr=subprocess.PIPE, text=True)
    reader = open_storage(f"sqlite:///{db}")
    seen, reports = [], 0
    try:
        while proc.poll() is None:
            trials = reader.trials("demo")
            seen.append(sum(t.state.is_finished for t in trials))
            table = trials_table(trials, "val_loss", "min")
            assert len(table.splitlines()) == len(trials) + 1
            export_trials(trials, tmp_path / "live.csv")
            if reports < 2 and len(trials) > 8:
                html = render_report(reader.load_study("demo"), trials)
                assert html.count("<tr><td class='num'>") == len(trials)
                reports += 1
            time.sleep(0.02)
    finally:
        proc.wait(timeout=120)
    assert proc.returncode == 0, proc.stderr.read()
    assert seen == sorted(seen) and len(set(seen)) >= 3, seen  # read several states while it was being written
    final = reader.trials("demo")
    assert len(final) == 4 + n_new and all(t.state.is_finished for t in final)
    with open(export_trials(final, tmp_path / "live.csv"), newline="") as f:
        assert len(list(csv.DictReader(f))) == 4 + n_new


# ------------------------------------------------------------------------------------------ progress


def test_live_progress_shows_counts_best_running_trials_and_time_left():
    buf = io.StringIO()
    progress = LiveProgress(buf, force_terminal=True, width=120, refresh_per_second=50)
    old = [record(0, TrialState.PRUNED, 0.9), record(1, TrialState.FAILED)]
    progress.start("mnist", 5, 2, "sqlite:///runs.db", monitor="val_acc", trials=old)
    running = record(2, TrialState.RUNNING, **{"model.lr": 0.003, "model.hidden": 32})
    progress.trial_started(running)
    progress.trial_reported(2, 0, 0.61)
    progress.trial_reported(2, 1, 0.7345)
    time.sleep(0.1)  # let the display refresh on its own
    frame = plain(buf.getvalue())
    assert "Study mnist" in frame and "2/5 finished" in frame and "0 complete, 1 pruned, 1 failed" in frame
    assert re.search(r"\b2\s+2\s+0\.7345\s+\S+s\s+lr=0\.003, hidden=32", frame), frame  # #2 at epoch 2 (step 1)
    assert "left" not in frame  # no estimate before this run finishes a trial

    done = TrialRecord(
        2,
        running.params,
        TrialState.COMPLETE,
        value=0.75,
        intermediate={0: 0.61, 1: 0.7345, 2: 0.75},
        started_at=10.0,
        finished_at=13.0,
    )
    progress.trial_finished(done, done, "val_acc", 3, 5)
    time.sleep(0.1)
    frame = plain(buf.getvalue())
    assert "[3/5] trial 2 COMPLETE val_acc=0.75 epochs=3 3.0s | best 0.75 (#2)" in frame
    assert "best val_acc=0.75 (#2)" in frame and "1 complete, 1 pruned, 1 failed" in frame and "left" in frame
    assert progress.eta() == pytest.approx(2 * (time.monotonic() - progress._t0), rel=0.5)  # 2 left at 1 per run-time

    progress.end("SUMMARY", "TABLE")
    progress.close()  # idempotent
    out = buf.getvalue()
    assert out.rstrip().endswith("TABLE") and "SUMMARY" in out
    assert out.rfind("\x1b[?25h") > out.rfind("\x1b[?25l")  # the cursor is shown again


def test_make_progress_picks_live_on_a_terminal_and_lines_elsewhere(monkeypatch):
    assert type(make_progress(True, io.StringIO())) is LineProgress  # a file, CI log or nohup
    quiet = make_progress(False, buf := io.StringIO())
    quiet.start("s", 3, 0, "x")
    quiet.end("done")
    assert buf.getvalue() == ""
    assert type(make_progress("lines", io.StringIO())) is LineProgress
    assert type(make_progress("live", io.StringIO())) is LiveProgress
    for var in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TERM", "xterm")
    leader, follower = os.openpty()
    with open(follower, "w") as tty:
        progress = make_progress(True, tty)
        assert type(progress) is LiveProgress
        progress.close()
        monkeypatch.setenv("TERM", "dumb")
        assert type(make_progress(True, tty)) is LineProgress
    os.close(leader)
    with pytest.raises(ConfigurationError, match=r"verbose must be True, False, 'auto', 'live' or 'lines'.*'loud'"):
        make_progress("loud")


def test_line_progress_accepts_the_live_hooks_and_prints_the_table():
    buf = io.StringIO()
    progress = LineProgress(buf)
    progress.start("s", 2, 0, "sqlite:///x.db", monitor="val_loss", trials=[])
    progress.trial_started(record(0, TrialState.RUNNING))
    progress.trial_reported(0, 0, 0.5)
    assert buf.getvalue().count("\n") == 1  # one line per finished trial, nothing while it runs
    t = record(0, value=0.5, steps=[0.5])
    progress.trial_finished(t, t, "val_loss", 1, 2)
    progress.end("SUMMARY", trials_table([t], "val_loss", "min", top=5))
    progress.close()
    lines = buf.getvalue().splitlines()
    assert lines[1].startswith("[1/2] trial 0 COMPLETE val_loss=0.5") and lines[-1].split()[:3] == [
        "0",
        "COMPLETE",
        "0.5",
    ]


def test_live_progress_follows_real_lightning_trials(tmp_path, fast_trainer):
    """The hooks fed by real trials as the driver feeds them: a value per epoch, then the record."""
    from lightning_hpt.lightning.module_builder import ModuleTrialBuilder
    from lightning_hpt.lightning.runner import TrialBuild, TrialJob, run_trial

    buf = io.StringIO()
    progress = LiveProgress(buf, force_terminal=True, width=120, refresh_per_second=50)
    seen: list[tuple[int, int, float]] = []

    class Forward:  # what the driver's reporter does: store the value, then tell the display
        def __init__(self, number: int) -> None:
            self.number = number

        def report(self, step: int, value: float) -> bool:
            seen.append((self.number, step, value))
            progress.trial_reported(self.number, step, value)
            return False

    build = TrialBuild(
        ModuleTrialBuilder(TinyModel, TinyData, {**fast_trainer, "max_epochs": 3}),
        "val_loss",
        Direction.MINIMIZE,
        patience=None,
        checkpoint=False,
    )
    progress.start("default", 2, 0, "sqlite://", monitor="val_loss")
    for number, lr in enumerate((0.02, 0.05)):
        rec = TrialRecord(number, {"model.lr": lr}, TrialState.RUNNING)
        progress.trial_started(rec)
        outcome = run_trial(TrialJob(build, number, rec.params, 0, str(tmp_path / f"trial_{number}")), Forward(number))
        assert outcome.state is TrialState.COMPLETE
        assert [s for n, s, _ in seen if n == number] == [0, 1, 2]
        assert (progress.running[number].step, progress.running[number].value) == seen[-1][1:]
        final = TrialRecord(
            number, rec.params, outcome.state, outcome.value, outcome.intermediate, started_at=0.0, finished_at=1.0
        )
        progress.trial_finished(final, final, "val_loss", number + 1, 2)
        assert number not in progress.running
    progress.end("done")
    out = plain(buf.getvalue())
    assert "[1/2] trial 0 COMPLETE" in out and "[2/2] trial 1 COMPLETE" in out and "epochs=3" in out
