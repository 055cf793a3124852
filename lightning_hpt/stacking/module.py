"""One LightningModule that trains K members at once: parameters stacked along a new leading dimension.

Training runs each member's own ``training_step`` under ``torch.func.vmap`` with ``functional_call`` on
one template copy of the module, so one batch feeds all members in one call. Each member keeps its own
module object, whose parameters and buffers are *views* of its slice of the stacked tensors, and its own
optimizer from its own ``configure_optimizers``: learning rate, weight decay, momentum and every other
optimizer setting are the member's exactly. ``nn.Dropout`` modules of the template read each member's
rate from a stacked buffer; random draws differ per member (``randomness="different"``). Validation
calls each member's own ``validation_step`` (its torchmetrics included). A member that has ended is
left out of the stacked call: it receives no updates. At the end of each epoch a member that goes on
writes its resumable checkpoint when due (:mod:`lightning_hpt.stacking.resume`); a member continued from
one starts with its weights (set by the caller), its optimizer state and its step count.
"""

from __future__ import annotations

import contextlib
import copy
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from lightning.pytorch.utilities.data import extract_batch_size
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap
from typing_extensions import override

from lightning_hpt.masking import get_logger
from lightning_hpt.stacking.grouping import StackingRefused
from lightning_hpt.stacking.members import Member, member_checkpoint
from lightning_hpt.stacking.optim import StackedOptimizer
from lightning_hpt.stacking.resume import WRITE_EVERY, ResumeClock
from lightning_hpt.stacking.train_logs import TrainLogs

__all__ = ["stacked_module_class"]

log = get_logger(__name__)
#: ``join(n)``: up to ``n`` new members for the slots of ended ones, as (model, track, optimizer state or None)
Join = Callable[[int], list[tuple[Any, Member, "dict[str, Any] | None"]]]


class _MemberDropout(nn.Module):
    """``nn.Dropout`` whose rate is a (stacked) buffer, so that each member of a vmapped call has its own."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.register_buffer("p", torch.tensor(float(p)))

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        keep = (torch.rand_like(x) >= self.p).to(x.dtype)
        return x * keep / (1.0 - self.p).clamp_min(1e-12)


class _Step(nn.Module):
    """Calls ``inner.training_step`` as its forward, so that ``functional_call`` can run it."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, batch: Any, batch_idx: int) -> Any:
        return self.inner.training_step(batch, batch_idx)


@contextlib.contextmanager
def _capture_logs(module: Any, sink: dict[str, Any], extra: dict[str, Any] | None = None) -> Iterator[None]:
    """Route ``module.log``/``module.log_dict`` into ``sink`` (name -> value); ``extra`` gets their kwargs."""

    def log(name: str, value: Any, *args: Any, **kwargs: Any) -> None:
        sink[name] = value
        if extra is not None:
            extra[name] = kwargs

    def log_dict(values: Mapping[str, Any], *args: Any, **kwargs: Any) -> None:
        for name, value in values.items():
            log(name, value, **kwargs)

    module.log, module.log_dict = log, log_dict
    try:
        yield
    finally:
        del module.log, module.log_dict


def _set_tensor(module: nn.Module, name: str, value: Tensor) -> None:
    owner_name, _, leaf = name.rpartition(".")
    setattr(module.get_submodule(owner_name) if owner_name else module, leaf, value)


def _template(member: nn.Module) -> nn.Module:
    """A copy of ``member`` on the meta device, its ``nn.Dropout`` modules replaced by :class:`_MemberDropout`."""
    base = copy.deepcopy(member)
    for name, m in list(base.named_modules()):
        if type(m) is nn.Dropout and name:
            _set_tensor(base, name, _MemberDropout(m.p))  # type: ignore[arg-type]
    return base.to("meta")


def _dropout_rates(members: Sequence[nn.Module]) -> dict[str, Tensor]:
    names = [n for n, m in members[0].named_modules() if type(m) is nn.Dropout and n]
    return {f"{n}.p": torch.tensor([float(m.get_submodule(n).p) for m in members]) for n in names}


def _one_optimizer(member: Any) -> torch.optim.Optimizer:
    out = member.configure_optimizers()
    if isinstance(out, (list, tuple)) and len(out) == 1:
        out = out[0]
    if isinstance(out, Mapping) and set(out) == {"optimizer"}:
        out = out["optimizer"]
    if not isinstance(out, torch.optim.Optimizer):
        raise StackingRefused(
            f"{type(member).__name__}.configure_optimizers returned {type(out).__name__}; a stacked group needs"
            " one optimizer without learning-rate schedulers: return the optimizer alone to stack these trials"
            " (a scheduler's settings cannot vary per member), or run them with the default executor"
        )
    return out


