"""Build one trial the way the project's LightningCLI builds a ``fit`` run: model, datamodule and Trainer."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_hpt.cli.parsing import ARGS_WARNING, dump_config, layer, parse_base
from lightning_hpt.exceptions import ConfigurationError
from lightning_hpt.lightning.config import namespace_of
from lightning_hpt.lightning.runner import TrialJob, trial_seed

__all__ = ["TRIAL_CONFIG", "CLITrialBuilder"]

#: each trial's fully resolved config, in its directory; ``fit --config`` runs it as it is.
TRIAL_CONFIG = "config.yaml"


@dataclass(frozen=True)
class CLITrialBuilder:
    """Builds whole trials with the project's LightningCLI: same parser, defaults, callbacks and loggers.

    Each trial constructs ``cli_class(*cli_args, **cli_kwargs, run=False)`` on the user's resolved
    config with the trial's parameters layered on top. The CLI seeds, instantiates the model,
    datamodule, optimizer and lr_scheduler and the Trainer (with the user's callbacks and loggers)
    as ``fit`` would; the search's callbacks (its monitor, EarlyStopping, the best-epoch checkpoint)
    are added, and ``default_root_dir`` is the trial's directory. The trial's config is written to
    ``<trial dir>/config.yaml``.

    Picklable (classes by reference, the config as plain data), so trials can run in workers.

    Attributes:
        cli_class: the LightningCLI class or subclass.
        cli_args: positional arguments of its constructor (e.g. the model class).
        cli_kwargs: its keyword arguments (``model_class``, ``datamodule_class``, ``trainer_defaults``, ...).
        config: the user's resolved config (``fit``'s arguments, loaded YAML).
        quiet: no progress bar or model summary inside trials (unless the config has such callbacks).

    Example:
        >>> from lightning.pytorch.cli import LightningCLI
        >>> builder = CLITrialBuilder(LightningCLI, config=config)  # doctest: +SKIP
        >>> HyperparameterSearch(builder, space=..., ...)  # doctest: +SKIP
    """

    cli_class: type
    cli_args: Sequence[Any] = ()
    cli_kwargs: Mapping[str, Any] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    quiet: bool = True

    @property
    def namespace(self) -> Any:
        """The Lightning package of the CLI (``lightning.pytorch`` or ``pytorch_lightning``)."""
        return namespace_of(self.cli_class)

    def __call__(self, config: Mapping[str, Any]) -> Any:
        # HyperparameterSearch takes model factories; this object builds whole trials instead (build_trial)
        raise ConfigurationError(
            "a CLITrialBuilder builds whole trials with build_trial(job, callbacks); it is not a model factory"
        )

    def seed(self, seed: int | None, number: int) -> int | None:
        """The ``seed_everything`` of trial ``number``: ``None`` keeps the config's (an integer, or false).

        An integer in the config is the user's choice for every run, so it is kept (every trial
        then starts from the same seed); ``true`` (a random seed) becomes the trial's own seed.
        """
        if self.config.get("seed_everything", True) is True:
            return trial_seed(seed, number)
        return None

    def build_trial(self, job: TrialJob, callbacks: Sequence[Any]) -> tuple[Any, Any, Any]:
        """The model, datamodule (or ``None``) and Trainer of ``job``, built by the CLI.

        Args:
            job: the trial; ``job.params`` are full config paths.
            callbacks: the search's callbacks for this trial's Trainer.
        """
        cls = _trial_cli(
            self.cli_class,
            self.config,
            job.params,
            self.seed(job.seed, job.number),
            callbacks,
            job.trial_dir,
            self.quiet,
            self.namespace,
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=ARGS_WARNING)
            cli = cls(*self.cli_args, **dict(self.cli_kwargs), args=[], run=False)
        Path(job.trial_dir, TRIAL_CONFIG).write_text(dump_config(cli.parser, cli.config))
        return cli.model, cli.datamodule, cli.trainer


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _trial_cli(
    cli_class: type,
    base: Mapping[str, Any],
    params: Mapping[str, Any],
    seed: int | None,
    callbacks: Sequence[Any],
    trial_dir: str,
    quiet: bool,
    pl: Any,
) -> type:
    """A subclass of the user's CLI that parses the trial's config and adds the search's callbacks."""

    class TrialCLI(cli_class):  # type: ignore[misc, valid-type]
        def parse_arguments(self, parser: Any, args: Any) -> None:
            self.config = layer(parser, parse_base(parser, base), params, seed)

        def instantiate_trainer(self, **kwargs: Any) -> Any:
            trainer_cfg = self.config_init.get("trainer") or {}
            user = _as_list(kwargs.pop("callbacks", None) or trainer_cfg.get("callbacks"))
            ours = list(callbacks)
            if trainer_cfg.get("enable_checkpointing") is False:  # the config turned checkpoints off: keep it so
                ours = [c for c in ours if not isinstance(c, pl.callbacks.ModelCheckpoint)]
            kwargs["callbacks"] = [*user, *ours]
            kwargs["default_root_dir"] = os.fspath(trial_dir)
            if quiet and not any(isinstance(c, pl.callbacks.ProgressBar) for c in user):
                kwargs["enable_progress_bar"] = False
            if quiet and not any(isinstance(c, pl.callbacks.ModelSummary) for c in user):
                kwargs["enable_model_summary"] = False
            # loggers the user configured with a fixed directory are shared by the trials: the
            # config saved there is each trial's in turn (every trial's own is in its directory)
            self.save_config_kwargs = {**self.save_config_kwargs, "overwrite": True}
            return super().instantiate_trainer(**kwargs)

    TrialCLI.__name__ = TrialCLI.__qualname__ = cli_class.__name__
    return TrialCLI
