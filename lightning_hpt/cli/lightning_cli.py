"""SearchCLI: a LightningCLI whose own script also runs ``search``, ``show``, ``best`` and ``report``."""

from __future__ import annotations

import sys
from typing import Any

from lightning.pytorch.cli import LightningCLI
from typing_extensions import Self

__all__ = ["SearchCLI"]


class SearchCLI(LightningCLI):
    """A LightningCLI that also tunes: ``python train.py search --config fit.yaml --config search.yaml``.

    It takes LightningCLI's arguments and behaves as LightningCLI for ``fit``, ``validate``, ``test``
    and ``predict``. With ``search``, ``show``, ``best`` or ``report`` as the first argument it runs
    that ``lightning-hpt`` command instead, building every trial with this class and the arguments it
    was given, so a project's fixed model and datamodule classes, ``trainer_defaults`` and parser
    settings apply to every trial. A subclass must forward keyword arguments to ``__init__``.

    Attributes:
        exit_code: the command's exit status, after a ``lightning-hpt`` command.

    Example:
        >>> # train.py
        >>> from lightning_hpt.cli import SearchCLI
        >>> if __name__ == "__main__":
        ...     SearchCLI(MyModel, MyDataModule)  # doctest: +SKIP

        then ``python train.py fit --config fit.yaml`` trains, and
        ``python train.py search --config fit.yaml --config search.yaml`` tunes.
    """

    COMMANDS = ("search", "show", "best", "report")

    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        obj = super().__new__(cls)
        # the arguments as the script gave them: trials are built with exactly these
        obj._search_call = (args, kwargs)
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        argv = kwargs.get("args")
        tokens = list(sys.argv[1:] if argv is None else argv) if argv is None or isinstance(argv, list) else []
        if kwargs.get("run", True) and tokens and tokens[0] in self.COMMANDS:
            from lightning_hpt.cli.main import main

            call_args, call_kwargs = self._search_call
            call_kwargs = {k: v for k, v in call_kwargs.items() if k not in ("args", "run")}
            self.exit_code = main(tokens, cli_class=type(self), cli_args=call_args, cli_kwargs=call_kwargs)
            if self.exit_code:
                raise SystemExit(self.exit_code)
            return
        super().__init__(*args, **kwargs)
