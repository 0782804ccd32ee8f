"""Where personalm keeps its caches and where experiments find their data (both overridable)."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """Converted models and the generation cache live here (PERSONALM_HOME, default ~/.cache/personalm)."""
    return Path(os.environ.get("PERSONALM_HOME", Path.home() / ".cache" / "personalm")).expanduser()


def data_dir() -> Path:
    """External data for experiments (PERSONALM_DATA, default ../shared/data beside the checkout)."""
    env = os.environ.get("PERSONALM_DATA")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[3].parent / "shared" / "data"
