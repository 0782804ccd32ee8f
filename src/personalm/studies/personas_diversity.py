"""Diversity report of persona sets (e.g. before and after dedup): results.json, PNG, HTML."""

from __future__ import annotations

import html
import json
import time
from pathlib import Path
from typing import Any

from personalm.eval import diversity
from personalm.personas.io import read_personas

METRICS = ("mean_pairwise_cosine", "distinct_1", "distinct_2", "vendi")
LOWER_IS_MORE_DIVERSE = {"mean_pairwise_cosine"}


def diversity_report(
    inputs: list[Path], out: Path, labels: list[str] | None = None, embedder: str | None = None, seed: int = 0
) -> dict[str, Any]:
    """Measure every persona file and write out/results.json, out/diversity.png, out/index.html."""
    from personalm.provenance import machine, versions
    from personalm.models.embedder import Embedder

    labels = labels or [p.stem for p in inputs]
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
        "machine": machine(),
        "versions": versions("personalm", "numpy", "sentence-transformers", "torch"),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    _plot(sets, out / "diversity.png")
    (out / "index.html").write_text(_html(result))
    return result


def _plot(sets: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(3.2 * len(METRICS), 3.2))
    names = list(sets)
    for ax, metric in zip(axes, METRICS, strict=True):
        values = [sets[name][metric] for name in names]
        ax.bar(names, values, color=["#8da0cb", "#66c2a5", "#fc8d62", "#e78ac3"][: len(names)])
        arrow = "lower = more diverse" if metric in LOWER_IS_MORE_DIVERSE else "higher = more diverse"
        ax.set_title(f"{metric}\n({arrow})", fontsize=9)
        ax.tick_params(axis="x", labelsize=8, rotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _html(result: dict[str, Any]) -> str:
    columns = ("rows", "mean_pairwise_cosine", "distinct_1", "distinct_2", "distinct_3", "vendi")
    head = "".join(f"<th>{c}</th>" for c in ("set", *columns))
    body = "".join(
        "<tr><td>" + html.escape(name) + "</td>" + "".join(f"<td>{row[c]}</td>" for c in columns) + "</tr>"
        for name, row in result["sets"].items()
    )
    return (
        "<!doctype html><meta charset='utf-8'><title>Persona diversity</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:4px 10px;border-bottom:1px solid #ddd}</style>"
        f"<h1>Persona diversity</h1><table><tr>{head}</tr>{body}</table>"
        "<p>Mean pairwise cosine of sentence embeddings (lower is more diverse), distinct-n over word n-grams, "
        f"and the Vendi score (effective number of distinct personas). Embedder: {html.escape(result['embedder'])}; "
        f"seed {result['seed']}; created {result['created']}.</p>"
        "<img src='diversity.png' alt='diversity metrics per set'>"
    )
