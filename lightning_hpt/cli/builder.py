"""Build one trial the way the project's LightningCLI builds a ``fit`` run: model, datamodule and Trainer."""

from __future__ import annotations

import importlib
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from typing_extensions import override

from lightning_hpt.cli.parsing import ARGS_WARNING, dump_config, layer, parse_base
from lightning_hpt.exceptions import ConfigurationError
from lightning_hpt.lightning.builder import (
    CallbackFactory,
    TrialBuilder,
    TrialParts,
    evaluation_args,
    trainer_params,
)
from lightning_hpt.lightning.callbacks import combine_callbacks, quiet_flags
from lightning_hpt.lightning.config import namespace_of
from lightning_hpt.lightning.loggers import TrialContext, config_loggers, trial_loggers
from lightning_hpt.space import SearchSpace

__all__ = ["TRIAL_CONFIG", "CLITrialBuilder", "seed_of_trial"]

#: each trial's fully resolved config, in its directory; ``fit --config`` runs it as it is.
TRIAL_CONFIG = "config.yaml"
#: what a trial CLI instantiates: the whole ``fit`` run, the model and data only, or them and a refit/test Trainer.
_TRIAL, _PARTS, _EVALUATION = "trial", "parts", "evaluation"


def seed_of_trial(config: Mapping[str, Any], seed: int) -> int | None:
    """The ``seed_everything`` a trial seeded ``seed`` runs with under ``config``: its own seed where the config has
    ``true`` or none (a random seed), else the config's (an integer, kept for every trial; ``None`` for false).

    An integer in the config is the user's choice for every run, so it is kept (every trial then
    starts from the same seed).
    """
    fixed = config.get("seed_everything", True)
    if fixed is True:
        return seed
    return fixed if isinstance(fixed, int) and not isinstance(fixed, bool) else None


def _instantiate(value: Any) -> Any:
    """A ``{"class_path": ..., "init_args": {...}}`` value of the config, built; any other value as it is."""
    if isinstance(value, Mapping) and isinstance(value.get("class_path"), str):
        module, _, name = value["class_path"].rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), name)
            return cls(**dict(value.get("init_args") or {}))
        except Exception:  # judged from its name by the DDP check, as a string would be
            return value["class_path"]
    return value


#: LightningCLI's warnings about the config, the same for every trial: shown once a search
ONCE_WARNING = re.compile(r"`\S+\.configure_optimizers` will be overridden by")


