"""PerCE, the persona-weighted cross-entropy: a trainer loss that lives with PerContrast and joins
the trainer's loss registry (`train.losses.register_loss`) when personalm.perce is imported, so
`personalm train sft --loss perce` trains with it while train itself never imports perce."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from personalm.errors import PersonalmError
from personalm.perce.contrast import bare_logprobs, tokenize_contrast
from personalm.train.losses import register_loss


def perce_weights(pir: Tensor, clip_min: float, clip_max: float) -> Tensor:
    """w_i = clip(PIR_i, m, M): generic tokens keep at least m, persona tokens are up-weighted."""
    return pir.clamp(min=clip_min, max=clip_max)


class PerCELoss:
    """PerCE = −(1/n) Σ w_i log p(y_i | persona, x, y_<i), with w_i = clip(PIR_i, m, M).

    The weights are recomputed every step with the current model and detached: log p with the
    persona comes from the training forward itself, log p without it from one extra no-grad
    forward (`prepare`) over the chat rendered without the persona (`contrast`), so a step costs
    one forward more than CE and no extra backward.
    """

    contrast = staticmethod(tokenize_contrast)

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


register_loss("perce", PerCELoss)
