"""CE vs PerCE on persona-chat, sized to tell a real difference from noise.

Design (issue 21). The persona-chat conversations split three ways by conversation (seeded): test
(`test_fraction`), validation (`validation_conversations`) and training (the rest); no conversation
is in two of them. Each run trains on every window of its training conversations (by default just
enough conversations to fill `steps` batches of `batch_size`, and the steps then cover each window
once), at least `steps` optimizer steps. CE and PerCE use the same base model, LoRA config, windows,
data order and LoRA init for the same seed.

PerCE's clip bounds (m, M) are chosen on the validation conversations only: every candidate (by
default the paper's m = 0.8, M = 5 against m = 1.0, M = 5, where generic tokens keep CE's weight)
is trained on the first `selection_seeds` seeds and scored on validation replies against CE of the
same seeds (`choose_clip` states the rule). The chosen bounds are the headline PerCE arm; its
seed-0 adapter is the one the selection trained (same data, seed and bounds), the test set plays no
part in the choice.

Test scoring: greedy replies to held-out test replies, `test_replies` drawn at random (ROUGE-L and
MiniLM cosine to the reference) plus as many more as it takes to have `recall_replies` whose
reference shares a content word with the persona (persona-term recall; on the others there is
nothing to recall). PrefEval multiple choice by likelihood checks transfer. Every metric is kept
per item, so PerCE − CE is paired per (item, seed): the same item scored by the CE and the PerCE
adapter of the same seed. Intervals resample the items (`paired_over_seeds`); the seeds are not
resampled (three are too few to resample): each item's difference is its mean over the seeds, so
the interval is the item-sampling uncertainty of the seed-averaged difference, and the per-seed
differences are reported beside it. The base model's PIR is checked against the persona's words
(precision@k vs random tokens) on test replies that use a persona word, with a paired interval.

Resuming: adapters live in the study's cache per arm, bounds and seed under a hash of the
training settings (out/.cache/<train key>/runs/<name>, checkpoints inside), evaluations and the
PIR check are units under a hash of training and evaluation settings, so a killed run re-run skips
every finished piece. One model is alive at a time, and freed memory goes back to the OS after each.
"""

from __future__ import annotations

import ctypes
import gc
import hashlib
import json
import math
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from personalm.adapters import is_adapter_dir
from personalm.errors import PersonalmError
from personalm.eval.bootstrap import PairedDifference, bootstrap_mean, paired_bootstrap
from personalm.eval.persona import persona_recall, precision_at_k
from personalm.eval.prefeval import choice_correct, load_prefeval
from personalm.eval.text import rouge_l
from personalm.models.base import SamplingParams
from personalm.perce.persona_chat import Conversation, load_conversations, reply_rows, split, window_rows
from personalm.studies.harness import Study
from personalm.studies.perce_report import ARMS, METRICS, write_report
from personalm.tables import write_rows
from personalm.train.data import with_persona

PAPER_BOUNDS = (0.8, 5.0)
DEFAULT_CANDIDATES = (PAPER_BOUNDS, (1.0, 5.0))  # the paper's bounds vs generic tokens at CE weight
PACKAGES = ("personalm", "torch", "transformers", "peft", "rouge-score", "sentence-transformers")
GENERATED = ("rougeL", "similarity", "persona_recall")  # the metrics scored on generated replies
RULE = (
    "keep the candidates whose validation ROUGE-L difference to CE has an interval reaching 0 or above "
    "(not worse); among them the highest persona-term recall difference; if none is kept, the highest "
    "ROUGE-L difference; ties go to the candidate listed first (the paper's bounds by default)"
)
# --quick: sizes for the tests (a run of a few minutes); everything else as given.
QUICK = {
    "seeds": 1, "train_conversations": 4, "validation_conversations": 4, "steps": 2, "batch_size": 2,
    "test_replies": 6, "recall_replies": 4, "validation_replies": 4, "validation_recall_replies": 3,
    "prefeval_items": 4, "pir_examples": 4, "max_tokens": 8, "selection_seeds": 1,
}  # fmt: skip
TRAIN_FIELDS = (
    "data", "model", "train_conversations", "validation_conversations", "test_fraction", "split_seed", "steps",
    "batch_size", "lr", "rank", "window", "max_len",
)  # fmt: skip


