"""The checks and conversions of :class:`~lightning_hpt.search.HyperparameterSearch`'s arguments.

Each check raises an error of the package's family naming the argument, the rule, the value and the
fix, and writes nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from lightning_hpt.constraints import OutcomeConstraint, ParamConstraint
from lightning_hpt.exceptions import ConfigurationError, StudyMismatchError
from lightning_hpt.lightning.builder import TrialBuilder
from lightning_hpt.lightning.module_builder import ModuleTrialBuilder, check_trainer_kwargs
from lightning_hpt.lightning.resume import Resume
from lightning_hpt.lightning.runner import DEFAULT_RESUME, TrialBuild
from lightning_hpt.masking import get_logger
from lightning_hpt.objectives import Objective
from lightning_hpt.storage import StudyInfo
from lightning_hpt.strategies import make_strategy

log = get_logger(__name__)

__all__ = [
    "PEER_WORDS",
    "SCRIPT_WORDS",
    "adopt",
    "check_feasible",
    "check_params",
    "max_steps_of",
    "record_told",
    "refit_one_objective",
    "require_positive",
    "resume_of",
    "told",
    "trial_builder",
]


#: what other tools call a search's arguments, and what to write here instead
PEER_WORDS = {
    "trainer": "use trainer_kwargs={'max_epochs': 10, ...}: the Trainer's arguments as a dict"
    " (each trial builds its own)",
    "max_epochs": "use trainer_kwargs={'max_epochs': ...}",
    "direction": "use mode='min' or mode='max'",
    "directions": "use mode=['max', 'min'], one per objective of monitor",
    "metric": "use monitor='val_loss' (the name the model logs with self.log)",
    "objective": "use monitor='val_loss' (the name the model logs with self.log)",
    "sampler": "use strategy='random', 'sobol', 'grid', 'bayes' or a Strategy",
    "search_alg": "use strategy='random', 'sobol', 'grid', 'bayes' or a Strategy",
    "scheduler": "use pruner='median', 'asha', 'hyperband' or a Pruner",
    "num_samples": "use n_trials=",
    "max_trials": "use n_trials=",
    "n_jobs": "use executor=ProcessExecutor(workers=N) (from lightning_hpt.executors)",
    "callbacks": "use trainer_kwargs={'callbacks': [...]}",
}

_TRAINER = "your script builds its own Trainer"
_OWN = "is HyperparameterSearch's: your script builds and trains each trial itself"
#: the same for a ScriptSearch, whose script builds the Trainer, model and data (``max_epochs`` is its own)
SCRIPT_WORDS = {
    **{key: fix for key, fix in PEER_WORDS.items() if key not in ("trainer", "max_epochs", "callbacks")},
    **{key: f"{_TRAINER}: give {key} to it" for key in ("trainer", "trainer_kwargs", "callbacks")},
    "patience": f"{_TRAINER}: add EarlyStopping(monitor=..., patience=...) to its callbacks",
    "checkpoint": f"{_TRAINER}: add ModelCheckpoint(monitor=..., mode=...) to its callbacks",
    **{key: f"{key} {_OWN}" for key in ("model", "datamodule", "builder", "executor", "cv", "repeats", "refit")},
    "n_jobs": "run the script several times (terminals, a SLURM array, machines): the copies share the study",
}


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
        if trainer_kwargs is not None:
            check_trainer_kwargs(trainer_kwargs)
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


def refit_one_objective(objectives: Sequence[Objective], refit: bool) -> None:
    """Refuse ``refit=True`` (one best configuration) with several objectives (a Pareto front)."""
    if refit and len(objectives) > 1:
        raise ConfigurationError(
            "refit=True retrains the one best configuration, and several objectives have a Pareto front instead:"
            " drop refit, then choose a trial of result.pareto_trials and call result.refit(trial=...)"
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


def continued(
    stored: StudyInfo, build: TrialBuild, rules: tuple[ParamConstraint, ...], strategy: Any, by_name: bool, study: str
) -> tuple[TrialBuild, tuple[ParamConstraint, ...], Any]:
    """What a search goes on with once its study is open: the stored objectives and constraints when they differ
    (``allow_changes``: trials must stay comparable), the stored strategy when it was given by name."""
    if (stored.monitor, stored.direction, stored.objectives, stored.constraints) != (
        build.monitor,
        build.direction,
        build.objectives,
        (*build.constraints, *rules),
    ):
        build, rules = adopt(build, rules, stored, study)
    if stored.strategy != strategy.name and by_name:
        strategy = make_strategy(stored.strategy)
    elif stored.strategy != strategy.name:  # a configured object is the user's choice: it is kept
        log.warning("study %r ran with strategy %r; it goes on with the %r given", study, stored.strategy, strategy)
    return build, rules, strategy


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
    changed = dataclasses.replace(
        build, monitor=stored.monitor, direction=stored.direction, objectives=stored.objectives, constraints=outcome
    )
    return changed, kept


def check_function_kept(traced: Any, stored: Any, study: str) -> None:
    """Refuse to continue a study with ``allow_changes`` when the space function given asks for a parameter the
    stored space, which the study keeps, does not have as asked: every trial would fail at that ``suggest``."""
    changed = [
        f"{name!r} (the stored space has " + (f"{stored[name]!r})" if name in stored else "no such parameter)")
        for name in traced
        if name not in stored or stored[name] != traced[name]
    ]
    if changed:
        raise StudyMismatchError(
            f"study {study!r} continues with the space it was created with (allow_changes=True), but the space"
            f" function given asks for {', '.join(changed)}: each trial would fail when the function asks. Continue"
            " the study with the function it was created with, or search the new space under a new study_name"
        )


def check_feasible(space: Any, rules: Sequence[ParamConstraint]) -> None:
    """Refuse parameter constraints that no configuration of the space keeps, or that cannot be evaluated on
    one (a rule that reads a conditional parameter where it is absent), looking at every configuration of a
    small finite space, else at 1000 seeded draws, before anything is written."""
    if not rules:
        return
    import numpy as np

    from lightning_hpt.strategies.base import MAX_DRAWS

    total = 1
    for domain in space.values():
        total = None if total is None or domain.cardinality is None else total * domain.cardinality
    rng = np.random.default_rng(0)
    candidates = (
        space.grid() if total is not None and total <= MAX_DRAWS else (space.sample(rng) for _ in range(MAX_DRAWS))
    )
    kept = False
    for params in candidates:  # every rule on every candidate: one that reads an absent parameter is refused now
        kept = all([r.holds(params, space) for r in rules]) or kept  # noqa: C419 (no short cut)
    if not kept:
        what = (
            f"any of its {total} configurations" if total is not None and total <= MAX_DRAWS else f"{MAX_DRAWS} draws"
        )
        raise ConfigurationError(
            f"param_constraints {[str(r) for r in rules]} reject {what} of the space: it has no (or almost no) feasible"
            " point; loosen the constraints or widen the space"
        )


def record_told(
    storage: Any,
    study: str,
    number: int,
    vector: tuple[float, ...] | None,
    steps: Mapping[int, tuple[float, ...]],
    *,
    state: Any,
    error: str | None,
    attrs: Mapping[str, Any] | None,
    objectives: Sequence[Objective],
) -> Any:
    """Store what ``tell`` was told (values checked by :func:`told`): the steps, then the trial's end.

    A COMPLETE trial without finite values is recorded FAILED ("non-finite"), as a trained one is.
    """
    import math

    from lightning_hpt.trial import Direction, TrialState

    multi = len(objectives) > 1
    if steps:
        storage.report_many(study, number, {st: v if multi else v[0] for st, v in steps.items()})
    if state is TrialState.COMPLETE and (vector is None or not all(math.isfinite(v) for v in vector)):
        shown = list(vector) if multi and vector is not None else (vector or (None,))[0]
        state, error, vector = TrialState.FAILED, error or f"non-finite: value={shown!r}", None
    finite = [(st, v[0]) for st, v in steps.items() if math.isfinite(v[0])]
    best_step = None
    if finite:  # the step of the best value, under the first objective's direction
        pick = min if objectives[0].direction is Direction.MINIMIZE else max
        best_step = pick(finite, key=lambda sv: sv[1])[0]
    return storage.finish_trial(
        study,
        number,
        state=state,
        value=None if vector is None else vector[0],
        values=vector if multi else None,
        best_step=best_step,
        error=error,
        attrs=attrs,
    )


def check_params(space: Any, rules: Sequence[ParamConstraint], params: Mapping[str, Any]) -> None:
    """Refuse a configuration outside the space or breaking a parameter constraint (it would never run)."""
    space.validate(params)
    broken = [str(r) for r in rules if not r.holds(params, space)]
    if broken:
        raise ConfigurationError(
            f"the configuration {dict(params)} breaks param_constraints {broken}: it would never run; fix it or drop it"
        )


def max_steps_of(build: TrialBuild, space: Any) -> int | None:
    """The most steps (validation runs) a trial can have, if known: ``trainer.max_epochs`` (its highest
    value if searched), times the validation runs per epoch, times the runs (folds x repeats) of a trial."""
    from lightning_hpt.lightning.schedule import validation_schedule

    trainer = build.builder.trainer_settings()
    dom = space.get("trainer.max_epochs")
    if dom is not None and dom.values() is not None:
        epochs = int(max(dom.values()))
    else:
        epochs = trainer.get("max_epochs")
        if not (isinstance(epochs, int) and epochs > 0):
            return None
    schedule = validation_schedule(trainer)
    if schedule is None:
        return None  # validation every k batches: the count of validation runs is not known here
    every, per_epoch = schedule
    # steps continue across the folds and repeats of one trial
    return max(1, epochs // every) * per_epoch * len(build.runs)
