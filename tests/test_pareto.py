"""The Pareto front: its math on known points, and what a multi-objective result, show, best and report say."""

from __future__ import annotations

import csv
import io
import itertools
import json
import math

import pytest
import torch
import yaml
from test_objectives import make

from lightning_hpt import ConfigurationError, HPTError, TrialState
from lightning_hpt.cli import main
from lightning_hpt.objectives import parse_objectives
from lightning_hpt.pareto import crowding_distance, front_ranks, hypervolume, nds_keys, pareto_front, rank_pareto
from lightning_hpt.storage import open_storage
from lightning_hpt.trial import TrialRecord

MIN_MIN = parse_objectives(["a", "b"], ["min", "min"])


def record(number, a, b, state=TrialState.COMPLETE, **kw):
    return TrialRecord(number, {"x": number}, state, value=a, values=(a, b), **kw)


def test_fronts_and_crowding_on_known_points():
    points = torch.tensor([[1.0, 5.0], [2.0, 4.0], [3.0, 3.0], [1.0, 1.0], [2.0, 2.0], [0.0, 0.0], [math.nan, 9.0]])
    assert front_ranks(points).tolist() == [0, 0, 0, 2, 1, 3, 4]  # the NaN point comes after every front
    crowd = crowding_distance(points[:3])
    assert math.isinf(crowd[0]) and math.isinf(crowd[2]) and crowd[1] == pytest.approx(2.0)
    keys = nds_keys(points[:3])
    assert sorted(range(3), key=keys.__getitem__) == [0, 2, 1]  # the extremes first, then the crowded middle


def test_hypervolume_against_a_hand_computed_value():
    # maximization form: points (1, 2) and (2, 1) above reference (0, 0) cover 2 + 2 - 1 = 3
    assert hypervolume(torch.tensor([[1.0, 2.0], [2.0, 1.0]]), [0.0, 0.0]) == pytest.approx(3.0)
    assert hypervolume(torch.tensor([[1.0, 2.0], [-1.0, 5.0]]), [0.0, 0.0]) == pytest.approx(2.0)  # below ref: none
    assert hypervolume(torch.zeros(0, 2), [0.0, 0.0]) == 0.0


def test_front_agrees_with_brute_force_and_keeps_out_what_cannot_be_best():
    g = torch.Generator().manual_seed(0)
    values = torch.rand(40, 2, generator=g).tolist()
    trials = [record(i, a, b) for i, (a, b) in enumerate(values)]
    trials.append(record(40, -1.0, -1.0, attrs={"infeasible": ["n_params = 3e+06, not <= 2e+06"]}))
    trials.append(record(41, -2.0, -2.0, state=TrialState.PRUNED))
    trials.append(TrialRecord(42, {}, TrialState.FAILED))
    front = pareto_front(trials, MIN_MIN)

    def dominated(i):
        return any(
            values[j][0] <= values[i][0] and values[j][1] <= values[i][1] and values[j] != values[i] for j in range(40)
        )

    assert {t.number for t in front} == {i for i in range(40) if not dominated(i)}
    assert [t.values[0] for t in front] == sorted(t.values[0] for t in front)  # best first by the first objective
    ranked = rank_pareto(trials, MIN_MIN)
    assert ranked[: len(front)] == front  # the front first, in the order pareto_front lists it
    assert [t.number for t in ranked[-3:]] == [40, 41, 42]  # infeasible, pruned, failed


def run_study(tmp_path, fast_trainer, n_trials=4, **kw):
    search = make(tmp_path, fast_trainer, n_trials=n_trials, seed=1, **kw)
    return search, search.run()


