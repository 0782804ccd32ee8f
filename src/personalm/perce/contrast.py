"""PerContrast: how much each reply token depends on the persona (the Personal Influence Ratio).

PIR(y_i) = log p(y_i | persona, x, y_<i) − log p(y_i | x, y_<i): the same model scores the same reply
twice, once with the persona in the system message and once without it (a causal intervention on
the context). The two renderings come from `tokenize_contrast`, so the supervised (reply) tokens
are identical and PIR lines up token by token; PerCE trains on the same two renderings. Works with
any causal LM module: a `LocalModel`'s (adapter merged) or the trainer's PEFT model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from personalm.errors import PersonalmError
from personalm.train.data import IGNORE, pad, split_system, tokenize_chat, with_persona
from personalm.train.losses import selected, supervised_logits

DEFAULT_TOKEN_BUDGET = 8192


def without_persona(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The chat with only its own system text (kept even when empty, so the templates agree)."""
    base, rest = split_system(messages)
    return [{"role": "system", "content": base}, *rest]


def tokenize_contrast(
    tokenizer, messages: list[dict[str, str]], persona: str | None
) -> tuple[list[int], list[int], list[int], list[int]]:
    """(ids, labels) with the persona and (ids, labels) without; the supervised tokens agree.
    A `train.data.Contrast`: PerCE loads its training examples through it."""
    if persona is None:
        raise PersonalmError("no 'persona' field (PerCE contrasts each reply with and without it)")
    ids, labels = tokenize_chat(tokenizer, with_persona(messages, persona))
    bare_ids, bare_labels = tokenize_chat(tokenizer, without_persona(messages))
    if [t for t in labels if t != IGNORE] != [t for t in bare_labels if t != IGNORE]:
        raise PersonalmError("the chat template renders the replies differently without the persona")
    return ids, labels, bare_ids, bare_labels


def last_reply_only(labels: list[int]) -> list[int]:
    """Labels with every assistant turn but the last one masked (score one reply in its context)."""
    end = len(labels)
    while end and labels[end - 1] == IGNORE:
        end -= 1
    start = end
    while start and labels[start - 1] != IGNORE:
        start -= 1
    return [IGNORE] * start + labels[start:]


def token_logprobs(logits: Tensor, labels: Tensor) -> Tensor:
    """log p of every supervised label, flat in row-major order (only those rows of the vocab softmax)."""
    rows, targets = selected(logits, labels)
    return -F.cross_entropy(rows.float(), targets, reduction="none")


@torch.no_grad()
def bare_logprobs(model: torch.nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """The extra forward of PerCE: log p of the reply tokens without the persona, no gradient."""
    rows, targets = supervised_logits(
        model, batch["contrast_input_ids"], batch["contrast_attention_mask"], batch["contrast_labels"]
    )
    return -F.cross_entropy(rows.float(), targets, reduction="none")


@dataclass
class TokenInfluence:
    """One example's reply tokens with their log-probabilities and PIR (all lists align)."""

    token_ids: list[int]
    tokens: list[str]
    logp_with: list[float]
    logp_without: list[float]

    @property
    def pir(self) -> list[float]:
        return [a - b for a, b in zip(self.logp_with, self.logp_without, strict=True)]

    def to_dict(self) -> dict:
        return {
            "tokens": self.tokens,
            "token_ids": self.token_ids,
            "pir": self.pir,
            "logp_with": self.logp_with,
            "logp_without": self.logp_without,
        }


class PerContrast:
    """Batched PIR of reply tokens for (persona, chat) examples; every assistant turn is scored."""

    def __init__(self, model: torch.nn.Module, tokenizer, token_budget: int = DEFAULT_TOKEN_BUDGET):
        self.model = model
        self.tokenizer = tokenizer
        self.token_budget = token_budget
        pad_id = tokenizer.pad_token_id
        self.pad_id = pad_id if pad_id is not None else tokenizer.eos_token_id

    @classmethod
    def from_local(cls, local, token_budget: int = DEFAULT_TOKEN_BUDGET) -> PerContrast:
        """From a `personalm.models.local.LocalModel` (base model, or base + merged adapter)."""
        return cls(local.model, local.tokenizer, token_budget)

    def influence(
        self, examples: Sequence[tuple[str, list[dict[str, str]]]], last_only: bool = False
    ) -> list[TokenInfluence]:
        """PIR for each (persona, messages) example, in input order: of every assistant turn, or of
        the last one only (earlier turns are then context)."""
        encoded = [tokenize_contrast(self.tokenizer, messages, persona) for persona, messages in examples]
        if last_only:
            encoded = [(a, last_reply_only(b), c, last_reply_only(d)) for a, b, c, d in encoded]
        out: list[TokenInfluence | None] = [None] * len(encoded)
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
        chunk: list[int] = []
        for index in order:
            if chunk and len(encoded[index][0]) * (len(chunk) + 1) > self.token_budget:
                self._run(chunk, encoded, out)
                chunk = []
            chunk.append(index)
        if chunk:
            self._run(chunk, encoded, out)
        return [item for item in out if item is not None]

    @torch.no_grad()
    def _run(self, chunk: list[int], encoded, out: list[TokenInfluence | None]) -> None:
        with_batch = pad([(encoded[i][0], encoded[i][1]) for i in chunk], self.pad_id)
        bare = pad([(encoded[i][2], encoded[i][3]) for i in chunk], self.pad_id)
        logits = self.model(input_ids=with_batch["input_ids"], attention_mask=with_batch["attention_mask"]).logits
        logp_with = token_logprobs(logits, with_batch["labels"]).tolist()
        del logits  # the full-vocabulary logits must not live on through the second pass
        contrast = {f"contrast_{name}": tensor for name, tensor in bare.items()}
        logp_without = bare_logprobs(self.model, contrast).tolist()
        start = 0
        for i in chunk:
            ids = [t for t in encoded[i][1] if t != IGNORE]
            end = start + len(ids)
            pieces = self.tokenizer.convert_ids_to_tokens(ids)
            out[i] = TokenInfluence(
                token_ids=ids,
                tokens=[self.tokenizer.convert_tokens_to_string([p]) for p in pieces],
                logp_with=logp_with[start:end],
                logp_without=logp_without[start:end],
            )
            start = end
