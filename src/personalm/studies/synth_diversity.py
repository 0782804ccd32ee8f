"""Does a persona make synthetic data more diverse? The same task with and without personas.

Arm "personas": one output per persona. Arm "plain": the same prompt without a persona, sampled as
many times (distinct samples of one batched call). Both arms: mean pairwise cosine of output
embeddings (lower = more diverse), distinct-n and Vendi score. Then the paper's figure: for persona
pairs binned by persona cosine, the mean cosine of their two outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from personalm import report
from personalm.provenance import versions
from personalm.eval.diversity import measure, similarity_by_bin
from personalm.models.base import ProgressCallback, TextModel
from personalm.synth.run import Row, SynthOptions, synthesize
from personalm.synth.tasks import Task

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


def write_report(out: Path, result: dict[str, Any], settings: dict[str, Any]) -> Path:
    """results.json, two PNG figures and report.html in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    settings = settings | {"versions": versions()}
    report.write_json(out / "results.json", result | {"settings": settings})
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
    report.save_figure(fig, out / "arms.png")
    bins = result["similarity_by_bin"]
    fig, ax = report.figure()
    ax.plot([b["mean_persona_cosine"] for b in bins], [b["mean_output_cosine"] for b in bins], "o-", label="outputs")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="y = x")
    ax.set_xlabel("persona pair cosine (binned)")
    ax.set_ylabel("mean cosine of their outputs")
    ax.set_title(f"{settings['task']}: output similarity vs persona similarity")
    ax.legend()
    report.save_figure(fig, out / "similarity.png")
    arm_rows = [{"arm": a} | arms[a] for a in names]
    parts = [
        report.section("With vs without personas", report.table(arm_rows), report.image(out / "arms.png")),
        report.section(
            "Output similarity vs persona similarity",
            report.image(out / "similarity.png", "persona pairs binned by persona cosine"),
            report.table(bins),
        ),
        report.section(
            "Examples",
            report.table([{"persona": r["persona"], "output": r["output"][:300]} for r in result.get("examples", [])]),
        ),
    ]
    return report.write_page(out / "report.html", f"Synthesis diversity: {settings['task']}", parts, settings)
