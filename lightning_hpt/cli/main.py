"""The ``lightning-hpt`` command (also ``python -m lightning_hpt``).

Its commands: search, show, best, report, export, retry, delete.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import IO, Any

from lightning_hpt.exceptions import ConfigurationError, HPTError, SearchPreempted, SearchSpaceError, StudyMismatchError
from lightning_hpt.masking import mask_secrets

__all__ = ["COMMANDS", "main"]

COMMANDS = {
    "search": "run or resume a study: lightning-hpt search --config fit.yaml --config search.yaml",
    "show": "a table of a study's trials: lightning-hpt show STUDY [--top N]",
    "best": "the best trial's config, ready for fit: lightning-hpt best STUDY [-o best.yaml] [--format json]",
    "report": "an HTML report of a study: lightning-hpt report STUDY [-o report.html]",
    "export": "every trial with its per-epoch values, as CSV or JSON: lightning-hpt export STUDY [-o trials.csv]",
    "retry": "queue a study's FAILED trials again under their numbers: lightning-hpt retry STUDY",
    "delete": "delete a study and its trials from the database: lightning-hpt delete STUDY [--force]",
}

USAGE = (
    "usage: lightning-hpt {search,show,best,report,export,retry,delete} ...\n\n"
    + "\n".join(f"  {name:<7} {text}" for name, text in COMMANDS.items())
    + (
        "\n\nsearch takes the configs LightningCLI's fit takes plus a search: section, and --script train.py"
        "\nfor a project whose script gives LightningCLI its classes or subclass (or --cli, --model_class, ...);"
        "\nlightning-hpt search --help lists every option. The other commands find the study with --storage,"
        "\n--root, or --config with the search section the search ran with.\n"
    )
)


def _names_a_config(argv: Sequence[str]) -> bool:
    """Whether ``search`` arguments can describe a search: a config, the model, a search option, a CLI or help."""
    starts = ("--config", "-c", "--model", "--search", "--cli", "--print_config", "-h", "--help")
    return any(arg.startswith(starts) for arg in argv)


def _count(text: str) -> int:
    """``--top N``: a whole number of at least 1 (argparse names the option in its refusal)."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}; e.g. --top 10")
    return n


def _study_parser(command: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"lightning-hpt {command}", description=COMMANDS[command])
    if command == "delete":  # never a default: deleting the wrong study cannot be undone
        p.add_argument("study", help="the study's name")
        p.add_argument(
            "--force", action="store_true", help="delete even if trials are RUNNING (their drivers are gone)"
        )
    else:
        p.add_argument(
            "study", nargs="?", help="the study's name (default: search.study_name of --config, or the only study)"
        )
    p.add_argument("--storage", help="the study database: a SQLAlchemy URL or a .db path (default: ROOT/studies.db)")
    p.add_argument("--root", help="the search's root directory (default: hpt_runs)")
    p.add_argument(
        "-c", "--config", action="append", default=[], help="a YAML file with the search: section (repeatable)"
    )
    if command == "show":
        p.add_argument("--top", type=_count, default=None, help="only the N best trials, best first")
    if command in ("best", "report", "export"):
        p.add_argument(
            "-o",
            "--output",
            help="the file to write (best: standard output by default; report: ROOT/STUDY/report.html; export:"
            " ROOT/STUDY/trials.csv, or .json by the suffix)",
        )
    if command == "best":
        p.add_argument(
            "--format",
            choices=["config", "yaml", "json", "args", "overrides"],
            default="config",
            help="config: the trial's full config for fit (studies run by lightning-hpt search); yaml, json: its"
            " parameters and seed; args: its parameters as command-line options (--lr 0.01 --model.hidden 64), for"
            " a training script's argparse or LightningCLI: python train.py $(lightning-hpt best STUDY --format"
            " args); overrides: its parameters as name=value lines, for a Hydra train.py",
        )
        which = p.add_mutually_exclusive_group()
        which.add_argument("--trial", type=int, default=None, help="this trial instead of the best (e.g. of the front)")
        which.add_argument(
            "--weights",
            default=None,
            help="several objectives: the Pareto trial with the largest weighted sum, e.g. val_acc=1,n_params=0.5",
        )
    return p


