"""Token losses the trainer can optimize. A loss gets the logits at the supervised positions only
(n, vocab), their target labels (n,) in row-major order and the batch, and returns (sum over those
tokens, token count), so gradient accumulation can average over every token of a step exactly.

A loss may also have `prepare(model, batch)` (called before the training forward, e.g. PerCE's
extra no-persona pass, which puts what it needs into the batch), `step_stats()` (a dict logged
per optimizer step into train_log.jsonl, then reset) and `contrast` (a `data.Contrast`: each example
is then loaded with a second rendering, batched as `contrast_*`). Registered classes are built with
the run's loss options (each takes the ones its constructor names); plain functions take none.
Losses that live outside train (PerCE, in personalm.perce) add themselves with `register_loss`.

A pair loss (`pairs = True`, DPO) trains on preference pairs: its batch holds one row per pair
(`data.collate_pairs`), its tokens come from `supervised_rows`, and a step averages it over pairs
instead of tokens."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from personalm.errors import PersonalmError
from personalm.models.hf import logits_at
from personalm.train.data import IGNORE, Contrast

LossFn = Callable[[Tensor, Tensor, dict[str, Tensor]], tuple[Tensor, Tensor]]
REFERENCES = ("base", "start")


def cross_entropy(rows: Tensor, targets: Tensor, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    return F.cross_entropy(rows, targets, reduction="sum"), torch.tensor(len(targets))


def selected(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Logits (n, vocab) at the positions that predict a supervised label, and those labels (n,).

    Row-major order, so two renderings of the same replies give the same label sequence."""
    keep = labels[:, 1:] != IGNORE
    return logits[:, :-1][keep], labels[:, 1:][keep]


def supervised_logits(
    model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor, labels: Tensor
) -> tuple[Tensor, Tensor]:
    """`selected(model(...).logits, labels)` with the output head run only at the positions that
    predict a supervised label, so prompt tokens cost no vocabulary-wide matmul or softmax."""
    keep = labels[:, 1:] != IGNORE
    positions = torch.zeros_like(labels, dtype=torch.bool)
    positions[:, :-1] = keep
    return logits_at(model, input_ids, attention_mask, positions), labels[:, 1:][keep]


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
    return torch.zeros(count, dtype=token.dtype, device=token.device).index_add(0, sequence, token)


def dpo_sigmoid(
    policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor, beta: float
) -> tuple[Tensor, Tensor, Tensor]:
    """DPO's sigmoid loss per pair, −log σ(β[(π_c − ref_c) − (π_r − ref_r)]), and the implicit
    rewards β(π − ref) of the chosen and rejected answers (sequence log-probs in, all (pairs,))."""
    chosen = beta * (policy_chosen - ref_chosen)
    rejected = beta * (policy_rejected - ref_rejected)
    return -F.logsigmoid(chosen - rejected), chosen.detach(), rejected.detach()


class DPOLoss:
    """Direct Preference Optimization (sigmoid loss).

    The reference is the base model (`reference="base"`, the adapter switched off) or the policy as
    training starts (`reference="start"`: a run that continues an adapter, such as a preference
    round after SFT, keeps the SFT adapter as its reference); the loop computes the latter for
    every pair before the first step (`needs_start_reference`) and keeps them in its checkpoints.

    The reference log-probs come from the same model with the LoRA adapter switched off, one no-grad
    forward per pair; they never change, so each pair's are kept (by example index) and later epochs
    reuse them instead of running the base again. They are computed with the pair's first training
    batch, not precomputed for the whole set up front: a no-grad pass in batches of 16 pairs was no
    faster per pair than in the training batches of 4 (measured on this 2-core CPU), and a run
    shorter than an epoch would pay for pairs it never trains on."""

    pairs = True

    def __init__(self, beta: float = 0.1, reference: str = "base"):
        if beta <= 0:
            raise PersonalmError(f"--beta {beta}: must be positive")
        if reference not in REFERENCES:
            raise PersonalmError(f"DPO reference {reference!r}: expected one of {', '.join(REFERENCES)}")
        self.beta = beta
        self.reference = reference
        self._reference: dict[int, tuple[float, float]] = {}
        self._chosen: list[Tensor] = []
        self._rejected: list[Tensor] = []

    @torch.no_grad()
    def prepare(self, model: torch.nn.Module, batch: dict[str, Tensor]) -> None:
        index = batch["index"].tolist()
        if any(i not in self._reference for i in index):
            with model.disable_adapter() if self.reference == "base" else contextlib.nullcontext():
                rows, targets = supervised_rows(model, batch)
            logps = sequence_logprobs(rows, targets, batch["target_sequence"], 2 * len(index)).view(2, -1).t().tolist()
            self._reference.update(zip(index, map(tuple, logps), strict=True))
        batch["reference_logps"] = (
            torch.tensor([self._reference[i] for i in index], device=batch["input_ids"].device).t().reshape(-1)
        )

    @property
    def needs_start_reference(self) -> bool:
        return self.reference == "start"

    def reference_logps(self) -> dict[int, tuple[float, float]]:
        """Each pair's reference (chosen, rejected) log-probs computed so far, by example index."""
        return self._reference

    def restore_reference(self, saved: dict[int, tuple[float, float]]) -> None:
        self._reference = dict(saved)

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


LOSSES: dict[str, LossFn | type] = {"ce": cross_entropy, "dpo": DPOLoss}


def register_loss(name: str, loss: LossFn | type) -> None:
    """Make `loss` available as `--loss name`: how a package outside train adds its loss (perce does on import)."""
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


def contrast_of(loss: LossFn) -> Contrast | None:
    """How the loss wants each example rendered a second time (`data.Contrast`), or None."""
    return getattr(loss, "contrast", None)


def needs_pairs(loss: LossFn) -> bool:
    """Whether the loss trains on preference pairs (prompt, chosen, rejected)."""
    return bool(getattr(loss, "pairs", False))


def supervised_tokens(labels: Tensor) -> int:
    return int((labels[:, 1:] != IGNORE).sum())


def loss_units(batch: dict[str, Tensor]) -> int:
    """What a step's loss is averaged over: the batch's pairs for a pair loss, else its supervised tokens."""
    return int(batch["pairs"]) if "pairs" in batch else supervised_tokens(batch["labels"])
