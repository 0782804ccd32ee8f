"""The tone data pipeline: passages → questions → reference answers → tone candidates → kept
examples, in rounds until enough training examples are accepted.

All generation goes through the model interface (any backend). With the embedded model as its own
teacher it samples several rewrites per answer and keeps the one the tone scorer accepts that stays
closest in meaning to the reference. Every stage goes through the generation cache, so a killed
build re-run with the same settings redoes no finished generation; every reject is kept with why.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from personalm.eval.tone import ToneScorer, score_answers
from personalm.models.base import SamplingParams, TextModel
from personalm.provenance import versions
from personalm.report import write_json
from personalm.tables import write_rows
from personalm.tone import prompts
from personalm.tone.corpus import Passage, load_passages

Log = Callable[[str], None]


@dataclass
class ToneBuildConfig:
    """Every knob of a build; stored in stats.json."""

    source: str
    out: str
    examples: int = 100
    test: int = 48
    candidates: int = 3
    temperature: float = 0.8
    max_tokens: int = 64
    passage_words: int = 50
    per_doc: int = 2
    test_fraction: float = 0.15
    min_semsim: float = 0.5
    round_size: int = 96
    seed: int = 0
    text_column: str = "text"
    scorer: str = "flesch"
    val: int = 0
    val_fraction: float = 0.1
    margin: float = 0.0


@dataclass
class ToneDataset:
    """`items`: training questions with every acceptable rewrite; `examples(margin)` draws the
    chat training set from them."""

    items: list[dict[str, Any]]
    test: list[dict[str, Any]]
    rejects: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    val: list[dict[str, Any]] = field(default_factory=list)
    bar: float = 0.0

    def examples(self, margin: float = 0.0) -> list[dict[str, Any]]:
        """The training examples whose best rewrite clears the tone bar by `margin`, in order."""
        return [e for e in (select(item, self.bar + margin) for item in self.items) if e is not None]


def select(item: dict[str, Any], floor: float) -> dict[str, Any] | None:
    """The item as a chat example with its rewrite closest in meaning to the reference among
    those scoring at least `floor`; None when no rewrite does."""
    fitting = [c for c in item["candidates"] if c["tone_score"] >= floor]
    if not fitting:
        return None
    best = max(fitting, key=lambda c: c["semsim"])
    return item | {
        "answer": best["text"],
        "tone_score": best["tone_score"],
        "semsim": best["semsim"],
        "messages": [
            {"role": "user", "content": prompts.user_turn(item["facts"], item["question"])},
            {"role": "assistant", "content": best["text"]},
        ],
    }


class ToneBuilder:
    """Runs the stages on a model, an embedder (for content similarity) and a tone scorer."""

    def __init__(self, config: ToneBuildConfig, model: TextModel, embedder, scorer: ToneScorer, log: Log = print):
        self.config = config
        self.model = model
        self.embedder = embedder
        self.scorer = scorer
        self.log = log
        self.rejects: list[dict[str, Any]] = []

    def _params(self, temperature: float = 0.0, salt: int = 0) -> SamplingParams:
        return SamplingParams(max_tokens=self.config.max_tokens, temperature=temperature, seed=self.config.seed + salt)

    def grounded_questions(self, batch: Sequence[Passage]) -> list[dict[str, Any]]:
        """Question and reference answer for each passage; rejects are recorded."""
        asked = self.model.generate([prompts.question_prompt(p.text) for p in batch], self._params())
        items = []
        for passage, gen in zip(batch, asked, strict=True):
            question, why = prompts.parse_question(gen.text)
            if question is None:
                self._reject(passage, "question", why, gen.text)
            else:
                items.append(
                    {"passage_id": passage.id, "doc": passage.doc, "facts": passage.text, "question": question}
                )
        answers = self.model.generate(
            [prompts.reference_prompt(i["facts"], i["question"]) for i in items], self._params()
        )
        kept = []
        for item, gen in zip(items, answers, strict=True):
            reference, why = prompts.clean_answer(gen.text, gen.finish_reason == "length")
            if reference is None:
                self._reject(item, "reference", why, gen.text)
            else:
                kept.append(item | {"reference": reference})
        return kept

    def tone_examples(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Sample `candidates` rewrites per reference and keep them all with their tone score and
        similarity, so a training set can be drawn at any tone margin (`select`); items with no
        acceptable rewrite even at margin 0 are rejects, with each candidate's reason."""
        k = self.config.candidates
        chats = [prompts.tone_prompt(i["question"], i["reference"]) for i in items for _ in range(k)]
        gens = self.model.generate(chats, self._params(self.config.temperature, salt=1))
        texts = [prompts.clean_answer(g.text, g.finish_reason == "length", drop_formula=True)[0] or "" for g in gens]
        scores = score_answers(texts, [i["reference"] for i in items], self.embedder, self.scorer, k)
        tone, accepted = scores.tone, scores.accepted
        out = []
        for n, item in enumerate(items):
            candidates, reasons = [], []
            for j in range(n * k, (n + 1) * k):
                semsim = float(scores.semsim[j])
                if not texts[j]:
                    reasons.append("empty or cut off")
                elif not accepted[j]:
                    reasons.append(f"tone score {tone[j]:.1f} below the bar")
                elif prompts.echoes_question(item["question"], texts[j]):
                    reasons.append("echoes the question instead of answering it")
                elif semsim < self.config.min_semsim:
                    reasons.append(f"meaning drifted (similarity {semsim:.2f})")
                else:
                    candidates.append({"text": texts[j], "tone_score": float(tone[j]), "semsim": round(semsim, 4)})
            if not candidates:
                self._reject(item, "tone", "; ".join(reasons), texts[n * k])
                continue
            out.append(item | {"candidates": candidates})
        return out

    def _reject(self, item: Passage | dict[str, Any], stage: str, reason: str, text: str) -> None:
        pid = item.id if isinstance(item, Passage) else item["passage_id"]
        self.rejects.append({"passage_id": pid, "stage": stage, "reason": reason, "text": text})

    def build(self) -> ToneDataset:
        c = self.config
        pool = load_passages(
            c.source, c.passage_words, c.per_doc, c.test_fraction, c.seed, c.text_column, c.val_fraction if c.val else 0.0
        )  # fmt: skip
        split = {name: [p for p in pool if p.split == name] for name in ("train", "val", "test")}
        test = self._collect(split["test"], c.test, "test", self.grounded_questions)
        val = self._collect(split["val"], c.val, "validation", self.grounded_questions)
        floor = self.scorer.threshold + c.margin
        train = self._collect(
            split["train"], c.examples, "train", lambda batch: self.tone_examples(self.grounded_questions(batch)),
            counts=lambda item: select(item, floor) is not None,
        )  # fmt: skip
        dataset = ToneDataset(train, test, self.rejects, val=val, bar=self.scorer.threshold)
        kept = dataset.examples(c.margin)
        tried = len({r["passage_id"] for r in self.rejects}) + len(train) + len(test) + len(val)
        dataset.stats = {
            "config": asdict(c),
            "passages_available": {name: len(passages) for name, passages in split.items()},
            "passages_tried": tried,
            "train_items": len(train),
            "train_examples": len(kept),
            "train_examples_by_margin": {m: len(dataset.examples(m)) for m in sorted({0.0, 10.0, 20.0, c.margin})},
            "val_questions": len(val),
            "test_questions": len(test),
            "rejects_by_stage": {
                s: sum(r["stage"] == s for r in self.rejects) for s in ("question", "reference", "tone")
            },
            "tone_bar": self.scorer.threshold,
            "mean_tone_score": float(np.mean([e["tone_score"] for e in kept])) if kept else None,
            "mean_semsim": float(np.mean([e["semsim"] for e in kept])) if kept else None,
            "model": self.model.model_id,
            "scorer": self.scorer.name,
            "versions": versions("personalm", "torch", "transformers"),
        }
        return dataset

    def _collect(self, pool: list[Passage], wanted: int, name: str, stage, counts=lambda item: True) -> list[dict]:
        """Process the pool in rounds until `wanted` items that `counts` are kept (or the pool
        runs out). Items that do not count are kept too (a looser selection may use them)."""
        kept: list[dict[str, Any]] = []
        if wanted <= 0:
            return kept
        start = 0

        def counted() -> int:
            return sum(1 for item in kept if counts(item))

        while counted() < wanted and start < len(pool):
            size = max(8, min(self.config.round_size, 2 * (wanted - counted())))
            batch = pool[start : start + size]
            start += len(batch)
            kept += stage(batch)
            self.log(f"{name}: {min(counted(), wanted)}/{wanted} kept from {start} passages")
        if counted() < wanted:
            self.log(f"{name}: the corpus gave only {counted()} of {wanted}")
            return kept
        last = [n for n, item in enumerate(kept) if counts(item)][wanted - 1]
        return kept[: last + 1]


def write_dataset(dataset: ToneDataset, out: Path, margin: float = 0.0) -> None:
    """train.jsonl (chat examples at `margin` + provenance), candidates.jsonl (every kept item
    with all its rewrites), val.jsonl, test.jsonl, rejects.jsonl, stats.json."""
    out.mkdir(parents=True, exist_ok=True)
    write_rows(out / "train.jsonl", dataset.examples(margin))
    write_rows(out / "candidates.jsonl", dataset.items)
    write_rows(out / "val.jsonl", dataset.val)
    write_rows(out / "test.jsonl", dataset.test)
    write_rows(out / "rejects.jsonl", dataset.rejects)
    write_json(out / "stats.json", dataset.stats)