def _study_command(command: str, argv: Sequence[str], out: IO[str], err: IO[str]) -> int:
    from lightning_hpt.cli.study import locate, open_study, short_params
    from lightning_hpt.objectives import describe
    from lightning_hpt.report.table import trials_table
    from lightning_hpt.result import SearchResult, spread

    args = _study_parser(command).parse_args(list(argv))
    loc = locate(args.study, args.storage, args.root, args.config)
    storage, study = open_study(loc)
    if command in ("retry", "delete"):
        return _change_study(command, args, storage, study, loc.root, out)
    info = storage.load_study(study)
    kept = {"storage": storage, "objectives": info.objectives}  # the storage: the study's refit is read back
    result = SearchResult(study, info.monitor, info.direction, tuple(storage.trials(study)), **kept)
    if command == "show":
        counts = ", ".join(f"{n} {s.lower()}" for s, n in result.counts().items()) or "no trials"
        goal = describe(info.objectives) if result.multi else f"{info.monitor} ({info.direction.value})"
        rules = "".join(f"; {c}" for c in info.constraints)
        out.write(f"study {study!r}: {len(result.trials)} trials ({counts}); {goal}{rules}; storage {storage.url}\n")
        trials = short_params(result.trials)
        out.write(trials_table(trials, info.monitor, info.direction, top=args.top, objectives=info.objectives) + "\n")
        if result.multi:
            front = [t.number for t in result.pareto_trials]
            if front:
                out.write(f"Pareto front: trials {front}; lightning-hpt best {study} --trial N (or --weights ...)\n")
            return 0
        best = result.best_trial
        if best is not None:
            out.write(f"best: trial {best.number}, {info.monitor}={best.value:.6g}{spread(best)}\n")
            out.write("".join(f"{line}\n" for line in result.held_out_lines()))
        return 0
    if command == "best":
        return _best(args, info, result, loc.root, out, err)
    if command == "export":
        from lightning_hpt.report.export import export_trials

        path = export_trials(result.trials, args.output or loc.root / study / "trials.csv", info.objectives)
        out.write(f"{len(result.trials)} trials: {path}\n")
        return 0
    try:
        from lightning_hpt.report.html import write_report
    except ImportError as e:
        raise HPTError(f"report needs lightning_hpt.report.html, which this installation lacks ({e})") from None
    path = write_report(storage, study, args.output or loc.root / study / "report.html")
    out.write(f"report: {path}\n")
    return 0


def _best(args: argparse.Namespace, info: Any, result: Any, root: Any, out: IO[str], err: IO[str]) -> int:
    from lightning_hpt.cli.study import best_config, best_params, chosen_trial, write_text

    best = chosen_trial(result, args.trial, args.weights)
    if best is None:
        raise HPTError(
            f"study {info.name!r} has no COMPLETE trial yet ({result.counts()}); lightning-hpt show {info.name} lists"
            " each trial's error"
        )
    fmt = args.format
    if fmt == "config" and "cli_config" not in info.attrs:
        err.write(
            f"lightning-hpt best: study {info.name!r} was made through the Python API or a ScriptSearch, so its"
            f" trials have no config.yaml (a LightningCLI config) to print; here are trial {best.number}'s parameters"
            " and seed as YAML instead (--format json for JSON, --format args for command-line options, --format"
            " overrides for name=value lines)\n"
        )
        fmt = "yaml"
    text = best_config(root, info.name, best, info.objectives) if fmt == "config" else best_params(info, best, fmt)
    if args.output:
        what = "config" if fmt == "config" else "parameters"
        out.write(f"best {what} (trial {best.number}): {write_text(args.output, text)}\n")
        if best.checkpoint:  # for `python main.py test --config best.yaml --ckpt_path ...`
            out.write(f"its checkpoint: {best.checkpoint}\n")
    else:
        out.write(text)
    return 0


