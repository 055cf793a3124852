"""Reading a finished or running study: where it is stored, its trials table, its best config."""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from lightning_hpt.cli.builder import TRIAL_CONFIG, seed_of_trial
from lightning_hpt.cli.parsing import load_yaml, short_key
from lightning_hpt.exceptions import ConfigurationError, HPTError
from lightning_hpt.report.export import write_text_atomic
from lightning_hpt.result import unscored
from lightning_hpt.storage import Storage, StudyInfo, open_storage
from lightning_hpt.trial import TrialRecord

__all__ = [
    "StudyLocation",
    "best_config",
    "best_params",
    "chosen_trial",
    "locate",
    "short_params",
    "trial_dir",
    "write_text",
]


@dataclass(frozen=True)
class StudyLocation:
    """Where a study is: its storage (URL or path), the trials' root directory and its name."""

    storage: str
    root: Path
    study: str | None


def locate(study: str | None, storage: str | None, root: str | None, configs: Sequence[str]) -> StudyLocation:
    """Find a study from flags, falling back on the ``search:`` section of config files, then on defaults.

    Args:
        study, storage, root: given on the command line (``None``: not given).
        configs: YAML files whose ``search:`` section names ``study_name``, ``storage`` and ``root``.
    """
    from_files: dict[str, str] = {}
    for path in configs:
        try:
            data = load_yaml(Path(path).read_text())
        except OSError as e:
            raise ConfigurationError(f"--config {path!r} cannot be read: {e}") from None
        section = data.get("search") if isinstance(data, dict) else None
        if isinstance(section, dict):
            from_files.update({k: section[k] for k in ("study_name", "storage", "root") if section.get(k) is not None})
    root_dir = Path(root or from_files.get("root") or "hpt_runs").resolve()
    spec = storage or from_files.get("storage")
    if spec is None:
        db = root_dir / "studies.db"
        if not db.exists():
            raise ConfigurationError(
                f"no study database at {db}: give --storage URL, --root DIR (the search's root), or --config with the"
                " search section the search ran with"
            )
        spec = f"sqlite:///{db}"
    return StudyLocation(str(spec), root_dir, study or from_files.get("study_name"))


def open_study(loc: StudyLocation) -> tuple[Storage, str]:
    """The storage and the study's name; with no name given, the storage's only study.

    The storage is opened for reading: a database that does not exist is an error, never created.

    Raises:
        StorageError: the database or the study does not exist (the message lists the studies that do).
        ConfigurationError: no name given and the storage has several studies.
    """
    storage = open_storage(loc.storage, create=False)
    if loc.study is not None:
        storage.load_study(loc.study)  # a missing study is refused with the list of known ones
        return storage, loc.study
    names = storage.study_names()
    if len(names) != 1:
        raise ConfigurationError(f"give the study's name: the storage {storage.url} holds the studies {names}")
    return storage, names[0]


def short_params(trials: Sequence[TrialRecord]) -> list[TrialRecord]:
    """The trials with display names: ``model.init_args.lr`` shown as ``model.lr`` where that is unambiguous."""
    names = {k for t in trials for k in t.params}
    shorts = [short_key(k) for k in names]
    label = {k: short_key(k) if shorts.count(short_key(k)) == 1 else k for k in names}
    return [replace(t, params={label[k]: v for k, v in t.params.items()}) for t in trials]


def trial_dir(root: Path, study: str, trial: TrialRecord) -> Path:
    """The ``trial_<number>`` folder the trial's checkpoint is in, else ``<root>/<study>/trial_<number>``.

    The checkpoint may be the project's own, deeper in the trial (``trial_3/tb/checkpoints/...``).
    """
    name = f"trial_{trial.number}"
    if trial.checkpoint:
        found = next((p for p in Path(trial.checkpoint).parents if p.name == name), None)
        if found is not None:
            return found
    return root / study / name


def best_config(root: Path, study: str, trial: TrialRecord, objectives: Sequence[Any] = ()) -> str:
    """The config ``trial`` ran with (``<trial dir>/config.yaml``), ready for ``fit --config``.

    It is the user's config with the trial's parameters and its ``seed_everything``; ``fit``
    with it trains the trial's model again. Its first line names the trial and its value, or each
    of ``objectives``' values when the study has several.
    """
    path = trial_dir(root, study, trial) / TRIAL_CONFIG
    try:
        text = path.read_text()
    except OSError as e:
        raise HPTError(
            f"trial {trial.number}'s config is not readable at {path} ({e.strerror}): its directory is on the machine"
            " that ran it, or was removed; give --root with the directory the search ran in"
        ) from None
    if trial.values is not None and len(objectives) == len(trial.values):
        value = "values " + ", ".join(f"{o.name}={v:.6g}" for o, v in zip(objectives, trial.values, strict=True))
    else:
        value = "value " + (f"{trial.value:.6g}" if trial.value is not None else "-")
    return f"# study {study!r}, trial {trial.number}: {value}\n{text}"


