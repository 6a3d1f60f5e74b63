"""Where the zoo keeps what it downloads or builds (weight files, the native CPU kernels)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$TRANSFER_ZOO_CACHE``, else ``$XDG_CACHE_HOME/transfer-zoo``, else ``~/.cache/...``."""
    if os.environ.get("TRANSFER_ZOO_CACHE"):
        return Path(os.environ["TRANSFER_ZOO_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "transfer-zoo"
