"""The report of `personalm bench dedup`: results.json, two PNG plots and report.html, through the harness."""

from __future__ import annotations

import json
from typing import Any

from personalm import report
from personalm.studies.harness import Study


def write(study: Study, result: dict[str, Any]) -> dict[str, Any]:
    """results.json, minhash.png, embedding.png and report.html in the study's folder."""
    m, e = result["minhash"], result["embedding"]

    fig, axes = report.figure(ncols=2, width=9, height=3.4)
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
    minhash_png = study.save(fig, "minhash.png")

    fig, ax = report.figure(width=5.5, height=3.4)
    bars = [e["subset_exact_seconds"], e["subset_ours_seconds"]]
    ax.bar([f"exact blockwise\n{e['subset_rows']:,} rows", f"personalm (index)\n{e['subset_rows']:,} rows"], bars)
    ax.bar([f"personalm\n{e['rows']:,} rows"], [e["seconds"]], color="#66c2a5")
    ax.set_ylabel("seconds")
    ax.set_title(
        f"embedding stage: {e['rows']:,} vectors in {e['seconds']} s, recall {e['metrics']['recall']}\n"
        f"(exact on all rows would take ~{e['exact_extrapolated_seconds']:,} s)",
        fontsize=9,
    )
    embedding_png = study.save(fig, "embedding.png")

    rows = [dict(zip(("measure", "personalm", "peer", "ratio"), row, strict=True)) for row in headline(result)]
    parts = [
        report.paragraph(
            f"Peer: {result['peer']}. Threshold {result['threshold']}, {result['num_perm']} permutations, "
            f"seed {result['seed']}, machine {json.dumps(result['machine'])}."
        ),
        _load_note(result),
        report.table(rows),
        report.section("MinHash stage", report.image(minhash_png, "MinHash speed, precision and recall")),
        report.section(
            "Embedding stage",
            report.image(embedding_png, "embedding stage time and recall"),
            report.paragraph(
                "Precision: share of reported (dropped, kept) pairs whose exact similarity reaches the threshold. "
                "Recall: share of true near-duplicate pairs (exact similarity at or above it, from a seeded sample "
                "of rows checked against all rows) of which at most one row survives. Full numbers in results.json."
            ),
        ),
    ]
    return study.finish(result, "Persona dedup benchmark", parts)


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
    ] + (
        [(
            f"MinHash stage on Ray ({m['ray_cpus']} CPUs) rows/s, vs local",
            f"{m['ray_rows_per_s']:,}",
            f"{m['ours_rows_per_s']:,} (local)",
            f"{round(m['ray_rows_per_s'] / m['ours_rows_per_s'], 2)}x, same decision: {m['ray_same_decision']}",
        )]
        if "ray_rows_per_s" in m
        else []
    )  # fmt: skip


def _load_note(result: dict[str, Any]) -> str:
    """Under what load the times were taken: on a shared machine they are pessimistic."""
    load = result.get("load_average_1min")
    if not load:
        return ""
    cores = result["machine"].get("cpu_count")
    readings = " / ".join(f"{value} ({when.replace('_', ' ')})" for when, value in load.items())
    return report.paragraph(
        f"1-minute load average during the run: {readings}, on {cores} cores. The machine was shared "
        "with other jobs (a long tone experiment, other engineers' tests), so the absolute times are "
        "pessimistic; both sides of each comparison ran in the same process, one after the other, under "
        "the same load."
    )
