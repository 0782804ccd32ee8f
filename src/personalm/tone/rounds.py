"""Preference rounds after tone SFT: the adapter learns from its own samples.

A 135M model is both teacher and student here, so the SFT set alone leaves the adapter halfway to
the tone (short answers, the question's formal words). Each round samples k answers per training
question from the current adapter, scores them with the tone scorer and the meaning check (MiniLM
cosine to the grounded reference), and trains the adapter further on them, by one of two methods:

* `dpo`: pairs chosen = passes both checks, rejected = fails the tone bar, with the project's DPO
  pair loss in the same LoRA loop; the reference policy is the adapter the round starts from
  (`TrainConfig(reference="start")`), the SFT adapter in round 1.
* `dpo-meaning`: the same, with rejected = fails either check (the tone bar or the meaning check):
  once an adapter holds the tone on most samples, tone failures alone give few pairs, and what its
  answers lose is meaning (a short answer that says nothing passes the tone bar).
* `rft`: rejection-sampling SFT (expert iteration): cross-entropy on the samples that pass both.

Every round lives in `out/round-N/` (samples.jsonl, pairs.jsonl or train.jsonl, adapter/,
round.json with the samples' pass rate, the pair count and the DPO reward accuracy). A finished
round is reused; a killed one resumes (sampling goes through the generation cache, training from
its checkpoints).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from personalm.adapters import is_adapter_dir
from personalm.errors import PersonalmError
from personalm.eval.tone import ToneScorer, score_answers
from personalm.models.base import SamplingParams
from personalm.models.local import weights_digest
from personalm.models.registry import DEFAULT_MODEL, load_model
from personalm.report import write_json
from personalm.tables import write_rows
from personalm.tone import prompts
from personalm.train.loop import TrainConfig, finished_run, read_run, train

Log = Callable[[str], None]
METHODS = ("dpo", "rft", "dpo-meaning")
ROUND_FILE = "round.json"


@dataclass
class RoundsConfig:
    """Every knob of the rounds; the SFT adapter's rank must match `rank`."""

    method: str = "dpo"
    rounds: int = 2
    samples: int = 4
    temperature: float = 0.8
    max_tokens: int = 96
    min_semsim: float = 0.5
    pairs_per_question: int = 2
    beta: float = 0.1
    lr: float = 2e-4
    epochs: int = 1
    batch_size: int = 4
    rank: int = 16
    model: str = DEFAULT_MODEL
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise PersonalmError(f"--round-method {self.method}: expected one of {', '.join(METHODS)}")
        if self.rounds < 0 or self.samples < 2:
            raise PersonalmError(f"rounds {self.rounds}, samples {self.samples}: need rounds >= 0 and samples >= 2")


def score_samples(
    items: Sequence[dict[str, Any]], texts: Sequence[str], k: int, embedder, scorer: ToneScorer, min_semsim: float
) -> list[dict[str, Any]]:
    """One row per sample (items[i]'s samples are texts[i*k:(i+1)*k]): its tone score, whether it
    clears the tone bar, its similarity to the item's reference, and whether it passes both."""
    scores = score_answers(texts, [item["reference"] for item in items], embedder, scorer, k)
    rows = []
    for j, text in enumerate(texts):
        n, semsim, accepted = j // k, float(scores.semsim[j]), bool(scores.accepted[j])
        rows.append({
            "passage_id": items[n]["passage_id"], "question": items[n]["question"], "facts": items[n]["facts"],
            "answer": text, "tone_score": round(float(scores.tone[j]), 2), "tone_ok": accepted,
            "semsim": round(semsim, 4), "passes": accepted and semsim >= min_semsim,
        })  # fmt: skip
    return rows


def preference_pairs(
    samples: Sequence[dict[str, Any]], per_question: int, reject_meaning: bool = False
) -> list[dict[str, Any]]:
    """Per question, up to `per_question` pairs: the passing samples closest in meaning first, each
    against a distinct sample that fails the tone bar, lowest tone score first (with
    `reject_meaning`, then those that hold the tone but fail the meaning check, least similar first).
    Questions whose samples all pass, or none do, give no pair."""
    by_question: dict[str, list[dict[str, Any]]] = {}
    for row in samples:
        by_question.setdefault(row["passage_id"], []).append(row)
    pairs = []
    for rows in by_question.values():
        chosen = _distinct(sorted((r for r in rows if r["passes"]), key=lambda r: -r["semsim"]))
        failed = [r for r in rows if not r["tone_ok"] or (reject_meaning and not r["passes"])]
        rejected = _distinct(
            sorted(failed, key=lambda r: (r["tone_ok"], r["semsim"] if r["tone_ok"] else r["tone_score"]))
        )
        for good, bad in list(zip(chosen, rejected, strict=False))[:per_question]:
            prompt = [{"role": "user", "content": prompts.user_turn(good["facts"], good["question"])}]
            pairs.append({
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": good["answer"]}],
                "rejected": [{"role": "assistant", "content": bad["answer"]}],
                "passage_id": good["passage_id"],
            })  # fmt: skip
    return pairs


