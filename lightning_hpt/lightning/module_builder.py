"""ModuleTrialBuilder: trials from a LightningModule class or factory, a DataModule and Trainer arguments."""

from __future__ import annotations

import copy
import difflib
import functools
import inspect
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from typing_extensions import override

from lightning_hpt.exceptions import ConfigurationError
from lightning_hpt.lightning.builder import (
    CallbackFactory,
    TrialBuilder,
    TrialParts,
    evaluation_args,
    trainer_params,
)
from lightning_hpt.lightning.callbacks import combine_callbacks, quiet_flags
from lightning_hpt.lightning.config import check_keys, is_lightning_class, namespace_of, patch_optimizer, split_params
from lightning_hpt.lightning.folds import require_cv
from lightning_hpt.lightning.loggers import TrialContext, check_logger_spec, trial_loggers
from lightning_hpt.space import SearchSpace

__all__ = ["ModuleTrialBuilder", "check_trainer_kwargs"]


def _class_of(obj: Any) -> Any:
    """The class of ``functools.partial(SomeClass, ...)`` (a class with fixed init arguments), else ``obj``."""
    while isinstance(obj, functools.partial):
        obj = obj.func
    return obj


def _is_instance(obj: Any, kind: str) -> bool:
    return is_lightning_class(type(obj), kind)


def _has_own_loaders(model: Any) -> bool:
    """Whether a LightningModule class defines ``train_dataloader`` itself (so it needs no DataModule)."""
    pl = namespace_of(model)
    return getattr(model, "train_dataloader", None) is not pl.LightningModule.train_dataloader


def _check_model(model: Any) -> None:
    if _is_instance(model, "LightningModule"):
        raise ConfigurationError(
            "model must be a LightningModule class or a factory function config -> LightningModule, got the instance"
            f" {type(model).__name__}(...): every trial builds its own model, so pass the class"
            f" ({type(model).__name__}) or a factory"
        )
    if not (is_lightning_class(model, "LightningModule") or (callable(model) and not inspect.isclass(model))):
        raise ConfigurationError(
            f"model must be a LightningModule class or a factory function config -> LightningModule, got {model!r}"
        )


def check_trainer_kwargs(trainer_kwargs: Any) -> None:
    """Refuse ``trainer_kwargs`` that is not a mapping of Trainer arguments, saying what to pass instead.

    Raises:
        ConfigurationError: ``trainer_kwargs`` is a Trainer (every trial builds its own) or not a mapping.
    """
    if isinstance(trainer_kwargs, Mapping):
        return
    if _is_instance(trainer_kwargs, "Trainer"):
        raise ConfigurationError(
            "trainer_kwargs must be a dict of Trainer arguments, got a Trainer instance: every trial builds its"
            " own Trainer, so pass the arguments you gave Trainer(...) as a dict, e.g."
            ' trainer_kwargs={"max_epochs": 10, "accelerator": "auto", "callbacks": [...]}'
        )
    raise ConfigurationError(
        "trainer_kwargs must be a dict of Trainer arguments, got"
        f' {type(trainer_kwargs).__name__}: {trainer_kwargs!r}; pass e.g. trainer_kwargs={{"max_epochs": 10}}'
    )


def _check_datamodule(model: Any, datamodule: Any) -> None:
    model = _class_of(model)
    if datamodule is None:
        if is_lightning_class(model, "LightningModule") and not _has_own_loaders(model):
            raise ConfigurationError(
                f"datamodule is None, but {model.__name__} has no train_dataloader() of its own; pass the"
                " LightningDataModule class (or a factory config -> DataModule, or an instance) as datamodule="
            )
        return
    if inspect.isclass(datamodule) and not is_lightning_class(datamodule, "LightningDataModule"):
        raise ConfigurationError(
            f"datamodule must be a LightningDataModule class, instance or factory, got the class {datamodule.__name__}"
            + (" (a LightningModule: pass it as model=)" if is_lightning_class(datamodule, "LightningModule") else "")
        )
    if _is_instance(datamodule, "LightningModule") or not (
        _is_instance(datamodule, "LightningDataModule") or callable(datamodule)
    ):
        raise ConfigurationError(
            f"datamodule must be a LightningDataModule class, instance or factory, got {datamodule!r}"
        )


