"""An executor that trains up to K trials at once as stacked models, in one background thread."""

from __future__ import annotations

import atexit
import math
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from functools import partial

from typing_extensions import override

from lightning_hpt.exceptions import ConfigurationError
from lightning_hpt.executors.base import Executor, failed_outcome
from lightning_hpt.lightning.config import SECTIONS
from lightning_hpt.lightning.monitor import TrialReporter
from lightning_hpt.lightning.runner import TrialBuild, TrialJob, TrialOutcome
from lightning_hpt.masking import get_logger
from lightning_hpt.stacking.group import run_jobs
from lightning_hpt.stacking.grouping import PER_MEMBER, check_per_member, group_key
from lightning_hpt.stacking.resume import WRITE_EVERY
from lightning_hpt.trial import INTERRUPTED, TrialState

__all__ = ["StackedExecutor"]

log = get_logger(__name__)
_Pending = tuple[TrialJob, TrialReporter, "_Outcome"]


class _Outcome(Future):
    """A trial's future that tells its executor when the driver has read it (and may now submit more)."""

    def __init__(self, on_read: Callable[[], None]) -> None:
        super().__init__()
        self._on_read: Callable[[], None] | None = on_read

    def result(self, timeout: float | None = None) -> TrialOutcome:
        out = super().result(timeout)
        if self._on_read is not None:
            self._on_read, on_read = None, self._on_read
            on_read()
        return out


