"""Token losses the trainer can optimize. A loss gets the logits at the supervised positions only
(n, vocab), their target labels (n,) in row-major order and the batch, and returns (sum over those
tokens, token count), so gradient accumulation can average over every token of a step exactly.

A loss may also have `prepare(model, batch)` (called before the training forward, e.g. PerCE's
extra no-persona pass, which puts what it needs into the batch) and `step_stats()` (a dict logged
per optimizer step into train_log.jsonl, then reset). Registered classes are built with the run's
loss options (each takes the ones its constructor names); plain functions take none.

A pair loss (`pairs = True`, DPO) trains on preference pairs: its batch holds one row per pair
(`data.collate_pairs`), its tokens come from `supervised_rows`, and a step averages it over pairs
instead of tokens."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from personalm.errors import PersonalmError
from personalm.models.hf import logits_at
from personalm.perce.contrast import bare_logprobs, supervised_logits
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


def supervised_rows(model: torch.nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Logits at the positions that predict a supervised token, and those tokens: from the labels of
    a chat batch, or from the explicit targets of a pair batch (`data.collate_pairs`)."""
    if "target_row" not in batch:
        return supervised_logits(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    positions = (batch["target_row"], batch["target_col"])
    rows = logits_at(model, batch["input_ids"], batch["attention_mask"], positions, batch["position_ids"])
    return rows, batch["target_label"]


def sequence_logprobs(rows: Tensor, targets: Tensor, sequence: Tensor, count: int) -> Tensor:
    """Σ log p of each sequence's supervised tokens, (count,): `rows`/`targets` are the supervised
    logits and labels, `sequence` says which sequence each token belongs to."""
    token = -F.cross_entropy(rows.float(), targets, reduction="none")
    return torch.zeros(count, dtype=token.dtype).index_add(0, sequence, token)


def dpo_sigmoid(
    policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor, beta: float
) -> tuple[Tensor, Tensor, Tensor]:
    """DPO's sigmoid loss per pair, −log σ(β[(π_c − ref_c) − (π_r − ref_r)]), and the implicit
    rewards β(π − ref) of the chosen and rejected answers (sequence log-probs in, all (pairs,))."""
    chosen = beta * (policy_chosen - ref_chosen)
    rejected = beta * (policy_rejected - ref_rejected)
    return -F.logsigmoid(chosen - rejected), chosen.detach(), rejected.detach()


class DPOLoss:
    """Direct Preference Optimization (sigmoid loss) against the base model as reference.

    The reference log-probs come from the same model with the LoRA adapter switched off, one no-grad
    forward per pair; they never change, so each pair's are kept (by example index) and later epochs
    reuse them instead of running the base again. They are computed with the pair's first training
    batch, not precomputed for the whole set up front: a no-grad pass in batches of 16 pairs was no
    faster per pair than in the training batches of 4 (measured on this 2-core CPU), and a run
    shorter than an epoch would pay for pairs it never trains on."""

    pairs = True

    def __init__(self, beta: float = 0.1):
        if beta <= 0:
            raise PersonalmError(f"--beta {beta}: must be positive")
        self.beta = beta
        self._reference: dict[int, tuple[float, float]] = {}
        self._chosen: list[Tensor] = []
        self._rejected: list[Tensor] = []

    @torch.no_grad()
    def prepare(self, model: torch.nn.Module, batch: dict[str, Tensor]) -> None:
        index = batch["index"].tolist()
        if any(i not in self._reference for i in index):
            with model.disable_adapter():
                rows, targets = supervised_rows(model, batch)
            logps = sequence_logprobs(rows, targets, batch["target_sequence"], 2 * len(index)).view(2, -1).t().tolist()
            self._reference.update(zip(index, map(tuple, logps), strict=True))
        batch["reference_logps"] = torch.tensor([self._reference[i] for i in index]).t().reshape(-1)

    def __call__(self, rows: Tensor, targets: Tensor, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        n = int(batch["pairs"])
        policy = sequence_logprobs(rows, targets, batch["target_sequence"], 2 * n)
        reference = batch["reference_logps"]
        losses, chosen, rejected = dpo_sigmoid(policy[:n], policy[n:], reference[:n], reference[n:], self.beta)
        self._chosen.append(chosen)
        self._rejected.append(rejected)
        return losses.sum(), torch.tensor(n)

    def step_stats(self) -> dict[str, float]:
        """The step's implicit rewards: accuracy (chosen above rejected), mean margin, each mean."""
        if not self._chosen:
            return {}
        chosen, rejected = torch.cat(self._chosen), torch.cat(self._rejected)
        self._chosen, self._rejected = [], []
        return {
            "reward_accuracy": round(float((chosen > rejected).float().mean()), 4),
            "reward_margin": round(float((chosen - rejected).mean()), 4),
            "reward_chosen": round(float(chosen.mean()), 4),
            "reward_rejected": round(float(rejected.mean()), 4),
        }


LOSSES: dict[str, LossFn | type] = {"ce": cross_entropy, "perce": PerCELoss, "dpo": DPOLoss}


def register_loss(name: str, loss: LossFn | type) -> None:
    LOSSES[name] = loss


def get_loss(name: str, **options: Any) -> LossFn:
    """The loss called `name`; a registered class is built with those `options` it takes."""
    if name not in LOSSES:
        raise PersonalmError(f"unknown loss '{name}': expected one of {', '.join(sorted(LOSSES))}")
    entry = LOSSES[name]
    if not isinstance(entry, type):
        return entry
    accepted = inspect.signature(entry).parameters
    return entry(**{key: value for key, value in options.items() if key in accepted})


def needs_contrast(loss: LossFn) -> bool:
    """Whether the loss needs each example rendered without its persona too."""
    return bool(getattr(loss, "needs_contrast", False))


def needs_pairs(loss: LossFn) -> bool:
    """Whether the loss trains on preference pairs (prompt, chosen, rejected)."""
    return bool(getattr(loss, "pairs", False))


def supervised_tokens(labels: Tensor) -> int:
    return int((labels[:, 1:] != IGNORE).sum())


def loss_units(batch: dict[str, Tensor]) -> int:
    """What a step's loss is averaged over: the batch's pairs for a pair loss, else its supervised tokens."""
    return int(batch["pairs"]) if "pairs" in batch else supervised_tokens(batch["labels"])
