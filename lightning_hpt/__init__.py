"""lightning-hpt: hyperparameter search for PyTorch Lightning."""

from lightning_hpt.define_by_run import replay
from lightning_hpt.exceptions import (
    ConfigurationError,
    DatabaseLockedError,
    HPTError,
    MetricNotFoundError,
    SearchFailedError,
    SearchPreempted,
    SearchSpaceError,
    StorageError,
    StudyMismatchError,
    StudyNotFoundError,
)
from lightning_hpt.executors import EXECUTORS, Executor, LocalExecutor, ProcessExecutor
from lightning_hpt.lightning.builder import TrialBuilder
from lightning_hpt.lightning.folds import CrossValidation, KFoldDataModule
from lightning_hpt.lightning.loggers import TrialLogger
from lightning_hpt.lightning.module_builder import ModuleTrialBuilder
from lightning_hpt.lightning.resume import Resume
from lightning_hpt.pruners import HyperbandPruner, MedianPruner, NopPruner, Pruner, SuccessiveHalvingPruner
from lightning_hpt.result import SearchResult
from lightning_hpt.script import ScriptSearch, ScriptTrial
from lightning_hpt.search import HyperparameterSearch
from lightning_hpt.space import Categorical, Float, Int, SearchSpace
from lightning_hpt.strategies import GridStrategy, RandomStrategy, SobolStrategy, Strategy
from lightning_hpt.trial import Direction, History, TrialRecord, TrialState

__version__ = "0.1.0"

__all__ = [
    "BayesianStrategy",
    "Categorical",
    "ConfigurationError",
    "CrossValidation",
    "DatabaseLockedError",
    "Direction",
    "Executor",
    "Float",
    "GridStrategy",
    "HPTError",
    "History",
    "HyperbandPruner",
    "HyperparameterSearch",
    "Int",
    "KFoldDataModule",
    "LocalExecutor",
    "MedianPruner",
    "MetricNotFoundError",
    "ModuleTrialBuilder",
    "NopPruner",
    "ProcessExecutor",
    "Pruner",
    "RandomStrategy",
    "RayExecutor",
    "Resume",
    "ScriptSearch",
    "ScriptTrial",
    "SearchFailedError",
    "SearchPreempted",
    "SearchResult",
    "SearchSpace",
    "SearchSpaceError",
    "SobolStrategy",
    "StackedExecutor",
    "StorageError",
    "Strategy",
    "StudyMismatchError",
    "StudyNotFoundError",
    "SuccessiveHalvingPruner",
    "TrialBuilder",
    "TrialLogger",
    "TrialRecord",
    "TrialState",
    "replay",
]


# the stacked executor imports the executors, so it registers here, above them (imported when used)
EXECUTORS.register("stacked", "lightning_hpt.stacking:StackedExecutor")


def __getattr__(name: str):  # BoTorch, Ray and the stacked executor are imported only when used
    if name == "BayesianStrategy":
        from lightning_hpt.strategies.bayesian import BayesianStrategy

        return BayesianStrategy
    if name == "RayExecutor":
        from lightning_hpt.executors.ray import RayExecutor

        return RayExecutor
    if name == "StackedExecutor":
        from lightning_hpt.stacking import StackedExecutor

        return StackedExecutor
    raise AttributeError(f"module 'lightning_hpt' has no attribute {name!r}")
