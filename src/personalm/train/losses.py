"""Token losses the trainer can optimize. A loss returns (sum over supervised tokens, token count),
so gradient accumulation can average over every token of an optimizer step exactly; PerCE plugs in
here with per-token weights carried in the batch."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

from personalm.errors import PersonalmError
from personalm.train.data import IGNORE

LossFn = Callable[[Tensor, Tensor, dict[str, Tensor]], tuple[Tensor, Tensor]]


def shifted(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Logits at position t predict the label at t+1."""
    return logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1)


def cross_entropy(logits: Tensor, labels: Tensor, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    flat_logits, flat_labels = shifted(logits, labels)
    loss = F.cross_entropy(flat_logits, flat_labels, ignore_index=IGNORE, reduction="sum")
    return loss, (flat_labels != IGNORE).sum()


LOSSES: dict[str, LossFn] = {"ce": cross_entropy}


def register_loss(name: str, loss: LossFn) -> None:
    LOSSES[name] = loss


def get_loss(name: str) -> LossFn:
    if name not in LOSSES:
        raise PersonalmError(f"unknown loss '{name}': expected one of {', '.join(sorted(LOSSES))}")
    return LOSSES[name]


def supervised_tokens(labels: Tensor) -> int:
    return int((labels[:, 1:] != IGNORE).sum())
