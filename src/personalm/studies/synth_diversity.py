"""Does a persona make synthetic data more diverse? The same tasks with and without personas.

Per task (by default math, instruction, knowledge and npc), arm "personas": one output per persona;
arm "plain": the same prompt without a persona, sampled as many times (distinct samples of one
batched call). Both arms: mean pairwise cosine of output embeddings (lower = more diverse),
distinct-n and Vendi score; the gap (plain − personas) with a 95% bootstrap interval over the
outputs (eval.diversity.cosine_gap). Then the paper's figure: for persona pairs binned by persona
cosine, the mean cosine of their two outputs.

results.json: per task `similarity_gap_<task>` (+ `_ci`, `_items`, `_share_above_zero`),
`mean_pairwise_cosine_{personas,plain}_<task>` (+ `_ci`), the full analysis under `tasks`; the
top-level `arms`, `personas_more_diverse`, `persona_set` and `similarity_by_bin` are the first task's
(the single-task layout earlier runs wrote).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from personalm import report
from personalm.eval.diversity import cosine_gap, measure, similarity_by_bin
from personalm.models.base import ProgressCallback, TextModel
from personalm.models.registry import DEFAULT_MODEL
from personalm.studies.harness import Study
from personalm.synth.run import Row, SynthOptions, synthesize
from personalm.synth.tasks import Task

PACKAGES = ("personalm", "torch", "transformers", "sentence-transformers")
DEFAULT_TASKS = ("math", "instruction", "knowledge", "npc")
DEFAULT_WORLD = (
    "Saltmere, a harbour town on a cold northern coast, where fishing guilds, smugglers, a failing noble house "
    "and a lighthouse order of scholars compete for the trade in whale oil and the secrets of the drowned reef."
)
"""The npc task's game world when --world is not given."""
QUICK_N, QUICK_MAX_TOKENS = 6, 16


@dataclass
class DiversityConfig:
    """`personalm synth diversity`: the tasks both arms run, on the first `n` personas."""

    out: str
    personas: str
    tasks: tuple[str, ...] = DEFAULT_TASKS
    n: int = 200
    model: str = DEFAULT_MODEL
    max_tokens: int = 64
    temperature: float = 0.8
    seed: int = 0
    batch: int = 64
    cache: bool = True
    embedder: str | None = None
    world: str = DEFAULT_WORLD


def run(config: DiversityConfig, tasks: dict[str, Task]) -> dict[str, Any]:
    """Both arms of every task, their analysis and the report; `tasks` maps each of `config.tasks` to its Task."""
    from personalm.models.embedder import Embedder
    from personalm.models.registry import load_model
    from personalm.personas.io import read_personas
    from personalm.progress import progress_bar

    study = Study(config.out, config, packages=PACKAGES)
    rows_in = read_personas(Path(config.personas)).to_pylist()[: config.n]
    options = SynthOptions(max_tokens=config.max_tokens, temperature=config.temperature, seed=config.seed)
    arms: dict[str, tuple[list[Row], list[Row]]] = {}
    with load_model(config.model, cache=config.cache) as loaded:
        if hasattr(loaded, "chunk_size"):
            loaded.chunk_size = config.batch
        for name in config.tasks:
            with progress_bar(f"diversity {name}", 2 * len(rows_in)) as advance:
                arms[name] = run_arms(rows_in, tasks[name], loaded, options, advance)
        model_id = loaded.model_id
    encoder = Embedder(config.embedder)
    per_task = {}
    for name, (with_rows, plain_rows) in arms.items():
        per_task[name] = analyse(with_rows, plain_rows, encoder.embed, config.seed)
        per_task[name]["examples"] = [{"persona": r["persona"], "output": r["output"]} for r in with_rows[:5]]
        per_task[name]["plain_examples"] = [r["output"] for r in plain_rows[:5]]
    settings = {
        "tasks": list(config.tasks),
        "n_per_arm": len(rows_in),
        "personas": config.personas,
        "model_id": model_id,
        "sampling": options.params().to_dict(),
        "seed": config.seed,
        "embedder": str(encoder.path),
        "world": config.world if "npc" in config.tasks else None,
    }
    return write_report(study, per_task, settings)


