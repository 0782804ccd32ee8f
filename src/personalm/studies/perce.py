"""CE vs PerCE on persona-chat: same base model, LoRA config, data, steps and seeds; held-out eval.

Each seed trains one CE and one PerCE adapter on the same windows of the training conversations
(same data order and LoRA init for the same seed), then both generate the held-out replies
(greedy). Scored: ROUGE-L and MiniLM cosine against the reference, persona-term recall, and
PrefEval multiple choice by likelihood (transfer). The base model's PIR is checked against the
persona's words (precision@k vs random tokens) on held-out replies that use a persona word (on the
others both precisions are 0 by construction). A sweep over PerCE's clip bounds (m, M) trains
further PerCE adapters on one seed and scores them on the same held-out replies (no PrefEval).
Adapters and per-run evaluations live in the study's cache keyed by the settings
(out/.cache/<settings hash>), so a killed experiment resumes; the report folder gets results.json,
PNG plots and an HTML page (perce_report.py).

Memory: one model is alive at a time (the trainer's, or one evaluation's), and after each run the
freed memory is handed back to the OS, so the experiment's footprint stays that of a single run.
"""

from __future__ import annotations

import ctypes
import gc
import hashlib
import json
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from personalm.adapters import is_adapter_dir
from personalm.errors import PersonalmError
from personalm.eval.persona import persona_recall, precision_at_k
from personalm.eval.prefeval import choice_accuracy, load_prefeval
from personalm.eval.text import rouge_l
from personalm.models.base import SamplingParams
from personalm.perce.persona_chat import load_conversations, reply_rows, split, window_rows
from personalm.studies.harness import Study
from personalm.studies.perce_report import ARMS, METRICS, write_report
from personalm.tables import write_rows
from personalm.train.data import with_persona

DEFAULT_SWEEP = ((0.5, 10.0), (1.0, 3.0), (0.8, 2.0))
PACKAGES = ("personalm", "torch", "transformers", "peft", "rouge-score", "sentence-transformers")


@dataclass
class ExperimentConfig:
    out: str
    data: str
    model: str = "smollm2-135m-instruct"
    seeds: int = 3
    train_conversations: int = 64
    test_turns: int = 64
    prefeval_items: int = 60
    pir_examples: int = 48
    k: int = 3
    steps: int = 12
    batch_size: int = 4
    lr: float = 1e-3
    rank: int = 16
    window: int = 6
    max_len: int = 256
    max_tokens: int = 32
    clip_min: float = 0.8
    clip_max: float = 5.0
    split_seed: int = 0
    test_fraction: float = 0.2
    sweep: tuple[tuple[float, float], ...] = DEFAULT_SWEEP  # extra (m, M) for PerCE
    sweep_seeds: int = 1  # the sweep trains seeds 0 .. sweep_seeds-1 (at most `seeds`)

    def fingerprint(self) -> str:
        """Everything that changes a run's adapters or scores (not where the report goes, nor which
        sweep points run: each sweep point has its own run folder, named by its bounds)."""
        settings = {k: v for k, v in asdict(self).items() if k not in ("out", "sweep", "sweep_seeds")}
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


Log = Callable[[str], None]