def _make(factory: Any, kwargs: dict[str, Any], config: dict[str, Any], kind: str, arg: str) -> Any:
    """``factory(**kwargs)`` for a class (or a ``functools.partial`` of one: the trial's arguments override
    its fixed ones), else ``factory(config)``."""
    cls = _class_of(factory)
    if is_lightning_class(cls, kind):
        try:
            return factory(**kwargs)
        except TypeError as e:
            params = inspect.signature(cls).parameters
            raise ConfigurationError(
                f"{arg}={cls.__name__} cannot be built with {sorted(kwargs)}: {e};"
                f" its init arguments are {list(params)}"
            ) from e
    obj = factory(config)
    if not _is_instance(obj, kind):
        raise ConfigurationError(f"the {arg} factory must return a {kind}, got {type(obj).__name__}")
    return obj


@dataclass(frozen=True)
class ModuleTrialBuilder(TrialBuilder):
    """Builds trials from a LightningModule class or factory, a DataModule and Trainer arguments.

    Parameter names start with ``model.`` (init arguments of the module, or the factory's config),
    ``data.`` (the DataModule's), ``trainer.`` (Trainer arguments) or ``optimizer.`` (the trial's
    optimizer: ``optimizer.lr``, ``optimizer.class_path``, ...).

    Attributes:
        model: a LightningModule class, the class with fixed init arguments
            (``functools.partial(MyModel, n_classes=10)``: a trial's ``model.*`` values override them),
            or a factory ``config -> LightningModule``, where ``config`` is
            ``{"model": {...}, "data": {...}, "trainer": {...}, "optimizer": {...}}``.
        datamodule: a LightningDataModule class (or a ``functools.partial`` of one), a factory
            ``config -> LightningDataModule``, an instance (then no ``data.*`` parameters), or ``None``
            (the module has its own loaders).
        trainer_kwargs: passed to every trial's Trainer (``trainer.*`` parameters override them).
        quiet: no progress bar, model summary or Lightning info logs inside trials.

    Raises:
        ConfigurationError: a model or datamodule of the wrong kind (an instance as ``model``, a
            LightningModule as ``datamodule``, ``None`` for a module without loaders of its own).

    Example:
        >>> builder = ModuleTrialBuilder(MyModel, MyDataModule, {"max_epochs": 5})  # doctest: +SKIP
        >>> # a search created with builder=builder builds every trial this way
    """

    model: Any
    datamodule: Any = None
    trainer_kwargs: Mapping[str, Any] = field(default_factory=dict)
    quiet: bool = True

    def __post_init__(self) -> None:
        _check_model(self.model)
        _check_datamodule(self.model, self.datamodule)
        check_trainer_kwargs(self.trainer_kwargs)

    @property
    @override
    def namespace(self) -> Any:
        model = _class_of(self.model)
        return namespace_of(model) if inspect.isclass(model) else namespace_of(object)

    @override
    def check(self, space: SearchSpace) -> None:
        check_keys(space)
        check_logger_spec(self.trainer_kwargs.get("logger"))
        data_keys = [k for k in space if k.startswith("data.")]
        if data_keys and _is_instance(self.datamodule, "LightningDataModule"):
            raise ConfigurationError(
                f"datamodule is an instance, so it cannot take the data.* parameters {data_keys}; pass the DataModule"
                " class (or a factory config -> DataModule) instead"
            )
        if data_keys and self.datamodule is None:
            raise ConfigurationError("data.* parameters need a datamodule class or factory; datamodule is None")
        self._check_init_keys(space, self.model, "model", "LightningModule")
        self._check_init_keys(space, self.datamodule, "data", "LightningDataModule")
        valid = set(inspect.signature(self.namespace.Trainer.__init__).parameters) - {"self"}
        for key in [*self.trainer_kwargs, *(k.split(".")[1] for k in space if k.startswith("trainer."))]:
            if key not in valid:
                near = difflib.get_close_matches(key, valid, n=3)
                raise ConfigurationError(
                    f"{key!r} is not an argument of Trainer (in trainer_kwargs or trainer.*); did you mean {near}?"
                )

    @staticmethod
    def _check_init_keys(space: SearchSpace, cls: Any, section: str, kind: str) -> None:
        """``model.*`` / ``data.*`` names must be init arguments of a class (unless it takes ``**kwargs``)."""
        cls = _class_of(cls)
        if not is_lightning_class(cls, kind):
            return  # factories receive the whole config and check it themselves
        params = inspect.signature(cls.__init__).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return
        valid = [n for n in params if n != "self"]
        for key in space:
            head, _, rest = key.partition(".")
            name = rest.split(".")[0]
            if head == section and name not in valid:
                near = difflib.get_close_matches(name, valid, n=3)
                raise ConfigurationError(
                    f"{key!r}: {name!r} is not an init argument of {cls.__name__}; its arguments are {valid}"
                    + (f" (did you mean {near}?)" if near else "")
                )

    @override
    def check_cv(self, what: str) -> None:
        if self.datamodule is None:
            raise ConfigurationError("cv and refit need a datamodule with a cv_dataset() method; datamodule is None")
        datamodule = _class_of(self.datamodule)
        if inspect.isclass(datamodule) or _is_instance(datamodule, "LightningDataModule"):
            require_cv(datamodule, what)  # a factory: checked when built

    @override
    def build_model(self, params: Mapping[str, Any]) -> Any:
        sections = split_params(params)
        config = {k: dict(v) for k, v in sections.items()}
        model = _make(self.model, sections["model"], config, "LightningModule", "model")
        patch_optimizer(model, sections["optimizer"])
        return model

    @override
    def build_datamodule(self, params: Mapping[str, Any]) -> Any:
        if self.datamodule is None or _is_instance(self.datamodule, "LightningDataModule"):
            return self.datamodule
        sections = split_params(params)
        config = {k: dict(v) for k, v in sections.items()}
        return _make(self.datamodule, sections["data"], config, "LightningDataModule", "datamodule")

    @override
    def build(self, params: Mapping[str, Any], *, seed: int, trial_dir: str, callbacks: CallbackFactory) -> TrialParts:
        model, dm = self.build_model(params), self.build_datamodule(params)
        pl = namespace_of(model)
        kwargs = self.trainer_settings(params)
        user = kwargs.pop("callbacks", None) or []
        # each trial gets its own copies: callbacks keep state (EarlyStopping's wait count, ...)
        user = copy.deepcopy(list(user) if isinstance(user, (list, tuple)) else [user])
        kwargs = {**quiet_flags(pl, user, self.quiet), **kwargs}
        checkpointing = kwargs.get("enable_checkpointing")
        kwargs["callbacks"] = combine_callbacks(
            pl, user, callbacks(pl), checkpointing=checkpointing, trial_dir=os.fspath(trial_dir)
        )
        kwargs.setdefault(
            "enable_checkpointing", any(isinstance(c, pl.callbacks.ModelCheckpoint) for c in kwargs["callbacks"])
        )
        kwargs["logger"] = trial_loggers(pl, kwargs.get("logger"), TrialContext.from_dir(trial_dir, params))
        if "enable_autolog_hparams" in inspect.signature(pl.Trainer).parameters:
            kwargs.setdefault("enable_autolog_hparams", False)  # the runner logs the trial's parameters
        kwargs["default_root_dir"] = trial_dir
        try:
            return TrialParts(model, dm, pl.Trainer(**kwargs))
        except TypeError as e:
            raise ConfigurationError(
                f"the Trainer rejected trainer_kwargs/trainer.* parameters {sorted(kwargs)}: {e}"
            ) from e

    @override
    def trainer_settings(self, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return {**self.trainer_kwargs, **trainer_params(params or {})}

    @override
    def evaluation_trainer(self, params: Mapping[str, Any], **overrides: Any) -> Any:
        return self.namespace.Trainer(**evaluation_args(self.trainer_settings(params), overrides))

    @override
    def describe_trainer(self, params: Mapping[str, Any] | None = None) -> str:
        return f"trainer_kwargs={dict(self.trainer_kwargs)}"

    @override
    def parts(self) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = [("model", self.model), ("datamodule", self.datamodule)]
        return out + [(f"trainer_kwargs[{k!r}]", v) for k, v in self.trainer_kwargs.items()]