def run_arms(
    personas: Sequence[Row],
    task: Task,
    model: TextModel,
    options: SynthOptions,
    progress: ProgressCallback | None = None,
) -> tuple[list[Row], list[Row]]:
    """(with-persona rows, no-persona rows), the same count each."""
    with_rows = synthesize(personas, task, model, options, progress=progress)
    plain = [{"id": f"plain-{i}", "persona": None} for i in range(len(personas))]
    # The plain arm is N samples of one prompt, told apart by occurrence; the cache would regenerate
    # occurrences 0..k for every chunk, so this arm goes to the model as one chunk.
    chunk = getattr(model, "chunk_size", None)
    if chunk is not None:
        model.chunk_size = max(chunk, len(plain))
    try:
        return with_rows, synthesize(plain, task, model, options, progress=progress)
    finally:
        if chunk is not None:
            model.chunk_size = chunk


def analyse(with_rows: Sequence[Row], plain_rows: Sequence[Row], embed, seed: int = 0) -> dict[str, Any]:
    """Metrics of both arms, the cosine gap with its interval, and the binned similarity curve;
    `embed` maps texts to unit vectors."""
    with_texts = [r["output"] for r in with_rows]
    plain_texts = [r["output"] for r in plain_rows]
    with_vectors, plain_vectors = embed(with_texts), embed(plain_texts)
    persona_vectors = embed([r["persona"] for r in with_rows])
    arms = {"personas": measure(with_texts, with_vectors, seed), "plain": measure(plain_texts, plain_vectors, seed)}
    gap = cosine_gap(plain_vectors, with_vectors, seed=seed)
    return {
        "arms": arms,
        "personas_more_diverse": arms["personas"]["mean_pairwise_cosine"] < arms["plain"]["mean_pairwise_cosine"],
        "similarity_gap": gap["gap"].mean,
        "similarity_gap_ci": [gap["gap"].low, gap["gap"].high],
        "similarity_gap_items": gap["gap"].n,
        "similarity_gap_share_above_zero": gap["gap_share_above_zero"],
        "mean_pairwise_cosine_personas": gap["personas"].mean,
        "mean_pairwise_cosine_personas_ci": [gap["personas"].low, gap["personas"].high],
        "mean_pairwise_cosine_plain": gap["plain"].mean,
        "mean_pairwise_cosine_plain_ci": [gap["plain"].low, gap["plain"].high],
        "persona_set": measure([r["persona"] for r in with_rows], persona_vectors, seed),
        "similarity_by_bin": similarity_by_bin(persona_vectors, with_vectors),
    }


HEADLINE = ("similarity_gap", "mean_pairwise_cosine_personas", "mean_pairwise_cosine_plain")


