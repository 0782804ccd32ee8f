"""Does a persona make synthetic data more diverse? The same task with and without personas.

Arm "personas": one output per persona. Arm "plain": the same prompt without a persona, sampled as
many times (distinct samples of one batched call). Both arms: mean pairwise cosine of output
embeddings (lower = more diverse), distinct-n and Vendi score. Then the paper's figure: for persona
pairs binned by persona cosine, the mean cosine of their two outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from personalm import report
from personalm.eval.diversity import measure, similarity_by_bin
from personalm.models.base import ProgressCallback, TextModel
from personalm.models.registry import DEFAULT_MODEL
from personalm.studies.harness import Study
from personalm.synth.run import Row, SynthOptions, synthesize
from personalm.synth.tasks import Task

PACKAGES = ("personalm", "torch", "transformers", "sentence-transformers")


@dataclass
class DiversityConfig:
    """`personalm synth diversity`: the task both arms run, on the first `n` personas."""

    out: str
    personas: str
    task: str = "math"
    n: int = 200
    model: str = DEFAULT_MODEL
    max_tokens: int = 64
    temperature: float = 0.8
    seed: int = 0
    batch: int = 64
    cache: bool = True
    embedder: str | None = None


def run(config: DiversityConfig, task: Task) -> dict[str, Any]:
    """Both arms, their analysis and the report; `task` is the loaded `config.task`."""
    from personalm.models.embedder import Embedder
    from personalm.models.registry import load_model
    from personalm.personas.io import read_personas
    from personalm.progress import progress_bar

    study = Study(config.out, config, packages=PACKAGES)
    rows_in = read_personas(Path(config.personas)).to_pylist()[: config.n]
    options = SynthOptions(max_tokens=config.max_tokens, temperature=config.temperature, seed=config.seed)
    with load_model(config.model, cache=config.cache) as loaded:
        if hasattr(loaded, "chunk_size"):
            loaded.chunk_size = config.batch
        with progress_bar(f"diversity {config.task}", 2 * len(rows_in)) as advance:
            with_rows, plain_rows = run_arms(rows_in, task, loaded, options, advance)
        model_id = loaded.model_id
    encoder = Embedder(config.embedder)
    result = analyse(with_rows, plain_rows, encoder.embed, config.seed)
    result["examples"] = [{"persona": r["persona"], "output": r["output"]} for r in with_rows[:5]]
    result["plain_examples"] = [r["output"] for r in plain_rows[:5]]
    settings = {
        "task": config.task,
        "n_per_arm": len(rows_in),
        "personas": config.personas,
        "model_id": model_id,
        "sampling": options.params().to_dict(),
        "seed": config.seed,
        "embedder": str(encoder.path),
    }
    return write_report(study, result, settings)



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
    """Metrics of both arms and the binned similarity curve; `embed` maps texts to unit vectors."""
    with_texts = [r["output"] for r in with_rows]
    plain_texts = [r["output"] for r in plain_rows]
    with_vectors, plain_vectors = embed(with_texts), embed(plain_texts)
    persona_vectors = embed([r["persona"] for r in with_rows])
    arms = {"personas": measure(with_texts, with_vectors, seed), "plain": measure(plain_texts, plain_vectors, seed)}
    return {
        "arms": arms,
        "personas_more_diverse": arms["personas"]["mean_pairwise_cosine"] < arms["plain"]["mean_pairwise_cosine"],
        "persona_set": measure([r["persona"] for r in with_rows], persona_vectors, seed),
        "similarity_by_bin": similarity_by_bin(persona_vectors, with_vectors),
    }


def write_report(study: Study, result: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """results.json (the result with its `settings`), two PNG figures and report.html."""
    arms = result["arms"]
    fig, ax = report.figure(ncols=2, width=10)
    names = list(arms)
    ax[0].bar(names, [arms[a]["mean_pairwise_cosine"] for a in names], color=["tab:blue", "tab:gray"])
    ax[0].set_title("mean pairwise cosine of outputs (lower = more diverse)")
    for i, n in enumerate((1, 2, 3)):
        ax[1].bar(np.arange(2) + i * 0.25, [arms[a][f"distinct_{n}"] for a in names], 0.25, label=f"distinct-{n}")
    ax[1].set_xticks(np.arange(2) + 0.25, names)
    ax[1].set_title("distinct-n (higher = more diverse)")
    ax[1].legend()
    arms_png = study.save(fig, "arms.png")
    bins = result["similarity_by_bin"]
    fig, ax = report.figure()
    ax.plot([b["mean_persona_cosine"] for b in bins], [b["mean_output_cosine"] for b in bins], "o-", label="outputs")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="y = x")
    ax.set_xlabel("persona pair cosine (binned)")
    ax.set_ylabel("mean cosine of their outputs")
    ax.set_title(f"{settings['task']}: output similarity vs persona similarity")
    ax.legend()
    similarity_png = study.save(fig, "similarity.png")
    arm_rows = [{"arm": a} | arms[a] for a in names]
    parts = [
        report.section("With vs without personas", report.table(arm_rows), report.image(arms_png)),
        report.section(
            "Output similarity vs persona similarity",
            report.image(similarity_png, "persona pairs binned by persona cosine"),
            report.table(bins),
        ),
        report.section(
            "Examples",
            report.table([{"persona": r["persona"], "output": r["output"][:300]} for r in result.get("examples", [])]),
        ),
    ]
    results = result | {"settings": settings}
    return study.finish(results, f"Synthesis diversity: {settings['task']}", parts, shown=("settings",))
