"""The report of `personalm bench dedup`: results.json, two PNG plots and an HTML page."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any


def write(result: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    m, e = result["minhash"], result["embedding"]

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    names = ["personalm", "datasketch loop"]
    axes[0].bar(names, [m["ours_rows_per_s"], m["peer_rows_per_s"]], color=["#66c2a5", "#8da0cb"])
    axes[0].set_title(f"MinHash stage, {m['rows']:,} rows: rows/s ({result['minhash_speedup']}x)", fontsize=9)
    width = 0.38
    for k, (name, key) in enumerate((("personalm", "ours"), ("datasketch loop", "peer"))):
        values = [m[key]["precision"], m[key]["recall"]]
        axes[1].bar([x + k * width for x in (0, 1)], values, width, label=name, color=["#66c2a5", "#8da0cb"][k])
    axes[1].set_xticks([width / 2, 1 + width / 2], ["precision", "recall"])
    axes[1].set_ylim(0, 1.05)
    axes[1].set_title("against exact Jaccard >= 0.9", fontsize=9)
    axes[1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "minhash.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    bars = [e["subset_exact_seconds"], e["subset_ours_seconds"]]
    ax.bar([f"exact blockwise\n{e['subset_rows']:,} rows", f"personalm (index)\n{e['subset_rows']:,} rows"], bars)
    ax.bar([f"personalm\n{e['rows']:,} rows"], [e["seconds"]], color="#66c2a5")
    ax.set_ylabel("seconds")
    ax.set_title(
        f"embedding stage: {e['rows']:,} vectors in {e['seconds']} s, recall {e['metrics']['recall']}\n"
        f"(exact on all rows would take ~{e['exact_extrapolated_seconds']:,} s)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(out / "embedding.png", dpi=110)
    plt.close(fig)
    (out / "index.html").write_text(_html(result))


def headline(result: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(what, personalm, peer, ratio) rows shared by the console table, HTML and README."""
    m, e = result["minhash"], result["embedding"]
    return [
        (
            "MinHash stage rows/s",
            f"{m['ours_rows_per_s']:,}",
            f"{m['peer_rows_per_s']:,}",
            f"{result['minhash_speedup']}x",
        ),
        ("MinHash precision", str(m["ours"]["precision"]), str(m["peer"]["precision"]), ""),
        ("MinHash recall", str(m["ours"]["recall"]), str(m["peer"]["recall"]), ""),
        ("MinHash peak memory (MiB)", str(m["ours_peak_mib"]), str(m["peer_peak_mib"]), f"{m['memory_ratio']}x"),
        (
            f"embedding stage, {e['rows']:,} vectors (s)",
            str(e["seconds"]),
            f"~{e['exact_extrapolated_seconds']:,} (exact, extrapolated)",
            f"{round(e['exact_extrapolated_seconds'] / e['seconds'], 1)}x",
        ),
        ("embedding recall", str(e["metrics"]["recall"]), "1.0 (exact)", ""),
    ]


def _html(result: dict[str, Any]) -> str:
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in headline(result))
    return (
        "<!doctype html><meta charset='utf-8'><title>bench dedup</title>"
        "<style>body{font-family:sans-serif;margin:2em;max-width:60em}td,th{padding:4px 10px;"
        "border-bottom:1px solid #ddd}</style><h1>Persona dedup benchmark</h1>"
        f"<p>Peer: {html.escape(result['peer'])}. Threshold {result['threshold']}, {result['num_perm']} permutations, "
        f"seed {result['seed']}, machine {html.escape(json.dumps(result['machine']))}.</p>"
        f"{_load_note(result)}"
        f"<table><tr><th>measure</th><th>personalm</th><th>peer</th><th>ratio</th></tr>{rows}</table>"
        "<h2>MinHash stage</h2><img src='minhash.png' alt='MinHash speed, precision and recall'>"
        "<h2>Embedding stage</h2><img src='embedding.png' alt='embedding stage time and recall'>"
        "<p>Precision: share of reported (dropped, kept) pairs whose exact similarity reaches the threshold. "
        "Recall: share of true near-duplicate pairs (exact similarity at or above it, from a seeded sample of rows "
        "checked against all rows) of which at most one row survives. Full numbers in results.json.</p>"
    )


def _load_note(result: dict[str, Any]) -> str:
    """Under what load the times were taken: on a shared machine they are pessimistic."""
    load = result.get("load_average_1min")
    if not load:
        return ""
    cores = result["machine"].get("cpu_count")
    readings = " / ".join(f"{value} ({html.escape(when.replace('_', ' '))})" for when, value in load.items())
    return (
        f"<p>1-minute load average during the run: {readings}, on {cores} cores. The machine was shared "
        "with other jobs (a long tone experiment, other engineers' tests), so the absolute times are "
        "pessimistic; both sides of each comparison ran in the same process, one after the other, under "
        "the same load.</p>"
    )
