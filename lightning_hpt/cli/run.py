"""``lightning-hpt search``: the user's ``fit`` config plus a ``search:`` section, run as a study."""

from __future__ import annotations

import importlib
import inspect
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import IO, Any

from lightning_hpt.cli.builder import CLITrialBuilder
from lightning_hpt.cli.capture import capture_cli, cli_scripts
from lightning_hpt.cli.parsing import cli_parser, dump_config, load_yaml, parse_args_briefly, parse_base, script_hint
from lightning_hpt.cli.settings import SearchSettings, make_executor, make_pruner_spec, make_strategy_spec
from lightning_hpt.cli.space import resolve_constraints, resolve_params, space_from_config
from lightning_hpt.cli.study import best_config, write_text
from lightning_hpt.exceptions import ConfigurationError, StudyMismatchError
from lightning_hpt.lightning.compat import is_lightning_cli
from lightning_hpt.masking import mask_config
from lightning_hpt.result import SearchResult
from lightning_hpt.search import HyperparameterSearch

__all__ = ["META_FLAGS", "import_class", "parse_search", "run_search"]

#: flags of ``lightning-hpt search`` that choose the CLI, read before the CLI's parser exists.
META_FLAGS = {
    "script": "the project's script that calls LightningCLI: its CLI class and arguments build every trial",
    "cli": "import path of the project's LightningCLI subclass (default: lightning.pytorch.cli.LightningCLI)",
    "model_class": "import path of the fixed LightningModule, as LightningCLI(model_class=...) takes it",
    "datamodule_class": "import path of the fixed LightningDataModule, as LightningCLI(datamodule_class=...) takes it",
}


def import_class(path: str, flag: str) -> type:
    """Import ``"mypkg.train.MyCLI"``; the error names the flag and the fix."""
    module, _, name = path.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module), name) if module else None
    except (ImportError, AttributeError) as e:
        obj, reason = None, f"{type(e).__name__}: {e}"
    else:
        reason = "not found"
    if not inspect.isclass(obj):
        raise ConfigurationError(
            f"--{flag}={path!r} cannot be imported ({reason}); give a class's import path such as mypkg.train.MyCLI,"
            " from a module on the Python path (the working directory is on it)"
        )
    return obj


def _meta_values(argv: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for i, arg in enumerate(argv):
        for flag in META_FLAGS:
            if arg == f"--{flag}" and i + 1 < len(argv):
                out[flag] = argv[i + 1]
            elif arg.startswith(f"--{flag}="):
                out[flag] = arg.split("=", 1)[1]
    return out


def _cli_from_flags(argv: Sequence[str]) -> tuple[type, tuple[Any, ...], dict[str, Any]]:
    meta = _meta_values(argv)
    if "script" in meta:
        others = sorted(f"--{k}" for k in meta if k != "script")
        if others:
            raise ConfigurationError(f"--script names the CLI and its classes already; leave out {others}")
        call = capture_cli(meta["script"])
        return call.cli_class, tuple(call.args), dict(call.kwargs)
    if "cli" in meta:
        cli_class = import_class(meta["cli"], "cli")
    else:
        from lightning.pytorch.cli import LightningCLI as cli_class
    if not is_lightning_cli(cli_class):
        raise ConfigurationError(f"--cli={meta['cli']!r} is not a LightningCLI subclass")
    kwargs = {k: import_class(v, k) for k, v in meta.items() if k != "cli"}
    return cli_class, (), kwargs


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, Mapping) or not node:
        return {prefix.rstrip("."): node}
    out: dict[str, Any] = {}
    for k, v in node.items():
        out.update(_flatten(v, f"{prefix}{k}."))
    return out


