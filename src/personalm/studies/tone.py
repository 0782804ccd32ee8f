"""`personalm tone experiment`: does a LoRA adapter trained on a few simulated examples hold a
tone better than a system prompt, without losing content? (SPEC section 3.)

On held-out questions from documents never seen in training it compares the base model, the base
model with a tone system prompt, and LoRA adapters trained on 25 / 100 / 300 examples; and, for one
size, the tone rate along training steps with an fp32 base against an int8 base. The one data
setting that matters most, how far above the tone bar a kept rewrite must score (the margin), is
chosen on validation questions from a third set of documents, never on the test questions. Metrics: tone
achievement rate (the scorer's bar, Flesch Reading Ease ≥ 60 by default), MiniLM cosine of each
answer to its reference answer, answer length. Every step is cached or resumable: re-running the
same command after a kill continues where it stopped (the adapters live in the study's cache,
out/.cache/adapters; the data and answers beside the report).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from personalm import report
from personalm.adapters import is_adapter_dir
from personalm.eval.tone import ToneScorer
from personalm.models.base import SamplingParams
from personalm.models.registry import DEFAULT_MODEL, load_model
from personalm.studies.harness import Study
from personalm.tables import write_rows
from personalm.tone import prompts
from personalm.tone.pipeline import ToneBuildConfig, ToneBuilder, write_dataset
from personalm.train.loop import SNAPSHOTS, TrainConfig, train

Log = Callable[[str], None]


@dataclass
class ToneExperimentConfig:
    source: str
    out: str
    sizes: list[int] = field(default_factory=lambda: [25, 100, 300])
    curve_size: int = 100
    test: int = 48
    epochs: int = 2
    batch_size: int = 4
    lr: float = 3e-4
    rank: int = 16
    snapshot_every: int = 10
    max_tokens: int = 96
    candidates: int = 3
    margins: list[float] = field(default_factory=lambda: [0.0, 10.0, 20.0])
    val: int = 48
    per_doc: int = 4
    model: str = DEFAULT_MODEL
    seed: int = 0


PACKAGES = ("personalm", "torch", "transformers", "peft", "textstat", "sentence-transformers")


def run(config: ToneExperimentConfig, embedder, scorer: ToneScorer, log: Log = print) -> dict[str, Any]:
    study = Study(config.out, config, packages=PACKAGES)
    out = study.out
    started = time.perf_counter()
    timings: dict[str, float] = {}

    build = ToneBuildConfig(
        source=config.source, out=str(out / "data"), examples=max(config.sizes), test=config.test,
        candidates=config.candidates, seed=config.seed, val=config.val, per_doc=config.per_doc,
        margin=max(config.margins),
    )  # fmt: skip
    with load_model(config.model, cache=True) as teacher:
        dataset = ToneBuilder(build, teacher, embedder, scorer, log).build()
    timings["data_s"] = time.perf_counter() - started
    test = dataset.test

    mark = time.perf_counter()
    selection = choose_margin(config, dataset, embedder, scorer, study, log)
    margin = selection["chosen_margin"]
    timings["margin_selection_s"] = time.perf_counter() - mark
    write_dataset(dataset, out / "data", margin)
    examples = dataset.examples(margin)

    conditions: dict[str, dict[str, Any]] = {}
    conditions["base"] = evaluate(config, None, None, test, embedder, scorer, out, "base")
    conditions["prompted"] = evaluate(config, None, prompts.TONE_SYSTEM, test, embedder, scorer, out, "prompted")
    for size in config.sizes:
        mark = time.perf_counter()
        adapter = train_adapter(config, examples, size, margin, "fp32", study, log)
        timings[f"train_lora{size}_s"] = time.perf_counter() - mark
        conditions[f"lora{size}"] = evaluate(config, adapter, None, test, embedder, scorer, out, f"lora{size}")
        log(f"lora{size}: tone rate {conditions[f'lora{size}']['tone_rate']:.2f}")

    mark = time.perf_counter()
    adapters = {quant: train_adapter(config, examples, config.curve_size, margin, quant, study, log)
                for quant in ("fp32", "int8")}  # fmt: skip
    timings["train_int8_s"] = time.perf_counter() - mark
    curves = {
        quant: learning_curve(config, adapter, test, embedder, scorer, out, conditions["base"])
        for quant, adapter in adapters.items()
    }
    timings["total_s"] = time.perf_counter() - started
    stats = dataset.stats | {"train_examples": len(examples)}
    results = summarize(config, stats, conditions, curves, timings, selection)
    return write_outputs(study, results, conditions, test)


def choose_margin(config: ToneExperimentConfig, dataset, embedder, scorer: ToneScorer, study: Study, log: Log) -> dict:
    """Train the curve-size fp32 adapter at each margin and keep the margin with the best
    validation tone rate among those whose validation similarity stays within 5% of the
    prompted base's (ties go to the smaller margin, which keeps more data)."""
    if len(config.margins) == 1 or not dataset.val:
        return {"chosen_margin": config.margins[0], "rule": "single margin given", "by_margin": {}}
    out = study.out
    prompted = evaluate(config, None, prompts.TONE_SYSTEM, dataset.val, embedder, scorer, out, "val-prompted")
    by_margin = {}
    for margin in sorted(config.margins):
        examples = dataset.examples(margin)
        if len(examples) < config.curve_size:
            log(f"margin {margin:g}: only {len(examples)} examples (< {config.curve_size}); not a candidate")
            by_margin[f"{margin:g}"] = {"examples": len(examples)}
            continue
        adapter = train_adapter(config, examples, config.curve_size, margin, "fp32", study, log)
        scores = evaluate(config, adapter, None, dataset.val, embedder, scorer, out, f"val-m{margin:g}")
        by_margin[f"{margin:g}"] = {"examples": len(examples), "val_tone_rate": round(scores["tone_rate"], 4),
                                    "val_semsim": round(scores["semsim"], 4)}  # fmt: skip
        log(f"margin {margin:g}: validation tone rate {scores['tone_rate']:.2f}, similarity {scores['semsim']:.3f}")
    floor = 0.95 * prompted["semsim"]
    eligible = [(v["val_tone_rate"], -float(m)) for m, v in by_margin.items() if v.get("val_semsim", -1) >= floor]
    if not eligible:
        eligible = [(v["val_tone_rate"], -float(m)) for m, v in by_margin.items() if "val_tone_rate" in v]
    if not eligible:
        return {"chosen_margin": 0.0, "rule": "no margin had enough examples; margin 0", "by_margin": by_margin}
    chosen = -max(eligible)[1]
    return {
        "chosen_margin": chosen,
        "rule": "best validation tone rate with validation similarity >= 0.95 x prompted base's",
        "val_prompted_tone_rate": round(prompted["tone_rate"], 4),
        "val_prompted_semsim": round(prompted["semsim"], 4),
        "val_questions": len(dataset.val),
        "by_margin": by_margin,
    }