def test_result_has_a_front_and_best_asks_which_point(tmp_path, fast_trainer):
    _, result = run_study(tmp_path, fast_trainer)
    front = result.pareto_trials
    assert front and front == pareto_front(result.trials, result.objectives)
    with pytest.raises(HPTError, match=r"no single best trial: choose one with result\.best\(weights=") as err:
        _ = result.best_trial
    assert str([t.number for t in front]) in str(err.value)
    for attr in ("best_params", "best_value", "best_checkpoint"):
        with pytest.raises(HPTError, match="pareto_trials"):
            getattr(result, attr)
    smallest = min(front, key=lambda t: t.values[1])
    assert result.best(weights={"n_params": 1.0}) == smallest
    assert result.best(weights=[1.0, 0.0]) == front[0]
    assert result.best(rule=lambda t: -t.values[1]) == smallest
    with pytest.raises(ConfigurationError, match="give weights="):
        result.best()
    with pytest.raises(ConfigurationError, match=r"weights names \['acc'\]"):
        result.best(weights={"acc": 1})
    model = result.load_model(smallest)
    assert model.hparams.hidden == smallest.params["model.hidden"] and not model.training
    text = str(result)
    assert f"Pareto front ({len(front)} trials) of val_loss, n_params:" in text and "result.best(weights" in text
    df = result.to_dataframe()
    assert list(df["values.n_params"]) == [t.values[1] for t in result.trials]
    assert list(df["pareto"]) == [t in front for t in result.trials]


def test_refit_needs_a_chosen_point(tmp_path, fast_trainer):
    with pytest.raises(ConfigurationError, match=r"refit=True .* result\.refit\(trial=\.\.\.\)"):
        run_study(tmp_path, fast_trainer, refit=True)


def run_cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    return main(list(argv), stdout=out, stderr=err), out.getvalue(), err.getvalue()


def test_show_best_and_report_list_the_front(tmp_path, fast_trainer, capsys):
    _, result = run_study(tmp_path, fast_trainer)
    front = [t.number for t in result.pareto_trials]
    code, out, err = run_cli("show", "--root", str(tmp_path))
    assert code == 0, err
    lines = out.splitlines()
    assert "val_loss (min), n_params (min)" in lines[0]
    assert lines[1].split()[:5] == ["#", "state", "val_loss", "n_params", "pareto"]
    marked = [int(ln.split()[0]) for ln in lines[2:-1] if ln.split()[4] == "*"]
    assert marked == sorted(front) and lines[-1].startswith(f"Pareto front: trials {front}")
    code, out, err = run_cli("best", "--root", str(tmp_path))
    assert code == 1 and f"give --trial N (one of the Pareto front: {front})" in err
    code, out, err = run_cli("best", "--root", str(tmp_path), "--trial", "99")
    assert code == 1 and f"--trial 99: study 'default' has no trial 99 (it has {len(result.trials)})" in err
    code, out, err = run_cli("best", "--root", str(tmp_path), "--trial", str(front[-1]), "--format", "json")
    assert code == 0, err
    chosen = yaml.safe_load(out)  # JSON is YAML
    last = next(t for t in result.trials if t.number == front[-1])
    assert (chosen["trial"], chosen["params"]) == (last.number, dict(last.params))
    assert chosen["values"] == {"val_loss": last.values[0], "n_params": last.values[1]}
    code, out, err = run_cli("best", "--root", str(tmp_path), "--weights", "n_params=1", "--format", "yaml")
    assert code == 0, err
    smallest = min(result.pareto_trials, key=lambda t: t.values[1])
    assert str(smallest.params["model.hidden"]) in out
    for bad, words in [("acc=1", "--weights names ['acc'], which are not objectives of the study (['val_loss',"),
                       ("n_params=-1", "--weights must be numbers >= 0, not all 0; got 'n_params=-1'"),
                       ("n_params", "--weights must read name=number,...; got 'n_params'"),
                       ("n_params=1,n_params=0", "--weights names ['n_params'] more than once")]:  # fmt: skip
        code, out, err = run_cli("best", "--root", str(tmp_path), "--weights", bad)
        assert code == 2 and words in err and "e.g. --weights val_loss=1,n_params=1" in err and "{" not in err, err
    code, out, err = run_cli("best", "--root", str(tmp_path), "--trial", str(front[-1]), "--weights", "n_params=1")
    err += capsys.readouterr().err  # argparse's own refusal goes to sys.stderr
    assert code == 2 and out == "" and "argument --weights: not allowed with argument --trial" in err, err
    code, out, err = run_cli("export", "--root", str(tmp_path))  # a CLI user has no result to pass objectives
    assert code == 0 and out == f"{len(result.trials)} trials: {tmp_path / 'default' / 'trials.csv'}\n", err
    header = (tmp_path / "default" / "trials.csv").read_text().splitlines()[0].split(",")
    assert {"values.val_loss", "values.n_params", "pareto", "params.model.hidden"} <= set(header)
    rows = list(csv.DictReader((tmp_path / "default" / "trials.csv").open()))
    assert [int(r["number"]) for r in rows if r["pareto"] == "True"] == sorted(front)
    code, out, err = run_cli("export", "--root", str(tmp_path), "-o", str(tmp_path / "t.json"))
    assert code == 0 and [t["number"] for t in json.loads((tmp_path / "t.json").read_text())] == [
        t.number for t in result.trials
    ]
    code, out, err = run_cli("export", "--root", str(tmp_path), "-o", str(tmp_path / "t.txt"))
    assert code == 2 and "'trials.csv' or 'trials.json'" in err and not (tmp_path / "t.txt").exists()
    pytest.importorskip("matplotlib")
    code, out, err = run_cli("report", "--root", str(tmp_path), "-o", str(tmp_path / "r.html"))
    assert code == 0, err
    html = (tmp_path / "r.html").read_text()
    assert "Pareto front" in html and "objectives <b>val_loss (min), n_params (min)</b>" in html
    assert "This plot failed" not in html