class StackedExecutor(Executor):
    """Takes up to ``stack`` trials from the search and trains those that share their structure as one model.

    Trials whose structural parameters are equal (every parameter except the per-member ones, see
    :mod:`lightning_hpt.stacking.grouping`) and whose built models have the same layout form a group; each
    group is one Lightning fit of a stacked model (``torch.func.vmap`` over the members), and each member is
    recorded as its own trial: its values, pruning, early stopping and best checkpoint. Trials that cannot
    be stacked run as ordinary trials, with the reason in the log and in ``attrs["stacked"]["refused"]``.

    Each member's outcome goes to the search as soon as the member ends (done, pruned, stopped early), while
    the rest of its group trains on. The search hands over new trials once it has recorded the finished
    ones; at the end of each epoch a running group gives its ended members' slots to waiting trials of
    its structure (``refill``). The executor starts a group when it holds ``stack`` trials, or when every
    finished trial has been read and no new one has arrived for ``linger`` seconds (the search's last,
    smaller group). A
    stopped group's unfinished members end as interrupted; when they run again each continues from its
    own resumable checkpoint (:mod:`lightning_hpt.stacking.resume`), in whatever group it joins.

    Args:
        stack: the most trials trained at once (K).
        per_member: ``model.*`` init arguments that may differ inside a group; they must reach the model
            only through ``configure_optimizers`` or ``nn.Dropout`` modules.
        linger: seconds to wait for more trials before starting a group smaller than ``stack``.
        write_every: the members' resumable states, taken at the search's ``Resume`` interval, are written
            at most every this many seconds, and always when the group stops; ``0``: each as it is taken.
            A hard kill loses at most this much of a group's training.
        refill: at the end of each epoch, a running group gives the slots of its ended members to trials
            waiting with its structure, which train from the next epoch up to their own ``max_epochs``;
            ``False``: a group trains only the trials it started with.

    Example:
        >>> executor = StackedExecutor(stack=16)  # HyperparameterSearch(..., executor=executor)
    """

    ddp_refusal = (
        "a StackedExecutor trains its groups in this process on one device. Run DDP trials with"
        " executor=ProcessExecutor(gpus_per_trial=k)"
    )
    trial_kind = "a StackedExecutor (it trains its groups in this process on one device)"

    def __init__(
        self,
        stack: int = 16,
        per_member: Iterable[str] = PER_MEMBER,
        linger: float = 1.0,
        write_every: float = WRITE_EVERY,
        refill: bool = True,
    ) -> None:
        if not isinstance(stack, int) or isinstance(stack, bool) or stack < 1:
            raise ConfigurationError(f"stack must be an integer >= 1 (trials trained at once), got stack={stack!r}")
        for name, value in (("linger", linger), ("write_every", write_every)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise ConfigurationError(f"{name} must be a finite number of seconds >= 0, got {name}={value!r}")
        names = _per_member_names(per_member)
        self.stack, self.per_member, self.linger = stack, tuple(names), float(linger)
        if not isinstance(refill, bool):
            raise ConfigurationError(f"refill must be True or False, got refill={refill!r}")
        self.write_every, self.refill = float(write_every), refill
        self._pending: list[_Pending] = []
        self._cond = threading.Condition()
        self._last_submit = 0.0
        self._unread = 0  # outcomes set but not yet read by the driver
        self._stop = threading.Event()
        self._said: set[str] = set()  # the refusal reasons already logged as warnings
        self._flushing = False  # the search said it has no more trials: a group need not wait to fill
        self._thread: threading.Thread | None = None
        # an executor passed to a search outlives its run(): its thread is joined before the interpreter ends, or
        # a group's last clean-up could still run in it then (an abort at exit, "terminate called")
        ref = weakref.ref(self)
        atexit.register(lambda: (e := ref()) is not None and e.shutdown())

    @property
    @override
    def max_concurrency(self) -> int:
        return self.stack

    @override
    def _start(self, build: TrialBuild, data: bytes | None) -> None:
        check_per_member(getattr(build.builder, "model", None), self.per_member)  # before anything is written
        with self._cond:
            self._stop.clear()
            self._flushing = False
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="lightning-hpt-stacked", daemon=True)
            self._thread.start()

    @override
    def _submit(self, job: TrialJob, reporter: TrialReporter, answers: bool) -> Future[TrialOutcome]:
        future = _Outcome(self._read)
        if self._thread is None or not self._thread.is_alive():
            self._start(job.build, None)
        with self._cond:
            self._pending.append((job, reporter, future))
            self._last_submit = time.monotonic()
            self._cond.notify_all()
        return future

    @override
    def flush(self) -> None:
        """The search has no more trials to hand out: start the trials held now without waiting ``linger``."""
        with self._cond:
            self._flushing = True
            self._cond.notify_all()

    def _read(self) -> None:
        with self._cond:
            self._unread -= 1
            self._last_submit = time.monotonic()
            self._cond.notify_all()

    def _take(self) -> list[_Pending]:
        """The next group's trials: ``stack`` of them, or fewer once the driver has no more to hand out."""
        with self._cond:
            while not self._stop.is_set():
                quiet = time.monotonic() - self._last_submit
                # the driver has read every outcome and handed out nothing for ``linger`` seconds: it has no more
                # now (a driver that never reads its outcomes is given up on after ten times as long)
                wait = self.linger if self._unread <= 0 else 10 * self.linger + 10
                full = len(self._pending) >= self.stack
                if full or (self._pending and (self._flushing or quiet >= wait)):
                    taken, self._pending = self._pending[: self.stack], self._pending[self.stack :]
                    return taken
                self._cond.wait(timeout=max(0.01, wait - quiet) if self._pending else None)
            return []

    def _loop(self) -> None:
        while not self._stop.is_set():
            taken = self._take()
            if not taken:
                continue
            futures = [f for _, _, f in taken]
            try:  # a member's outcome goes to the driver when it ends, while its group trains on
                outcomes = run_jobs(
                    [(j, r) for j, r, _ in taken],
                    self.per_member,
                    self._stop,
                    lambda pos, outcome, futures=futures: self._deliver(futures[pos], outcome),
                    self._said,
                    self.write_every,
                    self if self.refill else None,
                )
            except BaseException as e:  # a bug here must not leave the driver waiting forever
                log.exception("the stacked executor failed")
                outcomes = [failed_outcome(f"the stacked executor failed: {type(e).__name__}: {e}")] * len(taken)
            for future, outcome in zip(futures, outcomes, strict=True):
                self._deliver(future, outcome)

    def take(self, n: int, key: tuple) -> list[tuple[TrialJob, TrialReporter, Callable[[TrialOutcome], None]]]:
        """Up to ``n`` waiting trials of group key ``key``, for the slots of a running group's ended members."""
        with self._cond:
            if self._stop.is_set():
                return []
            taken = [p for p in self._pending if group_key(p[0].params, self.per_member) == key][:n]
            ids = {id(p) for p in taken}
            self._pending = [p for p in self._pending if id(p) not in ids]
        return [(job, reporter, partial(self._deliver, future)) for job, reporter, future in taken]

    def give_back(self, items: list[tuple[TrialJob, TrialReporter, Callable[[TrialOutcome], None]]]) -> None:
        """Trials :meth:`take` returned that cannot join that group: first in line for the next one."""
        with self._cond:
            # each ``deliver`` is take's ``partial(self._deliver, future)``
            back = [(job, reporter, deliver.args[0]) for job, reporter, deliver in items]  # type: ignore[attr-defined]
            self._pending = back + self._pending
            self._cond.notify_all()

    def _deliver(self, future: _Outcome, outcome: TrialOutcome) -> None:
        """Hand a trial's outcome to the driver, once."""
        with self._cond:
            if future.done():
                return
            self._unread += 1
        future.set_result(outcome)

    @override
    def halt(self) -> None:
        """Stop the running group at its next step: a member that ended meanwhile is delivered as ended."""
        self.shutdown()

    @override
    def shutdown(self) -> None:
        """Stop the running group (its trials end as interrupted) and the background thread."""
        with self._cond:
            self._stop.set()
            pending, self._pending = self._pending, []
            self._cond.notify_all()
        self._unread = 0
        for _, _, future in pending:
            future.set_result(
                TrialOutcome(TrialState.FAILED, error=f"{INTERRUPTED}: the search stopped", interrupted=INTERRUPTED)
            )
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=60)
        self._thread = None


def _per_member_names(per_member: Iterable[str]) -> list[str]:
    """``StackedExecutor``'s ``per_member`` as a list of init argument names, checked.

    Raises:
        ConfigurationError: a name is empty or not a string, or starts with a section (``model.lr``), which
            would name an init argument ``model`` and leave ``lr`` structural (every trial its own group).
    """
    names = [per_member] if isinstance(per_member, str) else list(per_member)
    if not all(isinstance(n, str) and n for n in names):
        raise ConfigurationError(
            f"per_member must be names of model init arguments, e.g. ('lr', 'dropout'), got per_member={per_member!r}"
        )
    if any(n.partition(".")[0] in SECTIONS for n in names):
        fixed = tuple(n.partition(".")[2] if n.partition(".")[0] in SECTIONS else n for n in names)
        raise ConfigurationError(
            "per_member names the model's init arguments without their section ('lr', not 'model.lr';"
            " every 'optimizer.*' parameter and 'trainer.max_epochs' are per member already),"
            f" got per_member={per_member!r}: use per_member={fixed!r}"
        )
    return names
