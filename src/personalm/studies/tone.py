"""`personalm tone experiment`: does a LoRA adapter trained on a few simulated examples hold a
tone better than a system prompt, without losing content? (SPEC section 3.)

On held-out questions from documents never seen in training it compares the base model, the base
model with a tone system prompt, and LoRA adapters trained on 25 / 100 / 300 examples; for the
curve size (100), the SFT adapter followed by preference rounds on its own samples (tone.rounds:
DPO against the SFT adapter, and rejection-sampling SFT), and the tone rate along SFT steps with an
fp32 base against an int8 base. The data margin (how far above the tone bar a kept rewrite must
score), the round method and the number of rounds are chosen on validation questions from a third
set of documents, never on the test questions; `lora{curve}` is the adapter so chosen. Each rate
comes with a 95% bootstrap interval over the test questions, and adapter − prompted with a paired one. Metrics: tone
achievement rate (the scorer's bar, Flesch Reading Ease ≥ 60 by default), MiniLM cosine of each
answer to its reference answer, answer length. Every step is cached or resumable: re-running the
same command after a kill continues where it stopped (the adapters live in the study's cache,
out/.cache/adapters; the data and answers beside the report).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from personalm import report
from personalm.adapters import is_adapter_dir
from personalm.eval.bootstrap import bootstrap_mean, paired_bootstrap
from personalm.eval.tone import ToneScorer, score_answers
from personalm.models.base import SamplingParams
from personalm.models.registry import DEFAULT_MODEL, load_model
from personalm.studies.harness import Study
from personalm.tables import write_rows
from personalm.tone import prompts
from personalm.tone.pipeline import ToneBuildConfig, ToneBuilder, write_dataset
from personalm.tone.rounds import METHODS, RoundsConfig, run_rounds
from personalm.train.loop import SNAPSHOTS, TrainConfig, train

Log = Callable[[str], None]


@dataclass
class ToneExperimentConfig:
    source: str
    out: str
    sizes: list[int] = field(default_factory=lambda: [25, 100, 300])
    curve_size: int = 100
    curve_questions: int = 64
    test: int = 200
    epochs: int = 2
    batch_size: int = 4
    lr: float = 3e-4
    rank: int = 16
    snapshot_every: int = 10
    max_tokens: int = 96
    candidates: int = 3
    margins: list[float] = field(default_factory=lambda: [0.0, 10.0, 20.0])
    val: int = 96
    per_doc: int = 8
    rounds: int = 2
    round_methods: list[str] = field(default_factory=lambda: list(METHODS))
    round_samples: int = 4
    round_lr: float = 2e-4
    round_beta: float = 0.1
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
    val_prompted = (
        evaluate(config, None, prompts.TONE_SYSTEM, dataset.val, embedder, scorer, out, "val-prompted")
        if dataset.val
        else None
    )
    selection = choose_margin(config, dataset, val_prompted, embedder, scorer, study, log)
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
        name = f"lora{size}_sft" if size == config.curve_size else f"lora{size}"
        conditions[name] = evaluate(config, adapter, None, test, embedder, scorer, out, name)
        log(f"{name}: tone rate {conditions[name]['tone_rate']:.2f}")

    mark = time.perf_counter()
    sft = f"lora{config.curve_size}"
    rounds = preference_rounds(config, examples, margin, dataset.val, val_prompted, embedder, scorer, study, log)
    for name, adapter in rounds["adapters"].items():
        conditions[f"{sft}_{name}"] = evaluate(config, adapter, None, test, embedder, scorer, out, f"{sft}_{name}")
        log(f"{sft}_{name}: tone rate {conditions[f'{sft}_{name}']['tone_rate']:.2f}")
    conditions[sft] = conditions[f"{sft}_{rounds['chosen']}"]
    timings["rounds_s"] = time.perf_counter() - mark

    mark = time.perf_counter()
    adapters = {quant: train_adapter(config, examples, config.curve_size, margin, quant, study, log)
                for quant in ("fp32", "int8")}  # fmt: skip
    timings["train_int8_s"] = time.perf_counter() - mark
    curves = {
        quant: learning_curve(config, adapter, test[: config.curve_questions], embedder, scorer, out)
        for quant, adapter in adapters.items()
    }
    timings["total_s"] = time.perf_counter() - started
    stats = dataset.stats | {"train_examples": len(examples)}
    results = summarize(config, stats, conditions, curves, timings, selection, rounds)
    return write_outputs(study, results, conditions, test)


KEEP_RULE = "best validation tone rate with validation similarity >= 0.95 x prompted base's"


def keep_on_validation(scores: dict[str, dict], prompted: dict, tiebreak: Callable[[str], Any]) -> str | None:
    """The candidate kept by KEEP_RULE: among those with `val_tone_rate` whose `val_semsim` is at
    least 0.95 x the prompted base's (all that were scored when none is), the best tone rate, ties
    to the highest `tiebreak`; None when nothing was scored."""
    scored = [name for name, v in scores.items() if "val_tone_rate" in v]
    eligible = [n for n in scored if scores[n]["val_semsim"] >= 0.95 * prompted["semsim"]] or scored
    return max(eligible, key=lambda n: (scores[n]["val_tone_rate"], tiebreak(n))) if eligible else None


def choose_margin(config: ToneExperimentConfig, dataset, prompted: dict | None, embedder, scorer: ToneScorer,
                  study: Study, log: Log) -> dict:  # fmt: skip
    """Train the curve-size fp32 adapter at each margin and keep one by KEEP_RULE (ties go to the
    smaller margin, which keeps more data)."""
    if len(config.margins) == 1 or prompted is None:
        return {"chosen_margin": config.margins[0], "rule": "single margin given", "by_margin": {}}
    out = study.out
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
    chosen = keep_on_validation(by_margin, prompted, lambda m: -float(m))
    if chosen is None:
        return {"chosen_margin": 0.0, "rule": "no margin had enough examples; margin 0", "by_margin": by_margin}
    return {
        "chosen_margin": float(chosen),
        "rule": KEEP_RULE,
        "val_prompted_tone_rate": round(prompted["tone_rate"], 4),
        "val_prompted_semsim": round(prompted["semsim"], 4),
        "val_questions": len(dataset.val),
        "by_margin": by_margin,
    }


def preference_rounds(config: ToneExperimentConfig, examples: list[dict], margin: float, val: list[dict],
                      prompted: dict | None, embedder, scorer: ToneScorer, study: Study,
                      log: Log) -> dict[str, Any]:  # fmt: skip
    """Rounds 1..N of each method after the curve-size SFT adapter; every adapter (SFT included)
    scored on the validation questions, and the one kept by KEEP_RULE (ties: fewer rounds, then the
    method listed first). Returns the test-time adapters by name, the choice and its evidence."""
    sft = train_adapter(config, examples, config.curve_size, margin, "fp32", study, log)
    items = examples[: config.curve_size]
    adapters: dict[str, Path] = {"sft": sft}
    records: dict[str, list[dict]] = {}
    for method in config.round_methods:
        settings = RoundsConfig(
            method=method, rounds=config.rounds, samples=config.round_samples, max_tokens=config.max_tokens,
            lr=config.round_lr, beta=config.round_beta, batch_size=config.batch_size, rank=config.rank,
            model=config.model, seed=config.seed,
        )  # fmt: skip
        folder = study.cache("rounds", f"{sft.name}-{method}")
        records[method] = run_rounds(settings, sft, items, folder, embedder, scorer, log)
        for record in records[method]:
            if record["adapter"]:
                adapters[f"{method}{record['round']}"] = Path(record["adapter"])
    if not val or prompted is None:
        log("no validation questions: the SFT adapter is kept, the rounds only reported")
        return {"chosen": "sft", "rule": "no validation questions: SFT kept", "val_prompted_tone_rate": None,
                "val_prompted_semsim": None, "by_adapter": {}, "records": _plain_records(records),
                "adapters": {n: a for n, a in adapters.items() if n != "sft"}}  # fmt: skip
    by_adapter = {}
    for name, adapter in adapters.items():
        scores = evaluate(config, adapter, None, val, embedder, scorer, study.out, f"val-{name}")
        by_adapter[name] = {"val_tone_rate": round(scores["tone_rate"], 4), "val_semsim": round(scores["semsim"], 4)}
        log(f"{name}: validation tone rate {scores['tone_rate']:.2f}, similarity {scores['semsim']:.3f}")
    order = list(adapters)
    chosen = keep_on_validation(by_adapter, prompted, lambda n: (-_rounds_of(n), -order.index(n)))
    log(f"kept on validation: {chosen}")
    return {
        "chosen": chosen,
        "rule": f"{KEEP_RULE}; ties: fewer rounds",
        "val_prompted_tone_rate": round(prompted["tone_rate"], 4),
        "val_prompted_semsim": round(prompted["semsim"], 4),
        "by_adapter": by_adapter,
        "records": _plain_records(records),
        "adapters": {n: a for n, a in adapters.items() if n != "sft"},
    }


def _plain_records(records: dict[str, list[dict]]) -> dict[str, list[dict]]:
    return {m: [{k: v for k, v in r.items() if k != "settings"} for r in rs] for m, rs in records.items()}


def _rounds_of(name: str) -> int:
    """dpo2 -> 2, dpo-meaning1 -> 1, sft -> 0."""
    digits = re.search(r"\d+$", name)
    return int(digits.group()) if digits else 0


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
    scores = score_answers(texts, [t["reference"] for t in test], embedder, scorer)
    tone, accepted, semsim = scores.tone, scores.accepted, scores.semsim
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


def learning_curve(config, adapter: Path, questions, embedder, scorer, out: Path) -> list[dict[str, Any]]:
    """Tone rate and similarity at each saved snapshot on the first `curve_questions` test
    questions (step 0 is the base model): a shape along training, cheaper than the full test set."""
    base = evaluate(config, None, None, questions, embedder, scorer, out, "curve-base")
    points = [{"step": 0, "tone_rate": base["tone_rate"], "semsim": base["semsim"]}]
    snapshots = sorted((adapter / SNAPSHOTS).glob("step-*")) if (adapter / SNAPSHOTS).is_dir() else []
    for snap in snapshots:
        step = int(snap.name.split("-")[1])
        scores = evaluate(config, snap, None, questions, embedder, scorer, out, f"{adapter.name}-step{step}")
        points.append({"step": step, "tone_rate": scores["tone_rate"], "semsim": scores["semsim"]})
    return points


def summarize(
    config, stats: dict, conditions: dict, curves: dict, timings: dict, selection: dict, rounds: dict
) -> dict[str, Any]:
    """Each condition's rate with its bootstrap interval; the kept adapter against the prompted base
    (and against its own SFT start) as paired differences over the same test questions."""
    results: dict[str, Any] = {"experiment": "tone", "chosen_margin": selection["chosen_margin"]}
    for name, scores in conditions.items():
        tone = [a["tone_ok"] for a in scores["answers"]]
        results[f"{name}_tone_rate"] = round(scores["tone_rate"], 4)
        results[f"{name}_tone_ci"] = _span(bootstrap_mean(tone, seed=config.seed))
        results[f"{name}_semsim"] = round(scores["semsim"], 4)
        results[f"{name}_words"] = round(scores["words"], 1)
    kept, prompted = conditions[f"lora{config.curve_size}"], conditions["prompted"]
    sft = conditions[f"lora{config.curve_size}_sft"]
    diff = _paired(kept, prompted, "tone_ok", config.seed)
    results["diff"], results["diff_ci"] = round(diff.mean, 4), _span(diff)
    results["diff_items"] = diff.n
    vs_sft = _paired(kept, sft, "tone_ok", config.seed)
    results["rounds_vs_sft"], results["rounds_vs_sft_ci"] = round(vs_sft.mean, 4), _span(vs_sft)
    semsim = _paired(kept, prompted, "semsim", config.seed)
    results["semsim_diff"], results["semsim_diff_ci"] = round(semsim.mean, 4), _span(semsim)
    results["tone_ratio_vs_prompted"] = (
        round(kept["tone_rate"] / prompted["tone_rate"], 3) if prompted["tone_rate"] else None
    )
    results["semsim_ratio_vs_prompted"] = round(kept["semsim"] / prompted["semsim"], 4)
    results["kept_adapter"] = rounds["chosen"]
    results["rounds"] = {k: v for k, v in rounds.items() if k != "adapters"}
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


def _paired(a: dict, b: dict, key: str, seed: int):
    return paired_bootstrap([float(x[key]) for x in a["answers"]], [float(x[key]) for x in b["answers"]], seed=seed)


def _span(interval) -> list[float]:
    return [round(interval.low, 4), round(interval.high, 4)]


def write_outputs(study: Study, results: dict, conditions: dict, test: list[dict]) -> dict[str, Any]:
    kept = f"lora{results['config']['curve_size']}"
    names = [n for n in conditions if n != kept]
    label = {n: f"{n} (kept)" if n == f"{kept}_{results['kept_adapter']}" else n for n in names}
    rates = [conditions[n]["tone_rate"] for n in names]
    spans = np.array(
        [[r - results[f"{n}_tone_ci"][0], results[f"{n}_tone_ci"][1] - r] for n, r in zip(names, rates, strict=True)]
    )
    fig, (left, right) = report.figure(ncols=2, width=12)
    left.bar([label[n] for n in names], rates, yerr=spans.T, capsize=4, color="#4c78a8")
    left.set_ylim(0, 1)
    left.set_ylabel("tone achievement rate (95% interval)")
    right.bar([label[n] for n in names], [conditions[n]["semsim"] for n in names], color="#f58518")
    right.set_ylim(0, 1)
    right.set_ylabel("similarity to reference (MiniLM cosine)")
    for axis in (left, right):
        axis.tick_params(axis="x", rotation=40)
    conditions_png = study.save(fig, "conditions.png")

    fig, axis = report.figure()
    for quant, points in results["curves"].items():
        axis.plot([p["step"] for p in points], [p["tone_rate"] for p in points], marker="o", label=f"{quant} base")
    axis.set_xlabel("SFT step")
    axis.set_ylabel("tone achievement rate")
    axis.set_ylim(0, 1)
    axis.legend()
    curve_png = study.save(fig, "int8_vs_fp32.png")

    summary = [
        {
            "condition": label[n],
            "tone rate [95% interval]": f"{results[f'{n}_tone_rate']:.3f} "
            f"[{results[f'{n}_tone_ci'][0]:.3f}, {results[f'{n}_tone_ci'][1]:.3f}]",
            "similarity": round(conditions[n]["semsim"], 4),
            "mean words": round(conditions[n]["words"], 1),
        }  # fmt: skip
        for n in names
    ]
    rounds = results["rounds"]
    round_rows = [
        {"adapter": name, **scores} | _record_of(rounds["records"], name) for name, scores in rounds["by_adapter"].items()
    ]  # fmt: skip
    examples = [
        {"question": t["question"], "reference": t["reference"]}
        | {
            n: conditions[n]["answers"][i]["answer"]
            for n in ("base", "prompted", f"{kept}_sft", kept)
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
            report.section(
                "Tone and content by condition",
                report.paragraph(
                    f"Kept adapter ({kept}): {results['kept_adapter']}. {kept} - prompted: {results['diff']:+.3f} "
                    f"[{results['diff_ci'][0]:+.3f}, {results['diff_ci'][1]:+.3f}] (paired bootstrap, "
                    f"{results['diff_items']} questions); rounds - SFT only: {results['rounds_vs_sft']:+.3f} "
                    f"[{results['rounds_vs_sft_ci'][0]:+.3f}, {results['rounds_vs_sft_ci'][1]:+.3f}]; similarity "
                    f"{results['semsim_ratio_vs_prompted']:.3f} x the prompted base's."
                ),
                report.table(summary),
                report.image(conditions_png),
            ),
            report.section(
                "Preference rounds after SFT, chosen on validation questions",
                report.paragraph(
                    f"Rule: {rounds['rule']}. Prompted base on validation: tone rate "
                    f"{rounds['val_prompted_tone_rate']}, similarity {rounds['val_prompted_semsim']}."
                ),
                report.table(round_rows),
            ),
            report.section(
                "Training-data margin, chosen on validation questions",
                report.paragraph(
                    f"Chosen margin: {selection['chosen_margin']:g} above the tone bar ({selection['rule']}); "
                    f"prompted base on validation: tone rate {selection.get('val_prompted_tone_rate', '-')}, "
                    f"similarity {selection.get('val_prompted_semsim', '-')}."
                ),
                report.table(margin_rows),
            ),
            report.section(
                "Tone rate along training: fp32 vs int8 base",
                report.paragraph(
                    f"SFT snapshots every {results['config']['snapshot_every']} steps, scored on the first "
                    f"{results['config']['curve_questions']} test questions."
                ),
                report.image(curve_png),
            ),
            report.section("Example answers", report.table(examples)),
        ],
        shown=("config", "data", "seconds", "seed"),
    )


def _record_of(records: dict[str, list[dict]], name: str) -> dict[str, Any]:
    """The round record behind an adapter name such as dpo2 (nothing for the SFT adapter)."""
    for method, rows in records.items():
        for row in rows:
            if name == f"{method}{row['round']}":
                keys = ("sample_pass_rate", "sample_tone_rate", "training_rows", "steps", "reward_accuracy")
                return {k: row.get(k) for k in keys}
    return {}
