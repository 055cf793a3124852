"""Run a batch of trial jobs as stacked groups: build, group, fit, and fall back to ordinary trials where refused.

Each trial's outcome is handed to ``on_done`` as soon as it is known: a member that ends (done, pruned,
stopped early) is recorded while the rest of its group trains on.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import os
import threading
import traceback
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Protocol

import torch

from lightning_hpt.lightning.config import namespace_of
from lightning_hpt.lightning.module_builder import ModuleTrialBuilder
from lightning_hpt.lightning.monitor import TrialReporter
from lightning_hpt.lightning.quiet import quiet_lightning
from lightning_hpt.lightning.runner import TrialJob, TrialOutcome, run_trial, trial_seed
from lightning_hpt.masking import get_logger
from lightning_hpt.stacking.grouping import PER_MEMBER, StackingRefused, group_key, refusal, signature
from lightning_hpt.stacking.members import Member, member_checkpoint
from lightning_hpt.stacking.module import stacked_module_class
from lightning_hpt.stacking.resume import WRITE_EVERY, load_member_state

__all__ = ["run_jobs"]

log = get_logger(__name__)
Item = tuple[TrialJob, TrialReporter | None]
Done = Callable[[int, TrialOutcome], None]


class Source(Protocol):
    """Where a running group finds trials for the slots of its ended members (the executor's waiting trials)."""

    def take(self, n: int, key: tuple) -> list[tuple[TrialJob, TrialReporter | None, Callable[[TrialOutcome], None]]]:
        """Up to ``n`` waiting trials whose :func:`group_key` is ``key``, each with where its outcome goes."""

    def give_back(self, items: list[tuple[TrialJob, TrialReporter | None, Callable[[TrialOutcome], None]]]) -> None:
        """Trials taken that cannot join this group after all: they wait for the next one."""


def _ignore(position: int, outcome: TrialOutcome) -> None:
    """The default ``on_done``: outcomes are only returned."""


def run_jobs(
    items: Sequence[Item],
    per_member: Iterable[str] = PER_MEMBER,
    stop: threading.Event | None = None,
    on_done: Done = _ignore,
    said: set[str] | None = None,
    write_every: float = WRITE_EVERY,
    source: Source | None = None,
) -> list[TrialOutcome]:
    """The outcomes of ``items`` (in order): trials with equal structure trained as one stacked model each.

    Never raises for what a trial does; a group that cannot be stacked runs as ordinary trials, with
    the reason in each trial's ``attrs["stacked"]["refused"]``.

    Args:
        items: the trials and their reporters.
        per_member: ``model.*`` arguments that may differ inside a group.
        stop: once set, the running group stops at its next step; its unfinished members end as
            interrupted and continue from their resumable checkpoints when they run again.
        on_done: called with ``(position in items, outcome)`` as soon as each trial has ended.
        said: the refusal reasons already logged as warnings (a caller's set, updated here): a reason
            is a warning the first time, then a debug message.
        write_every: seconds between writes of the members' resumable checkpoints
            (:mod:`lightning_hpt.stacking.resume`).
        source: where a group finds new members for the slots of ended ones, at the end of an epoch
            (``None``: a group trains the trials it started with).
    """
    per = tuple(per_member)
    by_key: dict[tuple, list[int]] = defaultdict(list)
    for pos, (job, _) in enumerate(items):
        by_key[group_key(job.params, per)].append(pos)
    outcomes: dict[int, TrialOutcome] = {}
    run = _Run(stop, on_done, set() if said is None else said, write_every, source)
    for key, positions in by_key.items():
        outcomes.update(_run_group([items[p] for p in positions], positions, replace(run, key=key)))
    return [outcomes[p] for p in range(len(items))]


@dataclass(frozen=True)
class _Run:
    """How :func:`run_jobs` runs its groups (its arguments of that name)."""

    stop: threading.Event | None
    on_done: Done
    said: set[str]
    write_every: float
    source: Source | None = None
    key: tuple = ()  # the group's :func:`group_key`


def _ordinary(items: Sequence[Item], positions: Sequence[int], reason: str, run: _Run) -> dict[int, TrialOutcome]:
    numbers = [j.number for j, _ in items]
    if reason in run.said:
        log.debug("trials %s run one by one, not stacked: %s", numbers, reason)
    else:
        run.said.add(reason)
        log.warning(
            "trials %s run one by one, not stacked: %s (said once; each trial keeps the reason in"
            " attrs['stacked']['refused'])",
            numbers,
            reason,
        )
    out = {}
    for pos, (job, reporter) in zip(positions, items, strict=True):
        outcome = run_trial(job, reporter)
        out[pos] = replace(outcome, attrs={**outcome.attrs, "stacked": {"refused": reason}})
        run.on_done(pos, out[pos])
    return out


def _static_refusal(job: TrialJob) -> str | None:
    """Why the trials of ``job``'s build cannot be stacked, whatever their model (every reason), or ``None``."""
    b = job.build
    if not isinstance(b.builder, ModuleTrialBuilder):
        # another builder (a LightningCLI project's) makes its own Trainer, callbacks and loggers, which a
        # stacked group would leave out; only a module, a datamodule and Trainer arguments can be stacked
        return (
            f"the trials are built by {type(b.builder).__name__}, which makes its own Trainer, callbacks and"
            " loggers; only trials of a LightningModule and Trainer arguments (ModuleTrialBuilder) are stacked"
        )
    reasons = []
    if len(b.runs) > 1:
        reasons.append("cross-validation and repeats train one Trainer per fold and repeat")
    if b.builder.trainer_settings(job.params).get("callbacks"):
        reasons.append("trainer_kwargs callbacks would see the stacked module instead of each trial's own")
    return "; ".join(reasons) or None


def _build(items: Sequence[Item]) -> tuple[list[Any], Any]:
    """Each member built as its own trial would be (its own seed), and the first member's datamodule."""
    models = [_build_model(job) for job, _ in items]
    return models, items[0][0].build.builder.build_datamodule(items[0][0].params)


def _build_model(job: TrialJob) -> Any:
    """The trial's model, built after seeding as its own trial would be."""
    from lightning.fabric.utilities.seed import seed_everything

    seed_everything(trial_seed(job.seed, job.number), workers=True, verbose=False)
    return job.build.builder.build_model(job.params)


def _run_group(items: Sequence[Item], positions: Sequence[int], run: _Run) -> dict[int, TrialOutcome]:
    job0 = items[0][0]
    reason = _static_refusal(job0)
    if reason:
        return _ordinary(items, positions, reason, run)
    try:
        with quiet_lightning(job0.build.builder.quiet):
            models, dm = _build(items)
    except Exception as e:  # a trial's own build error: ordinary trials report it each
        return _ordinary(items, positions, f"building a member raised {type(e).__name__}: {e}", run)
    by_sig: dict[tuple, list[int]] = defaultdict(list)
    for k, m in enumerate(models):
        by_sig[signature(m)].append(k)
    out: dict[int, TrialOutcome] = {}
    for ks in by_sig.values():
        sub, pos, mods = [items[k] for k in ks], [positions[k] for k in ks], [models[k] for k in ks]
        pl = namespace_of(mods[0])
        reason = refusal(mods[0], pl.LightningModule, job0.build.builder.trainer_settings(job0.params))
        if reason:
            out.update(_ordinary(sub, pos, reason, run))
        else:
            out.update(_fit(sub, pos, mods, dm, pl, run))
    del models, dm
    gc.collect()
    return out


def _max_epochs(job: TrialJob) -> int | None:
    value = job.build.builder.trainer_settings(job.params).get("max_epochs")
    return None if value is None or value < 0 else int(value)


def _trainer(pl: Any, job0: TrialJob, max_epochs: int | None) -> Any:
    kwargs = job0.build.builder.trainer_settings(job0.params)  # a group's structural settings are its members'
    kwargs.update(
        max_epochs=max_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=job0.trial_dir,
    )
    kwargs.pop("callbacks", None)
    accepted = inspect.signature(pl.Trainer).parameters
    return pl.Trainer(**{k: v for k, v in kwargs.items() if k in accepted})


def _group_epochs(tracks: Sequence[Member]) -> int | None:
    """The group's ``max_epochs``: the most epochs a member still has to train (``None``: no limit set)."""
    left = [None if t.max_epochs is None else t.max_epochs - t.epochs_before for t in tracks if not t.ended]
    return None if None in left else max(left)  # type: ignore[type-var]


def _begin(track: Member, model: Any, pl: Any) -> dict[str, Any] | None:
    """Start a member: continued from its resumable checkpoint if it has one, its trial directory opened,
    and ended at once if it had ended before it was interrupted (or its pruner stops it now); its optimizer
    state to continue from is returned."""
    state = _continue(track, model, pl)
    track.open(pl)
    if track.ended:
        track.finish()
    return state


def _continue(track: Member, model: Any, pl: Any) -> dict[str, Any] | None:
    """Give a member its resumable checkpoint's weights and counters; its optimizer state is returned."""
    state = load_member_state(track.job)
    if state is None:
        return None
    own, saved = model.state_dict(), state["state_dict"]
    if set(own) != set(saved) or any(own[k].shape != saved[k].shape for k in own):  # checked before any copy
        log.warning("trial %d: its checkpoint does not fit its model; it starts over", track.job.number)
        return None
    try:
        track.restore(state["member"])
    except (KeyError, TypeError, ValueError) as e:  # values saved by a search with other objectives (or damaged)
        log.warning("trial %d: its checkpoint's values cannot be read (%s); it starts over", track.job.number, e)
        return None
    model.load_state_dict(saved)
    best = state["best"]
    if best is not None:
        track.keep(member_checkpoint(model, best["epoch"], best["global_step"], pl, state_dict=best["state_dict"]))
    return state["optimizer_states"][0]


def _fit(
    items: Sequence[Item],
    positions: Sequence[int],
    models: list[Any],
    dm: Any,
    pl: Any,
    run: _Run,
) -> dict[int, TrialOutcome]:
    job0 = items[0][0]
    attrs = {"stacked": {"group": [j.number for j, _ in items]}}
    tracks = [
        Member(job, reporter, _max_epochs(job), on_end=partial(run.on_done, pos))
        for pos, (job, reporter) in zip(positions, items, strict=True)
    ]
    for t in tracks:
        t.attrs = attrs
    try:
        with quiet_lightning(job0.build.builder.quiet):
            states = [_begin(t, m, pl) for t, m in zip(tracks, models, strict=True)]
            if not all(t.ended for t in tracks):
                epochs = _group_epochs(tracks)
                module = stacked_module_class(pl)(models, tracks, pl, run.stop, states, run.write_every)
                module.join = _joiner(module, signature(models[0]), epochs is not None, attrs, pl, run)
                trainer = _trainer(pl, job0, epochs)
                try:
                    trainer.fit(module, datamodule=dm)
                finally:
                    tracks = module.members_seen
    except Exception as e:  # StackingRefused, a vmap refusal, or the trials' own error
        log.debug("stacked group %s raised:\n%s", attrs["stacked"]["group"], traceback.format_exc())
        if len(tracks) == len(items) and not any(len(t.values) > (t.resumed_at or 0) for t in tracks):
            # no value yet (and no member joined): run them on their own
            rest = [k for k, t in enumerate(tracks) if t.outcome_sent is None]
            for k in rest:
                tracks[k].close(write_best=False)
            out = {p: t.outcome_sent for p, t in zip(positions, tracks, strict=True) if t.outcome_sent is not None}
            alone = _ordinary([items[k] for k in rest], [positions[k] for k in rest], _reason(e), run)
            return {**out, **alone}
        for t in tracks:
            if not t.ended:
                t.error, t.ended = e, True
    stopped = run.stop is not None and run.stop.is_set()
    for t in tracks:
        if t.outcome_sent is None and stopped and t.error is None:
            t.interrupt()
        elif t.outcome_sent is None:
            t.finish()
    return {p: t.outcome_sent for p, t in zip(positions, tracks, strict=False)}  # type: ignore[misc]


def _joiner(module: Any, layout: tuple, bounded: bool, attrs: dict[str, Any], pl: Any, run: _Run) -> Any:
    """``module``'s ``join``: waiting trials of its group key, built, checked and opened as its new members.

    A trial that cannot take a slot (another layout, an optimizer the group's update does not follow, no
    ``max_epochs`` in a group that has one) goes back to wait for a later group.
    """

    def join(n: int) -> list[tuple[Any, Member, dict[str, Any] | None]]:
        if run.source is None:
            return []
        taken, joined, back = run.source.take(n, run.key), [], []
        for job, reporter, deliver in taken:
            track = Member(job, reporter, _max_epochs(job), on_end=deliver)
            try:
                with quiet_lightning(job.build.builder.quiet), _rng_kept():
                    model = _build_model(job)
            except Exception:  # its own build error: it runs, and reports it, in a later group
                back.append((job, reporter, deliver))
                continue
            if signature(model) != layout or (bounded and track.max_epochs is None) or not module.accepts(model):
                back.append((job, reporter, deliver))
                continue
            attrs["stacked"]["group"].append(job.number)
            track.attrs = attrs
            state = _begin(track, model, pl)
            if not track.ended:
                joined.append((model, track, state))
        if back:
            run.source.give_back(back)
        return joined

    return join


@contextlib.contextmanager
def _rng_kept() -> Iterator[None]:
    """The global random states (Python's, NumPy's, torch's) as they were: a member built mid-group
    (seeded with its own seed) leaves the group's data order and dropout draws as they would have been."""
    import random

    import numpy as np

    py, nps = random.getstate(), np.random.get_state()
    env = {k: os.environ.get(k) for k in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS")}  # seed_everything sets them
    try:
        with torch.random.fork_rng():
            yield
    finally:
        random.setstate(py)
        np.random.set_state(nps)
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _reason(e: BaseException) -> str:
    """Why a group that failed before its first validation run is run as ordinary trials."""
    if isinstance(e, StackingRefused):
        return str(e)
    reason = f"the stacked group failed before its first validation run ({type(e).__name__}: {e})"
    if "device meta" in str(e):  # the members' shared module holds no data: its own state was written to
        reason += (
            "; training_step updates a state of the module itself, such as a torchmetrics metric: compute"
            " training metrics with torchmetrics.functional, or update metric objects in validation_step only"
        )
    elif "vmap" not in str(e):  # vmap's own messages say so; an error inside a batched op does not
        reason += "; vmap may be unable to batch an operation of training_step"
    return reason
