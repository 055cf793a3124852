"""``python -m lightning_hpt``: the ``lightning-hpt`` command."""

from __future__ import annotations

import sys

from lightning_hpt.cli import main

if __name__ == "__main__":
    sys.exit(main())
