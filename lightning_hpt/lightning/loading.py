"""A trial's model back from its best-step checkpoint, read as weights only."""

from __future__ import annotations

import pickle
from collections.abc import Iterable
from typing import Any

from lightning_hpt.exceptions import ConfigurationError, HPTError
from lightning_hpt.masking import get_logger

__all__ = ["load_first"]

log = get_logger(__name__)


def load_first(candidates: Iterable[Any], builder: Any, map_location: str) -> Any:
    """The model of the first of ``candidates`` (trial records, best first) whose checkpoint loads, in eval mode.

    The checkpoint is read with ``torch.load(weights_only=True)``: checkpoints are pickles, and nothing but
    tensors and plain data is ever unpickled. A missing or unreadable file falls back to the next trial, with
    a warning; when every file holds an object that reader refuses (the project's hyper-parameters, usually),
    the error says so once, with the choices.
    """
    import torch

    problems: list[str] = []
    refused: list[tuple[str, Exception]] = []  # (file, error) of each the weights-only reader refused
    for t in candidates:
        if not t.checkpoint:
            problems.append(f"trial {t.number}: no checkpoint kept")
            continue
        try:
            ckpt = torch.load(t.checkpoint, map_location=map_location, weights_only=True)
            model = builder.build_model(t.params)
            model.load_state_dict(ckpt["state_dict"])
        except ConfigurationError:  # the builder cannot build models (a ScriptSearch's): no trial's file would do
            raise
        except pickle.UnpicklingError as e:  # torch's message is long: said once, at the end, if none loads
            refused.append((t.checkpoint, e))
            problems.append(f"trial {t.number}: {t.checkpoint!r} holds an object the weights-only reader refuses")
            log.warning("%s; falling back to the next best trial", problems[-1])
            continue
        except Exception as e:
            problems.append(f"trial {t.number}: cannot load {t.checkpoint!r}: {type(e).__name__}: {e}")
            log.warning("%s; falling back to the next best trial", problems[-1])
            continue
        return model.eval()
    if refused and len(refused) == len(problems):  # every file, none missing or damaged otherwise
        raise HPTError(_refused(*refused[0]))
    raise HPTError(
        "no COMPLETE trial has a readable checkpoint: "
        + "; ".join(problems)
        + ". Keep checkpoints with checkpoint=True, or rebuild the winner with result.refit()"
    )


def _refused(path: str, error: Exception) -> str:
    """Why a trial's checkpoint is not loaded: ``torch.load(weights_only=True)`` refused an object in it."""
    reason = next((ln.strip() for ln in str(error).splitlines() if "GLOBAL" in ln or "Unsupported" in ln), "")
    return (
        f"no COMPLETE trial's checkpoint loads: {path!r} (the best) holds an object torch.load(weights_only=True)"
        f" refuses{f' ({reason})' if reason else ''}, and so does every other trial's. Usually the project's"
        " hyper-parameters (save_hyperparameters) keep one, such as a functools.partial optimizer or a Path."
        " Checkpoints are never unpickled whole here; for a file you trust, load its weights yourself:"
        " model.load_state_dict(torch.load(result.best_checkpoint, weights_only=False)['state_dict']), or keep"
        " such values out of the checkpoint (save_hyperparameters(ignore=[...])), or allow the class with"
        " torch.serialization.add_safe_globals([...])"
    )