@dataclass
class ExperimentConfig:
    out: str
    data: str
    model: str = "smollm2-135m-instruct"
    seeds: int = 3
    quick: bool = False
    train_conversations: int = 0  # 0: just enough to fill `steps` batches (each window then used once)
    validation_conversations: int = 100
    test_fraction: float = 0.2
    split_seed: int = 0
    test_replies: int = 500  # drawn at random: ROUGE-L, similarity
    recall_replies: int = 300  # references sharing a content word with the persona: persona-term recall
    validation_replies: int = 300
    validation_recall_replies: int = 200
    prefeval_items: int = 100
    pir_examples: int = 200
    k: int = 3
    steps: int = 300  # at least; raised to one full pass over the windows when conversations are automatic
    batch_size: int = 2
    lr: float = 1e-3
    rank: int = 16
    window: int = 6
    max_len: int = 256
    max_tokens: int = 32
    candidates: tuple[tuple[float, float], ...] = DEFAULT_CANDIDATES  # PerCE (m, M) to choose from
    selection_seeds: int = 1  # seeds 0 .. selection_seeds-1 train every candidate for the choice

    def effective(self) -> ExperimentConfig:
        """The settings the run uses: --quick's small sizes, or these as given."""
        return replace(self, **QUICK) if self.quick else self

    def train_key(self) -> str:
        """Everything that changes an adapter besides its arm, bounds and seed."""
        return _digest({k: getattr(self, k) for k in TRAIN_FIELDS})

    def eval_key(self) -> str:
        """Everything that changes an evaluation besides the adapter."""
        skipped = {"out", "quick", "seeds", "candidates", "selection_seeds"}
        return _digest({k: v for k, v in asdict(self).items() if k not in skipped})