def _config_changes(old: Mapping[str, Any], new: Mapping[str, Any], limit: int = 8) -> list[str]:
    a, b = _flatten(old), _flatten(new)
    changed = [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return changed[:limit] + ([f"... and {len(changed) - limit} more"] if len(changed) > limit else [])


def _record_config(search: HyperparameterSearch, base: Mapping[str, Any], cli: str, allow_changes: bool) -> None:
    """Store the base config with the study; refuse to continue a study that ran with another one.

    The stored config has its secrets masked (:func:`~lightning_hpt.masking.mask_config`): a logger's API key or
    a password in a URL never reaches the database, and a changed secret alone is no change of the config.
    """
    storage, name = search.storage, search.study_name
    base = mask_config(json.loads(json.dumps(base)))
    if name in storage.study_names():
        stored = storage.load_study(name).attrs.get("cli_config")
        stored = None if stored is None else mask_config(stored)  # stored before secrets were masked, too
        if stored is not None and stored != base and not allow_changes:
            raise StudyMismatchError(
                f"study {name!r} ran with another config (what every trial shares): {_config_changes(stored, base)};"
                " use a new search.study_name, or search.allow_changes: true to continue it with this config"
            )
    search.open()  # a changed space, monitor, direction or strategy is refused here
    storage.set_study_attrs(name, {"cli_config": dict(base), "cli": cli})


def parse_search(
    argv: Sequence[str], cli_class: type, cli_args: Sequence[Any], cli_kwargs: Mapping[str, Any], meta_flags: bool
) -> tuple[Any, SearchSettings, dict[str, Any], Any]:
    """Parse ``argv`` with the CLI's parser plus the ``search`` section.

    Returns:
        The parser without the search section, the settings, the resolved ``fit`` config (loaded
        YAML) and that config parsed.
    """
    parser = cli_parser(cli_class, cli_args, cli_kwargs, fit_arguments=True)
    parser.prog = "lightning-hpt search" if meta_flags else f"{Path(sys.argv[0]).name} search"
    parser.add_class_arguments(SearchSettings, "search", help="the search: space, strategy, n_trials, ...")
    if meta_flags:
        for flag, text in META_FLAGS.items():
            parser.add_argument(f"--{flag}", type=str | None, default=None, help=text)
    # the hint names --script and its kin: no use once the command gives one
    named = any(a.split("=", 1)[0].removeprefix("--") in META_FLAGS for a in argv)
    found = cli_scripts() if meta_flags and not named else []
    hint = script_hint(found[0] if len(found) == 1 else "train.py") if meta_flags and not named else ""
    cfg = parse_args_briefly(parser, argv, parser.prog, hint)  # --print_config prints the merged config and exits here
    given = cfg.get("search")
    settings = SearchSettings(**{f.name: given.get(f.name) for f in fields(SearchSettings)})
    config = load_yaml(dump_config(parser, cfg))
    fit_values = {k: config.pop(k, None) for k in parser.fit_keys}
    if fit_values.get("ckpt_path"):
        raise ConfigurationError(
            f"ckpt_path={fit_values['ckpt_path']!r} is in the config: every trial trains from scratch; remove ckpt_path"
            " (to start from pretrained weights, load them in the model's own init arguments)"
        )
    for key in ("search", "config", "print_config", *META_FLAGS):
        config.pop(key, None)
    clean = cli_parser(cli_class, cli_args, cli_kwargs)
    clean.exit_on_error = False
    return clean, settings, config, parse_base(clean, config)


def _refuse_stacking(executor: Any) -> None:
    """A stacked group would leave out what LightningCLI builds for each trial: every trial would run alone."""
    from lightning_hpt.stacking import StackedExecutor

    if isinstance(executor, StackedExecutor):
        raise ConfigurationError(
            "search.executor: stacked cannot stack a LightningCLI project's trials: LightningCLI builds each"
            " trial's Trainer, callbacks and loggers, which a stacked group leaves out, so every trial would run"
            " one by one. Leave search.executor out, or stack from Python with your classes: HyperparameterSearch("
            f"model=MyModel, datamodule=MyData, ..., executor=StackedExecutor(stack={executor.stack}))"
        )


def run_search(
    argv: Sequence[str],
    *,
    cli_class: type | None = None,
    cli_args: Sequence[Any] = (),
    cli_kwargs: Mapping[str, Any] | None = None,
    stream: IO[str] | None = None,
) -> SearchResult:
    """Run (or resume) the study that ``argv`` describes: ``--config fit.yaml --config search.yaml ...``.

    Args:
        argv: the arguments after ``search``: config files, overrides (``--search.n_trials 10``,
            ``--trainer.max_epochs 5``), and, when ``cli_class`` is not given, ``--cli``,
            ``--model_class``, ``--datamodule_class``.
        cli_class: the LightningCLI class to build trials with (``SearchCLI`` passes its own).
        cli_args, cli_kwargs: its constructor arguments.
        stream: where the best config's path is written (standard output by default).

    Returns:
        The study's result; ``<root>/<study>/best.yaml`` holds the best trial's config (with several
        objectives, ``<root>/<study>/pareto/trial_<n>.yaml`` the config of each trial on the Pareto front).

    Raises:
        ConfigurationError, SearchSpaceError: before any trial runs, for a key not in the config,
            a domain that does not fit its argument, an unknown strategy, pruner or executor.
    """
    meta_flags = cli_class is None
    if cli_class is None:
        cli_class, cli_args, cli_kwargs = _cli_from_flags(argv)
    cli_kwargs = dict(cli_kwargs or {})
    parser, s, config, config_ns = parse_search(argv, cli_class, cli_args, cli_kwargs, meta_flags)
    space = space_from_config(s.space, config, parser, config_ns)
    enqueue = [resolve_params(p, config, "search.enqueue", space) for p in s.enqueue or []]
    strategy, pruner = make_strategy_spec(s.strategy), make_pruner_spec(s.pruner)
    executor = make_executor(s.executor)
    _refuse_stacking(executor)
    builder = CLITrialBuilder(cli_class, tuple(cli_args), cli_kwargs, config, s.quiet)
    search = HyperparameterSearch(
        builder=builder,
        space=space,
        monitor=s.monitor,
        mode=s.mode,
        constraints=s.constraints,
        param_constraints=resolve_constraints(s.param_constraints, space),
        strategy=strategy,
        pruner=pruner,
        n_trials=s.n_trials,
        storage=s.storage,
        study_name=s.study_name,
        root=s.root,
        seed=s.seed,
        patience=s.patience,
        checkpoint=s.checkpoint,
        executor=executor,
        timeout=s.timeout,
        retry_interrupted=s.retry_interrupted,
        retry_failed=s.retry_failed,
        allow_changes=s.allow_changes,
        enqueue=enqueue,
        verbose=s.verbose,
    )
    _record_config(search, config, f"{cli_class.__module__}.{cli_class.__qualname__}", s.allow_changes)
    result = search.run()
    if result.multi:  # no single best: the config of every trial on the Pareto front
        for t in result.pareto_trials:
            path = search.root / search.study_name / "pareto" / f"trial_{t.number}.yaml"
            write_text(path, best_config(search.root, search.study_name, t, search.objectives))
            (stream or sys.stdout).write(f"Pareto front config (trial {t.number}): {path}\n")
        return result
    best = result.best_trial
    if best is not None:
        path = search.root / search.study_name / "best.yaml"
        write_text(path, best_config(search.root, search.study_name, best))
        (stream or sys.stdout).write(f"best config (trial {best.number}): {path}\n")
    return result
