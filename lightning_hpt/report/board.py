"""The study's own TensorBoard run: each trial's values, and the best value (with several objectives, the
size of the Pareto front) so far after each finished trial."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from typing import Any

from lightning_hpt.masking import get_logger
from lightning_hpt.trial import TrialRecord

__all__ = ["StudyBoard"]

log = get_logger(__name__)


class StudyBoard:
    """Writes ``best_<monitor>`` (with several objectives ``pareto_front_size``, the number of trials on
    the front) and each trial's value (``trial_<name>`` of every objective) to ``<root>/<study>/tensorboard``.

    Does nothing when TensorBoard is not installed. Point TensorBoard at ``<root>/<study>`` to see
    the study's curve next to every trial's own logs (and the HParams view of all trials).
    """

    def __init__(self, directory: str | os.PathLike, monitor: str, objectives: Sequence[str] = ()) -> None:
        self.directory, self.monitor = str(directory), monitor
        self.names = tuple(objectives) or (monitor,)
        self._writer: Any = None
        try:
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

            self._writer_cls = SummaryWriter
        except ImportError:
            self._writer_cls = None

    def trial_finished(
        self, trial: TrialRecord, best: TrialRecord | None, front: Sequence[TrialRecord] | None = None
    ) -> None:
        if self._writer_cls is None:
            return
        try:
            if self._writer is None:
                self._writer = self._writer_cls(self.directory)
            for name, value in zip(self.names, trial.objective_values or (), strict=False):
                self._writer.add_scalar(f"trial_{name}", value, trial.number)
            if front is not None:
                self._writer.add_scalar("pareto_front_size", len(front), trial.number)
            elif best is not None:
                self._writer.add_scalar(f"best_{self.monitor}", best.value, trial.number)
            self._writer.flush()
        except Exception:  # a display must never stop the search
            log.exception("could not write the study's TensorBoard curve to %s", self.directory)

    def close(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            self._writer = None
