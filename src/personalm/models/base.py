"""The model interface every stage talks to: generate texts and score continuations."""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

Message = dict[str, str]
Prompt = str | list[Message]
"""A plain prompt (sent as is) or a chat (rendered with the model's chat template)."""

ProgressCallback = Callable[[int], None]
"""Called with the number of prompts just finished, so callers can drive a progress bar."""


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. temperature 0 means greedy decoding (seed then has no effect)."""

    max_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    stop: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        object.__setattr__(self, "stop", tuple(self.stop))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"stop": list(self.stop)}


@dataclass
class Generation:
    """One generated text. finish_reason is "stop" (EOS or a stop string) or "length"."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TokenScores:
    """Per-token log-probabilities of a continuation given its context."""

    tokens: list[str]
    logprobs: list[float]

    @property
    def total(self) -> float:
        return float(sum(self.logprobs))

    @property
    def mean(self) -> float:
        return self.total / max(len(self.logprobs), 1)

    def to_dict(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "logprobs": self.logprobs, "total": self.total}


def prompt_key(prompt: Prompt) -> str:
    """A canonical text form of a prompt, for cache keys and de-duplication."""
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def occurrences(prompts: Sequence[Prompt]) -> list[tuple[str, int]]:
    """(prompt key, how many identical prompts came before it): the identity of one sample."""
    seen: dict[str, int] = {}
    out = []
    for prompt in prompts:
        key = prompt_key(prompt)
        seen[key] = seen.get(key, -1) + 1
        out.append((key, seen[key]))
    return out


def stable_hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def apply_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut text at the earliest stop string; report whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class TextModel(ABC):
    """A text generator that can also score continuations.

    `model_id` names the exact weights (base + adapter) so caches never mix two models.
    """

    model_id: str

    @abstractmethod
    def generate(
        self,
        prompts: Sequence[Prompt],
        params: SamplingParams | None = None,
        progress: ProgressCallback | None = None,
    ) -> list[Generation]:
        """Generate one completion per prompt, in input order."""

    @abstractmethod
    def score(self, contexts: Sequence[Prompt], continuations: Sequence[str]) -> list[TokenScores]:
        """Log-probability of each continuation token given its context (chat contexts end
        with the assistant turn opened, so the continuation is scored as the assistant's reply)."""

    def info(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "backend": type(self).__name__}

    def close(self) -> None:
        """Release resources (connections, servers); models are usable as context managers."""

    def __enter__(self) -> TextModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
