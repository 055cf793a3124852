"""The ``search:`` section of the command's configuration, and the plugins it names.

Strategies, pruners and executors are given by name (``bayes``), by name with arguments
(``{name: grid, points: 5}``), or by import path as LightningCLI classes are
(``{class_path: mypkg.MyStrategy, init_args: {...}}``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lightning_hpt.exceptions import ConfigurationError

__all__ = ["SearchSettings", "make_executor", "make_pruner_spec", "make_strategy_spec"]


@dataclass
class SearchSettings:
    """The ``search:`` section (``--search.<name>`` on the command line).

    Args:
        space: config paths to domains, e.g. ``{model.init_args.lr: {type: float, low: 1e-4, high: 0.1, log: true}}``;
            short forms without ``init_args`` (``model.lr``) are accepted where they name one path.
        monitor: the validation metric to optimize, as logged with ``self.log``; or a list of them
            (several objectives: ``[val_acc, val_latency_ms]``).
        mode: ``min`` or ``max`` (also ``minimize`` or ``maximize``, in any case); a list of them, one
            per objective, with several.
        constraints: bounds on metrics the trials log: ``{n_params: ["<=", 2.0e6]}``; a trial that
            breaks one is recorded infeasible.
        param_constraints: rules on the parameters checked before a trial runs, naming the space's keys
            in the short or full form as ``space`` does: ``["model.width * model.depth <= 4096"]``.
        strategy: ``grid``, ``random``, ``sobol`` or ``bayes``; or ``{name: grid, points: 5}``; or
            ``{class_path: ..., init_args: {...}}``.
        pruner: ``none``, ``median``, ``asha`` or ``hyperband``, or a mapping as for ``strategy``.
        n_trials: trials in the whole study (a resumed study counts those it has); ``null`` with
            ``grid`` runs the whole grid.
        executor: where trials run: ``local`` (in this process, one at a time), or a mapping as for
            ``strategy`` (``{name: process, ...}`` names ``lightning_hpt.executors.ProcessExecutor``).
        storage: a SQLAlchemy URL or a ``.db`` path; default ``<root>/studies.db``.
        study_name: the study; running the same name again resumes it.
        root: directory of the trials: ``<root>/<study_name>/trial_<number>/``.
        seed: makes the search reproducible; each trial's ``seed_everything`` derives from
            ``(seed, trial number)`` unless the config fixes ``seed_everything`` to an integer.
        patience: ``EarlyStopping`` patience inside each trial, in validation runs; ``null`` disables it.
        checkpoint: keep each trial's best-epoch checkpoint (``checkpoints/best.ckpt``).
        timeout: seconds after which no new trial starts.
        retry_interrupted: rerun trials stopped by Ctrl+C, SIGTERM or a killed driver.
        retry_failed: rerun the study's FAILED trials under their numbers (after fixing their cause);
            ``lightning-hpt retry STUDY`` queues them without running a search.
        allow_changes: continue a stored study although its space, monitor, direction, strategy
            or base config differ.
        enqueue: configurations to run first, keys as in ``space``.
        quiet: hide Lightning's progress bar and model summary inside trials.
        verbose: show the progress (a live display on a terminal, a line per finished trial otherwise)
            and a summary.
    """

    space: dict[str, Any] | None = None
    monitor: str | list[str] = "val_loss"
    mode: str | list[str] = "min"
    constraints: dict[str, Any] | None = None  # each value checked by the search, which names the form
    param_constraints: list[str] | None = None
    strategy: str | dict[str, Any] = "random"
    pruner: str | dict[str, Any] | None = None
    n_trials: int | None = 20
    executor: str | dict[str, Any] = "local"
    storage: str | None = None
    study_name: str = "default"
    root: str = "hpt_runs"
    seed: int | None = None
    patience: int | None = 5
    checkpoint: bool = True
    timeout: float | None = None
    retry_interrupted: bool = True
    retry_failed: bool = False
    allow_changes: bool = False
    enqueue: list[dict[str, Any]] = field(default_factory=list)
    quiet: bool = True
    verbose: bool = True


def _import(path: str, what: str) -> Any:
    module, _, name = str(path).rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigurationError(
            f"{what}: class_path {path!r} cannot be imported ({e}); give an import path such as 'mypkg.module.MyClass'"
        ) from None


def _build(
    what: str, spec: Mapping[str, Any], named: Callable[[str], type | None], base: type, names: list[str]
) -> Any:
    spec = dict(spec)
    if "class_path" in spec:
        cls = _import(spec.pop("class_path"), what)
        kwargs = spec.pop("init_args", None) or {}
        if spec:
            raise ConfigurationError(
                f"{what}: unknown fields {sorted(spec)} beside class_path; put arguments in init_args"
            )
    elif "name" in spec:
        name = spec.pop("name")
        cls = named(str(name).strip().lower()) if isinstance(name, str) else None
        if cls is None:
            raise ConfigurationError(f"unknown {what} name={name!r}; use one of {names}")
        kwargs = spec
    else:
        raise ConfigurationError(
            f"{what} must be a name such as {names[0]!r}, {{name: ..., <arguments>}} or"
            f" {{class_path: ..., init_args: {{...}}}}; got {spec!r}"
        )
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ConfigurationError(f"{what}: {cls!r} is not a {base.__name__}")
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigurationError(f"{what}: {cls.__name__} does not take the arguments {sorted(kwargs)}: {e}") from None


def make_strategy_spec(spec: str | Mapping[str, Any]) -> Any:
    """The Strategy of ``search.strategy``; unknown names are refused with the valid ones."""
    from lightning_hpt.strategies import STRATEGIES, Strategy, make_strategy

    if isinstance(spec, Mapping):
        return _build("strategy", spec, STRATEGIES.get, Strategy, list(STRATEGIES))
    return make_strategy(spec)


def make_pruner_spec(spec: str | Mapping[str, Any] | None) -> Any:
    """The Pruner of ``search.pruner``; unknown names are refused with the valid ones."""
    from lightning_hpt.pruners import PRUNERS, Pruner, make_pruner

    if isinstance(spec, Mapping):
        return _build("pruner", spec, PRUNERS.get, Pruner, list(PRUNERS))
    return make_pruner(spec)


def executor_names() -> list[str]:
    """The executors this installation has, by name."""
    from lightning_hpt.executors import EXECUTORS

    return sorted(EXECUTORS)


def make_executor(spec: str | Mapping[str, Any]) -> Any | None:
    """The Executor of ``search.executor``; ``None`` for ``local`` (the default in-process executor)."""
    from lightning_hpt.executors import EXECUTORS, Executor

    if isinstance(spec, str) and spec.strip().lower() == "local":
        return None
    if isinstance(spec, str):
        spec = {"name": spec}
    return _build("executor", spec, EXECUTORS.get, Executor, executor_names())
