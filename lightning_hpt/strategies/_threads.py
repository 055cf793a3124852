"""The BLAS thread pools of a proposal (SciPy's L-BFGS-B, NumPy), limited like torch's."""

from __future__ import annotations

import contextlib
import functools
from typing import Any

__all__ = ["blas_threads"]


@functools.cache
def _threadpools() -> Any:
    """threadpoolctl's view of the loaded thread pools (found once: finding them reads /proc)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - installed with BoTorch
        return None
    return ThreadpoolController()


def blas_threads(threads: int) -> contextlib.AbstractContextManager:
    """Limit the BLAS thread pools (SciPy's L-BFGS-B, NumPy) like torch's.

    SciPy's optimizers call into OpenBLAS for tiny problems; with its threads spinning against
    torch's and a training process for the same cores, each call costs milliseconds instead of
    microseconds.
    """
    controller = _threadpools()
    if controller is None:  # pragma: no cover
        return contextlib.nullcontext()
    return controller.limit(limits=threads, user_api="blas")
