"""The ``lightning-hpt`` command: tune a LightningCLI project from the config its ``fit`` takes.

``lightning-hpt search --config fit.yaml --config search.yaml`` runs a study whose trials are
built by the project's LightningCLI; ``show``, ``best`` and ``report`` read it. A project's own
script can offer the same commands through :class:`SearchCLI`.
"""

from __future__ import annotations

from lightning_hpt.cli.builder import CLITrialBuilder
from lightning_hpt.cli.lightning_cli import SearchCLI
from lightning_hpt.cli.main import main
from lightning_hpt.cli.run import run_search
from lightning_hpt.cli.settings import SearchSettings

__all__ = ["CLITrialBuilder", "SearchCLI", "SearchSettings", "main", "run_search"]