def _change_study(command: str, args: argparse.Namespace, storage: Any, study: str, root: Any, out: IO[str]) -> int:
    if command == "retry":
        numbers = storage.requeue_failed(study)
        if not numbers:
            out.write(f"study {study!r} has no FAILED trial: nothing to retry\n")
            return 0
        out.write(
            f"study {study!r}: {_trials(numbers)} queued again under the same number{'' if len(numbers) == 1 else 's'};"
            " a driver running this study"
            " picks them up, or run the same search again (the lightning-hpt search command, or your script)\n"
        )
        return 0
    count = storage.delete_study(study, force=args.force)
    out.write(
        f"deleted study {study!r} ({count} trials) from {storage.url}; its files under {root / study} were left in"
        " place (remove them yourself if you no longer need them)\n"
    )
    return 0


def main(
    argv: Sequence[str] | None = None,
    *,
    cli_class: type | None = None,
    cli_args: Sequence[Any] = (),
    cli_kwargs: Mapping[str, Any] | None = None,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
) -> int:
    """Run one ``lightning-hpt`` command; returns the exit status.

    Args:
        argv: the command and its arguments; ``None`` (the command itself): ``sys.argv[1:]``, with the
            working directory put on the Python path and warnings logged to standard error.
        cli_class, cli_args, cli_kwargs: the LightningCLI to build trials with, as
            :class:`~lightning_hpt.cli.SearchCLI` passes them; otherwise ``search`` reads ``--script``
            (or ``--cli``, ``--model_class`` and ``--datamodule_class``).
        stdout, stderr: where output and errors go.

    Returns:
        0 on success; 2 for an invalid configuration (nothing ran); 1 when the search or a command
        failed (a search that ends with no COMPLETE trial included); 130 after Ctrl+C; 143 after SIGTERM.
    """
    if argv is None:  # run as the command: class_path entries name the project's modules, as under python -m
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        if not logging.getLogger().handlers:
            logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    out, err = stdout or sys.stdout, stderr or sys.stderr
    if not argv or argv[0] in ("-h", "--help"):
        out.write(USAGE)
        return 0 if argv else 2
    if argv[0] == "search" and cli_class is None and not _names_a_config(argv[1:]):
        err.write(
            "lightning-hpt search: error: no config given. Give the project's LightningCLI config and a search:"
            " section, e.g. lightning-hpt search --config fit.yaml --config search.yaml (the model can also be given"
            " with --model / --model_class); lightning-hpt search --help lists every option\n"
        )
        return 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        err.write(f"lightning-hpt: error: unknown command {command!r}; the commands are {list(COMMANDS)}\n\n{USAGE}")
        return 2
    try:
        if command == "search":
            from lightning_hpt.cli.run import run_search

            run_search(rest, cli_class=cli_class, cli_args=cli_args, cli_kwargs=cli_kwargs, stream=out)
            return 0
        return _study_command(command, rest, out, err)
    except BrokenPipeError:  # the reader went away (``lightning-hpt show STUDY | head``): stop quietly
        if out is sys.stdout:  # and let the interpreter's last flush of stdout go nowhere, not fail again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as a command ended by SIGPIPE
    except KeyboardInterrupt:
        err.write("lightning-hpt: interrupted; the running trials are recorded: run the same command to resume\n")
        return 130
    except SearchPreempted as e:
        err.write(f"lightning-hpt: {e}; the running trials are recorded: run the same command to resume\n")
        return 143
    except SystemExit as e:  # argument parsers exit after --help, --print_config and usage errors
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except (ConfigurationError, SearchSpaceError, StudyMismatchError) as e:
        err.write(f"lightning-hpt {command}: error: {mask_secrets(e)}\n")
        return 2
    except (HPTError, ImportError) as e:
        err.write(f"lightning-hpt {command}: error: {mask_secrets(e)}\n")
        return 1


def _trials(numbers: list[int]) -> str:
    return f"trial {numbers[0]} is" if len(numbers) == 1 else f"trials {', '.join(map(str, numbers))} are"
