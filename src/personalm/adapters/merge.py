"""The exact merge math of LoRA adapters, as pure tensor functions (our own code, in one file as PEFT
keeps its merge math in one file; no model, no files).

A LoRA adapter k changes a linear weight W by ΔW_k = s_k·B_k·A_k (s_k = alpha/r, or alpha/√r with
rsLoRA). A soup with weights w_k is W + Σ_k w_k·s_k·B_k·A_k: `exact_deltas` computes those dense
updates, and `exact_factors` stores the same sum exactly as one rank-Σr_k pair whose A stacks the A_k
and whose B stacks the w_k·s_k·B_k (one fused multiply-add per module applies it; any PEFT loader
reads it back). PEFT's `cat` combination is the same sum; we do it ourselves because PEFT needs the
base model in memory and its adapters injected first, while this needs only the factors.

Averaging A and B separately — A = Σ w_k·A_k, B = Σ w_k·B_k, as the original Personalized Soups code
does, and as PEFT's `linear` combination does up to square roots — is *not* the average of the deltas:
(Σ w_j B_j)(Σ w_k A_k) = Σ_k w_k² B_k A_k + Σ_{j≠k} w_j w_k B_j A_k, with cross terms B_j A_k pairing
factors that were never trained together. `separate_average` computes it to show the gap.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from personalm.errors import PersonalmError

if TYPE_CHECKING:
    from personalm.adapters.directory import Adapter


@dataclass
class LoraFactors:
    """One adapted module: ΔW = scale·B·A (transposed for fan_in_fan_out layers)."""

    A: torch.Tensor
    B: torch.Tensor
    scale: float
    fan_in_fan_out: bool = False

    def delta(self) -> torch.Tensor:
        d = self.scale * (self.B @ self.A)
        return d.T if self.fan_in_fan_out else d

    @property
    def delta_shape(self) -> tuple[int, int]:
        """The shape of the weight this pair updates (without computing the product)."""
        rows, cols = self.B.shape[0], self.A.shape[1]
        return (cols, rows) if self.fan_in_fan_out else (rows, cols)


def check_weights(weights: Mapping[str, float]) -> None:
    """A merge needs at least one weight, and not all of them zero (that would be the base model)."""
    if not weights:
        raise PersonalmError("no merge weights given (expected NAME=NUMBER,...)")
    if all(w == 0 for w in weights.values()):
        raise PersonalmError("all merge weights are zero: the soup would be the base model")


def exact_deltas(adapters: Mapping[str, Adapter], weights: Mapping[str, float]) -> dict[str, torch.Tensor]:
    """Σ_k w_k·s_k·B_k·A_k per module: the dense weight update of the soup."""
    check_weights(weights)
    deltas: dict[str, torch.Tensor] = {}
    for name, weight in weights.items():
        if weight == 0:
            continue
        for module, factors in chosen(adapters, name).modules.items():
            update = weight * factors.delta()
            deltas[module] = deltas[module] + update if module in deltas else update
    return deltas


def exact_factors(adapters: Mapping[str, Adapter], weights: Mapping[str, float]) -> dict[str, LoraFactors]:
    """The exact soup as stacked low-rank factors: A = [A_1; A_2; ...], B = [w_1 s_1 B_1, w_2 s_2 B_2, ...]."""
    check_weights(weights)
    stacks: dict[str, tuple[list[torch.Tensor], list[torch.Tensor], bool]] = {}
    for name, weight in weights.items():
        if weight == 0:
            continue
        for module, f in chosen(adapters, name).modules.items():
            a_list, b_list, _ = stacks.setdefault(module, ([], [], f.fan_in_fan_out))
            a_list.append(f.A)
            b_list.append(weight * f.scale * f.B)
    return {m: LoraFactors(torch.cat(a), torch.cat(b, dim=1), 1.0, fifo) for m, (a, b, fifo) in stacks.items()}


def separate_average(adapters: Mapping[str, Adapter], weights: Mapping[str, float]) -> dict[str, torch.Tensor]:
    """What averaging A and B separately yields, s·(Σ w_k B_k)(Σ w_k A_k): shown to differ from the exact soup."""
    out = {}
    picked = [(chosen(adapters, n), w) for n, w in weights.items()]
    for module in picked[0][0].modules:
        first = picked[0][0].modules[module]
        a = sum(w * ad.modules[module].A for ad, w in picked)
        b = sum(w * ad.modules[module].B for ad, w in picked)
        out[module] = first.scale * (b @ a)
    return out


def chosen(adapters: Mapping[str, Adapter], name: str) -> Adapter:
    """The adapter a weight names (a clear error for a name with no adapter)."""
    if name not in adapters:
        raise PersonalmError(f"no adapter named '{name}' (adapters: {', '.join(adapters)})")
    return adapters[name]
