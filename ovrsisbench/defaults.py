"""Where data and results live unless told: ``$OVRSISBENCH_DATA`` or ./data,
``$OVRSISBENCH_RESULTS`` or ./results (the weights cache: ``adapter.weights_cache``)."""

from __future__ import annotations

import os
from pathlib import Path

from ovrsisbench.errors import UserError


def default_data_root() -> Path:
    return Path(os.environ.get("OVRSISBENCH_DATA", "data"))


def default_results() -> Path:
    return Path(os.environ.get("OVRSISBENCH_RESULTS", "results"))


def existing_data_root(data_root: Path | None) -> Path:
    """The data root to read (``data_root``, else the default); a missing one is a user error
    that says how to give another."""
    root = data_root or default_data_root()
    if not root.is_dir():
        raise UserError(f"data root {root} does not exist (give --data-root or $OVRSISBENCH_DATA)")
    return root
