"""The PerCE experiment's report: results.json, PNG plots and one HTML page, through the harness.

The experiment (perce.py) imports this module; this module imports nothing from it.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from personalm import report
from personalm.perce.contrast import TokenInfluence
from personalm.perce.explain import STYLE, Explained, heatmap_sections, legend
from personalm.studies.harness import Study

ARMS = ("ce", "perce")
METRICS = ("rougeL", "persona_recall", "similarity", "prefeval_acc")
LABELS = {
    "rougeL": "ROUGE-L F1",
    "persona_recall": "persona-term recall",
    "similarity": "MiniLM cosine",
    "prefeval_acc": "PrefEval MC accuracy",
}
HEATMAPS = 4
SAMPLES = 8
COLOURS = {"base": "#999999", "ce": "#4C72B0", "perce": "#DD8452"}


def headline_rows(results: dict) -> list[tuple[str, str, str, str, str]]:
    """(metric, base, CE mean ± sd, PerCE mean ± sd, PerCE − CE) for the metrics that ran."""
    rows = []
    for metric in METRICS:
        if f"ce_{metric}" not in results:
            continue
        cells = [f"{results[f'{arm}_{metric}']:.4f} ± {results[f'{arm}_{metric}_std']:.4f}" for arm in ARMS]
        delta = f"{results[f'perce_minus_ce_{metric}']:+.4f}"
        rows.append((LABELS[metric], f"{results[f'base_{metric}']:.4f}", *cells, delta))
    return rows


def markdown_table(results: dict) -> str:
    seeds = results["config"]["seeds"]
    lines = [
        f"| metric | base model | CE (mean ± sd, {seeds} seeds) | PerCE (mean ± sd) | PerCE − CE |",
        "|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in headline_rows(results)]
    lines.append(
        f"| PIR precision@{results['pir_k']} (base model) | | random tokens {results['random_precision_at_k']:.4f} "
        f"| top-PIR tokens {results['pir_precision_at_k']:.4f} | |"
    )
    return "\n".join(lines)


def write_report(study: Study, results: dict, runs: dict, test: list[dict], pir_rows: list[dict], pir: dict) -> dict:
    """results.json (with provenance), the plots and report.html in the study's folder."""
    seeds = results["config"]["seeds"]
    figures = [
        study.save(_plot_metrics(results), "metrics.png"),
        study.save(_plot_training(runs, seeds), "training.png"),
        study.save(_plot_pir(results), "pir_precision.png"),
    ]
    sweep = results.get("sweep")
    sweep_png = study.save(_plot_sweep(sweep), "clip_sweep.png") if sweep else None
    parts = _parts(results, runs, test, pir_rows, pir, figures, sweep_png)
    return study.finish(results, "PerCE vs CE on persona-chat", parts, shown=("config",), style=STYLE)


def _plot_metrics(results: dict):
    shown = [m for m in METRICS if f"ce_{m}" in results]
    fig, axes = report.figure(ncols=len(shown), width=3.2 * len(shown), height=3.4)
    for ax, metric in zip(axes if len(shown) > 1 else [axes], shown, strict=True):
        ax.bar(0, results[f"base_{metric}"], color=COLOURS["base"])
        for x, arm in enumerate(ARMS, start=1):
            ax.bar(x, results[f"{arm}_{metric}"], yerr=results[f"{arm}_{metric}_std"], color=COLOURS[arm], capsize=4)
            values = results[f"{arm}_{metric}_per_seed"]
            ax.scatter([x] * len(values), values, color="black", s=10, zorder=3)
        ax.set_xticks([0, 1, 2], ["base", "CE", "PerCE"])
        ax.set_title(LABELS[metric], fontsize=10)
    fig.suptitle("Held-out persona-chat replies and PrefEval transfer (bars: mean ± sd over seeds; dots: seeds)")
    return fig


def _mean_curve(runs: dict, arm: str, seeds: int, key: str) -> list[float]:
    logs = [runs[f"{arm}-seed{s}"]["train_log"] for s in range(seeds)]
    return [statistics.fmean(log[i][key] for log in logs) for i in range(min(len(log) for log in logs))]


def _plot_training(runs: dict, seeds: int):
    """Plain CE of the training tokens per step for both arms; PerCE's weight mean and clip fractions."""
    fig, (left, right) = report.figure(ncols=2, width=10, height=3.4)
    left.plot(_mean_curve(runs, "ce", seeds, "loss"), label="CE run", color=COLOURS["ce"])
    left.plot(_mean_curve(runs, "perce", seeds, "ce"), label="PerCE run (its plain CE)", color=COLOURS["perce"])
    left.set_xlabel("step")
    left.set_ylabel("token cross-entropy (mean over seeds)")
    left.legend()
    right.plot(_mean_curve(runs, "perce", seeds, "weight_mean"), label="mean weight", color=COLOURS["perce"])
    right.plot(_mean_curve(runs, "perce", seeds, "frac_clip_min"), label="fraction at m", color="#55A868")
    right.plot(_mean_curve(runs, "perce", seeds, "frac_clip_max"), label="fraction at M", color="#C44E52")
    right.set_xlabel("step")
    right.set_title("PerCE token weights clip(PIR, m, M)", fontsize=10)
    right.legend()
    return fig


def _plot_pir(results: dict):
    fig, ax = report.figure(width=4, height=3.2)
    ax.bar([0, 1], [results["random_precision_at_k"], results["pir_precision_at_k"]], color=["#999999", "#C44E52"])
    ax.set_xticks([0, 1], ["random tokens", "top-PIR tokens"])
    ax.set_ylabel(f"precision@{results['pir_k']} vs persona words")
    ax.set_ylim(0, 1)
    return fig


