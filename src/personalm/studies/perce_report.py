"""The PerCE experiment's report: results.json, PNG plots and one HTML page."""

from __future__ import annotations

import html
import json
import statistics
from pathlib import Path

from personalm.perce.contrast import TokenInfluence
from personalm.studies.perce import ARMS, LABELS, METRICS
from personalm.perce.explain import STYLE, Explained, heatmap_sections, legend

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


def write_report(out: Path, results: dict, runs: dict, test: list[dict], pir_rows: list[dict], pir: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    _plot_metrics(out / "metrics.png", results)
    _plot_training(out / "training.png", runs, results["config"]["seeds"])
    _plot_pir(out / "pir_precision.png", results)
    if results.get("sweep"):
        _plot_sweep(out / "clip_sweep.png", results["sweep"])
    (out / "report.html").write_text(_html(results, runs, test, pir_rows, pir))


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_metrics(path: Path, results: dict) -> None:
    plt = _plt()
    shown = [m for m in METRICS if f"ce_{m}" in results]
    fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 3.4))
    for ax, metric in zip(axes if len(shown) > 1 else [axes], shown, strict=True):
        ax.bar(0, results[f"base_{metric}"], color=COLOURS["base"])
        for x, arm in enumerate(ARMS, start=1):
            ax.bar(x, results[f"{arm}_{metric}"], yerr=results[f"{arm}_{metric}_std"], color=COLOURS[arm], capsize=4)
            values = results[f"{arm}_{metric}_per_seed"]
            ax.scatter([x] * len(values), values, color="black", s=10, zorder=3)
        ax.set_xticks([0, 1, 2], ["base", "CE", "PerCE"])
        ax.set_title(LABELS[metric], fontsize=10)
    fig.suptitle("Held-out persona-chat replies and PrefEval transfer (bars: mean ± sd over seeds; dots: seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _mean_curve(runs: dict, arm: str, seeds: int, key: str) -> list[float]:
    logs = [runs[f"{arm}-seed{s}"]["train_log"] for s in range(seeds)]
    return [statistics.fmean(log[i][key] for log in logs) for i in range(min(len(log) for log in logs))]


def _plot_training(path: Path, runs: dict, seeds: int) -> None:
    """Plain CE of the training tokens per step for both arms; PerCE's weight mean and clip fractions."""
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_pir(path: Path, results: dict) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4, 3.2))
    ax.bar([0, 1], [results["random_precision_at_k"], results["pir_precision_at_k"]], color=["#999999", "#C44E52"])
    ax.set_xticks([0, 1], ["random tokens", "top-PIR tokens"])
    ax.set_ylabel(f"precision@{results['pir_k']} vs persona words")
    ax.set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sweep_label(row: dict) -> str:
    return "CE" if row["arm"] == "ce" else f"PerCE m={row['clip_min']:g} M={row['clip_max']:g}"


