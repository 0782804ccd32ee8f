"""Import transformers the way personalm always runs it: offline, without progress-bar noise."""

from __future__ import annotations

import os
from types import ModuleType


def transformers_offline() -> ModuleType:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    return transformers