def stacked_module_class(namespace: Any) -> type:
    """The stacked LightningModule class for a Lightning package (``lightning.pytorch`` or ``pytorch_lightning``)."""
    return type("StackedModule", (_StackedLogic, namespace.LightningModule), {"__doc__": _StackedLogic.__doc__})


class _StackedLogic:
    """Trains ``members`` as one model; ``tracks[i]`` decides when member ``i`` ends and records its trial.

    ``optimizer_states[i]``, when given, is member ``i``'s optimizer state to continue from (its
    resumable checkpoint's); ``stop`` set ends the fit at the next step, every member unfinished.
    The members' resumable states are taken at their ``Resume`` interval and written at most every
    ``write_every`` seconds (see :mod:`lightning_hpt.stacking.resume`). At the end of an epoch, the slots
    of members that ended go to the new members ``join`` returns (``None``: none); each trains from the
    next epoch, up to its own ``max_epochs``.
    """

    def __init__(
        self,
        members: Sequence[Any],
        tracks: Sequence[Member],
        namespace: Any,
        stop: threading.Event | None = None,
        optimizer_states: Sequence[dict[str, Any] | None] | None = None,
        write_every: float = WRITE_EVERY,
    ) -> None:
        super().__init__()
        self._stop = stop
        self.join: Join | None = None  # set by the caller: new members for the slots of ended ones
        self.members_seen = list(tracks)  # every member this group trained, those that joined later included
        self._write_every, self._written = write_every, time.monotonic()
        self._restore = list(optimizer_states or [None] * len(members))
        self._clocks = [ResumeClock(t.job.build.resume) for t in tracks]
        self.automatic_optimization = False
        self._members, self._tracks, self._pl = list(members), list(tracks), namespace
        params, buffers = stack_module_state(self._members)
        self.stacked = nn.ParameterDict({k.replace(".", "/"): nn.Parameter(v) for k, v in params.items()})
        rates = _dropout_rates(self._members)
        self._dropout_names = set(rates)
        buffers.update(rates)
        for k, v in buffers.items():
            self.register_buffer("buf/" + k.replace(".", "/"), v)
        self._buffer_names = list(buffers)
        self._parts = (_Step(_template(self._members[0])),)  # a tuple: not a submodule, not moved
        self._optimizers: list[torch.optim.Optimizer] = []
        self._grads: list[list[tuple[Tensor, Tensor]]] = []
        self._vectorized: StackedOptimizer | None = None
        self._train_logs = TrainLogs(len(self._members))
        self._log_kwargs: dict[str, dict[str, Any]] = {}
        self._member_steps = [t.steps_before for t in tracks]
        self._val: list[tuple[dict[str, tuple[float, float]], dict[str, Any]]] = []

    # --- the members' views and optimizers ------------------------------------------------------
    def _bind_members(self) -> None:
        """Make every member's parameters and buffers views of its slice (after Lightning moved the tensors)."""
        self._grads = [self._bind(i) for i in range(len(self._members))]
        self._parts[0].inner.trainer = self.trainer

    def _bind(self, i: int) -> list[tuple[Tensor, Tensor]]:
        """Make member ``i``'s parameters and buffers views of slice ``i``; its (stacked, view) parameter pairs."""
        bufs = dict(self.named_buffers())
        m = self._members[i]
        m.to(self.device)
        pairs = []
        for k, p in self.stacked.items():
            view = nn.Parameter(p.data[i], requires_grad=p.requires_grad)
            _set_tensor(m, k.replace("/", "."), view)
            pairs.append((p, view))
        for k in self._buffer_names:
            if k not in self._dropout_names:
                _set_tensor(m, k, bufs["buf/" + k.replace(".", "/")][i])
        m.trainer = self.trainer
        return pairs

    @override
    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        self._bind_members()
        self._optimizers = [_one_optimizer(m) for m in self._members]
        self._vectorized = StackedOptimizer.build(self._optimizers, self._grads)
        how = "one vectorized update" if self._vectorized is not None else "each member's own optimizer step"
        log.debug("stacked group of %d members: %s", len(self._members), how)
        for i, state in enumerate(self._restore):
            if state is not None:
                self._load_optimizer(i, state)
        self._restore = []
        return self._optimizers

    def _load_optimizer(self, i: int, state: dict[str, Any]) -> None:
        """Member ``i``'s optimizer continues from ``state`` (its own ``state_dict``)."""
        opt = self._optimizers[i]
        opt.load_state_dict(state)  # torch checks the groups' sizes and moves the state to the parameters
        if self._vectorized is not None:  # the stacked update keeps the state: move it there
            moments = [opt.state.pop(view, {}) for _, view in self._grads[i]]
            self._vectorized.load_member_state(i, moments, self._member_steps[i])

    def _optimizer_state(self, i: int) -> dict[str, Any]:
        """Member ``i``'s optimizer ``state_dict``, as its own optimizer alone would have it, with its own tensors."""
        opt = self._optimizers[i]
        state = opt.state_dict()
        if self._vectorized is None:  # torch's state_dict holds the live tensors; the state is written later
            state["state"] = {
                n: {k: v.clone() if isinstance(v, Tensor) else v for k, v in held.items()}
                for n, held in state["state"].items()
            }
        else:
            index = {
                id(p): n
                for group, packed in zip(opt.param_groups, state["param_groups"], strict=True)
                for p, n in zip(group["params"], packed["params"], strict=True)
            }
            moments = self._vectorized.member_state(i)
            state["state"] = {index[id(v)]: m for (_, v), m in zip(self._grads[i], moments, strict=True) if m}
        return state

    def _hold_resume(self, i: int, epochs: int) -> None:
        """Take member ``i``'s resumable state after its ``epochs`` epochs: copies, held by its track until written."""
        track, steps = self._tracks[i], self._member_steps[i]
        kept = track.kept
        best = None if kept is None else {k: kept[k] for k in ("state_dict", "epoch", "global_step")}
        if kept is not None and kept["epoch"] == epochs - 1:  # this epoch's: the same weights, saved once
            weights = kept["state_dict"]
        else:
            weights = {k: v.detach().clone() for k, v in self._members[i].state_dict().items()}
        state = {
            "state_dict": weights,
            "optimizer_states": [self._optimizer_state(i)],
            "epoch": epochs,
            "global_step": steps,
            "member": track.snapshot(epochs, steps),
            "best": best,
        }
        track.hold_resume(state)
        self._clocks[i].written()

    # --- training ---------------------------------------------------------------------------------
    def _stopped(self) -> bool:
        return self._stop is not None and self._stop.is_set()

    def _active(self) -> list[int]:
        """The members still training; none once the executor was shut down."""
        if self._stopped():
            return []
        return [i for i, t in enumerate(self._tracks) if not t.ended]

    def _member_loss(self, params: dict[str, Tensor], buffers: dict[str, Tensor], batch: Any, idx: int) -> Any:
        step = self._parts[0]
        logged: dict[str, Any] = {}
        with _capture_logs(step.inner, logged, self._log_kwargs):
            out = functional_call(step, (params, buffers), (batch, idx))
        loss = out["loss"] if isinstance(out, Mapping) else out
        return loss, {
            k: v if isinstance(v, Tensor) else torch.as_tensor(v, dtype=loss.dtype) for k, v in logged.items()
        }

    @override
    def training_step(self, batch: Any, batch_idx: int) -> None:
        active = self._active()
        if not active:
            self.trainer.should_stop = True
            return
        index = torch.tensor(active, device=self.device) if len(active) < len(self._tracks) else None
        pick = (lambda t: t) if index is None else (lambda t: t.index_select(0, index))
        params = {"inner." + k.replace("/", "."): pick(p) for k, p in self.stacked.items()}
        bufs = dict(self.named_buffers())
        buffers = {"inner." + k: pick(bufs["buf/" + k.replace(".", "/")]) for k in self._buffer_names}
        fn = vmap(lambda p, b: self._member_loss(p, b, batch, batch_idx), randomness="different")
        losses, logged = fn(params, buffers)
        self.manual_backward(losses.sum())
        if self._vectorized is not None:
            self._vectorized.step(index)
        for i in active:
            if self._vectorized is None:
                for stacked, view in self._grads[i]:
                    view.grad = None if stacked.grad is None else stacked.grad[i]
                self._optimizers[i].step()
                self._optimizers[i].zero_grad(set_to_none=True)
            self._member_steps[i] += 1
        self._train_logs.add(logged, self._log_kwargs, active, lambda: extract_batch_size(batch))
        for p in self.stacked.values():
            p.grad = None

    @override
    def on_train_epoch_start(self) -> None:
        self._parts[0].train()
        self._train_logs.start_epoch()

    @override
    def on_train_epoch_end(self) -> None:
        if self._stopped():  # the epoch was cut short: it does not count
            return
        for i, t in enumerate(self._tracks):
            if t.ended:
                continue
            t.epoch_done(self.current_epoch + 1)
            if t.ended:
                t.finish()
            elif self._clocks[i].due(t.own_epoch(self.current_epoch + 1)):
                self._hold_resume(i, t.own_epoch(self.current_epoch + 1))
        if time.monotonic() - self._written >= self._write_every:
            for t in self._tracks:
                t.write_resume()
            self._written = time.monotonic()
        self._refill()
        if not self._active():
            self.trainer.should_stop = True

    # --- new members in the slots of ended ones ---------------------------------------------------
    def _refill(self) -> None:
        """Give the slots of ended members to trials waiting for a group like this one (``join``)."""
        free = [i for i, t in enumerate(self._tracks) if t.ended and t.outcome_sent is not None]
        if not free or self.join is None or self._stopped() or not self._active():
            return
        for i, (model, track, state) in zip(free, self.join(len(free)), strict=False):
            self._take_slot(i, model, track, state)

    def accepts(self, model: Any) -> bool:
        """Whether ``model`` (of the group's layout) can take an ended member's slot: its optimizer is one the
        group's update follows (the same kind, over all its parameters)."""
        try:
            optimizer = _one_optimizer(model)
        except StackingRefused:
            return False
        if self._vectorized is None:
            return True
        own = dict(model.named_parameters())
        return self._vectorized.follows(optimizer, [own[k.replace("/", ".")] for k in self.stacked])

    def _take_slot(self, i: int, model: Any, track: Member, state: dict[str, Any] | None) -> None:
        """Member ``i`` is now ``model``: its weights and dropout rates in slot ``i``, its own optimizer and counters.

        It trains from the group's next epoch (``track.joined_at``); ``state`` is its optimizer's state when it
        continues from its resumable checkpoint.
        """
        with torch.no_grad():
            own = dict(model.named_parameters())
            for k, p in self.stacked.items():
                p.data[i].copy_(own[k.replace("/", ".")].detach())
            bufs, mine = dict(self.named_buffers()), dict(model.named_buffers())
            for name, rate in _dropout_rates([model]).items():
                bufs["buf/" + name.replace(".", "/")][i] = float(rate[0])
            for k in self._buffer_names:
                if k not in self._dropout_names:
                    bufs["buf/" + k.replace(".", "/")][i].copy_(mine[k])
        self._members[i], self._tracks[i] = model, track
        self._grads[i] = self._bind(i)
        optimizer = _one_optimizer(model)
        if self._vectorized is not None:
            self._vectorized.set_member(i, optimizer, [v for _, v in self._grads[i]])
        self._optimizers[i] = optimizer
        self._member_steps[i] = track.steps_before
        self._clocks[i] = ResumeClock(track.job.build.resume)
        track.joined_at = self.current_epoch + 1
        if state is not None:
            self._load_optimizer(i, state)
        self.members_seen.append(track)
        if self.trainer.max_epochs is not None and track.max_epochs is not None:
            needed = track.joined_at + track.max_epochs - track.epochs_before
            self.trainer.fit_loop.max_epochs = max(self.trainer.max_epochs, needed)

    # --- validation: each member's own validation_step ---------------------------------------------
    @override
    def on_validation_epoch_start(self) -> None:
        self._val = [({}, {}) for _ in self._members]
        for m in self._members:  # a member's own module only validates (training runs the template): it stays so
            if m.training:
                m.eval()

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        for i in self._active():
            sums, objects = self._val[i]
            logged: dict[str, Any] = {}
            extra: dict[str, Any] = {}
            with torch.no_grad(), _capture_logs(self._members[i], logged, extra):
                self._members[i].validation_step(batch, batch_idx)
            for name, value in logged.items():
                if isinstance(value, Tensor | float | int):
                    n = extra[name].get("batch_size") or extract_batch_size(batch)
                    v, w = sums.get(name, (0.0, 0.0))
                    sums[name] = (v + float(torch.as_tensor(value).float().mean()) * n, w + n)
                else:  # a torchmetrics Metric: computed and reset at the end of the run, as Lightning does
                    objects[name] = value

    @override
    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        for i in self._active():
            self._end_validation(i)
        if not self._active():
            self.trainer.should_stop = True

    def _end_validation(self, i: int) -> None:
        sums, objects = self._val[i]
        values = {k: v / w for k, (v, w) in sums.items() if w}
        for name, metric in objects.items():
            values[name] = float(metric.compute())
            metric.reset()
        track = self._tracks[i]
        epoch = track.own_epoch(self.current_epoch)
        train = self._train_logs.monitored(i)  # the last step's values, as callback_metrics holds them now
        shown, final = self._train_logs.logged(i)  # named and reduced over the epoch as Lightning logs them
        # at the step an ordinary trial logs them: its last training step's (steps trained, less one)
        step = max(self._member_steps[i] - 1, 0)
        track.log_metrics({**shown, **values, "epoch": epoch}, step=step, final={**final, **values})
        if track.observe({**train, **values}, epoch) and track.job.build.checkpoint:
            track.keep(member_checkpoint(self._members[i], epoch, self._member_steps[i], self._pl))
        if track.ended:
            track.finish()
