"""One run of every logger per trial: a project's loggers, re-made for each trial of a study.

A continued trial's CSV log goes on from the rows its earlier attempt wrote (:class:`ContinuedCSVLogger`).
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import inspect
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from typing_extensions import override

from lightning_hpt.exceptions import ConfigurationError
from lightning_hpt.masking import get_logger

__all__ = [
    "EARLIER_METRICS",
    "KNOWN_LOGGERS",
    "ContinuedCSVLogger",
    "TrialContext",
    "TrialLogger",
    "check_logger_spec",
    "config_loggers",
    "finish_loggers",
    "logger_kwargs",
    "make_logger",
    "trial_loggers",
]

#: short names accepted where a logger is named, and the class each stands for.
KNOWN_LOGGERS = {
    "tensorboard": "lightning.pytorch.loggers.TensorBoardLogger",
    "csv": "lightning.pytorch.loggers.CSVLogger",
    "wandb": "lightning.pytorch.loggers.WandbLogger",
    "mlflow": "lightning.pytorch.loggers.MLFlowLogger",
}

log = get_logger(__name__)

#: where a continued trial's CSV logger keeps the earlier attempt's rows until its own first row
EARLIER_METRICS = "metrics.earlier.csv"


@dataclass(frozen=True)
class TrialContext:
    """What a per-trial logger (or a logger factory) is told about its trial.

    Attributes:
        study: the study's name (the group or experiment of the trials' runs).
        number: the trial's number.
        dir: the trial's directory.
        params: the trial's configuration, full names as keys.
    """

    study: str
    number: int
    dir: str
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def run_name(self) -> str:
        """``trial_<number>`` (``trial_<number>/fold_<k>`` for one run of a cross-validated trial)."""
        return self.part or f"trial_{self.number}"

    part: str = ""

    @classmethod
    def from_dir(cls, trial_dir: str, params: Mapping[str, Any] | None = None) -> TrialContext:
        """The context of the trial whose directory is ``trial_dir``: ``<root>/<study>/trial_<n>[/<run>]``."""
        path = Path(trial_dir)
        parts = path.parts
        for i in range(len(parts) - 1, 0, -1):
            name = parts[i]
            if name.startswith("trial_") and name[6:].isdigit():
                part = "/".join(parts[i:]) if i < len(parts) - 1 else ""
                return cls(parts[i - 1], int(name[6:]), str(path), dict(params or {}), part)
        return cls(path.parent.name, 0, str(path), dict(params or {}), path.name)


def logger_kwargs(cls: Any, kwargs: Mapping[str, Any], ctx: TrialContext, index: int = 0) -> dict[str, Any]:
    """``kwargs`` of a logger class with the per-trial settings that give the trial its own run.

    TensorBoard and CSV write under the trial's directory (``tb/`` and ``csv/``); W&B
    starts a run named ``trial_<n>`` in the group ``<study>``, its files under the trial's
    directory; MLflow starts a run ``trial_<n>`` tagged with the study and trial, in the project's
    ``experiment_name`` if it gives one, else in the experiment ``<study>``.
    Any other logger gets the trial's directory as ``save_dir`` and ``trial_<n>`` as ``version``
    when it takes them. The user's other settings are kept.

    Args:
        index: the position among loggers of the same class (a second TensorBoard logger writes ``tb_1``).
    """
    out = dict(kwargs)
    name = getattr(cls, "__name__", "")
    suffix = f"_{index}" if index else ""
    if name == "TensorBoardLogger":
        out.update(save_dir=ctx.dir, name="", version=f"tb{suffix}")
    elif name == "CSVLogger":
        out.update(save_dir=ctx.dir, name="", version=f"csv{suffix}")
    elif name == "WandbLogger":
        out.update(save_dir=ctx.dir, name=ctx.run_name, group=ctx.study, job_type="trial")
        out.pop("id", None)
        out.pop("version", None)
    elif name == "MLFlowLogger":
        # the project's own experiment is kept, as W&B's project is; Lightning's default one is the study's
        mine = kwargs.get("experiment_name")
        out.update(experiment_name=ctx.study if mine in (None, "lightning_logs") else mine, run_name=ctx.run_name)
        out["tags"] = {**(kwargs.get("tags") or {}), "study": ctx.study, "trial": str(ctx.number)}
        out.pop("run_id", None)
    else:
        params = inspect.signature(cls).parameters
        if "save_dir" in params:
            out["save_dir"] = ctx.dir
        if "version" in params:
            out["version"] = f"{ctx.run_name}{suffix}"
    return out


def _logger_class(spec: Any) -> Any:
    if isinstance(spec, str):
        path = KNOWN_LOGGERS.get(spec.lower(), spec)
        module, _, name = path.rpartition(".")
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError, ValueError) as e:
            raise ConfigurationError(
                f"logger {spec!r} cannot be imported ({type(e).__name__}: {e}); give one of {sorted(KNOWN_LOGGERS)}"
                " or a logger class's import path"
            ) from e
    return spec


@dataclass(frozen=True)
class TrialLogger:
    """A logger to make once per trial: its class and the arguments the project gives it.

    Pass it where a logger instance would be shared by every trial, e.g.
    ``trainer_kwargs={"logger": TrialLogger(WandbLogger, project="mnist", offline=True)}``: each
    trial gets its own run, named after the trial and grouped by study (see :func:`logger_kwargs`).

    Attributes:
        cls: a Lightning logger class, or one of ``"tensorboard"``, ``"csv"``, ``"wandb"``, ``"mlflow"``.
        kwargs: its init arguments.
    """

    cls: Any
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __init__(self, cls: Any, **kwargs: Any) -> None:
        object.__setattr__(self, "cls", cls)
        object.__setattr__(self, "kwargs", kwargs)

    def make(self, ctx: TrialContext, index: int = 0) -> Any:
        """The logger of trial ``ctx`` (Lightning's ``CSVLogger`` as a :class:`ContinuedCSVLogger`)."""
        cls = _logger_class(self.cls)
        made = ContinuedCSVLogger if cls is CSVLogger else cls
        return made(**logger_kwargs(cls, self.kwargs, ctx, index))


def make_logger(spec: Any, ctx: TrialContext, index: int = 0, **kwargs: Any) -> Any:
    """A logger for trial ``ctx`` from a name (``"tensorboard"``), a class, a :class:`TrialLogger` or a factory.

    Raises:
        ConfigurationError: for a logger instance (it would be shared by every trial), with what to pass instead.
    """
    if isinstance(spec, TrialLogger):
        return spec.make(ctx, index)
    if isinstance(spec, str) or inspect.isclass(spec):
        return TrialLogger(spec, **kwargs).make(ctx, index)
    if _is_logger(spec):
        cls = type(spec).__name__
        raise ConfigurationError(
            f"a {cls} instance would be shared by every trial (one run for all); pass"
            f" TrialLogger({cls}, ...) with the same arguments (from lightning_hpt import TrialLogger), or a"
            f" function trial -> {cls}: each trial then gets its own run"
        )
    if callable(spec):
        return spec(ctx)
    raise ConfigurationError(
        f"logger must be a logger class, a name in {sorted(KNOWN_LOGGERS)}, a TrialLogger or a function"
        f" trial -> Logger, got {spec!r}"
    )


def _is_logger(obj: Any) -> bool:
    return any(
        c.__name__ == "Logger" and c.__module__.split(".")[0] in ("lightning", "pytorch_lightning", "lightning_fabric")
        for c in type(obj).__mro__
    )


def finish_loggers(loggers: Any) -> None:
    """End each W&B run of a finished trial, so that the next trial in this process starts its own."""
    for lg in loggers or []:
        if type(lg).__name__ == "WandbLogger":
            import wandb

            if wandb.run is not None:
                wandb.finish()


def check_logger_spec(spec: Any) -> None:
    """Refuse, before anything is written, a ``logger`` Trainer argument that every trial would share.

    Raises:
        ConfigurationError: for a logger instance (alone or in a list), naming what to pass instead.
    """
    for item in spec if isinstance(spec, (list, tuple)) else [spec]:
        if _is_logger(item):
            make_logger(item, TrialContext("", 0, ""))  # raises with what to pass instead


def trial_loggers(pl: Any, spec: Any, ctx: TrialContext) -> Any:
    """The ``logger`` Trainer argument of one trial, from the one the project gives for every trial.

    ``None``/``True``: CSV in the trial's ``csv/`` (and TensorBoard in ``tb/`` when installed);
    ``False``: none; a name, class, :class:`TrialLogger` or factory (or a list of them): one of each,
    with this trial's own run.
    """
    if spec is False:
        return False
    if spec is None or spec is True:
        specs: list[Any] = ["csv"]
        with contextlib.suppress(ImportError):
            import tensorboard  # noqa: F401  (TensorBoard logs only when it is installed)

            specs.append(TrialLogger("tensorboard", default_hp_metric=False))
    else:
        specs = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    seen: dict[str, int] = {}
    loggers = []
    for item in specs:
        key = getattr(getattr(item, "cls", item), "__name__", str(getattr(item, "cls", item)))
        loggers.append(make_logger(item, ctx, seen.get(key, 0)))
        seen[key] = seen.get(key, 0) + 1
    return loggers


def config_loggers(value: Any, ctx: TrialContext) -> Any:
    """A LightningCLI config's ``trainer.logger`` (``class_path``/``init_args`` entries) with this trial's runs."""
    if not value or value is True:
        return value
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    seen: dict[str, int] = {}
    out = []
    for item in items:
        path = item.get("class_path") if hasattr(item, "get") else None
        if not path:
            out.append(item)
            continue
        cls = _logger_class(path)
        index = seen.get(path, 0)
        seen[path] = index + 1
        init = item.get("init_args")
        args = init.as_dict() if hasattr(init, "as_dict") else dict(init or {})
        new = logger_kwargs(cls, args, ctx, index)
        item = item.clone() if hasattr(item, "clone") else dict(item)
        if cls is CSVLogger:
            item["class_path"] = f"{__name__}.{ContinuedCSVLogger.__name__}"
        item["init_args"] = type(init)(**new) if init is not None and hasattr(init, "as_dict") else new
        out.append(item)
    return out if isinstance(value, (list, tuple)) else out[0]


class ContinuedCSVLogger(CSVLogger):
    """Lightning's ``CSVLogger`` that continues the ``metrics.csv`` an earlier attempt of its trial left.

    A trial continued from its resumable checkpoint logs into the same ``csv/`` folder, where
    Lightning's logger would delete the earlier attempt's ``metrics.csv``. This one moves that file
    aside when it is made (:data:`EARLIER_METRICS`, beside it) and, at the new attempt's first row,
    writes the earlier rows first, up to that row's step: the rows from that step on were logged after
    the checkpoint and are trained again. The file aside goes once ``metrics.csv`` holds both; an
    attempt stopped before its first row leaves it there, for the next one. A logger with a step
    before the earlier rows' (a later ``fit`` of a script trial, starting at step 0) replaces them,
    as Lightning's does. The arguments are ``CSVLogger``'s.
    """

    def __init__(
        self,
        save_dir: str,
        name: str | None = "lightning_logs",
        version: int | str | None = None,
        prefix: str = "",
        flush_logs_every_n_steps: int = 100,
    ) -> None:
        super().__init__(save_dir, name, version, prefix, flush_logs_every_n_steps)
        # a version given names a folder that may hold a run to continue (None: the next, a new one)
        self._earlier = None if version is None else _set_aside(self.log_dir)

    @property
    @override
    def experiment(self) -> Any:
        """Lightning's writer; while it continues a log, without its warning that the earlier file will be deleted."""
        if self._earlier is None:
            return super().experiment
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
            return super().experiment

    @override
    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if self._earlier is not None:
            self._write_earlier(before=step)
        super().log_metrics(metrics, step)

    @override
    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self._earlier is not None:  # the attempt logged nothing: the earlier rows are the whole log
            self._write_earlier(before=None)
        super().finalize(status)

    def _write_earlier(self, before: int | None) -> None:
        """Write the earlier attempt's rows whose step is before ``before`` (all: ``None``); drop the file aside."""
        writer = self.experiment
        path, self._earlier = self._earlier, None
        for step, row in _read_rows(path):
            if before is None or step < before:
                writer.log_metrics(row, step)
        self.save()
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


@rank_zero_only
def _set_aside(log_dir: str) -> str | None:
    """Move ``log_dir``'s ``metrics.csv`` aside; the path of the earlier rows, or ``None`` when there are none.

    A ``metrics.csv`` beside a file aside holds that file's rows too (the attempt that wrote it stopped
    before removing it): it replaces it.
    """
    metrics, earlier = os.path.join(log_dir, "metrics.csv"), os.path.join(log_dir, EARLIER_METRICS)
    if os.path.isfile(metrics):
        os.replace(metrics, earlier)
    return earlier if os.path.isfile(earlier) else None


def _read_rows(path: str) -> list[tuple[int, dict[str, str]]]:
    """The rows of the CSV log ``path`` as ``(step, values)``, empty cells left out; none if it cannot be read."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        return [(int(r.pop("step")), {k: v for k, v in r.items() if k and v not in ("", None)}) for r in rows]
    except (OSError, csv.Error, KeyError, TypeError, ValueError) as e:
        log.warning("the earlier attempt's CSV log %s cannot be read (%s); the new log starts without it", path, e)
        return []
