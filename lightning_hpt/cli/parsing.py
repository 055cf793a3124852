"""A LightningCLI's own parser, and trial configurations layered on the user's ``fit`` config.

Everything here goes through the parser of the project's LightningCLI (or subclass), so its
defaults, types, links and subclass rules apply to every trial exactly as they apply to ``fit``.
A trial's configuration is the user's resolved config with the trial's parameters layered on
top, the way a command-line override (``--model.init_args.lr 0.01``) is layered on a config file.
"""

from __future__ import annotations

import copy
import difflib
import importlib.util
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import yaml

from lightning_hpt.exceptions import ConfigurationError
from lightning_hpt.lightning.config import nest

__all__ = [
    "cli_parser",
    "config_paths",
    "dump_config",
    "layer",
    "parse_args_briefly",
    "parse_base",
    "parser_reason",
    "require_jsonargparse",
    "resolve_key",
    "script_hint",
    "short_key",
]

#: the LightningCLI warning about ``args=`` given while ``sys.argv`` has arguments: expected here.
ARGS_WARNING = ".*LightningCLI's args parameter is intended to run from within Python.*"


class _ParserReady(Exception):
    """Carries the parser out of a LightningCLI constructor before it parses or instantiates anything."""

    def __init__(self, parser: Any, trainer_class: Any) -> None:
        super().__init__("parser ready")
        self.parser, self.trainer_class = parser, trainer_class


def require_jsonargparse() -> None:
    """Raise ``ImportError`` naming the extra to install when LightningCLI's parser is unavailable."""
    # jsonargparse and the two packages its "signatures" extra adds (Lightning's own flag for this is private)
    if any(importlib.util.find_spec(name) is None for name in ("jsonargparse", "docstring_parser", "typeshed_client")):
        raise ImportError(
            "the lightning-hpt command needs LightningCLI's parser (jsonargparse with signatures): "
            'pip install "lightning-hpt[cli]" (or "jsonargparse[signatures]>=4.39")'
        )


def cli_parser(
    cli_class: type,
    cli_args: Sequence[Any] = (),
    cli_kwargs: Mapping[str, Any] | None = None,
    fit_arguments: bool = False,
) -> Any:
    """The parser ``cli_class(*cli_args, **cli_kwargs, run=False)`` would parse with, built but not used.

    The CLI is constructed with ``run=False`` (no subcommands: ``fit``'s configuration at the top
    level) and stopped in ``parse_arguments``, before it seeds or instantiates anything.

    Args:
        fit_arguments: also accept the arguments of ``Trainer.fit`` that a ``fit`` config may hold
            (``ckpt_path``, ...); their keys are in the parser's ``fit_keys`` attribute.

    Raises:
        ConfigurationError: ``cli_class`` is not a LightningCLI or does not accept ``run``/``args``.
    """
    require_jsonargparse()

    def parse_arguments(self: Any, parser: Any, args: Any) -> None:
        raise _ParserReady(parser, self.trainer_class)

    name = f"{cli_class.__module__}.{cli_class.__qualname__}"
    probe = type(cli_class.__name__, (cli_class,), {"parse_arguments": parse_arguments})
    try:
        probe(*cli_args, **dict(cli_kwargs or {}), run=False, args=[])
    except _ParserReady as ready:
        parser = ready.parser
        parser.fit_keys = []
        if fit_arguments:
            from jsonargparse import class_from_function
            from lightning.pytorch.cli import LightningCLI

            trainer = ready.trainer_class
            trainer = trainer if isinstance(trainer, type) else class_from_function(trainer)
            parser.fit_keys = parser.add_method_arguments(trainer, "fit", skip=set(LightningCLI.subcommands()["fit"]))
        return parser
    except TypeError as e:
        raise ConfigurationError(
            f"cli={name} could not be built with run=False and args=: {e}; the class must accept LightningCLI's"
            " keyword arguments (forward **kwargs to LightningCLI.__init__)"
        ) from e
    except (ValueError, KeyError, AttributeError) as e:  # e.g. a link to a model argument without the model class
        why = f"{type(e).__name__}: {e}\n(if the project's script passes classes to it: {script_hint()})"
        raise ConfigurationError(f"{name} could not build its parser: {why}") from None
    raise ConfigurationError(
        f"cli={name} never called parse_arguments; give a LightningCLI subclass that keeps LightningCLI's"
        " construction (setup_parser, then parse_arguments)"
    )