def test_search_section_with_several_objectives_writes_the_fronts_configs(tmp_path):
    fit = {
        "model": {"class_path": "test_objectives.SizedModel", "init_args": {"lr": 0.05, "hidden": 8}},
        "data": {"class_path": "conftest.TinyData"},
        "trainer": {"accelerator": "cpu", "devices": 1, "max_epochs": 2, "logger": False, "num_sanity_val_steps": 0},
    }
    section = {
        "space": {"model.hidden": {"type": "int", "low": 2, "high": 32}},
        "n_trials": 3,
        "seed": 0,
        "root": str(tmp_path / "runs"),
        "verbose": False,
        "monitor": ["val_loss", "n_params"],
        "mode": ["min", "min"],
        "constraints": {"neg_size": [">=", -60.0]},
        "param_constraints": ["model.init_args.hidden <= 16"],
    }
    (tmp_path / "fit.yaml").write_text(yaml.safe_dump(fit))
    (tmp_path / "search.yaml").write_text(yaml.safe_dump({"search": section}))
    configs = ("--config", str(tmp_path / "fit.yaml"), "--config", str(tmp_path / "search.yaml"))
    code, out, err = run_cli("search", *configs)
    assert code == 0, err
    written = sorted((tmp_path / "runs" / "default" / "pareto").glob("trial_*.yaml"))
    assert written and all(f"Pareto front config (trial {p.stem[6:]})" in out for p in written)
    config = yaml.safe_load(written[0].read_text())
    assert config["model"]["class_path"] == "test_objectives.SizedModel"
    first = written[0].read_text().splitlines()[0]  # every objective's value, not the first one's alone
    assert (
        first.startswith(f"# study 'default', trial {written[0].stem[6:]}: values val_loss=") and ", n_params=" in first
    )
    trials = open_storage(str(tmp_path / "runs" / "studies.db")).trials("default")
    assert all(t.params["model.init_args.hidden"] <= 16 for t in trials)
    assert all(t.feasible == (6 * t.params["model.init_args.hidden"] + 1 <= 60) for t in trials)


@pytest.mark.parametrize("weights", [{"a": -1.0, "b": 1.0}, {"a": 0, "b": 0}, [1.0], "a"])
def test_bad_weights_are_refused(weights):
    from lightning_hpt.pareto import choose

    with pytest.raises(ConfigurationError, match="weights"):
        choose([record(0, 1.0, 2.0)], MIN_MIN, weights)


