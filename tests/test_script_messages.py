"""What a ScriptSearch tells a script ported from another tool: Optuna's and Ray Tune's argument names, and a
Trainer with checkpointing off (as Optuna's Lightning example builds it)."""

from __future__ import annotations

import signal

import lightning.pytorch as L
import pytest
from conftest import TinyData, TinyModel
from test_script import search

from lightning_hpt.exceptions import ConfigurationError


@pytest.mark.parametrize(
    ("kwargs", "fix"),
    [
        ({"direction": "maximize"}, "use mode='min' or mode='max'"),  # Optuna's create_study
        ({"num_samples": 10}, "use n_trials="),  # Ray Tune's TuneConfig
        ({"scheduler": object()}, "use pruner='median', 'asha', 'hyperband' or a Pruner"),
        ({"sampler": object()}, "use strategy='random', 'sobol', 'grid', 'bayes' or a Strategy"),
        ({"n_jobs": 2}, "run the script several times"),
        ({"trainer_kwargs": {"max_epochs": 2}}, "your script builds its own Trainer: give trainer_kwargs to it"),
        ({"callbacks": []}, "your script builds its own Trainer: give callbacks to it"),
        ({"n_trial": 3}, "did you mean n_trials?"),
    ],
)
def test_script_search_refuses_other_tools_words_with_its_own(tmp_path, kwargs, fix):
    """An Optuna or Ray Tune user's words get the ScriptSearch argument that does it (not a Trainer's, which the
    script builds), and the list of its arguments includes monitor, mode and max_epochs; nothing is written."""
    with pytest.raises(ConfigurationError) as err:
        search(tmp_path, **kwargs)
    key = next(iter(kwargs))
    assert str(err.value).startswith(f"ScriptSearch takes no argument {key!r}; {fix}"), str(err.value)
    assert "(its arguments: space, monitor, mode, max_epochs, verbose, constraints," in str(err.value)
    assert not any(tmp_path.iterdir())


def test_a_trainer_with_checkpointing_off_is_told_to_drop_that_flag_and_its_interrupted_trial_starts_over(
    tmp_path, caplog
):
    """Optuna's Lightning example builds its Trainer with enable_checkpointing=False. The hint for the missing
    best checkpoint names that flag (Lightning refuses a ModelCheckpoint beside it, so "add a ModelCheckpoint"
    alone would fail), and an interrupted trial is said to start over, not to continue from a checkpoint."""

    def optuna_style(trial, **model):
        return L.Trainer(
            max_epochs=3,
            accelerator="cpu",
            enable_checkpointing=False,
            callbacks=[trial.callback()],
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
        ).fit(TinyModel(lr=0.01, **model), TinyData())

    s = search(tmp_path, n_trials=1)
    for trial in s:
        optuna_style(trial)
    told = [r.getMessage() for r in caplog.records if "has no checkpoint" in r.getMessage()]
    assert len(told) == 1 and "enable_checkpointing=False" in told[0], told
    assert "leave enable_checkpointing=False out and add ModelCheckpoint(monitor='val_loss', mode='min')" in told[0]
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):
            for trial in search(tmp_path, n_trials=2):
                optuna_style(trial, interrupt_at_epoch=1)
    finally:
        signal.signal(signal.SIGINT, handler)
    said = [r.getMessage() for r in caplog.records if "recorded as interrupted" in r.getMessage()]
    assert len(said) == 1 and "run the script again; it starts over" in said[0], said
    assert "enable_checkpointing=False" in said[0]
    assert "from its resumable checkpoint" not in said[0]
    for trial in search(tmp_path, n_trials=2):
        assert trial.number == 1 and trial.ckpt_path is None
        optuna_style(trial)