def _plot_sweep(path: Path, sweep: list[dict]) -> None:
    """Held-out ROUGE-L and persona-term recall per clip setting on one seed, CE as the dashed line."""
    plt = _plt()
    perce = [row for row in sweep if row["arm"] == "perce"]
    ce = next(row for row in sweep if row["arm"] == "ce")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _sweep_html(sweep: list[dict]) -> str:
    """The clip-bound sweep as a table and its plot (empty when no sweep ran)."""
    if not sweep:
        return ""
    cells = []
    for row in sweep:
        weight = "" if row["weight_mean"] is None else f"{row['weight_mean']:.3f}"
        values = [sweep_label(row), f"{row['rougeL']:.4f}", f"{row['persona_recall']:.4f}", f"{row['similarity']:.4f}"]
        cells.append("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in [*values, weight]) + "</tr>")
    return f"""<h2>Clip bounds (mean of {sweep[0]["seeds"]} seed(s), the same seeds for every row)</h2>
<table><tr><th>run</th><th>ROUGE-L</th><th>persona-term recall</th><th>MiniLM cosine</th><th>mean weight</th></tr>
{"".join(cells)}</table><img src="clip_sweep.png" alt="clip sweep">
"""


def _html(results: dict, runs: dict, test: list[dict], pir_rows: list[dict], pir: dict) -> str:
    table = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in headline_rows(results)
    )
    seeds = results["config"]["seeds"]
    weights, final = results["perce_weights"], results["final_train_ce"]
    examples = [
        Explained(
            row["persona"],
            [*row["context"][-2:], {"role": "assistant", "content": row["reply"]}],
            TokenInfluence(**{k: v for k, v in item.items() if k != "pir"}),
        )
        for row, item in zip(pir_rows[:HEATMAPS], pir["influences"], strict=False)
    ]
    samples = "".join(
        f"<tr><td class='persona'>{html.escape(row['persona'])}</td><td>{html.escape(row['context'][-1]['content'])}</td>"
        f"<td>{html.escape(row['reply'])}</td><td>{html.escape(runs['ce-seed0']['outputs'][i])}</td>"
        f"<td>{html.escape(runs['perce-seed0']['outputs'][i])}</td></tr>"
        for i, row in enumerate(test[:SAMPLES])
    )
    delta_note = ", ".join(
        f"{LABELS[m]}: PerCE better in {results[f'perce_wins_{m}']}/{seeds} seeds"
        for m in METRICS
        if f"perce_wins_{m}" in results
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>PerCE vs CE</title>
<style>body{{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;line-height:1.5}}
img{{max-width:100%}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top}}
{STYLE}</style></head><body>
<h1>PerCE vs CE on persona-chat</h1>
<p>Same base model, LoRA config, training windows, steps and seeds for both arms; greedy replies to
{results["data"]["test_replies"]} held-out turns from {results["data"]["test_conversations"]} held-out conversations.
Persona-term recall is scored on the {results["data"]["test_replies_with_persona_terms"]} of them whose reference shares a
content word with the speaker's persona (the others have nothing to recall). Paired by seed: {delta_note}.
This invocation took {results["seconds"]} s (runs already in the cache are reused); training all
{len(results["train_seconds"])} adapters took {sum(results["train_seconds"].values()):.0f} s.</p>
<table><tr><th>metric</th><th>base model</th><th>CE (mean ± sd)</th><th>PerCE (mean ± sd)</th><th>PerCE − CE</th></tr>
{table}</table>
<p>PIR precision@{results["pir_k"]} of the base model's top-PIR reply tokens against the persona's words:
<b>{results["pir_precision_at_k"]:.3f}</b> vs <b>{results["random_precision_at_k"]:.3f}</b> for random tokens
({results["pir_examples_with_persona_tokens"]} replies that contain persona words).</p>
<p>PerCE's token weights over all steps and seeds: mean {weights["weight_mean"]:.3f}; {weights["frac_clip_min"]:.1%} of
the reply tokens at the lower bound m, {weights["frac_clip_max"]:.1%} at the upper bound M. Plain CE of the training
tokens at the last step (mean over seeds): CE run {final["ce"]:.3f}, PerCE run {final["perce"]:.3f}.</p>
<img src="metrics.png" alt="metrics"><br><img src="training.png" alt="training"><img src="pir_precision.png" alt="pir">
{_sweep_html(results.get("sweep", []))}
<h2>Sample replies (seed 0)</h2>
<table><tr><th>persona</th><th>last turn</th><th>reference</th><th>CE</th><th>PerCE</th></tr>{samples}</table>
<h2>Which reference tokens depend on the persona (base model PIR)</h2>{legend()}
{heatmap_sections(examples, set(pir["special"]))}
<h2>Settings</h2><pre>{html.escape(json.dumps(results["config"], indent=1))}</pre>
<pre>{html.escape(json.dumps(results["versions"], indent=1))}</pre></body></html>
"""