def headline(per_task: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Flat per-task keys: `<metric>_<task>` with `_ci`, and the gap's `_items` and `_share_above_zero`."""
    out: dict[str, Any] = {}
    for task, result in per_task.items():
        for key in HEADLINE:
            out[f"{key}_{task}"] = result[key]
            out[f"{key}_{task}_ci"] = result[f"{key}_ci"]
        out[f"similarity_gap_{task}_items"] = result["similarity_gap_items"]
        out[f"similarity_gap_{task}_share_above_zero"] = result["similarity_gap_share_above_zero"]
    return out


def write_report(study: Study, per_task: dict[str, dict[str, Any]], settings: dict[str, Any]) -> dict[str, Any]:
    """results.json (flat per-task keys, each task's analysis, its `settings`), two figures, report.html."""
    names = list(per_task)
    fig, ax = report.figure(ncols=2, width=11)
    x = np.arange(len(names))
    for offset, (arm, color) in zip((-0.2, 0.2), (("personas", "tab:blue"), ("plain", "tab:gray")), strict=True):
        key = f"mean_pairwise_cosine_{arm}"
        means = [per_task[t][key] for t in names]
        spans = [[m - per_task[t][f"{key}_ci"][0] for t, m in zip(names, means, strict=True)],
                 [per_task[t][f"{key}_ci"][1] - m for t, m in zip(names, means, strict=True)]]  # fmt: skip
        ax[0].bar(x + offset, means, 0.4, yerr=spans, capsize=3, color=color, label=arm)
    ax[0].set_xticks(x, names)
    ax[0].set_title("mean pairwise cosine of outputs (lower = more diverse)")
    ax[0].legend()
    gaps = [per_task[t]["similarity_gap"] for t in names]
    spans = [[g - per_task[t]["similarity_gap_ci"][0] for t, g in zip(names, gaps, strict=True)],
             [per_task[t]["similarity_gap_ci"][1] - g for t, g in zip(names, gaps, strict=True)]]  # fmt: skip
    ax[1].bar(x, gaps, yerr=spans, capsize=4, color="tab:green")
    ax[1].axhline(0, color="k", lw=1)
    ax[1].set_xticks(x, names)
    ax[1].set_title("gap: plain − personas (> 0: personas more diverse), 95% CI")
    arms_png = study.save(fig, "arms.png")
    fig, ax = report.figure()
    for task in names:
        bins = per_task[task]["similarity_by_bin"]
        ax.plot([b["mean_persona_cosine"] for b in bins], [b["mean_output_cosine"] for b in bins], "o-", label=task)
    ax.plot([0, 1], [0, 1], "--", color="gray", label="y = x")
    ax.set_xlabel("persona pair cosine (binned)")
    ax.set_ylabel("mean cosine of their outputs")
    ax.set_title("output similarity vs persona similarity")
    ax.legend()
    similarity_png = study.save(fig, "similarity.png")
    gap_rows = [
        {"task": t, "outputs per arm": per_task[t]["similarity_gap_items"],
         "with personas": report.interval(per_task[t], "mean_pairwise_cosine_personas"),
         "without": report.interval(per_task[t], "mean_pairwise_cosine_plain"),
         "gap (without − with)": report.interval(per_task[t], "similarity_gap"),
         "share of resamples > 0": per_task[t]["similarity_gap_share_above_zero"]}
        for t in names
    ]  # fmt: skip
    arm_rows = [{"task": t, "arm": a} | per_task[t]["arms"][a] for t in names for a in ("personas", "plain")]
    parts = [
        report.paragraph(
            f"{settings['n_per_arm']} outputs per arm and task, model {settings['model_id']}, seed {settings['seed']}. "
            "Mean pairwise cosine of the outputs' embeddings [95% bootstrap interval: the outputs drawn again, "
            "each arm on its own, the statistic recomputed over pairs of distinct outputs]."
        ),
        report.section("Similarity gap per task", report.table(gap_rows), report.image(arms_png)),
        report.section("Both arms, every metric", report.table(arm_rows)),
        report.section(
            "Output similarity vs persona similarity",
            report.image(similarity_png, "persona pairs binned by persona cosine"),
            *[report.paragraph(t) + report.table(per_task[t]["similarity_by_bin"]) for t in names],
        ),
        report.section(
            "Examples",
            report.table(
                [
                    {"task": t, "persona": r["persona"], "output": r["output"][:300]}
                    for t in names
                    for r in per_task[t].get("examples", [])[:2]
                ]
            ),  # fmt: skip
        ),
    ]
    first = per_task[names[0]]
    results = headline(per_task) | {
        "arms": first["arms"],
        "personas_more_diverse": first["personas_more_diverse"],
        "persona_set": first["persona_set"],
        "similarity_by_bin": first["similarity_by_bin"],
        "tasks": per_task,
        "settings": settings,
    }
    return study.finish(results, f"Synthesis diversity: {', '.join(names)}", parts, shown=("settings",))
