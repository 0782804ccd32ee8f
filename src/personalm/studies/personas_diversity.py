"""Diversity report of persona sets (e.g. before and after dedup): results.json, PNG, HTML."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from personalm import report
from personalm.eval import diversity
from personalm.personas.io import read_personas
from personalm.studies.harness import Study

METRICS = ("mean_pairwise_cosine", "distinct_1", "distinct_2", "vendi")
LOWER_IS_MORE_DIVERSE = {"mean_pairwise_cosine"}
COLUMNS = ("rows", "mean_pairwise_cosine", "distinct_1", "distinct_2", "distinct_3", "vendi")


def diversity_report(
    inputs: list[Path], out: Path, labels: list[str] | None = None, embedder: str | None = None, seed: int = 0
) -> dict[str, Any]:
    """Measure every persona file and write out/results.json, out/diversity.png, out/report.html."""
    from personalm.models.embedder import Embedder

    labels = labels or [p.stem for p in inputs]
    settings = {"inputs": [str(p) for p in inputs], "labels": labels, "embedder": embedder, "seed": seed}
    study = Study(out, settings, packages=("personalm", "numpy", "sentence-transformers", "torch"))
    model = Embedder(embedder)
    sets = {}
    for label, path in zip(labels, inputs, strict=True):
        texts = read_personas(path).column("persona").to_pylist()
        sets[label] = diversity.measure(texts, model.embed(texts), seed) | {"file": str(path)}
    result = {
        "sets": sets,
        "embedder": model.name,
        "seed": seed,
        "pair_sample": diversity.PAIR_SAMPLE,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    png = study.save(_plot(sets), "diversity.png")
    rows = [{"set": name} | {c: row[c] for c in COLUMNS} for name, row in sets.items()]
    parts = [
        report.table(rows),
        report.paragraph(
            "Mean pairwise cosine of sentence embeddings (lower is more diverse), distinct-n over word n-grams, "
            f"and the Vendi score (effective number of distinct personas). Embedder: {result['embedder']}; "
            f"seed {seed}; created {result['created']}."
        ),
        report.image(png, "diversity metrics per set"),
    ]
    return study.finish(result, "Persona diversity", parts)


def _plot(sets: dict[str, dict[str, Any]]):
    fig, axes = report.figure(ncols=len(METRICS), width=3.2 * len(METRICS), height=3.2)
    names = list(sets)
    for ax, metric in zip(axes, METRICS, strict=True):
        values = [sets[name][metric] for name in names]
        ax.bar(names, values, color=["#8da0cb", "#66c2a5", "#fc8d62", "#e78ac3"][: len(names)])
        arrow = "lower = more diverse" if metric in LOWER_IS_MORE_DIVERSE else "higher = more diverse"
        ax.set_title(f"{metric}\n({arrow})", fontsize=9)
        ax.tick_params(axis="x", labelsize=8, rotation=20)
    return fig
