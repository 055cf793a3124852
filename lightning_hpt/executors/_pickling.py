"""What executors that send trial code to other processes check before they do."""

from __future__ import annotations

import contextlib
import pickle
import pickletools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lightning_hpt.exceptions import TrialPickleError

if TYPE_CHECKING:
    from lightning_hpt.lightning.runner import TrialBuild

__all__ = ["check_picklable", "pickle_dumps", "refers_to_main"]


def refers_to_main(data: bytes) -> bool:
    """Whether a pickle names something in ``__main__`` (the user's script), which a worker must import first."""
    with contextlib.suppress(Exception):
        return any(
            arg == "__main__" or (isinstance(arg, str) and arg.startswith("__main__ "))
            for _, arg, _ in pickletools.genops(data)
        )
    return False


def check_picklable(build: TrialBuild, dumps: Callable[[Any], bytes], where: str) -> bytes:
    """Pickle ``build`` with ``dumps``, or raise :class:`TrialPickleError` naming the part that cannot be.

    Args:
        build: the search's trial code and settings.
        dumps: the pickler the executor uses (``pickle.dumps``, or Ray's cloudpickle).
        where: how the executor sends trials, for the message (``"worker processes"``).

    Returns:
        The pickled build.
    """
    try:
        return dumps(build)
    except Exception as whole:  # find the field (and the trainer argument) that fails, for the message
        culprit, error = "the trial build", whole
        for name, part in build.builder.parts():
            try:
                dumps(part)
            except Exception as e:
                culprit = name if name.endswith("]") else f"{name}={_short(part)}"
                error = e
                break
        raise TrialPickleError(
            f"{culprit} cannot be sent to {where}: it cannot be pickled ({type(error).__name__}: {error}). Trials run"
            " in other processes, so the model, datamodule and trainer_kwargs must be picklable: define classes and"
            " factory functions at module level (not lambdas or nested functions), and create locks, open files,"
            " connections and threads inside the trial (in the factory, setup() or __init__), not around it"
        ) from whole


def _short(value: Any) -> str:
    name = getattr(value, "__qualname__", None)
    if isinstance(name, str):
        return name  # in full: its end is the name the user knows
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def pickle_dumps(obj: Any) -> bytes:
    """The pickler of the process executor: the standard one, highest protocol."""
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
