"""Where we hand adapters over to PEFT, and why: the two jobs our own code does not do.

* `merge_with_peft`: an adapter that is more than plain LoRA factors (DoRA, modules_to_save, LoRA
  biases, pickled weights, another PEFT type) merges through PEFT's merge_and_unload, which knows
  every variant; our exact math covers the plain LoRA our trainers write.
* `combine_with_peft`: PEFT's add_weighted_adapter combination types (linear, svd, ties, dare, ...),
  offered beside the exact soup for comparison; they need the base model and PEFT's injected layers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch

from personalm.errors import PersonalmError

NEEDS_DENSITY = ("ties", "dare", "magnitude_prune")


def merge_with_peft(model: torch.nn.Module, path: Path) -> torch.nn.Module:
    """`model` with the adapter at `path` merged by PEFT (the adapter's layers removed again)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, path).merge_and_unload()


def combine_with_peft(
    paths: Mapping[str, Path], weights: Mapping[str, float], base: Path, out: Path, method: str, density: float | None
) -> None:
    """Write PEFT's `method` combination of the adapters at `paths` as one adapter directory `out`."""
    from peft import PeftModel

    from personalm.models.hf import transformers_offline

    if any(method.startswith(p) for p in NEEDS_DENSITY) and density is None:
        raise PersonalmError(f"merge method '{method}' needs --density (fraction of weights kept, e.g. 0.5)")
    model = transformers_offline().AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    names = list(weights)
    peft_model = PeftModel.from_pretrained(model, str(paths[names[0]]), adapter_name=_safe(names[0]))
    for name in names[1:]:
        peft_model.load_adapter(str(paths[name]), adapter_name=_safe(name))
    kwargs = {"density": density} if density is not None else {}
    try:
        peft_model.add_weighted_adapter(
            [_safe(n) for n in names], [weights[n] for n in names], "soup", combination_type=method, **kwargs
        )
    except ValueError as err:
        raise PersonalmError(f"merge method '{method}': {err}") from None
    peft_model.save_pretrained(str(out), selected_adapters=["soup"])
    nested = out / "soup"
    if nested.is_dir():
        for f in nested.iterdir():
            f.rename(out / f.name)
        nested.rmdir()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)