def script_hint(script: str = "train.py") -> str:
    """How to name the script (or classes) of a project whose LightningCLI call is not the plain one."""
    return (
        f"give --script {script} (the script that calls LightningCLI: its classes and subclass apply),"
        " or --cli/--model_class/--datamodule_class"
    )


#: lines of a jsonargparse error that say nothing about this value: a Union's frame, and the
#: ``None`` alternative of every ``X | None`` argument (its only reason would otherwise be "expected None")
_FRAME = ("Subtypes:", "Errors:", "Given value type:", "Does not validate against any of the Union subtypes")
_NONE_ALTERNATIVE = "Expected a <class 'NoneType'>"


def parser_reason(error: BaseException | str) -> str:
    r"""Why jsonargparse refused a value, in one line: what it expected or refused, and the value given.

    Example:
        >>> parser_reason(
        ...     'Parser key "search.n_trials":\n  Does not validate against any of the Union subtypes\n'
        ...     "  Subtypes: [<class 'int'>, <class 'NoneType'>]\n  Errors:\n    - Expected a <class 'int'>\n"
        ...     "    - Expected a <class 'NoneType'>\n  Given value type: <class 'str'>\n  Given value: ten"
        ... )
        "Expected a <class 'int'>; Given value: ten"
    """
    lines = [ln.strip() for ln in str(error).strip().splitlines() if ln.strip()]
    reasons: list[str] = []
    for line in lines[1:]:
        line = line.removeprefix("- ").strip()
        if line.startswith(_FRAME) or line == _NONE_ALTERNATIVE:
            continue
        if reasons and reasons[-1].endswith(":"):  # "Problem with given class_path 'X':", then its reason
            reasons[-1] = f"{reasons[-1]} {line}"
        else:
            reasons.append(line)
    text = "; ".join(reasons) or (lines[0].rstrip(":") if lines else str(error))
    return text if len(text) <= 400 else f"{text[:397]}..."


def _brief(error: str) -> str:
    """A jsonargparse error in one line: where it is and why (:func:`parser_reason`)."""
    lines = [ln.strip() for ln in error.strip().splitlines() if ln.strip()]
    where = lines[0].rstrip(":") if lines else error
    return f"{where}: {parser_reason(error)}" if len(lines) > 1 else where


def parse_args_briefly(parser: Any, argv: Sequence[str], prog: str, hint: str | None = None) -> Any:
    """``parser.parse_args(argv)`` whose errors are one or two lines naming the fix, not a usage dump.

    ``--help`` and ``--print_config`` still print and exit; ``--print_config`` prints the config with the
    passwords of database URLs masked (:func:`~lightning_hpt.masking.mask_secrets`), saying so on
    stderr. ``hint``: what to do (default: :func:`script_hint`).

    Raises:
        ConfigurationError: the arguments or config files do not parse; for a ``model:`` or ``data:``
            section without ``class_path`` the message says to name the script that gives the classes.
    """
    import argparse

    hint = script_hint() if hint is None else hint
    parser.exit_on_error = False
    try:
        if not any(a == "--print_config" or a.startswith("--print_config=") for a in argv):
            return parser.parse_args(list(argv))
        return _parse_masked(parser, argv)
    except argparse.ArgumentError as e:
        text = str(e)
        head = text.strip().splitlines()[0] if text.strip() else text
        section = next((k for k in ("model", "data") if head.startswith(f'Parser key "{k}"')), None)
        if hint and section is not None and "Given value type: <class 'dict'>" in text:
            raise ConfigurationError(
                f"the config's {section}: section has no class_path, so the project's script gives the class;"
                f" {hint}\n({_brief(text)}; see {prog} --help)"
            ) from None
        fix = f"\n(if the project's script passes classes: {hint})" if hint else f" (see {prog} --help)"
        raise ConfigurationError(f"{_brief(text)}{fix}") from None


def _parse_masked(parser: Any, argv: Sequence[str]) -> Any:
    """``parser.parse_args(argv)`` whose ``--print_config`` output has its secrets masked."""
    import contextlib
    import io
    import sys

    from lightning_hpt.masking import mask_secrets

    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            return parser.parse_args(list(argv))
    finally:
        text = out.getvalue()
        shown = mask_secrets(text)
        sys.stdout.write(shown)
        if shown != text:
            print(
                "lightning-hpt: passwords in the printed config are masked (***); a saved copy needs the real one,"
                " or give it outside the config (for PostgreSQL: the PGPASSWORD environment variable or ~/.pgpass)",
                file=sys.stderr,
            )


