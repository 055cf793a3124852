"""A LightningCLI project's trials cannot be stacked: ``search.executor: stacked`` is refused before any trial."""

from __future__ import annotations

from pathlib import Path

from test_cli import FIT, run, search_section, write


def test_the_stacked_executor_is_refused_for_a_lightning_cli_project(tmp_path: Path) -> None:
    section = search_section(tmp_path, executor={"name": "stacked", "stack": 8})
    code, _, err = run(
        "search", "--config", write(tmp_path / "fit.yaml", FIT), "--config", write(tmp_path / "s.yaml", section)
    )
    assert code == 2, err
    assert "search.executor: stacked" in err and "executor=StackedExecutor(stack=8)" in err, err
    assert not (tmp_path / "runs").exists()  # nothing written, no trial run one by one