def passing_examples(samples: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat examples from the distinct samples that pass both checks (expert iteration's data)."""
    return [
        {"messages": [{"role": "user", "content": prompts.user_turn(r["facts"], r["question"])},
                      {"role": "assistant", "content": r["answer"]}], "passage_id": r["passage_id"]}
        for r in _distinct([r for r in samples if r["passes"]])
    ]  # fmt: skip


def _distinct(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen, out = set(), []
    for row in rows:
        key = (row["passage_id"], row["answer"])
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out


def run_rounds(
    config: RoundsConfig, sft_adapter: str | Path, items: Sequence[dict[str, Any]], out: str | Path,
    embedder, scorer: ToneScorer, log: Log = print,
) -> list[dict[str, Any]]:  # fmt: skip
    """Rounds 1..N after `sft_adapter` on the training `items` (each with passage_id, facts,
    question, reference); returns each round's record (round.json), adapter path included."""
    out = Path(out)
    if not is_adapter_dir(Path(sft_adapter)):
        raise PersonalmError("no trained adapter here to start the rounds from", source=str(sft_adapter))
    if not items:
        raise PersonalmError("no training questions to sample answers for", source=str(out))
    current, records = Path(sft_adapter), []
    for number in range(1, config.rounds + 1):
        record = _round(config, number, current, items, out / f"round-{number}", embedder, scorer, log)
        records.append(record)
        if record["adapter"] is None:
            log(f"round {number}: nothing to train on; the rounds stop here")
            break
        current = Path(record["adapter"])
    return records


def _round(config: RoundsConfig, number: int, start: Path, items, folder: Path, embedder, scorer, log: Log) -> dict:
    done = folder / ROUND_FILE
    if done.is_file():
        record = json.loads(done.read_text())
        if record.get("settings") == asdict(config) and record.get("start_digest") == weights_digest(start, True):
            log(f"round {number}: finished before, kept ({folder})")
            return record
    folder.mkdir(parents=True, exist_ok=True)
    k = config.samples
    chats = [prompts.answer_chat(item["facts"], item["question"]) for item in items for _ in range(k)]
    params = SamplingParams(max_tokens=config.max_tokens, temperature=config.temperature, seed=config.seed + number)
    with load_model(config.model, adapter=start, cache=True) as model:
        gens = model.generate(chats, params)
    texts = [g.text.strip() for g in gens]
    samples = score_samples(items, texts, k, embedder, scorer, config.min_semsim)
    write_rows(folder / "samples.jsonl", samples)
    pass_rate = float(np.mean([s["passes"] for s in samples]))
    tone_rate = float(np.mean([s["tone_ok"] for s in samples]))
    log(f"round {number}: {len(samples)} samples, {pass_rate:.2f} pass both checks, {tone_rate:.2f} hold the tone")
    if config.method != "rft":
        rows = preference_pairs(samples, config.pairs_per_question, reject_meaning=config.method == "dpo-meaning")
        data = folder / "pairs.jsonl"
    else:
        rows = passing_examples(samples)
        data = folder / "train.jsonl"
    write_rows(data, rows)
    record: dict[str, Any] = {
        "round": number, "method": config.method, "start": str(start),
        "start_digest": weights_digest(start, contents=True), "samples": len(samples),
        "sample_pass_rate": round(pass_rate, 4), "sample_tone_rate": round(tone_rate, 4),
        "sample_semsim": round(float(np.mean([s["semsim"] for s in samples])), 4),
        "questions": len(items), "training_rows": len(rows), "adapter": None, "settings": asdict(config),
    }  # fmt: skip
    if rows:
        adapter = folder / "adapter"
        cfg = TrainConfig(
            data=str(data), out=str(adapter), model=config.model, rank=config.rank, alpha=2 * config.rank,
            dropout=0.0, lr=config.lr, epochs=config.epochs, batch_size=config.batch_size, max_len=384,
            seed=config.seed + number, loss="ce" if config.method == "rft" else "dpo", beta=config.beta,
            reference="start", init_adapter=str(start), save_every=10,
        )  # fmt: skip
        if not finished_run(cfg):
            log(f"round {number}: training on {len(rows)} {'examples' if config.method == 'rft' else 'pairs'}")
            train(cfg, log=log)
        record |= {"adapter": str(adapter)} | _training_summary(adapter)
    write_json(done, record)
    return record


def _training_summary(adapter: Path) -> dict[str, Any]:
    """Steps, losses and (DPO) reward accuracy of the finished run."""
    run = read_run(adapter)
    steps = run["log"]
    accuracy = [s["reward_accuracy"] for s in steps if "reward_accuracy" in s]
    return {
        "steps": len(steps), "seconds": run["seconds"],
        "first_loss": round(steps[0]["loss"], 4), "final_loss": round(steps[-1]["loss"], 4),
        "reward_accuracy": round(float(np.mean(accuracy)), 4) if accuracy else None,
        "final_reward_accuracy": accuracy[-1] if accuracy else None,
    }  # fmt: skip