def _digest(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


Log = Callable[[str], None]


@dataclass
class HeldOut:
    """Replies to generate, and which of them each metric is scored on (indices into `rows`)."""

    rows: list[dict]
    rouge: list[int]  # ROUGE-L and similarity
    recall: list[int]  # persona-term recall: references that share a content word with the persona

    def items(self, metric: str) -> list[int]:
        return self.recall if metric == "persona_recall" else self.rouge


@dataclass
class Splits:
    train: list[Conversation]
    validation: list[Conversation]
    test: list[Conversation]


def release_memory() -> None:
    """Collect the last run's model (PEFT holds reference cycles) and hand glibc's freed arenas
    back to the OS; without the trim the process keeps every run's peak resident."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def parse_bounds(text: str, option: str = "--candidates") -> tuple[tuple[float, float], ...]:
    """'0.8:5,1:5' -> ((0.8, 5.0), (1.0, 5.0)); duplicates dropped, order kept."""
    points: list[tuple[float, float]] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            clip_min, clip_max = (float(x) for x in item.split(":"))
        except ValueError:
            raise PersonalmError(
                f"{option}: expected m:M pairs separated by commas (e.g. 0.8:5,1:5), got '{item}'"
            ) from None
        check_clip_bounds(clip_min, clip_max)
        if (clip_min, clip_max) not in points:
            points.append((clip_min, clip_max))
    if not points:
        raise PersonalmError(f"{option}: give at least one m:M pair")
    return tuple(points)


def check_clip_bounds(clip_min: float, clip_max: float) -> None:
    if not clip_min <= clip_max:
        raise PersonalmError(f"clip bounds m={clip_min:g}, M={clip_max:g}: m must not exceed M")


def run_name(arm: str, seed: int, bounds: tuple[float, float] | None = None) -> str:
    """An adapter's name: its arm, PerCE's bounds and its seed."""
    return f"ce-seed{seed}" if arm == "ce" else f"perce-m{bounds[0]:g}-M{bounds[1]:g}-seed{seed}"


def split_conversations(conversations: list[Conversation], config: ExperimentConfig) -> Splits:
    """Test by the seeded split, validation from the rest, training after those; disjoint by
    conversation. The training pool is cut to the conversations the runs train on."""
    pool, test = split(conversations, config.test_fraction, config.split_seed)
    if len(pool) <= config.validation_conversations:
        raise PersonalmError(
            f"{len(pool)} conversations outside the test split: too few for {config.validation_conversations} "
            "validation conversations and a training set"
        )
    validation, train = pool[: config.validation_conversations], pool[config.validation_conversations :]
    if config.train_conversations:
        return Splits(train[: config.train_conversations], validation, test)
    wanted, windows, chosen = config.steps * config.batch_size, 0, []
    for conversation in train:
        if windows >= wanted:
            break
        chosen.append(conversation)
        windows += len(window_rows([conversation], config.window))
    return Splits(chosen, validation, test)


def training_steps(config: ExperimentConfig, windows: int) -> int:
    """`steps`, raised to one pass over every window when the conversations were picked to fill them."""
    return config.steps if config.train_conversations else max(config.steps, math.ceil(windows / config.batch_size))


def has_terms(row: dict) -> bool:
    return persona_recall(row["reply"], row["reply"], row["persona"]) is not None


def held_out(replies: list[dict], n_all: int, n_recall: int, seed: int, label: str) -> HeldOut:
    """`n_all` replies at random, then more replies whose reference shares a content word with the
    persona until `n_recall` of them are in (those already drawn count)."""
    order = list(range(len(replies)))
    random.Random(seed).shuffle(order)
    drawn = order[:n_all]
    recall = [i for i in drawn if has_terms(replies[i])][:n_recall]
    recall += [i for i in order[n_all:] if has_terms(replies[i])][: n_recall - len(recall)]
    if not recall:
        raise PersonalmError(f"{label}: no reply whose reference shares a content word with its persona")
    seen = set(drawn)
    chosen = drawn + [i for i in recall if i not in seen]
    where = {index: position for position, index in enumerate(chosen)}
    return HeldOut([replies[i] for i in chosen], list(range(len(drawn))), [where[i] for i in recall])


def paired_over_seeds(
    treated: Sequence[Sequence[float]], control: Sequence[Sequence[float]], seed: int = 0
) -> PairedDifference:
    """PerCE − CE paired per (item, seed): `treated[s][i]` and `control[s][i]` are item i scored by
    the two adapters of seed s. Each item's difference is averaged over the seeds and the items are
    resampled (all of an item's seeds travel together); the seeds themselves are not resampled."""
    treated, control = np.asarray(treated, dtype=np.float64), np.asarray(control, dtype=np.float64)
    if treated.ndim != 2 or treated.shape != control.shape:
        raise ValueError(f"need two (seeds, items) arrays of one shape (got {treated.shape} and {control.shape})")
    return paired_bootstrap(treated.mean(axis=0), control.mean(axis=0), seed=seed)


def item_scores(evaluation: dict, metric: str, held: HeldOut) -> list[float]:
    """One evaluation's per-item scores of `metric` on the items it is scored on."""
    if metric == "prefeval_acc":
        return [float(x) for x in evaluation["prefeval_correct"]]
    return [float(evaluation[metric][i]) for i in held.items(metric)]


def _interval(value: PairedDifference) -> list[float]:
    return [round(value.low, 4), round(value.high, 4)]


def selection_table(
    ce: list[dict], candidates: dict[tuple[float, float], list[dict]], held: HeldOut, seed: int
) -> list[dict]:
    """One row per candidate (m, M): validation metrics (mean over items and selection seeds) and
    the paired difference to CE of the same seeds with its interval; `ce` and `candidates` are
    validation evaluations only, one per selection seed."""
    rows = []
    for (clip_min, clip_max), runs in candidates.items():
        row: dict = {"clip_min": clip_min, "clip_max": clip_max, "seeds": len(runs)}
        for metric in GENERATED:
            treated = [item_scores(r, metric, held) for r in runs]
            control = [item_scores(r, metric, held) for r in ce]
            diff = paired_over_seeds(treated, control, seed)
            row[metric] = round(float(np.mean(treated)), 4)
            row[f"ce_{metric}"] = round(float(np.mean(control)), 4)
            row[f"{metric}_minus_ce"] = round(diff.mean, 4)
            row[f"{metric}_minus_ce_ci"] = _interval(diff)
            row[f"{metric}_items"] = diff.n
        weights = [step["weight_mean"] for r in runs for step in r["train_log"] if "weight_mean" in step]
        row["weight_mean"] = round(statistics.fmean(weights), 4) if weights else None
        rows.append(row)
    return rows


def choose_clip(rows: list[dict]) -> tuple[float, float]:
    """The validation rule (RULE): ROUGE-L not worse than CE, then the most persona-term recall."""
    kept = [row for row in rows if row["rougeL_minus_ce_ci"][1] >= 0]
    best = (
        max(kept, key=lambda row: row["persona_recall_minus_ce"])
        if kept
        else max(rows, key=lambda row: row["rougeL_minus_ce"])
    )
    return best["clip_min"], best["clip_max"]


def run(config: ExperimentConfig, log: Log = print) -> dict:
    """Train, choose PerCE's bounds on validation, evaluate on test and report; returns the
    results dict (also written to results.json)."""
    from personalm.models.embedder import Embedder
    from personalm.models.registry import resolve_local

    config = config.effective()
    started, started_cpu = time.perf_counter(), time.process_time()
    data = Path(config.data)
    base_path = resolve_local(config.model)
    if base_path is None:
        raise PersonalmError(f"unknown local model '{config.model}'")
    if not config.candidates:
        raise PersonalmError("no PerCE clip bounds to choose from")
    for bounds in config.candidates:
        check_clip_bounds(*bounds)
    if not 1 <= config.selection_seeds <= config.seeds:
        raise PersonalmError(f"--selection-seeds {config.selection_seeds}: need 1 .. --seeds ({config.seeds})")

    splits = split_conversations(load_conversations(data / "persona_chat" / "valid.csv"), config)
    train_rows = window_rows(splits.train, config.window)
    steps = training_steps(config, len(train_rows))
    seeds = {"split_seed": config.split_seed, "train_seeds": list(range(config.seeds)),
             "selection_seeds": list(range(config.selection_seeds)), "bootstrap_seed": config.split_seed}  # fmt: skip
    study = Study(config.out, config, seeds, PACKAGES)
    train_key, eval_key = config.train_key(), config.eval_key()
    work = study.cache(train_key)
    (work / "config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    train_path = work / "train.jsonl"
    write_rows(train_path, train_rows)
    test = held_out(
        reply_rows(splits.test, config.window),
        config.test_replies, config.recall_replies, config.split_seed, "test conversations",
    )  # fmt: skip
    validation = held_out(
        reply_rows(splits.validation, config.window),
        config.validation_replies, config.validation_recall_replies, config.split_seed + 2, "validation conversations",
    )  # fmt: skip
    pir_rows = [test.rows[i] for i in test.recall[: config.pir_examples]]
    prefeval = (
        load_prefeval(data / "prefeval" / "mcq_options", config.prefeval_items, config.split_seed)
        if config.prefeval_items
        else []
    )
    log(
        f"persona-chat: {len(splits.train)} training conversations -> {len(train_rows)} windows, {steps} steps x "
        f"{config.batch_size}; {len(splits.validation)} validation conversations -> {len(validation.rows)} replies; "
        f"{len(splits.test)} test conversations -> {len(test.rows)} replies ({len(test.rouge)} ROUGE-L, "
        f"{len(test.recall)} persona-term recall); {len(prefeval)} PrefEval items; work folder {work}"
    )
    embedder = Embedder()
    parts = {"test": (test, prefeval), "validation": (validation, [])}  # PrefEval checks transfer on test only
    references = {part: embedder.embed([r["reply"] for r in held.rows]) for part, (held, _) in parts.items()}

    def evaluate(part: str, name: str, adapter: Path | None) -> dict:
        held, items = parts[part]
        result = study.unit(
            f"{eval_key}/{part}/{name}",
            lambda: _evaluate(
                f"{part} {name}", base_path, adapter, held.rows, references[part], items, embedder, config, log
            ),
        )
        release_memory()
        return result

    def trained(arm: str, seed: int, bounds: tuple[float, float] | None) -> tuple[Path, dict]:
        name = run_name(arm, seed, bounds)
        folder = study.cache(train_key, "runs", name)
        info = study.unit(
            f"{train_key}/train/{name}", lambda: _train(folder, train_path, arm, seed, bounds, steps, config, log)
        )
        release_memory()
        return folder, info

    def scored(part: str, arm: str, seed: int, bounds: tuple[float, float] | None) -> dict:
        folder, info = trained(arm, seed, bounds)
        return evaluate(part, run_name(arm, seed, bounds), folder) | info

    selection_ce = [scored("validation", "ce", s, None) for s in range(config.selection_seeds)]
    selection_runs = {
        bounds: [scored("validation", "perce", s, bounds) for s in range(config.selection_seeds)]
        for bounds in config.candidates
    }
    table = selection_table(selection_ce, selection_runs, validation, config.split_seed)
    chosen = choose_clip(table)
    for row in table:
        row["chosen"] = (row["clip_min"], row["clip_max"]) == chosen
    log(f"clip bounds chosen on validation: m={chosen[0]:g}, M={chosen[1]:g}")

    runs: dict[str, dict] = {"base": evaluate("test", "base", None)}
    for seed in range(config.seeds):
        runs[f"ce-seed{seed}"] = scored("test", "ce", seed, None)
        runs[f"perce-seed{seed}"] = scored("test", "perce", seed, chosen)
    pir = study.unit(f"{eval_key}/pir", lambda: _pir_check(base_path, pir_rows, config, log))
    release_memory()

    results = aggregate(runs, pir, config, test)
    results |= {
        "perce_clip_min": chosen[0],
        "perce_clip_max": chosen[1],
        "clip_selection": {
            "rule": RULE,
            "chosen": {"clip_min": chosen[0], "clip_max": chosen[1]},
            "paper_bounds": list(PAPER_BOUNDS),
            "seeds": list(range(config.selection_seeds)),
            "validation_conversations": len(splits.validation),
            "validation_replies": len(validation.rouge),
            "validation_recall_replies": len(validation.recall),
            "candidates": table,
        },
        "data": {
            "path": str(data),
            "csv": str(data / "persona_chat" / "valid.csv"),
            "train_conversations": len(splits.train),
            "train_windows": len(train_rows),
            "train_steps": steps,
            "train_epochs": round(steps * config.batch_size / len(train_rows), 3),
            "validation_conversations": len(splits.validation),
            "test_conversations": len(splits.test),
            "test_replies": len(test.rouge),
            "test_replies_with_persona_terms": len(test.recall),
            "test_replies_generated": len(test.rows),
            "prefeval_items": len(prefeval),
        },
        "config": asdict(config) | {"data": str(config.data)},
        "seconds": round(time.perf_counter() - started, 1),
        "cpu_seconds": round(time.process_time() - started_cpu, 1),
        "work_cpu_seconds": work_cpu_seconds(runs, selection_ce, selection_runs, pir),
    }
    write_report(study, results, runs, test, pir_rows, pir)
    log(f"report written to {study.out}")
    return results


def work_cpu_seconds(runs: dict, selection_ce: list, selection_runs: dict, pir: dict) -> dict:
    """CPU seconds (all threads) of every training run and evaluation the results rest on, as each
    unit measured it when it ran (a unit resumed after a kill counts its last stretch only)."""
    evaluations = [*runs.values(), *selection_ce, *(r for rs in selection_runs.values() for r in rs)]
    trainings = {r["name"]: r["train_cpu_seconds"] for r in evaluations if "train_cpu_seconds" in r}
    evaluating = sum(r["eval_cpu_seconds"] for r in evaluations) + pir["cpu_seconds"]
    return {
        "training": round(sum(trainings.values()), 1),
        "evaluation": round(evaluating, 1),
        "total": round(sum(trainings.values()) + evaluating, 1),
        "training_runs": len(trainings),
    }


def _train(
    folder: Path, data: Path, arm: str, seed: int, bounds: tuple[float, float] | None, steps: int, config, log: Log
) -> dict:
    """Train (or resume, or reuse) one adapter; its per-step log, wall and CPU seconds.
    `bounds` are PerCE's (m, M) (None for CE)."""
    from personalm.progress import progress_bar
    from personalm.train.loop import TrainConfig, read_run, train

    cpu = time.process_time()
    if not is_adapter_dir(folder):
        clip_min, clip_max = bounds or PAPER_BOUNDS  # CE ignores them
        train_config = TrainConfig(
            data=str(data), out=str(folder), model=config.model, rank=config.rank, alpha=2 * config.rank,
            lr=config.lr, max_steps=steps, batch_size=config.batch_size, max_len=config.max_len,
            save_every=max(1, steps // 6), seed=seed, loss=arm, clip_min=clip_min, clip_max=clip_max,
        )  # fmt: skip
        with progress_bar(f"train {folder.name}", steps) as advance:
            result = train(train_config, lambda step, total, loss: advance(1), log=log)
        log(f"{folder.name}: {result.steps} steps, {result.tokens_per_s:.0f} tokens/s, loss {result.losses[-1]:.3f}")
    summary = read_run(folder)
    return {
        "name": folder.name,
        "train_log": summary["log"],
        "train_seconds": summary["seconds"],
        "train_cpu_seconds": round(time.process_time() - cpu, 1),
    }


def _evaluate(name: str, base: Path, adapter, rows, references, prefeval, embedder, config, log: Log) -> dict:
    """Generate the held-out replies and score each one (per item, so differences can be paired)."""
    from personalm.models.local import LocalModel

    start, cpu = time.perf_counter(), time.process_time()
    model = LocalModel(base, adapter=adapter)
    prompts = [with_persona(row["context"], row["persona"]) for row in rows]
    params = SamplingParams(max_tokens=config.max_tokens, stop=("\n",))
    outputs = [g.text.strip() for g in model.generate(prompts, params)]
    model.free_kernel()  # PrefEval only scores: its peak must not stack on the KV cache
    vectors = embedder.embed(outputs)
    result = {
        "rougeL": [rouge_l(o, r["reply"]) for o, r in zip(outputs, rows, strict=True)],
        "similarity": [float(v @ ref) for v, ref in zip(vectors, references, strict=True)],
        "persona_recall": [persona_recall(o, r["reply"], r["persona"]) for o, r in zip(outputs, rows, strict=True)],
        "prefeval_correct": choice_correct(model, prefeval, config.split_seed) if prefeval else None,
        "outputs": outputs,
        "eval_seconds": round(time.perf_counter() - start, 1),
        "eval_cpu_seconds": round(time.process_time() - cpu, 1),
    }
    log(f"eval {name}: {len(outputs)} replies in {result['eval_seconds']} s")
    return result


def _pir_check(base: Path, rows: list[dict], config: ExperimentConfig, log: Log) -> dict:
    """Precision@k of the base model's top-PIR reply tokens vs random tokens, against persona words."""
    from personalm.models.local import LocalModel
    from personalm.perce.contrast import PerContrast

    cpu = time.process_time()
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
        "pir": [s[0] for s in kept],
        "random": [s[1] for s in kept],
        "influences": [i.to_dict() for i in influences],
        "special": sorted(special | {"\n"}),
        "cpu_seconds": round(time.process_time() - cpu, 1),
    }
    log(f"PIR precision@{config.k} on {len(kept)} replies with persona tokens")
    return result


def _spread(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(runs: dict[str, dict], pir: dict, config: ExperimentConfig, test: HeldOut) -> dict:
    """Per metric: each arm's mean over items and seeds with its interval (items resampled, seeds
    averaged), spread and per-seed means; PerCE − CE paired per (item, seed) with its interval,
    item count, per-seed differences and seeds won. Then the PIR check with its paired interval."""
    results: dict = {}
    seed = config.split_seed
    for metric in METRICS:
        if metric == "prefeval_acc" and runs["base"]["prefeval_correct"] is None:
            continue
        base = bootstrap_mean(item_scores(runs["base"], metric, test), seed=seed)
        results[f"base_{metric}"] = round(base.mean, 4)
        results[f"base_{metric}_ci"] = [round(base.low, 4), round(base.high, 4)]
        per_arm = {
            arm: [item_scores(runs[f"{arm}-seed{s}"], metric, test) for s in range(config.seeds)] for arm in ARMS
        }
        for arm, scores in per_arm.items():
            interval = bootstrap_mean(np.mean(scores, axis=0), seed=seed)
            means = [statistics.fmean(values) for values in scores]
            results[f"{arm}_{metric}"] = round(interval.mean, 4)
            results[f"{arm}_{metric}_ci"] = [round(interval.low, 4), round(interval.high, 4)]
            results[f"{arm}_{metric}_std"] = round(_spread(means), 4)
            results[f"{arm}_{metric}_per_seed"] = [round(v, 4) for v in means]
        diff = paired_over_seeds(per_arm["perce"], per_arm["ce"], seed)
        per_seed = [
            statistics.fmean(p) - statistics.fmean(c) for p, c in zip(per_arm["perce"], per_arm["ce"], strict=True)
        ]
        results[f"perce_minus_ce_{metric}"] = round(diff.mean, 4)
        results[f"perce_minus_ce_{metric}_ci"] = _interval(diff)
        results[f"perce_minus_ce_{metric}_share_above_zero"] = round(diff.share_above_zero, 4)
        results[f"perce_minus_ce_{metric}_per_seed"] = [round(d, 4) for d in per_seed]
        results[f"perce_wins_{metric}"] = sum(d > 0 for d in per_seed)
        results[f"{metric}_items"] = diff.n
    results["seeds"] = config.seeds
    if pir["pir"]:
        gap = paired_bootstrap(pir["pir"], pir["random"], seed=seed)
        results["pir_precision_at_k"] = round(statistics.fmean(pir["pir"]), 4)
        results["random_precision_at_k"] = round(statistics.fmean(pir["random"]), 4)
        results["pir_minus_random_precision_at_k"] = round(gap.mean, 4)
        results["pir_minus_random_precision_at_k_ci"] = _interval(gap)
        for key in ("pir", "random"):
            interval = bootstrap_mean(pir[key], seed=seed)
            results[f"{key}_precision_at_k_ci"] = [round(interval.low, 4), round(interval.high, 4)]
    else:
        results["pir_precision_at_k"] = results["random_precision_at_k"] = float("nan")
    results["pir_k"] = pir["k"]
    results["pir_examples_with_persona_tokens"] = pir["examples_with_persona_tokens"]
    results["pir_precision_at_k_items"] = pir["examples_with_persona_tokens"]
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