def train_adapter(
    config: ToneExperimentConfig, examples: list[dict], size: int, margin: float, quant: str, study: Study, log: Log
) -> Path:
    """Train (or reuse, or resume) the adapter on the first `size` examples at this margin."""
    adapter = study.cache("adapters") / f"lora{size}-m{margin:g}-{quant}"
    if is_adapter_dir(adapter):
        return adapter
    data = study.out / "data" / f"train_{size}_m{margin:g}.jsonl"
    write_rows(data, [{"messages": e["messages"]} for e in examples[:size]])
    snapshots = config.snapshot_every if size == config.curve_size else None
    cfg = TrainConfig(
        data=str(data), out=str(adapter), model=config.model, rank=config.rank, alpha=2 * config.rank,
        lr=config.lr, epochs=config.epochs, batch_size=config.batch_size, max_len=384, seed=config.seed,
        quant=quant, save_every=10, snapshot_every=snapshots,
    )  # fmt: skip
    log(f"training {adapter.name} on {min(size, len(examples))} examples")
    result = train(cfg, log=log)
    log(f"  {result.steps} steps, {result.tokens_per_s:.0f} tokens/s, final loss {result.losses[-1]:.3f}")
    return adapter


def evaluate(config, adapter: Path | None, system: str | None, test: list[dict], embedder, scorer: ToneScorer,
             out: Path, name: str) -> dict[str, Any]:  # fmt: skip
    """Greedy answers to the held-out questions, scored for tone and content."""
    chats = [prompts.answer_chat(t["facts"], t["question"], system) for t in test]
    params = SamplingParams(max_tokens=config.max_tokens, temperature=0.0, seed=config.seed)
    with load_model(config.model, adapter=adapter, cache=True) as model:
        gens = model.generate(chats, params)
    texts = [g.text.strip() for g in gens]
    answers = embedder.embed(texts)
    references = embedder.embed([t["reference"] for t in test])
    semsim = np.sum(answers * references, axis=1)
    tone = scorer.score(texts)
    accepted = scorer.accepts(texts)
    rows = [
        {
            "passage_id": t["passage_id"],
            "question": t["question"],
            "answer": text,
            "tone_score": float(s),
            "tone_ok": bool(a),
            "semsim": float(m),
            "words": len(text.split()),
        }  # fmt: skip
        for t, text, s, a, m in zip(test, texts, tone, accepted, semsim, strict=True)
    ]
    write_rows(out / "answers" / f"{name}.jsonl", rows)
    return {
        "tone_rate": float(np.mean(accepted)),
        "tone_score_mean": float(np.mean(np.where(np.isfinite(tone), tone, 0.0))),
        "semsim": float(np.mean(semsim)),
        "words": float(np.mean([r["words"] for r in rows])),
        "answers": rows,
    }