def test_weights_pick_the_scaled_best():
    from lightning_hpt.pareto import choose

    front = [record(0, 0.0, 10.0), record(1, 0.5, 1.0), record(2, 1.0, 0.0)]
    assert choose(front, MIN_MIN, {"a": 1.0}).number == 0
    assert choose(front, MIN_MIN, {"a": 1.0, "b": 1.0}).number == 1  # scaled: 1 + 0.9 beats 1 + 0 and 0 + 1
    assert [choose(front, MIN_MIN, w).number for w in itertools.product([0.0, 1.0], [1.0])] == [2, 1]


def test_exports_carry_every_objective(tmp_path):
    import csv
    import json

    from lightning_hpt.report.export import export_trials

    trials = [record(0, 0.5, 10.0, intermediate={0: 0.5}, intermediate_values={0: (0.5, 10.0)}), record(1, 0.2, 30.0)]
    data = json.loads(export_trials(trials, tmp_path / "t.json").read_text())
    assert data[0]["values"] == [0.5, 10.0] and data[0]["intermediate_values"] == {"0": [0.5, 10.0]}
    rows = list(csv.DictReader((export_trials(trials, tmp_path / "t.csv")).open()))
    assert [(r["values.0"], r["values.1"]) for r in rows] == [("0.5", "10.0"), ("0.2", "30.0")]
    assert "feasible" not in rows[0]  # a study without outcome constraints


def test_exports_name_the_objectives_and_say_which_trials_are_feasible(tmp_path):
    import csv
    import json

    from lightning_hpt.report.export import export_trials

    trials = [
        record(0, 0.5, 10.0, attrs={"infeasible": ["n_params <= 5"]}),
        record(1, 0.2, 3.0, attrs={"infeasible": []}),
    ]
    names = ["val_loss", "n_params"]
    rows = list(csv.DictReader(export_trials(trials, tmp_path / "t.csv", objectives=names).open()))
    assert [(r["values.val_loss"], r["values.n_params"], r["feasible"]) for r in rows] == [
        ("0.5", "10.0", "False"),
        ("0.2", "3.0", "True"),
    ]
    data = json.loads(export_trials(trials, tmp_path / "t.json", objectives=MIN_MIN).read_text())
    assert data[1]["objective_values"] == {"a": 0.2, "b": 3.0}
    assert [d["feasible"] for d in data] == [False, True]
    assert [d["pareto"] for d in data] == [False, True]  # Objective objects give directions: the front is known
    assert "pareto" not in rows[0]  # names alone do not
    with pytest.raises(ConfigurationError, match=r"objectives=\['val_acc', 'n_params'\]"):
        export_trials(trials, tmp_path / "u.csv", objectives=[1, 2])
    assert not (tmp_path / "u.csv").exists()


def test_progress_lines_show_every_objective_and_infeasibility():
    from lightning_hpt.report.table import outcome_text

    assert outcome_text(record(0, 0.5, 10.0), "a, b") == "a=0.5, b=10"
    assert outcome_text(record(0, 0.5, 10.0, attrs={"infeasible": ["x"]}), "a, b") == "a=0.5, b=10 infeasible"
    assert outcome_text(TrialRecord(1, {}, TrialState.COMPLETE, value=0.25), "val_loss") == "val_loss=0.25"
    assert outcome_text(TrialRecord(2, {}, TrialState.FAILED), "val_loss") is None


def test_modes_take_optunas_words_in_any_case_and_refuse_others_naming_the_objective():
    objectives = parse_objectives(["val_acc", "n_params"], ["Maximize", "minimize"])
    assert [str(o) for o in objectives] == ["val_acc (max)", "n_params (min)"]
    with pytest.raises(
        ConfigurationError, match=r"mode\[1\] \(for objective 'n_params'\).*'min' or 'max'.*got mode='down'"
    ):
        parse_objectives(["val_acc", "n_params"], ["max", "down"])
