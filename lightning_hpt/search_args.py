"""The checks and conversions of :class:`~lightning_hpt.search.HyperparameterSearch`'s arguments.

Each check raises an error of the package's family naming the argument, the rule, the value and the
fix, and writes nothing.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from lightning_hpt.constraints import OutcomeConstraint, ParamConstraint
from lightning_hpt.exceptions import ConfigurationError
from lightning_hpt.lightning.builder import TrialBuilder
from lightning_hpt.lightning.folds import CrossValidation
from lightning_hpt.lightning.module_builder import ModuleTrialBuilder
from lightning_hpt.lightning.resume import Resume
from lightning_hpt.lightning.runner import DEFAULT_RESUME, TrialBuild
from lightning_hpt.objectives import Objective
from lightning_hpt.storage import StudyInfo

log = logging.getLogger(__name__)

__all__ = ["adopt", "one_score_per_run", "require_positive", "resume_of", "told", "trial_builder"]


def require_positive(
    name: str, value: Any, *, integer: bool = True, optional: bool = False, none_means: str = " or None"
) -> None:
    """Refuse ``value`` unless it is a positive integer (or number), or ``None`` when ``optional``."""
    kind = (int,) if integer else (int, float)
    if (value is None and optional) or (not isinstance(value, bool) and isinstance(value, kind) and value > 0):
        return
    what = "a positive integer" if integer else "a positive number of seconds"
    raise ConfigurationError(f"{name} must be {what}{none_means if optional else ''}, got {name}={value!r}")


def trial_builder(model: Any, datamodule: Any, trainer_kwargs: Any, builder: TrialBuilder | None) -> TrialBuilder:
    """The search's builder: ``builder`` itself, or one made of ``model``, ``datamodule`` and ``trainer_kwargs``."""
    if isinstance(model, TrialBuilder):
        raise ConfigurationError(f"model={model!r} is a TrialBuilder; pass it as builder= (and no model or datamodule)")
    if builder is None:
        if model is None:
            raise ConfigurationError(
                "model is required: a LightningModule class or a factory config -> LightningModule (or pass builder=)"
            )
        if trainer_kwargs is not None and not isinstance(trainer_kwargs, Mapping):
            raise ConfigurationError(
                "trainer_kwargs must be a dict of Trainer arguments, got"
                f" {type(trainer_kwargs).__name__}: {trainer_kwargs!r}"
            )
        return ModuleTrialBuilder(model, datamodule, dict(trainer_kwargs or {}))
    if not isinstance(builder, TrialBuilder):
        raise ConfigurationError(
            f"builder must be a TrialBuilder (ModuleTrialBuilder, CLITrialBuilder), got builder={builder!r}"
        )
    given = [n for n, v in (("model", model), ("datamodule", datamodule), ("trainer_kwargs", trainer_kwargs)) if v]
    if given:
        raise ConfigurationError(
            f"builder= makes every trial, so {given} must not be given as well; give them to the builder instead"
        )
    return builder


def told(value: Any, n: int, what: str) -> tuple[float, ...] | None:
    """A told value as a tuple of ``n`` numbers (``None`` stays ``None``)."""
    if value is None:
        return None
    many = isinstance(value, Sequence) and not isinstance(value, str)
    items = list(value) if many else [value]
    if (
        (many != (n > 1))
        or len(items) != n
        or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in items)
    ):
        shape = "a number" if n == 1 else f"a list of {n} numbers (one per objective)"
        raise ConfigurationError(f"tell: {what} must be {shape} or None, got {what}={value!r}")
    return tuple(float(v) for v in items)


def one_score_per_run(cv: CrossValidation | None, repeats: int, objectives: Sequence[Objective], outcome: Any) -> None:
    """Refuse several objectives or outcome constraints with cv or repeats, whose runs are averaged on one metric."""
    if (cv is not None or repeats > 1) and (len(objectives) > 1 or outcome):
        what = "several objectives" if len(objectives) > 1 else "outcome constraints"
        raise ConfigurationError(
            f"cv= and repeats= average one metric over a trial's runs; {what} need every metric at one step, so they"
            " cannot be combined yet: drop cv/repeats, or optimize one metric"
        )


def resume_of(resume: Resume | bool) -> Resume | None:
    if isinstance(resume, Resume):
        return resume
    if isinstance(resume, bool):
        return DEFAULT_RESUME if resume else None
    raise ConfigurationError(
        f"resume must be True, False or a Resume(every_n_epochs=..., every_minutes=..., keep=..., failed=...),"
        f" got resume={resume!r}"
    )


def adopt(
    build: TrialBuild, rules: tuple[ParamConstraint, ...], stored: StudyInfo, study: str
) -> tuple[TrialBuild, tuple[ParamConstraint, ...]]:
    """The build and parameter constraints of a stored study continued with ``allow_changes``: its own objectives
    and constraints (trials must stay comparable); a stored function is known by name, so the one given runs."""
    outcome = tuple(c for c in stored.constraints if isinstance(c, OutcomeConstraint))
    given = {c.text: c for c in rules}
    kept = tuple(given.get(c.text, c) for c in stored.constraints if isinstance(c, ParamConstraint))
    lost = [c.text for c in kept if c.text.startswith("<function ") and c.text not in given]
    if lost:
        log.warning("study %r: parameter constraints %s are stored by name only: unchecked", study, lost)
        kept = tuple(c for c in kept if c.text not in lost)
    one_score_per_run(build.cv, build.repeats, stored.objectives, outcome)
    changed = dataclasses.replace(
        build, monitor=stored.monitor, direction=stored.direction, objectives=stored.objectives, constraints=outcome
    )
    return changed, kept
