"""Applying adapters to a loaded model: the one shape check, then the update added in place (our own code).

Every path that puts an adapter into a model comes through here: `merge_into` for a model that keeps
one adapter for its whole life (LocalModel), `soup_applied` for a weighted merge that is taken out
again (soups in studies, the demo and the server). Both add scale·B·A with one fused multiply-add per
module, so a merged model runs at the base model's cost; PEFT is called only for adapters that are
more than plain LoRA factors (see `personalm.adapters.peft`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from personalm.adapters.directory import UnsupportedAdapter, load_adapter
from personalm.adapters.merge import LoraFactors
from personalm.errors import PersonalmError

Update = Mapping[str, torch.Tensor] | Mapping[str, LoraFactors]


def check_shapes(model: torch.nn.Module, update: Update, source: str | None = None) -> None:
    """Fail on an adapter trained on another model before any weight is touched: every module it
    names must exist in `model` with the weight shape its update has."""
    for module, value in update.items():
        want = tuple(value.delta_shape if isinstance(value, LoraFactors) else value.shape)
        try:
            shape = tuple(model.get_submodule(module).weight.shape)
        except AttributeError:
            raise PersonalmError(
                f"the base model has no module {module!r}: adapter trained on another model", source=source
            ) from None
        if shape != want:
            raise PersonalmError(
                f"module {module!r}: adapter update {want} != weight {shape} (adapter trained on another model)",
                source=source,
            )


def apply_deltas(model: torch.nn.Module, deltas: Mapping[str, torch.Tensor], source: str | None = None) -> None:
    """Add each module's dense update to the base weights in place."""
    check_shapes(model, deltas, source)
    with torch.no_grad():
        for module, delta in deltas.items():
            weight = model.get_submodule(module).weight
            weight += delta.to(weight)


def apply_factors(model: torch.nn.Module, factors: Mapping[str, LoraFactors], source: str | None = None) -> None:
    """Add each module's scale·B·A in place with one fused multiply-add (no dense temporary): with the
    stacked factors of `exact_factors` that is one matmul per module for a whole soup."""
    check_shapes(model, factors, source)
    with torch.no_grad():
        for module, f in factors.items():
            weight = model.get_submodule(module).weight
            if f.fan_in_fan_out:
                weight.addmm_(f.A.T.to(weight), f.B.T.to(weight), alpha=f.scale)
            else:
                weight.addmm_(f.B.to(weight), f.A.to(weight), alpha=f.scale)


def apply_update(model: torch.nn.Module, update: Update, source: str | None = None) -> None:
    """Factors or dense deltas, whichever `update` holds."""
    if all(isinstance(v, LoraFactors) for v in update.values()):
        apply_factors(model, update, source)  # type: ignore[arg-type]
    else:
        apply_deltas(model, update, source)  # type: ignore[arg-type]


def merge_into(model: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    """The Hugging Face `model` with the adapter at `path` merged into its weights for good: plain LoRA
    by our exact math, anything more (DoRA, saved modules, ...) by PEFT's merge_and_unload."""
    try:
        adapter = load_adapter(path)
    except UnsupportedAdapter:
        from personalm.adapters.peft import merge_with_peft

        return merge_with_peft(model, Path(path))
    apply_factors(model, adapter.modules, str(adapter.path))
    return model


@contextmanager
def soup_applied(model: Any, update: Update, tag: str) -> Iterator[Any]:
    """Temporarily turn a loaded LocalModel into a soup (one base load for many weightings).

    The touched weights are restored bit for bit afterwards, and the model id names the soup while
    it lasts so no cache mixes the two."""
    check_shapes(model.model, update)
    originals = {m: model.model.get_submodule(m).weight.detach().clone() for m in update}
    base_id = model.model_id
    apply_update(model.model, update)
    model.weights_changed()
    model.model_id = f"{base_id}+soup:{tag}"
    try:
        yield model
    finally:
        with torch.no_grad():
            for m, weight in originals.items():
                model.model.get_submodule(m).weight.copy_(weight)
        model.weights_changed()
        model.model_id = base_id