def sweep_label(row: dict) -> str:
    return "CE" if row["arm"] == "ce" else f"PerCE m={row['clip_min']:g} M={row['clip_max']:g}"


def _plot_sweep(sweep: list[dict]):
    """Held-out ROUGE-L and persona-term recall per clip setting on one seed, CE as the dashed line."""
    perce = [row for row in sweep if row["arm"] == "perce"]
    ce = next(row for row in sweep if row["arm"] == "ce")
    fig, axes = report.figure(ncols=2, width=10, height=3.6)
    for ax, metric in zip(axes, ("rougeL", "persona_recall"), strict=True):
        ax.bar(range(len(perce)), [row[metric] for row in perce], color=COLOURS["perce"])
        for x, row in enumerate(perce):
            values = row[f"{metric}_per_seed"]
            ax.scatter([x] * len(values), values, color="black", s=10, zorder=3)
        ax.axhline(ce[metric], color=COLOURS["ce"], linestyle="--", label="CE, same seeds")
        ax.set_xticks(range(len(perce)), [f"m={r['clip_min']:g}\nM={r['clip_max']:g}" for r in perce])
        ax.set_title(LABELS[metric], fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle(f"PerCE clip bounds, held-out persona-chat (bars: mean of {ce['seeds']} seed(s); dots: seeds)")
    return fig


def _sweep_section(sweep: list[dict], png: Path) -> str:
    """The clip-bound sweep as a table and its plot."""
    rows = [
        {
            "run": sweep_label(row),
            "ROUGE-L": f"{row['rougeL']:.4f}",
            "persona-term recall": f"{row['persona_recall']:.4f}",
            "MiniLM cosine": f"{row['similarity']:.4f}",
            "mean weight": "" if row["weight_mean"] is None else f"{row['weight_mean']:.3f}",
        }
        for row in sweep
    ]
    heading = f"Clip bounds (mean of {sweep[0]['seeds']} seed(s), the same seeds for every row)"
    return report.section(heading, report.table(rows), report.image(png, "clip sweep"))


def _parts(
    results: dict, runs: dict, test: list[dict], pir_rows: list[dict], pir: dict, figures: list[Path], sweep_png
) -> list[str]:
    seeds = results["config"]["seeds"]
    data, weights, final = results["data"], results["perce_weights"], results["final_train_ce"]
    columns = ("metric", "base model", "CE (mean ± sd)", "PerCE (mean ± sd)", "PerCE − CE")
    headline = [dict(zip(columns, row, strict=True)) for row in headline_rows(results)]
    examples = [
        Explained(
            row["persona"],
            [*row["context"][-2:], {"role": "assistant", "content": row["reply"]}],
            TokenInfluence(**{k: v for k, v in item.items() if k != "pir"}),
        )
        for row, item in zip(pir_rows[:HEATMAPS], pir["influences"], strict=False)
    ]
    samples = [
        {
            "persona": row["persona"],
            "last turn": row["context"][-1]["content"],
            "reference": row["reply"],
            "CE": runs["ce-seed0"]["outputs"][i],
            "PerCE": runs["perce-seed0"]["outputs"][i],
        }
        for i, row in enumerate(test[:SAMPLES])
    ]
    delta_note = ", ".join(
        f"{LABELS[m]}: PerCE better in {results[f'perce_wins_{m}']}/{seeds} seeds"
        for m in METRICS
        if f"perce_wins_{m}" in results
    )
    return [
        report.paragraph(
            f"Same base model, LoRA config, training windows, steps and seeds for both arms; greedy replies to "
            f"{data['test_replies']} held-out turns from {data['test_conversations']} held-out conversations. "
            f"Persona-term recall is scored on the {data['test_replies_with_persona_terms']} of them whose reference "
            f"shares a content word with the speaker's persona (the others have nothing to recall). "
            f"Paired by seed: {delta_note}. This invocation took {results['seconds']} s (runs already in the cache "
            f"are reused); training all {len(results['train_seconds'])} adapters took "
            f"{sum(results['train_seconds'].values()):.0f} s."
        ),
        report.table(headline),
        report.paragraph(
            f"PIR precision@{results['pir_k']} of the base model's top-PIR reply tokens against the persona's words: "
            f"{results['pir_precision_at_k']:.3f} vs {results['random_precision_at_k']:.3f} for random tokens "
            f"({results['pir_examples_with_persona_tokens']} replies that contain persona words)."
        ),
        report.paragraph(
            f"PerCE's token weights over all steps and seeds: mean {weights['weight_mean']:.3f}; "
            f"{weights['frac_clip_min']:.1%} of\nthe reply tokens at the lower bound m, {weights['frac_clip_max']:.1%} "
            f"at the upper bound M. Plain CE of the training\ntokens at the last step (mean over seeds): "
            f"CE run {final['ce']:.3f}, PerCE run {final['perce']:.3f}."
        ),
        *(report.image(png, caption) for png, caption in zip(figures, ("metrics", "training", "pir"), strict=True)),
        _sweep_section(results["sweep"], sweep_png) if sweep_png else "",
        report.section("Sample replies (seed 0)", report.table(samples)),
        report.section(
            "Which reference tokens depend on the persona (base model PIR)",
            legend(),
            heatmap_sections(examples, set(pir["special"])),
        ),
    ]
