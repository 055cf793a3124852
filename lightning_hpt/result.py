"""What a search found: the best trial, every trial, and the best model."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lightning_hpt.exceptions import ConfigurationError, HPTError
from lightning_hpt.trial import Direction, TrialRecord, TrialState

__all__ = ["SearchResult"]


@dataclass(frozen=True)
class SearchResult:
    """The outcome of :meth:`HyperparameterSearch.run`.

    Attributes:
        study: the study's name.
        monitor: the metric that was optimized.
        direction: minimized or maximized.
        trials: every trial of the study (not only this run's), by number.
        stopped_reason: why the search ended ("n_trials reached", "grid exhausted", "timeout", ...).
    """

    study: str
    monitor: str
    direction: Direction
    trials: Sequence[TrialRecord]
    stopped_reason: str = ""
    _search: Any = None

    @property
    def best_trial(self) -> TrialRecord | None:
        best = None
        for t in self.trials:
            if t.state is TrialState.COMPLETE and t.value is not None and math.isfinite(t.value):
                if best is None or self.direction.better(t.value, best.value):
                    best = t
        return best

    def _best(self) -> TrialRecord:
        best = self.best_trial
        if best is None:
            raise HPTError(f"study {self.study!r} has no COMPLETE trial yet; states: {self.counts()}")
        return best

    @property
    def best_params(self) -> Mapping[str, Any]:
        return self._best().params

    @property
    def best_value(self) -> float:
        return self._best().value

    @property
    def best_checkpoint(self) -> str | None:
        return self._best().checkpoint

    def counts(self) -> dict[str, int]:
        """Number of trials per state."""
        out = {s.value: 0 for s in TrialState}
        for t in self.trials:
            out[t.state.value] += 1
        return {k: v for k, v in out.items() if v}

    def load_best_model(self, map_location: str = "cpu") -> Any:
        """Rebuild the best trial's model from its configuration and load its best checkpoint.

        The checkpoint is read with ``torch.load(weights_only=True)``: checkpoints are pickles, and
        nothing but tensors and plain data is ever unpickled.
        """
        import torch

        from lightning_hpt.lightning.config import patch_optimizer, split_params
        from lightning_hpt.lightning.runner import _build

        best = self._best()
        if self._search is None:
            raise ConfigurationError("load_best_model needs the result of HyperparameterSearch.run() (it knows the model)")
        if not best.checkpoint:
            raise HPTError(f"trial {best.number} kept no checkpoint (checkpoint=False); rerun it with checkpoint=True")
        sections = split_params(best.params)
        model = _build(self._search.model, sections["model"], sections, "LightningModule", "model")
        patch_optimizer(model, sections["optimizer"])
        try:
            ckpt = torch.load(best.checkpoint, map_location=map_location, weights_only=True)
        except Exception as e:
            raise HPTError(f"cannot load the checkpoint {best.checkpoint!r} of trial {best.number}: {e}") from e
        model.load_state_dict(ckpt["state_dict"])
        return model.eval()

    def to_dataframe(self) -> Any:
        """One row per trial: number, state, value, duration, params (``params.<name>``), error. Needs pandas."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("to_dataframe needs pandas: pip install pandas") from None
        rows = []
        for t in self.trials:
            row = {"number": t.number, "state": t.state.value, "value": t.value, "best_step": t.best_step,
                   "steps": len(t.intermediate), "duration_s": t.duration}
            row.update({f"params.{k}": v for k, v in t.params.items()})
            row["error"] = t.error
            rows.append(row)
        return pd.DataFrame(rows)

    def __str__(self) -> str:
        counts = ", ".join(f"{n} {s.lower()}" for s, n in self.counts().items())
        lines = [f"Study {self.study!r}: {len(self.trials)} trials ({counts}); {self.stopped_reason}".rstrip("; ")]
        best = self.best_trial
        if best is None:
            lines.append("No COMPLETE trial.")
        else:
            lines.append(f"Best trial #{best.number}: {self.monitor}={best.value:.6g} at step {best.best_step}")
            lines += [f"  {k} = {v!r}" for k, v in best.params.items()]
            if best.checkpoint:
                lines.append(f"  checkpoint: {best.checkpoint}")
        return "\n".join(lines)
