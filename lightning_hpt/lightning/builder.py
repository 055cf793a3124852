"""How one trial's model, datamodule and Trainer are made: the :class:`TrialBuilder` interface.

A search holds one builder; it is pickled to worker processes with every trial's settings, so
an implementation holds plain data and classes (by reference), never open resources. Two
implementations exist: :class:`ModuleTrialBuilder` (this module: a LightningModule class or
factory, a DataModule and Trainer arguments) and ``lightning_hpt.cli.CLITrialBuilder`` (a
project's LightningCLI and its config).
"""

from __future__ import annotations

import copy
import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from lightning_hpt.lightning import compat
from lightning_hpt.space import SearchSpace

__all__ = ["EVALUATION_TRAINER_KEYS", "TrialBuilder", "TrialParts", "evaluation_args", "trainer_params"]

#: Trainer arguments of the search that a refit or test Trainer keeps: where and how it computes,
#: not how long it trains, how it validates, logs or checkpoints (refit and test set those).
EVALUATION_TRAINER_KEYS = (
    "accelerator",
    "devices",
    "precision",
    "strategy",
    "num_nodes",
    "deterministic",
    "gradient_clip_val",
    "gradient_clip_algorithm",
    "accumulate_grad_batches",
    "callbacks",
)

#: ``callbacks(pl)``: the search's callbacks for a trial's Trainer, given the Lightning package.
CallbackFactory = Callable[[Any], list[Any]]


def evaluation_args(settings: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments of a refit or test Trainer: the trials' :data:`EVALUATION_TRAINER_KEYS`, then ``overrides``.

    The callbacks are copies (a refit must not change the trials' callback objects), without a
    project's ``ModelCheckpoint`` and ``EarlyStopping``: they choose and stop on validation runs,
    which a refit (a set number of epochs on training and validation data) and a test do not have;
    Lightning refuses a checkpoint callback in a Trainer without checkpointing, and early stopping on
    a metric that is never logged.
    """
    args = {k: v for k, v in settings.items() if k in EVALUATION_TRAINER_KEYS and v is not None}
    args.update(overrides)
    if args.get("callbacks") is not None:
        callbacks = args["callbacks"]
        callbacks = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
        args["callbacks"] = copy.deepcopy([c for c in callbacks if not _chooses_on_validation(c)])
    return {"enable_progress_bar": False, "enable_model_summary": False, **args}


def _chooses_on_validation(callback: Any) -> bool:
    return any(compat.is_lightning_class(type(callback), name) for name in ("Checkpoint", "EarlyStopping"))


class TrialParts(NamedTuple):
    """What one trial trains: the LightningModule, its DataModule (or ``None``) and the Trainer."""

    model: Any
    datamodule: Any
    trainer: Any


def trainer_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The top-level Trainer arguments a trial's ``trainer.*`` parameters set: ``{"max_epochs": 5, ...}``."""
    return {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith("trainer.") and k.count(".") == 1}


class TrialBuilder(ABC):
    """Makes the model, datamodule and Trainer of each trial from its parameters.

    Parameters whose names start with ``trainer.`` are Trainer arguments for every builder; the
    meaning of the others is the builder's. A builder must pickle (classes by reference, settings
    as plain data): executors send it to worker processes once per search.

    Attributes:
        quiet: no progress bar, model summary or Lightning info logs inside trials.
    """

    quiet: bool = True

    @property
    @abstractmethod
    def namespace(self) -> Any:
        """The Lightning package trials are built with (``lightning.pytorch`` or ``pytorch_lightning``)."""

    @abstractmethod
    def check(self, space: SearchSpace) -> None:
        """Refuse, with :class:`~lightning_hpt.exceptions.ConfigurationError`, a space this builder cannot build.

        Called when the search is created, before anything is written.
        """

    def check_cv(self, what: str) -> None:  # noqa: B027  (optional: a builder that cannot tell checks when built)
        """Refuse a builder whose DataModule has no ``cv_dataset()``, which ``what`` (cv, refit) needs."""

    @abstractmethod
    def build(self, params: Mapping[str, Any], *, seed: int, trial_dir: str, callbacks: CallbackFactory) -> TrialParts:
        """The model, datamodule and Trainer of one trial.

        Args:
            params: the trial's parameters.
            seed: the trial's seed (already given to ``seed_everything``); a builder may apply its own rule.
            trial_dir: the trial's directory: the Trainer's ``default_root_dir`` and its loggers' home.
            callbacks: the search's callbacks (monitor, early stopping, checkpoint), added to the user's.
        """

    @abstractmethod
    def build_model(self, params: Mapping[str, Any]) -> Any:
        """The LightningModule of ``params`` (to load a checkpoint into)."""

    @abstractmethod
    def build_datamodule(self, params: Mapping[str, Any]) -> Any:
        """The DataModule of ``params``, or ``None`` when the model has its own loaders."""

    @abstractmethod
    def trainer_settings(self, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The Trainer arguments a trial of ``params`` gets from its user (``None``: what every trial shares).

        Plain values (classes named in a config are built); callbacks and loggers may be left out.
        """

    @abstractmethod
    def evaluation_trainer(self, params: Mapping[str, Any], **overrides: Any) -> Any:
        """A Trainer to refit or test ``params``: the trials' :data:`EVALUATION_TRAINER_KEYS`, then ``overrides``."""

    def describe_trainer(self, params: Mapping[str, Any] | None = None) -> str:
        """The Trainer arguments for messages: ``"trainer_kwargs={...}"`` or where a config sets them."""
        return f"the Trainer arguments {self.trainer_settings(params)}"

    def launches_subprocesses(self, params: Mapping[str, Any] | None = None) -> bool:
        """Whether the Trainer of ``params`` (``None``: shared settings) starts DDP ranks by re-running the command."""
        return compat.launches_subprocesses(self.namespace, self.trainer_settings(params))

    def trial_launches_subprocesses(self, params: Mapping[str, Any]) -> bool:
        """Whether one trial's own ``trainer.*`` parameters (strategy, devices, ...) make it a DDP trial.

        Only trials whose parameters set :data:`~lightning_hpt.lightning.compat.PROCESS_KEYS` are
        judged (each costs a throwaway Trainer); the shared settings are :meth:`launches_subprocesses`'.
        """
        return bool(compat.PROCESS_KEYS & set(trainer_params(params))) and self.launches_subprocesses(params)

    def parts(self) -> list[tuple[str, Any]]:
        """``(name, value)`` of what is pickled with the builder, to name the part that cannot be."""
        if dataclasses.is_dataclass(self):
            return [(f.name, getattr(self, f.name)) for f in dataclasses.fields(self)]
        return [(type(self).__name__, self)]
