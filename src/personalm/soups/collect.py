"""Feedback collection: prompts → sampled responses → pairwise labels, one preference at a time.

Each training prompt gets `samples` responses from the policy, each sampled under a different
system prompt (the pole prompts in turn, then none) so that the candidates span every dimension.
Every judged pair is labelled once per pole — the judge sees one preference at a time, as in
Personalized Soups. From the labels come the DPO sets:

* one per pole: pairs the judge decided for that pole (chosen = the winner), prompted with the pole;
* Prompted-MORL: for every combination of poles, the mean of that combination's per-pole labels
  decides the pair, prompted with the combined preference prompt.

Files under OUT: candidates.jsonl, labels.jsonl, dpo/<pole>.jsonl, dpo/pmorl.jsonl, collect.json.
Generations go through the on-disk generation cache, so a killed run re-run resumes for free.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from personalm.eval.judges import PairJudge
from personalm.models.base import SamplingParams, TextModel
from personalm.provenance import versions
from personalm.soups.preferences import Preferences, combination_name
from personalm.tables import write_rows

PMORL = "pmorl"


@dataclass
class CollectConfig:
    samples: int = 4
    max_pairs: int = 6
    max_tokens: int = 64
    temperature: float = 0.9
    seed: int = 0


def chat(system: str, question: str) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system}] if system else []
    return [*messages, {"role": "user", "content": question}]


def sample_candidates(
    model: TextModel, prefs: Preferences, prompts: Sequence[str], config: CollectConfig, progress=None
) -> list[dict]:
    systems = [p.prompt for p in prefs.poles] + [""]
    requests, rows = [], []
    for pid, question in enumerate(prompts):
        for idx in range(config.samples):
            system = systems[(pid + idx) % len(systems)]
            requests.append(chat(system, question))
            rows.append({"prompt_id": pid, "prompt": question, "idx": idx, "system": system})
    params = SamplingParams(max_tokens=config.max_tokens, temperature=config.temperature, top_p=0.95, seed=config.seed)
    for row, gen in zip(rows, model.generate(requests, params, progress=progress), strict=True):
        row["text"] = gen.text.strip()
    return rows


def judge_pairs(
    judge: PairJudge,
    prefs: Preferences,
    candidates: list[dict],
    config: CollectConfig,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Label up to `max_pairs` pairs per prompt for every pole (the same pairs for all poles)."""
    rng = random.Random(config.seed)
    by_prompt: dict[int, list[dict]] = {}
    for row in candidates:
        if row["text"]:
            by_prompt.setdefault(row["prompt_id"], []).append(row)
    pairs = []
    for _, rows in sorted(by_prompt.items()):
        combos = list(itertools.combinations(range(len(rows)), 2))
        rng.shuffle(combos)
        pairs += [(rows[i], rows[j]) for i, j in combos[: config.max_pairs]]
    labels = []
    for pole in prefs.poles:
        verdicts = judge.prefer(
            pole, [a["prompt"] for a, _ in pairs], [a["text"] for a, _ in pairs], [b["text"] for _, b in pairs]
        )
        for (a, b), verdict in zip(pairs, verdicts, strict=True):
            labels.append(
                {"prompt_id": a["prompt_id"], "a": a["idx"], "b": b["idx"], "pole": pole.key, "label": float(verdict)}
            )
        log(
            f"{pole.key}: {int(np.sum(verdicts > 0.5))} first / {int(np.sum(verdicts < 0.5))} second / {int(np.sum(verdicts == 0.5))} ties"
        )
    return labels


def dpo_sets(prefs: Preferences, candidates: list[dict], labels: list[dict]) -> dict[str, list[dict]]:
    """Per-pole DPO pairs and the Prompted-MORL pairs (mean of per-pole labels per combination)."""
    text = {(c["prompt_id"], c["idx"]): c for c in candidates}
    by_pair: dict[tuple[int, int, int], dict[str, float]] = {}
    for row in labels:
        by_pair.setdefault((row["prompt_id"], row["a"], row["b"]), {})[row["pole"]] = row["label"]
    sets: dict[str, list[dict]] = {pole.key: [] for pole in prefs.poles}
    sets[PMORL] = []
    for (pid, a, b), poles in by_pair.items():
        first, second = text[(pid, a)], text[(pid, b)]
        for pole in prefs.poles:
            row = _pair(pole.prompt, first, second, poles[pole.key])
            if row:
                sets[pole.key].append(row | {"pole": pole.key})
        for combo in prefs.combinations():
            mean = float(np.mean([poles[p.key] for p in combo]))
            row = _pair(prefs.combined_prompt(combo), first, second, mean)
            if row:
                sets[PMORL].append(row | {"pole": combination_name(combo)})
    return sets


def _pair(system: str, first: dict, second: dict, label: float) -> dict | None:
    if label == 0.5:
        return None
    chosen, rejected = (first, second) if label > 0.5 else (second, first)
    return {
        "prompt": chat(system, first["prompt"]),
        "chosen": [{"role": "assistant", "content": chosen["text"]}],
        "rejected": [{"role": "assistant", "content": rejected["text"]}],
    }


def collect(
    model: TextModel,
    judge: PairJudge,
    prefs: Preferences,
    prompts: Sequence[str],
    out: str | Path,
    config: CollectConfig,
    progress=None,
    log: Callable[[str], None] = print,
) -> dict[str, int]:
    """Run collection into `out`; returns the size of each DPO set."""
    out = Path(out)
    candidates = sample_candidates(model, prefs, prompts, config, progress)
    labels = judge_pairs(judge, prefs, candidates, config, log)
    sets = dpo_sets(prefs, candidates, labels)
    write_rows(out / "candidates.jsonl", candidates)
    write_rows(out / "labels.jsonl", labels)
    for name, rows in sets.items():
        write_rows(out / "dpo" / f"{name}.jsonl", rows)
    sizes = {name: len(rows) for name, rows in sets.items()}
    summary = {
        "config": asdict(config),
        "judge": judge.name,
        "model": model.model_id,
        "prompts": len(prompts),
        "poles": [p.key for p in prefs.poles],
        "preferences": {p.key: p.prompt for p in prefs.poles},
        "dpo_pairs": sizes,
        "versions": versions("personalm", "torch", "transformers", "peft", "trl"),
    }
    (out / "collect.json").write_text(json.dumps(summary, indent=2) + "\n")
    return sizes