def learning_curve(config, adapter: Path, test, embedder, scorer, out: Path, base: dict) -> list[dict[str, Any]]:
    """Tone rate and similarity at each saved snapshot (step 0 is the base model)."""
    points = [{"step": 0, "tone_rate": base["tone_rate"], "semsim": base["semsim"]}]
    snapshots = sorted((adapter / SNAPSHOTS).glob("step-*")) if (adapter / SNAPSHOTS).is_dir() else []
    for snap in snapshots:
        step = int(snap.name.split("-")[1])
        scores = evaluate(config, snap, None, test, embedder, scorer, out, f"{adapter.name}-step{step}")
        points.append({"step": step, "tone_rate": scores["tone_rate"], "semsim": scores["semsim"]})
    return points


def summarize(config, stats: dict, conditions: dict, curves: dict, timings: dict, selection: dict) -> dict[str, Any]:
    results: dict[str, Any] = {"experiment": "tone", "chosen_margin": selection["chosen_margin"]}
    for name, scores in conditions.items():
        results[f"{name}_tone_rate"] = round(scores["tone_rate"], 4)
        results[f"{name}_semsim"] = round(scores["semsim"], 4)
        results[f"{name}_words"] = round(scores["words"], 1)
    results["curves"] = curves
    results["margin_selection"] = selection
    results["train_examples_available"] = stats["train_examples"]
    results["test_questions"] = stats["test_questions"]
    results["data"] = {
        k: stats[k]
        for k in ("passages_available", "passages_tried", "rejects_by_stage", "train_examples_by_margin", "tone_bar",
                  "mean_tone_score", "mean_semsim")
    }  # fmt: skip
    results["config"] = asdict(config)
    results["scorer"] = stats["scorer"]
    results["seconds"] = {k: round(v, 1) for k, v in timings.items()}
    results["seed"] = config.seed
    return results


def write_outputs(study: Study, results: dict, conditions: dict, test: list[dict]) -> dict[str, Any]:
    names = list(conditions)
    fig, (left, right) = report.figure(ncols=2, width=10)
    left.bar(names, [conditions[n]["tone_rate"] for n in names], color="#4c78a8")
    left.set_ylim(0, 1)
    left.set_ylabel("tone achievement rate")
    right.bar(names, [conditions[n]["semsim"] for n in names], color="#f58518")
    right.set_ylim(0, 1)
    right.set_ylabel("similarity to reference (MiniLM cosine)")
    for axis in (left, right):
        axis.tick_params(axis="x", rotation=30)
    conditions_png = study.save(fig, "conditions.png")

    fig, axis = report.figure()
    for quant, points in results["curves"].items():
        axis.plot([p["step"] for p in points], [p["tone_rate"] for p in points], marker="o", label=f"{quant} base")
    axis.set_xlabel("training step")
    axis.set_ylabel("tone achievement rate")
    axis.set_ylim(0, 1)
    axis.legend()
    curve_png = study.save(fig, "int8_vs_fp32.png")

    summary = [
        {
            "condition": n,
            "tone rate": conditions[n]["tone_rate"],
            "similarity": conditions[n]["semsim"],
            "mean words": conditions[n]["words"],
        }  # fmt: skip
        for n in names
    ]
    examples = [
        {"question": t["question"], "reference": t["reference"]}
        | {
            n: conditions[n]["answers"][i]["answer"]
            for n in ("base", "prompted", f"lora{results['config']['curve_size']}")
            if n in conditions
        }  # fmt: skip
        for i, t in enumerate(test[:6])
    ]
    selection = results["margin_selection"]
    margin_rows = [{"margin above the bar": m, **v} for m, v in selection["by_margin"].items()]
    return study.finish(
        results,
        "Tone adapters vs tone prompting",
        [
            report.paragraph(
                f"{results['test_questions']} held-out questions from documents never used in training; "
                f"tone scorer: {results['scorer']}; greedy decoding."
            ),
            report.section("Tone and content by condition", report.table(summary), report.image(conditions_png)),
            report.section(
                "Training-data margin, chosen on validation questions",
                report.paragraph(
                    f"Chosen margin: {selection['chosen_margin']:g} above the tone bar ({selection['rule']}); "
                    f"prompted base on validation: tone rate {selection.get('val_prompted_tone_rate', '-')}, "
                    f"similarity {selection.get('val_prompted_semsim', '-')}."
                ),
                report.table(margin_rows),
            ),
            report.section("Tone rate along training: fp32 vs int8 base", report.image(curve_png)),
            report.section("Example answers", report.table(examples)),
        ],
        shown=("config", "data", "seconds", "seed"),
    )