def dump_config(parser: Any, cfg: Any) -> str:
    """The config as YAML with every value written out (``None`` included), as LightningCLI saves it."""
    import jsonargparse

    # jsonargparse 4.49 renamed skip_none to skip_unset (the old name warns)
    major, minor = (int(p) for p in jsonargparse.__version__.split(".")[:2])
    option = {"skip_unset": False} if (major, minor) >= (4, 49) else {"skip_none": False}
    return parser.dump(cfg, **option)


def _parse_over(parser: Any, obj: Mapping[str, Any], base: Any) -> Any:
    # the base namespace is passed by position: its keyword's name changed between jsonargparse releases
    return parser.parse_object(dict(obj), base)


def parse_base(parser: Any, base: Mapping[str, Any]) -> Any:
    """Parse a resolved config (as :func:`dump_config` writes it, loaded) with the CLI's parser."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        return parser.parse_object(copy.deepcopy(dict(base)))


def layer(parser: Any, cfg: Any, params: Mapping[str, Any], seed: int | None = None) -> Any:
    """Parse a trial's ``params`` over the parsed config ``cfg``, as command-line overrides are.

    Parameters that name a whole section (``optimizer``: a class path) apply before those inside
    it (``optimizer.init_args.lr``), so a changed class keeps the init arguments it accepts, as
    ``--optimizer SGD`` does after a config file.

    Args:
        parser: the CLI's parser (its ``exit_on_error`` decides whether errors exit or raise).
        cfg: the parsed base config (:func:`parse_base`); not modified.
        params: the trial's configuration, full config paths as keys.
        seed: the ``seed_everything`` value to set, if any.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        for depth in sorted({k.count(".") for k in params}):
            group = {k: v for k, v in params.items() if k.count(".") == depth}
            cfg = _parse_over(parser, nest(group), cfg)
        if seed is not None:
            cfg = _parse_over(parser, {"seed_everything": seed}, cfg)
    return cfg


def config_paths(node: Any, prefix: str = "") -> Iterator[str]:
    """Every dotted path of a loaded config: sections, subsections and values (lists are values)."""
    if not isinstance(node, Mapping):
        return
    for key, value in node.items():
        if not isinstance(key, str):
            continue
        path = f"{prefix}{key}"
        yield path
        yield from config_paths(value, path + ".")


def short_key(key: str) -> str:
    """``model.init_args.lr`` -> ``model.lr``: the path without its ``init_args`` parts."""
    return ".".join(p for p in key.split(".") if p != "init_args")


def _section_hint(key: str, base: Mapping[str, Any]) -> str:
    head = key.split(".")[0]
    if head in base and base[head] is None:
        example = {
            "optimizer": "optimizer: {class_path: torch.optim.AdamW, init_args: {lr: 0.001}}",
            "lr_scheduler": "lr_scheduler: {class_path: torch.optim.lr_scheduler.StepLR, init_args: {step_size: 10}}",
        }.get(head, f"{head}: {{class_path: ..., init_args: {{...}}}}")
        return f"; the config has no {head} (it is null): set it in the config you pass to fit, e.g. {example}"
    return ""


def resolve_key(key: str, base: Mapping[str, Any], paths: Sequence[str] | None = None) -> str:
    """The full config path a space key names: itself, or the one path whose short form it is.

    Args:
        key: ``model.init_args.lr``, or a short form such as ``model.lr`` or ``optimizer.weight_decay``.
        base: the resolved config the key must be in.
        paths: ``list(config_paths(base))``, when already computed.

    Raises:
        ConfigurationError: the key is not in the config (the message lists the nearest valid
            keys), or its short form matches several paths.
    """
    paths = list(config_paths(base)) if paths is None else paths
    if key in paths:
        return key
    matches = [p for p in paths if short_key(p) == short_key(key)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ConfigurationError(f"space key {key!r} is ambiguous: it can mean {matches}; use the full path")
    candidates = sorted(set(paths) | {short_key(p) for p in paths})
    near = difflib.get_close_matches(key, candidates, n=5, cutoff=0.6)
    if not near:  # same last name elsewhere: 'model.learning_rate' -> 'optimizer.init_args.lr' is not guessed
        last = key.rsplit(".", 1)[-1]
        near = [p for p in paths if p.rsplit(".", 1)[-1] == last][:5]
    hint = f"; nearest valid keys: {near}" if near else ""
    raise ConfigurationError(
        f"space key {key!r} is not in the config: keys are the config's own paths, such as"
        f" 'model.init_args.lr' (or the short form 'model.lr'){hint}{_section_hint(key, base)}"
    )


def load_yaml(text: str) -> Any:
    """YAML text as plain data (safe loader only)."""
    return yaml.safe_load(text)