@dataclass(frozen=True)
class CLITrialBuilder(TrialBuilder):
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
        >>> HyperparameterSearch(builder=builder, space=..., ...)  # doctest: +SKIP
    """

    cli_class: type
    cli_args: Sequence[Any] = ()
    cli_kwargs: Mapping[str, Any] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    quiet: bool = True
    #: the messages of warnings said once for the whole search, not once per trial (see :meth:`_cli`)
    _said: set[str] = field(default_factory=set, init=False, repr=False, compare=False)

    @property
    @override
    def namespace(self) -> Any:
        """The Lightning package of the CLI (``lightning.pytorch`` or ``pytorch_lightning``)."""
        return namespace_of(self.cli_class)

    @override
    def check(self, space: SearchSpace) -> None:
        sections = sorted(self.config)
        for key in space:
            if key.split(".")[0] not in self.config:
                raise ConfigurationError(
                    f"parameter {key!r} is not a path of the config; its sections are {sections}"
                    " (write space keys as the config's own paths, e.g. model.init_args.lr)"
                )

    def _cli(self, params: Mapping[str, Any], mode: str, **options: Any) -> Any:
        """The project's CLI for one trial (or its parts), built as ``fit`` would build it.

        Its warnings are shown as they come, but for those about the config itself, the same for every
        trial (LightningCLI's "``configure_optimizers`` will be overridden"), which are shown once: each
        trial's filter context would otherwise show them again.
        """
        cls = _trial_cli(self.cli_class, self.config, params, mode, self.quiet, self.namespace, **options)
        with warnings.catch_warnings(record=True) as caught:
            warnings.filterwarnings("ignore", message=ARGS_WARNING)
            cli = cls(*self.cli_args, **dict(self.cli_kwargs), args=[], run=False)
        for w in caught:
            message = str(w.message)
            if ONCE_WARNING.search(message):
                if message in self._said:
                    continue
                self._said.add(message)
            warnings.showwarning(w.message, w.category, w.filename, w.lineno, w.file, w.line)
        return cli

    @override
    def build(self, params: Mapping[str, Any], *, seed: int, trial_dir: str, callbacks: CallbackFactory) -> TrialParts:
        """The model, datamodule (or ``None``) and Trainer of a trial, built by the CLI; ``params`` are config paths.

        The trial's resolved config is written to ``<trial_dir>/config.yaml``.
        """
        cli = self._cli(
            params,
            _TRIAL,
            seed=seed_of_trial(self.config, seed),
            callbacks=callbacks(self.namespace),
            trial_dir=trial_dir,
        )
        # the project's loggers as configured, not the trial's runs: `fit --config best.yaml` logs where fit does
        Path(trial_dir, TRIAL_CONFIG).write_text(dump_config(cli.parser, cli.project_config))
        return TrialParts(cli.model, cli.datamodule, cli.trainer)

    @override
    def build_model(self, params: Mapping[str, Any]) -> Any:
        return self._cli(params, _PARTS).model

    @override
    def build_datamodule(self, params: Mapping[str, Any]) -> Any:
        return self._cli(params, _PARTS).datamodule

    @override
    def trainer_settings(self, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        trainer = {**(self.config.get("trainer") or {}), **trainer_params(params or {})}
        return {k: _instantiate(v) for k, v in trainer.items() if v is not None}

    @override
    def evaluation_trainer(self, params: Mapping[str, Any], **overrides: Any) -> Any:
        return self._cli(params, _EVALUATION, overrides=overrides).trainer

    @override
    def describe_trainer(self, params: Mapping[str, Any] | None = None) -> str:
        keys = ("accelerator", "devices", "num_nodes", "strategy")
        shown = {k: v for k, v in self.trainer_settings(params).items() if k in keys}
        return f"the config's trainer settings {shown}"


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _trial_cli(
    cli_class: type,
    base: Mapping[str, Any],
    params: Mapping[str, Any],
    mode: str,
    quiet: bool,
    pl: Any,
    *,
    seed: int | None = None,
    callbacks: Sequence[Any] = (),
    trial_dir: str = "",
    overrides: Mapping[str, Any] | None = None,
) -> type:
    """A subclass of the user's CLI that parses the trial's config and builds what ``mode`` asks for.

    ``_TRIAL``: the Trainer with the search's ``callbacks`` in ``trial_dir``; ``_PARTS``: no Trainer;
    ``_EVALUATION``: a Trainer with the config's :data:`EVALUATION_TRAINER_KEYS` and ``overrides``.
    """

    class TrialCLI(cli_class):  # type: ignore[misc, valid-type]
        @override
        def parse_arguments(self, parser: Any, args: Any) -> None:
            self.config = layer(parser, parse_base(parser, base), params, seed)
            self.project_config = self.config  # what the trial's config.yaml (and best.yaml) holds
            if mode == _TRIAL and self.config.get("trainer.logger"):  # each trial logs its own run
                ctx = TrialContext.from_dir(trial_dir, params)
                self.config = self.config.clone()
                self.config["trainer.logger"] = config_loggers(self.config["trainer.logger"], ctx)

        @override
        def instantiate_trainer(self, **kwargs: Any) -> Any:
            trainer_cfg = self.config_init.get("trainer") or {}
            if mode == _PARTS:
                return None
            if mode == _EVALUATION:
                return self.trainer_class(**evaluation_args(trainer_cfg, overrides or {}))
            user = _as_list(kwargs.pop("callbacks", None) or trainer_cfg.get("callbacks"))
            # callbacks the CLI adds itself (parser.add_lightning_class_args(EarlyStopping, ...)) count as the user's
            added = [self.config_init.get(k) for k in getattr(self.parser, "callback_keys", [])]
            monitor, *ours = combine_callbacks(
                pl,
                [*user, *added],
                list(callbacks),
                checkpointing=trainer_cfg.get("enable_checkpointing"),
                trial_dir=os.fspath(trial_dir),
            )
            kwargs["callbacks"] = [monitor, *user, *ours[len(user) + len(added) :]]
            kwargs["default_root_dir"] = os.fspath(trial_dir)
            if trainer_cfg.get("logger") in (None, True):  # Lightning's default: the trial's, as in the Python API
                kwargs["logger"] = trial_loggers(pl, None, TrialContext.from_dir(trial_dir, params))
            kwargs.update(quiet_flags(pl, [*user, *added], quiet))
            if "enable_autolog_hparams" in trainer_cfg:
                kwargs["enable_autolog_hparams"] = False  # the runner logs the trial's parameters, full names
            # loggers the user configured with a fixed directory are shared by the trials: the
            # config saved there is each trial's in turn (every trial's own is in its directory)
            self.save_config_kwargs = {**self.save_config_kwargs, "overwrite": True}
            return super().instantiate_trainer(**kwargs)

    TrialCLI.__name__ = TrialCLI.__qualname__ = cli_class.__name__
    return TrialCLI
