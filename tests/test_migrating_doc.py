"""docs/migrating.md runs as written: its two lightning-hpt ports (an Optuna and a Ray Tune example) and the
commands it shows, on fewer trials and epochs. Each script runs in a fresh process, from a directory holding the
files the page names, as a user would copy them."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lightning_hpt.cli import main
from lightning_hpt.storage import open_storage
from lightning_hpt.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "migrating.md"
#: what makes the page's runs tiny here: (file, text in the page, text run)
SMALLER = [
    ("digits_common.py", "EPOCHS = 4\n", "EPOCHS = 2\n"),
    ("optuna_port.py", "n_trials=10,  #", "n_trials=3,  #"),
    ("ray_port.py", "def tune_digits(num_samples=10,", "def tune_digits(num_samples=3,"),
]


def page_files(tmp_path: Path) -> None:
    """Write each ``<!-- file: NAME -->`` block of the page to ``tmp_path/NAME``, made smaller as SMALLER says."""
    blocks = dict(re.findall(r"<!-- file: (\S+) -->\n```python\n(.*?)```", DOC.read_text(), flags=re.S))
    assert sorted(blocks) == ["digits_common.py", "optuna_port.py", "ray_port.py"]
    for name, old, new in SMALLER:
        assert blocks[name].count(old) == 1, (name, old)
        blocks[name] = blocks[name].replace(old, new)
    for name, code in blocks.items():
        (tmp_path / name).write_text(code)


def python(tmp_path: Path, script: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)]), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, script], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def cli(*argv: str) -> str:
    out, err = io.StringIO(), io.StringIO()
    assert main(list(argv), stdout=out, stderr=err) == 0, err.getvalue()
    return out.getvalue()


@pytest.mark.slow
def test_the_pages_ports_run_resume_and_answer_show_and_best(tmp_path):
    page_files(tmp_path)
    runs = str(tmp_path / "runs")
    said = python(tmp_path, "optuna_port.py")
    assert "[3/3] trial 2" in said and "Study 'from_optuna': 3 trials" in said
    again = python(tmp_path, "optuna_port.py")  # run again: the study is done, no trial runs
    assert "] trial " not in again and "Study 'from_optuna': 3 trials (" in again
    said = python(tmp_path, "ray_port.py")
    assert "Best hyperparameters found were: {'data.batch_size':" in said
    storage = open_storage(str(tmp_path / "runs" / "studies.db"), create=False)
    for study, names in [
        ("from_optuna", {"n_layers", "dropout", "n_units_l0"}),
        ("from_ray", {"model.config.layer_1", "model.config.layer_2", "model.config.lr", "data.batch_size"}),
    ]:
        trials = storage.trials(study)
        assert len(trials) == 3 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
        assert all(names <= set(t.params) for t in trials)
        best = yaml.safe_load(cli("best", study, "--root", runs))
        assert best["study"] == study and names <= set(best["params"])
        assert cli("show", study, "--root", runs, "--top", "3").startswith(f"study {study!r}: 3 trials")
    (best,) = [
        t
        for t in storage.trials("from_optuna")
        if t.number == yaml.safe_load(cli("best", "from_optuna", "--root", runs))["trial"]
    ]
    assert best.checkpoint and Path(best.checkpoint).exists()  # the page's ModelCheckpoint on val_acc
