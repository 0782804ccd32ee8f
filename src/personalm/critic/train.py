"""Fine-tune the critic's cross-encoder on items (a respecting answer and violating ones).

Why a loop of its own and not personalm.train.loop: that loop trains LoRA adapters of a causal LM
on chat tokens (its batches are token ids with labels, its losses take vocabulary logits at the
supervised positions). The cross-encoder is an encoder with one scalar head, trained in full (22M
weights: a LoRA saves nothing worth its complexity here), on groups of answers per item. The LM
design of the critic (a LoRA yes/no verdict on the embedded SmolLM2) does train with
personalm.train.loop and its CE loss; see personalm.studies.critic.

Losses, per item (answer 0 respects the preference, the others violate it):
* bce: binary cross-entropy of every answer against its label (P is calibrated, as `score` promises);
* listwise: cross-entropy of the softmax over the item's answers with the respecting one as target
  (it ranks, which is what multiple choice asks, but leaves the absolute level free);
* both: their sum.

Resumable: every `save_every` steps and after each epoch the weights, optimizer, schedule, RNG, the
position in the epoch and the validation curve go to `checkpoint` (atomically), and the best epoch by
validation is kept as a saved critic beside it; the epoch's order is a function of the seed and the
epoch, so a run killed mid-epoch continues with the very next batch.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from personalm.critic.data import CriticItem
from personalm.critic.model import PreferenceCritic, pair_text
from personalm.errors import PersonalmError

STATE = "state.pt"
BEST = "best"


def bce(scores: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    labels = torch.cat([torch.tensor([1.0] + [0.0] * (n - 1)) for n in sizes]).to(scores.device)
    return F.binary_cross_entropy_with_logits(scores, labels, reduction="sum") / len(sizes)


def listwise(scores: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    groups = torch.split(scores, list(sizes))
    return -torch.stack([F.log_softmax(g, dim=0)[0] for g in groups]).mean()


def both(scores: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    return bce(scores, sizes) + listwise(scores, sizes)


LOSSES: dict[str, Callable[[torch.Tensor, Sequence[int]], torch.Tensor]] = {
    "bce": bce,
    "listwise": listwise,
    "both": both,
}


@dataclass(frozen=True)
class FitConfig:
    loss: str = "bce"
    epochs: int = 4
    lr: float = 3e-5
    batch_items: int = 8  # items per step (each brings all its answers)
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 0
    save_every: int = 10  # steps between mid-epoch checkpoints

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise PersonalmError(f"unknown critic loss '{self.loss}': expected one of {', '.join(LOSSES)}")
        if self.epochs < 1 or self.lr <= 0 or self.batch_items < 1:
            raise PersonalmError("critic training needs epochs >= 1, lr > 0 and batch_items >= 1")


@dataclass
class FitResult:
    curve: list[float] = field(default_factory=list)  # validation accuracy after each epoch
    losses: list[float] = field(default_factory=list)  # mean training loss of each epoch
    best_epoch: int = 0
    seconds: float = 0.0
    resumed_from: int | None = None
    step_in_epoch: int = 0  # batches of the current epoch already trained (resuming mid-epoch)
    running: float = 0.0  # their summed loss

    def to_dict(self) -> dict:
        return asdict(self)


Validate = Callable[[PreferenceCritic], float]
Progress = Callable[[int, int, float], None]


def fit(
    critic: PreferenceCritic,
    items: Sequence[CriticItem],
    config: FitConfig,
    validate: Validate,
    checkpoint: str | Path,
    progress: Progress | None = None,
    log: Callable[[str], None] = lambda m: None,
) -> tuple[PreferenceCritic, FitResult]:
    """Train `critic` on `items` for `config.epochs`, validating after each epoch; returns the
    critic of the best epoch (ties: the earlier one) and the curve. Resumes from `checkpoint`."""
    from transformers import get_linear_schedule_with_warmup

    if not items:
        raise PersonalmError("no training items for the critic")
    checkpoint = Path(checkpoint)
    checkpoint.mkdir(parents=True, exist_ok=True)
    steps_per_epoch = math.ceil(len(items) / config.batch_items)
    total = steps_per_epoch * config.epochs
    optimizer = torch.optim.AdamW(critic.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total), total)
    result = FitResult()
    torch.manual_seed(config.seed)
    if (checkpoint / STATE).is_file():
        saved = torch.load(checkpoint / STATE, weights_only=False, map_location="cpu")
        critic.encoder.load_state_dict(saved["encoder"])
        critic.head.load_state_dict(saved["head"])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        torch.set_rng_state(saved["torch_rng"])
        result = FitResult(**saved["result"])
        result.resumed_from = len(result.curve)
        log(f"critic: resumed at epoch {len(result.curve) + 1}, step {result.step_in_epoch}")
    start = time.perf_counter() - result.seconds
    for epoch in range(len(result.curve), config.epochs):
        critic.train()
        order = list(items)
        random.Random(config.seed * 1000 + epoch).shuffle(order)
        first, running = result.step_in_epoch, result.running
        for step in range(first, steps_per_epoch):
            batch = order[step * config.batch_items : (step + 1) * config.batch_items]
            sizes = [len(item.answers) for item in batch]
            scores = critic.logits(
                [item.preference for item in batch for _ in item.answers],
                [pair_text(item.question, answer) for item in batch for answer in item.answers],
            )
            loss = LOSSES[config.loss](scores, sizes)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(critic.parameters(), config.max_grad_norm)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            running += float(loss.detach())
            if progress:
                progress(epoch * steps_per_epoch + step + 1, total, float(loss.detach()))
            if (step + 1) % config.save_every == 0 and step + 1 < steps_per_epoch:
                result.step_in_epoch, result.running = step + 1, running
                result.seconds = time.perf_counter() - start
                _save_state(checkpoint, critic, optimizer, schedule, result)
        critic.eval()
        accuracy = validate(critic)
        result.curve.append(accuracy)
        result.losses.append(running / steps_per_epoch)
        result.step_in_epoch, result.running = 0, 0.0
        if accuracy > max(result.curve[:-1], default=-1.0):
            result.best_epoch = epoch + 1
            critic.save(checkpoint / BEST)
        result.seconds = time.perf_counter() - start
        log(f"critic: epoch {epoch + 1}/{config.epochs}, loss {result.losses[-1]:.4f}, validation {accuracy:.3f}")
        _save_state(checkpoint, critic, optimizer, schedule, result)
    return PreferenceCritic.load(checkpoint / BEST), result


def _save_state(checkpoint: Path, critic: PreferenceCritic, optimizer, schedule, result: FitResult) -> None:
    tmp = checkpoint / f".{STATE}.tmp"
    torch.save(
        {
            "encoder": critic.encoder.state_dict(),
            "head": critic.head.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "result": asdict(result),
        },
        tmp,
    )
    os.replace(tmp, checkpoint / STATE)
