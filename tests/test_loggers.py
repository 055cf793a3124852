"""One run of every logger per trial: the per-trial settings, and refusing an instance every trial would share."""

from __future__ import annotations

import pytest
from jsonargparse import Namespace
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from lightning_hpt import ConfigurationError, Float, HyperparameterSearch, TrialLogger
from lightning_hpt.lightning.loggers import TrialContext, check_logger_spec, config_loggers, logger_kwargs, make_logger


def test_the_trial_is_read_from_its_directory():
    ctx = TrialContext.from_dir("/r/mnist/trial_12", {"model.lr": 0.1})
    assert (ctx.study, ctx.number, ctx.run_name, ctx.params) == ("mnist", 12, "trial_12", {"model.lr": 0.1})
    fold = TrialContext.from_dir("/r/mnist/trial_3/fold_1")
    assert (fold.study, fold.number, fold.run_name) == ("mnist", 3, "trial_3/fold_1")


def test_each_known_logger_gets_the_trials_own_run_and_keeps_the_rest():
    ctx = TrialContext("mnist", 4, "/r/mnist/trial_4")
    tb = logger_kwargs(TensorBoardLogger, {"save_dir": "logs", "name": "x", "log_graph": True}, ctx)
    assert tb == {"save_dir": "/r/mnist/trial_4", "name": "", "version": "tb", "log_graph": True}
    assert logger_kwargs(TensorBoardLogger, {}, ctx, index=1)["version"] == "tb_1"
    wandb = type("WandbLogger", (), {})
    w = logger_kwargs(wandb, {"project": "p", "offline": True, "id": "abc"}, ctx)
    assert w["name"] == "trial_4" and w["group"] == "mnist" and w["offline"] and "id" not in w
    mlflow = type("MLFlowLogger", (), {})
    m = logger_kwargs(mlflow, {"tracking_uri": "sqlite:///m.db", "tags": {"a": "1"}}, ctx)
    assert m["experiment_name"] == "mnist" and m["run_name"] == "trial_4"
    assert m["tags"] == {"a": "1", "study": "mnist", "trial": "4"} and m["tracking_uri"] == "sqlite:///m.db"
    # the project's experiment is kept (as W&B's project); Lightning's default name (a dumped config has it) is not
    assert logger_kwargs(mlflow, {"experiment_name": "cancer"}, ctx)["experiment_name"] == "cancer"
    assert logger_kwargs(mlflow, {"experiment_name": "lightning_logs"}, ctx)["experiment_name"] == "mnist"


def test_a_logger_instance_is_refused_with_what_to_pass(tmp_path):
    with pytest.raises(ConfigurationError, match=r"TrialLogger\(CSVLogger, \.\.\.\)"):
        make_logger(CSVLogger(str(tmp_path)), TrialContext("s", 0, str(tmp_path)))
    with pytest.raises(ConfigurationError, match="shared by every trial"):
        check_logger_spec([TrialLogger("csv"), TensorBoardLogger(str(tmp_path))])
    check_logger_spec([TrialLogger("csv"), CSVLogger, "tensorboard", lambda trial: None, None, True, False])


def test_search_refuses_a_shared_logger_before_writing(tmp_path):
    from conftest import TinyData, TinyModel

    with pytest.raises(ConfigurationError, match="TrialLogger"):
        HyperparameterSearch(
            TinyModel,
            TinyData,
            {"model.lr": Float(0.01, 0.1)},
            trainer_kwargs={"logger": CSVLogger(str(tmp_path / "logs"))},
            root=str(tmp_path / "runs"),
        )
    assert not (tmp_path / "runs").exists() and not (tmp_path / "logs").exists()


def test_config_loggers_rewrite_class_path_entries_only():
    ctx = TrialContext("s", 2, "/r/s/trial_2")
    one = Namespace(class_path="lightning.pytorch.loggers.CSVLogger", init_args=Namespace(save_dir="logs", name="n"))
    out = config_loggers([one, one], ctx)
    assert [o["init_args"]["version"] for o in out] == ["csv", "csv_1"]
    assert all(o["init_args"]["save_dir"] == "/r/s/trial_2" for o in out)
    assert one["init_args"]["save_dir"] == "logs"  # the config itself is not changed
    assert config_loggers(True, ctx) is True and config_loggers(False, ctx) is False