def release_memory() -> None:
    """Collect the last run's model (PEFT holds reference cycles) and hand glibc's freed arenas
    back to the OS; without the trim the process keeps every run's peak resident."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def parse_sweep(text: str) -> tuple[tuple[float, float], ...]:
    """'0.5:10,1:3' -> ((0.5, 10.0), (1.0, 3.0)); an empty string means no sweep."""
    points = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            clip_min, clip_max = (float(x) for x in item.split(":"))
        except ValueError:
            raise PersonalmError(
                f"--sweep: expected m:M pairs separated by commas (e.g. 0.5:10,1:3), got '{item}'"
            ) from None
        check_clip_bounds(clip_min, clip_max)
        points.append((clip_min, clip_max))
    return tuple(points)


def check_clip_bounds(clip_min: float, clip_max: float) -> None:
    if not clip_min <= clip_max:
        raise PersonalmError(f"sweep point m={clip_min:g}, M={clip_max:g}: m must not exceed M")


def sweep_name(clip_min: float, clip_max: float, seed: int) -> str:
    return f"perce-seed{seed}-m{clip_min:g}-M{clip_max:g}"


def run(config: ExperimentConfig, log: Log = print) -> dict:
    """Train, evaluate and report; returns the results dict (also written to results.json)."""
    from personalm.models.embedder import Embedder
    from personalm.models.registry import resolve_local

    started = time.perf_counter()
    data = Path(config.data)
    base_path = resolve_local(config.model)
    if base_path is None:
        raise PersonalmError(f"unknown local model '{config.model}'")
    for clip_min, clip_max in config.sweep:
        check_clip_bounds(clip_min, clip_max)
    if config.sweep_seeds > config.seeds:
        raise PersonalmError(f"--sweep-seeds {config.sweep_seeds} exceeds --seeds {config.seeds}")

    conversations = load_conversations(data / "persona_chat" / "valid.csv")
    train_convs, test_convs = split(conversations, config.test_fraction, config.split_seed)
    train_convs = train_convs[: config.train_conversations]
    train_rows = window_rows(train_convs, config.window)
    seeds = {"split_seed": config.split_seed, "train_seeds": list(range(config.seeds)),
             "sweep_seeds": list(range(config.sweep_seeds))}  # fmt: skip
    study = Study(config.out, config, seeds, PACKAGES)
    key = config.fingerprint()
    work = study.cache(key)
    (work / "config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    train_path = work / "train.jsonl"
    write_rows(train_path, train_rows)
    heldout = reply_rows(test_convs, config.window)
    test = random.Random(config.split_seed).sample(heldout, min(config.test_turns, len(heldout)))
    with_terms = [r for r in heldout if persona_recall(r["reply"], r["reply"], r["persona"]) is not None]
    pir_rows = random.Random(config.split_seed + 1).sample(with_terms, min(config.pir_examples, len(with_terms)))
    prefeval = (
        load_prefeval(data / "prefeval" / "mcq_options", config.prefeval_items, config.split_seed)
        if config.prefeval_items
        else []
    )
    log(
        f"persona-chat: {len(train_convs)} training conversations -> {len(train_rows)} windows; "
        f"{len(test_convs)} held-out conversations -> {len(test)} test replies; {len(prefeval)} PrefEval items; "
        f"work folder {work}"
    )
    embedder = Embedder()
    references = embedder.embed([row["reply"] for row in test])

    def evaluate(name: str, adapter: Path | None, items: list = prefeval) -> dict:
        result = study.unit(
            f"{key}/eval/{name}",
            lambda: _evaluate(name, base_path, adapter, test, references, items, embedder, config, log),
        )
        release_memory()
        return result

    def trained(name: str, arm: str, seed: int, bounds: tuple[float, float], items: list = prefeval) -> dict:
        adapter, train_log, seconds = _train(study.cache(key, "runs", name), train_path, arm, seed, bounds, config, log)
        release_memory()
        return evaluate(name, adapter, items) | {"train_log": train_log, "train_seconds": seconds}

    default = (config.clip_min, config.clip_max)
    runs: dict[str, dict] = {"base": evaluate("base", None)}
    for arm in ARMS:
        for seed in range(config.seeds):
            runs[f"{arm}-seed{seed}"] = trained(f"{arm}-seed{seed}", arm, seed, default)
    pir = study.unit(f"{key}/eval/pir", lambda: _pir_check(base_path, pir_rows, config, log))
    release_memory()
    for seed in range(config.sweep_seeds):
        for bounds in config.sweep:
            if bounds != default:
                name = sweep_name(*bounds, seed)
                runs[name] = trained(name, "perce", seed, bounds, items=[])

    results = aggregate(runs, pir, config)
    results["sweep"] = sweep_table(runs, config)
    results |= {
        "data": {
            "train_conversations": len(train_convs),
            "train_windows": len(train_rows),
            "test_conversations": len(test_convs),
            "test_replies": len(test),
            "test_replies_with_persona_terms": sum(
                persona_recall(r["reply"], r["reply"], r["persona"]) is not None for r in test
            ),
            "prefeval_items": len(prefeval),
        },
        "config": asdict(config) | {"data": str(config.data)},
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_report(study, results, runs, test, pir_rows, pir)
    log(f"report written to {study.out}")
    return results


def _train(folder: Path, data: Path, arm: str, seed: int, bounds: tuple[float, float], config, log: Log):
    """Train (or resume, or reuse) one adapter; returns (adapter dir, per-step log, seconds).
    `bounds` are PerCE's (m, M) (ignored by CE)."""
    from personalm.progress import progress_bar
    from personalm.train.loop import TrainConfig, train

    if not is_adapter_dir(folder):
        train_config = TrainConfig(
            data=str(data), out=str(folder), model=config.model, rank=config.rank, alpha=2 * config.rank,
            lr=config.lr, max_steps=config.steps, batch_size=config.batch_size, max_len=config.max_len,
            save_every=max(1, config.steps // 4), seed=seed, loss=arm, clip_min=bounds[0], clip_max=bounds[1],
        )  # fmt: skip
        with progress_bar(f"train {folder.name}", config.steps) as advance:
            result = train(train_config, lambda step, total, loss: advance(1), log=log)
        log(
            f"{folder.name}: {result.steps} steps, {result.tokens_per_s:.0f} tokens/s, final loss {result.losses[-1]:.3f}"
        )
    summary = json.loads((folder / "train_config.json").read_text())
    train_log = [json.loads(line) for line in open(folder / "train_log.jsonl")]
    return folder, train_log, summary["seconds"]


def _evaluate(name: str, base: Path, adapter, test, references, prefeval, embedder, config, log: Log) -> dict:
    """Generate the held-out replies and score them."""
    from personalm.models.local import LocalModel

    start = time.perf_counter()
    model = LocalModel(base, adapter=adapter)
    prompts = [with_persona(row["context"], row["persona"]) for row in test]
    params = SamplingParams(max_tokens=config.max_tokens, stop=("\n",))
    outputs = [g.text.strip() for g in model.generate(prompts, params)]
    model.free_kernel()  # PrefEval only scores: its peak must not stack on the KV cache
    vectors = embedder.embed(outputs)
    rouge = [rouge_l(o, r["reply"]) for o, r in zip(outputs, test, strict=True)]
    recall = [persona_recall(o, r["reply"], r["persona"]) for o, r in zip(outputs, test, strict=True)]
    similarity = [float(v @ ref) for v, ref in zip(vectors, references, strict=True)]
    scored = [x for x in recall if x is not None]
    result = {
        "rougeL": statistics.fmean(rouge),
        "persona_recall": statistics.fmean(scored) if scored else float("nan"),
        "similarity": statistics.fmean(similarity),
        "prefeval_acc": choice_accuracy(model, prefeval, config.split_seed) if prefeval else None,
        "outputs": outputs,
        "eval_seconds": round(time.perf_counter() - start, 1),
    }
    log(
        f"eval {name}: ROUGE-L {result['rougeL']:.4f}, persona recall {result['persona_recall']:.4f}, "
        f"similarity {result['similarity']:.4f}, PrefEval {result['prefeval_acc']} ({result['eval_seconds']} s)"
    )
    return result


def _pir_check(base: Path, rows: list[dict], config: ExperimentConfig, log: Log) -> dict:
    """Precision@k of the base model's top-PIR reply tokens vs random tokens, against persona words."""
    from personalm.models.local import LocalModel
    from personalm.perce.contrast import PerContrast

    model = LocalModel(base)
    examples = [(r["persona"], [*r["context"], {"role": "assistant", "content": r["reply"]}]) for r in rows]
    influences = PerContrast.from_local(model).influence(examples, last_only=True)
    special = frozenset(model.tokenizer.all_special_tokens)
    scores = [precision_at_k(i, r["persona"], config.k, special) for i, r in zip(influences, rows, strict=True)]
    kept = [s for s in scores if s is not None]
    result = {
        "k": config.k,
        "examples": len(rows),
        "examples_with_persona_tokens": len(kept),
        "pir_precision_at_k": statistics.fmean(s[0] for s in kept) if kept else float("nan"),
        "random_precision_at_k": statistics.fmean(s[1] for s in kept) if kept else float("nan"),
        "influences": [i.to_dict() for i in influences],
        "special": sorted(special | {"\n"}),
    }
    log(
        f"PIR precision@{config.k}: {result['pir_precision_at_k']:.3f} vs random {result['random_precision_at_k']:.3f} "
        f"({len(kept)} replies with persona tokens)"
    )
    return result


def sweep_table(runs: dict[str, dict], config: ExperimentConfig) -> list[dict]:
    """One row per clip setting (CE first as the reference, then PerCE's default bounds, then the
    sweep): held-out metrics as the mean over the sweep seeds plus per-seed values, and the mean
    PerCE token weight over training."""
    seeds = range(config.sweep_seeds)
    default = (config.clip_min, config.clip_max)
    rows = [("ce", None, None, lambda s: f"ce-seed{s}"), ("perce", *default, lambda s: f"perce-seed{s}")]
    rows += [
        ("perce", m, big_m, lambda s, m=m, big_m=big_m: sweep_name(m, big_m, s))
        for m, big_m in config.sweep
        if (m, big_m) != default
    ]
    table = []
    for arm, clip_min, clip_max, name in rows:
        chosen = [runs[name(s)] for s in seeds]
        row = {"arm": arm, "clip_min": clip_min, "clip_max": clip_max, "seeds": len(chosen)}
        for metric in ("rougeL", "persona_recall", "similarity"):
            values = [run[metric] for run in chosen]
            row[metric] = round(statistics.fmean(values), 4) if values else None
            row[f"{metric}_per_seed"] = [round(v, 4) for v in values]
        weights = [step["weight_mean"] for run in chosen for step in run["train_log"] if "weight_mean" in step]
        row["weight_mean"] = round(statistics.fmean(weights), 4) if weights and arm == "perce" else None
        table.append(row)
    return table if config.sweep_seeds else []


def _spread(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(runs: dict[str, dict], pir: dict, config: ExperimentConfig) -> dict:
    """Mean and spread (sample std) over seeds per arm and metric, per-seed values, paired deltas."""
    results: dict = {}
    for metric in METRICS:
        if runs["base"][metric] is None:
            continue
        results[f"base_{metric}"] = round(runs["base"][metric], 4)
        per_arm = {}
        for arm in ARMS:
            values = [runs[f"{arm}-seed{s}"][metric] for s in range(config.seeds)]
            per_arm[arm] = values
            results[f"{arm}_{metric}"] = round(statistics.fmean(values), 4)
            results[f"{arm}_{metric}_std"] = round(_spread(values), 4)
            results[f"{arm}_{metric}_per_seed"] = [round(v, 4) for v in values]
        deltas = [p - c for p, c in zip(per_arm["perce"], per_arm["ce"], strict=True)]
        results[f"perce_minus_ce_{metric}"] = round(statistics.fmean(deltas), 4)
        results[f"perce_wins_{metric}"] = sum(d > 0 for d in deltas)
    for key in ("pir_precision_at_k", "random_precision_at_k"):
        results[key] = round(pir[key], 4)
    results["pir_k"] = pir["k"]
    results["pir_examples_with_persona_tokens"] = pir["examples_with_persona_tokens"]
    results["train_seconds"] = {name: run["train_seconds"] for name, run in runs.items() if "train_seconds" in run}
    perce_logs = [runs[f"perce-seed{s}"]["train_log"] for s in range(config.seeds)]
    results["perce_weights"] = {
        key: round(statistics.fmean(step[key] for log in perce_logs for step in log), 4)
        for key in ("weight_mean", "frac_clip_min", "frac_clip_max")
    }  # over every step of every seed: how far PerCE's weighting is from plain CE's
    results["final_train_ce"] = {
        "ce": round(statistics.fmean(runs[f"ce-seed{s}"]["train_log"][-1]["loss"] for s in range(config.seeds)), 4),
        "perce": round(statistics.fmean(log[-1]["ce"] for log in perce_logs), 4),
    }
    return results