def best_params(info: StudyInfo, trial: TrialRecord, fmt: str) -> str:
    """The best trial's parameters, with the study, trial, value and seed, as YAML (``fmt="yaml"``) or JSON.

    This is what a study made through the Python API or a ``ScriptSearch`` has to offer in place of a
    ``config.yaml``: ``params`` are the space's names and values, ``seed`` the one the trial was seeded
    with. The parameters only: ``fmt="args"``, command-line options on one line (``--lr 0.01 --hidden 64``),
    as argparse and LightningCLI take them; ``fmt="overrides"``, one ``name=value`` a line, as Hydra does.
    """
    if fmt == "overrides":
        return "".join(f"{name}={_override_value(v)}\n" for name, v in trial.params.items())
    if fmt == "args":  # quoted for a shell: python train.py $(lightning-hpt best ...)
        return " ".join(f"--{name} {shlex.quote(_arg(value))}" for name, value in trial.params.items()) + "\n"
    data = {
        "study": info.name,
        "trial": trial.number,
        "monitor": info.monitor,
        "value": trial.value,
        "seed": _seed_of(info, trial.number),  # what the trial gave seed_everything: its value again
        "params": dict(trial.params),
    }
    if trial.values is not None:  # several objectives: every one's value
        data["values"] = dict(zip((o.name for o in info.objectives), trial.values, strict=False))
    if fmt == "json":
        return json.dumps(data, indent=2) + "\n"
    return yaml.safe_dump(data, sort_keys=False)


def _seed_of(info: StudyInfo, number: int) -> int | None:
    """The seed trial ``number`` gave ``seed_everything``: the one derived for it, or its LightningCLI config's."""
    from lightning_hpt.lightning.runner import trial_seed

    config = info.attrs.get("cli_config")
    return seed_of_trial(config if isinstance(config, dict) else {}, trial_seed(info.seed, number))


def _arg(value: Any) -> str:
    """A parameter's value as a command-line option's text: a string as it is, other values as JSON (0.01, true)."""
    return value if isinstance(value, str) else json.dumps(value)


_PLAIN = re.compile(r"[A-Za-z_][\w.:/-]*")


def _override_value(value: Any) -> str:
    """``value`` as a Hydra override writes it: ``true``, ``null``, ``0.001``, ``relu``, ``'a b'``."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, str):
        if _PLAIN.fullmatch(value) and value.lower() not in ("true", "false", "null", "nan", "inf"):
            return value
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return repr(value)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically (a temporary file renamed), creating the directory."""
    return write_text_atomic(path, text)


def chosen_trial(result: Any, number: int | None, weights: str | None) -> TrialRecord | None:
    """The trial ``lightning-hpt best`` prints: ``--trial N``, the Pareto trial ``--weights`` prefers, or the best.

    Raises:
        HPTError: several objectives and neither option (naming both), or an unknown or unscored trial.
    """
    if number is not None:
        found = [t for t in result.trials if t.number == number]
        if not found or not found[0].scored:
            raise HPTError(
                f"--trial {number}: {unscored(result, found[0] if found else None, number)}, so it has no"
                f" result to print; lightning-hpt show {result.study} lists the COMPLETE feasible trials"
            )
        return found[0]
    if weights is not None:
        return result.best(weights=_weights(weights, [o.name for o in result.objectives]))
    if result.multi:
        front = [t.number for t in result.pareto_trials]
        example = ",".join(f"{o.name}=1" for o in result.objectives)
        raise HPTError(
            f"study {result.study!r} has several objectives, so no single best trial: give --trial N (one of the"
            f" Pareto front: {front}) or --weights {example}"
        )
    return result.best_trial


def _weights(text: str, names: list[str]) -> dict[str, float]:
    """``--weights val_acc=1,n_params=0.5`` as a dict, checked against the study's objectives in the CLI's words."""
    example = ",".join(f"{n}=1" for n in names)
    out: dict[str, float] = {}
    twice = []
    for part in text.split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        twice += [name] if name in out else []
        try:
            out[name] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise ConfigurationError(f"--weights must read name=number,...; got {text!r}; e.g. --weights {example}")
    if twice:
        raise ConfigurationError(
            f"--weights names {sorted(set(twice))} more than once in {text!r}; give each objective one weight,"
            f" e.g. --weights {example}"
        )
    unknown = sorted(set(out) - set(names))
    if unknown:
        raise ConfigurationError(
            f"--weights names {unknown}, which are not objectives of the study ({names}); e.g. --weights {example}"
        )
    if not all(v >= 0 for v in out.values()) or not any(out.values()):  # not v >= 0: NaN too
        raise ConfigurationError(f"--weights must be numbers >= 0, not all 0; got {text!r}; e.g. --weights {example}")
    return out
