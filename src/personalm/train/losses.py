"""Token losses the trainer can optimize. A loss gets the logits at the supervised positions only
(n, vocab), their target labels (n,) in row-major order and the batch, and returns (sum over those
tokens, token count), so gradient accumulation can average over every token of a step exactly.

A loss may also have `prepare(model, batch)` (called before the training forward, e.g. PerCE's
extra no-persona pass, which puts what it needs into the batch) and `step_stats()` (a dict logged
per optimizer step into train_log.jsonl, then reset). Registered classes are built with the run's
loss options; plain functions take none."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from personalm.errors import PersonalmError
from personalm.perce.contrast import bare_logprobs
from personalm.train.data import IGNORE

LossFn = Callable[[Tensor, Tensor, dict[str, Tensor]], tuple[Tensor, Tensor]]


def cross_entropy(rows: Tensor, targets: Tensor, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    return F.cross_entropy(rows, targets, reduction="sum"), torch.tensor(len(targets))


def perce_weights(pir: Tensor, clip_min: float, clip_max: float) -> Tensor:
    """w_i = clip(PIR_i, m, M): generic tokens keep at least m, persona tokens are up-weighted."""
    return pir.clamp(min=clip_min, max=clip_max)


class PerCELoss:
    """PerCE = −(1/n) Σ w_i log p(y_i | persona, x, y_<i), with w_i = clip(PIR_i, m, M).

    The weights are recomputed every step with the current model and detached: log p with the
    persona comes from the training forward itself, log p without it from one extra no-grad
    forward (`prepare`), so a step costs one forward more than CE and no extra backward.
    """

    needs_contrast = True

    def __init__(self, clip_min: float = 0.8, clip_max: float = 5.0):
        if not clip_min <= clip_max:
            raise PersonalmError(f"--clip-min {clip_min} must not exceed --clip-max {clip_max}")
        self.clip_min, self.clip_max = clip_min, clip_max
        self._weights: list[Tensor] = []
        self._nll: list[Tensor] = []

    def prepare(self, model: torch.nn.Module, batch: dict[str, Tensor]) -> None:
        if "contrast_input_ids" not in batch:
            raise PersonalmError("--loss perce needs examples with a 'persona' field")
        batch["logp_without"] = bare_logprobs(model, batch)

    def __call__(self, rows: Tensor, targets: Tensor, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        nll = F.cross_entropy(rows.float(), targets, reduction="none")
        pir = -nll.detach() - batch["logp_without"]
        weights = perce_weights(pir, self.clip_min, self.clip_max)
        self._weights.append(weights)
        self._nll.append(nll.detach())
        return (weights * nll).sum(), torch.tensor(len(targets))

    def step_stats(self) -> dict[str, float]:
        """Weight distribution over the step's tokens (mean, min, max, fraction at each bound) and
        the plain CE of the same tokens, comparable with a CE run's loss."""
        if not self._weights:
            return {}
        weights, nll = torch.cat(self._weights), torch.cat(self._nll)
        self._weights, self._nll = [], []
        return {
            "ce": round(float(nll.mean()), 4),
            "weight_mean": round(float(weights.mean()), 4),
            "weight_min": round(float(weights.min()), 4),
            "weight_max": round(float(weights.max()), 4),
            "frac_clip_min": round(float((weights <= self.clip_min).float().mean()), 4),
            "frac_clip_max": round(float((weights >= self.clip_max).float().mean()), 4),
        }


LOSSES: dict[str, LossFn | type] = {"ce": cross_entropy, "perce": PerCELoss}


def register_loss(name: str, loss: LossFn | type) -> None:
    LOSSES[name] = loss


def get_loss(name: str, **options: Any) -> LossFn:
    """The loss called `name`; a registered class is built with `options` (its own knobs)."""
    if name not in LOSSES:
        raise PersonalmError(f"unknown loss '{name}': expected one of {', '.join(sorted(LOSSES))}")
    entry = LOSSES[name]
    return entry(**options) if isinstance(entry, type) else entry


def needs_contrast(loss: LossFn) -> bool:
    """Whether the loss needs each example rendered without its persona too."""
    return bool(getattr(loss, "needs_contrast", False))


def supervised_tokens(labels: Tensor) -> int:
    return int((labels[:, 1:] != IGNORE).sum())
