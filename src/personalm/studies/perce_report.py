"""The PerCE experiment's report: results.json, PNG plots and one HTML page, through the harness.

Every number on the page is a mean with its 95% bootstrap interval, and every plot draws the
intervals. The experiment (perce.py) imports this module; this module imports nothing from it.
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
SMOOTH = 10  # steps per point of the training curves
COLOURS = {"base": "#999999", "ce": "#4C72B0", "perce": "#DD8452"}
SEEDS_NOTE = (
    "Intervals: 95% paired bootstrap over items. PerCE − CE is paired per (item, seed), the same held-out "
    "item scored by the CE and the PerCE adapter of one seed; each item's difference is averaged over the "
    "seeds and the items are resampled with all their seeds. The seeds are not resampled (three are too few), "
    "so the interval is the item-sampling uncertainty of the seed-averaged difference; the per-seed "
    "differences show the seed spread."
)


def with_interval(value: float, interval: list[float], signed: bool = False) -> str:
    """'0.2348 [0.2210, 0.2490]' (signed: '+0.0040 [-0.0030, +0.0110]')."""
    form = "+.4f" if signed else ".4f"
    return f"{value:{form}} [{interval[0]:{form}}, {interval[1]:{form}}]"


def _shown(results: dict) -> list[str]:
    return [m for m in METRICS if f"ce_{m}" in results]


def headline_rows(results: dict) -> list[tuple[str, ...]]:
    """(metric, base, CE, PerCE, PerCE − CE, items) as mean [95% interval], for the metrics that ran."""
    rows = []
    for metric in _shown(results):
        cells = [with_interval(results[f"{arm}_{metric}"], results[f"{arm}_{metric}_ci"]) for arm in ("base", *ARMS)]
        delta = with_interval(results[f"perce_minus_ce_{metric}"], results[f"perce_minus_ce_{metric}_ci"], True)
        rows.append((LABELS[metric], *cells, delta, str(results[f"{metric}_items"])))
    return rows


HEADLINE_COLUMNS = ("metric", "base model", "CE", "PerCE", "PerCE − CE", "items")


def markdown_table(results: dict) -> str:
    """The headline table as Markdown (for the docs), intervals included."""
    seeds = results["seeds"]
    lines = [
        f"| metric | base model | CE ({seeds} seeds) | PerCE m={results['perce_clip_min']:g} "
        f"M={results['perce_clip_max']:g} | PerCE − CE | items |",
        "|---|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in headline_rows(results)]
    if "pir_minus_random_precision_at_k" in results:
        lines.append(
            f"| PIR precision@{results['pir_k']} (base model) | | random tokens "
            f"{with_interval(results['random_precision_at_k'], results['random_precision_at_k_ci'])} | top-PIR tokens "
            f"{with_interval(results['pir_precision_at_k'], results['pir_precision_at_k_ci'])} | "
            f"{_pir_gap(results)} | {results['pir_precision_at_k_items']} |"
        )
    return "\n".join(lines)


def _pir_gap(results: dict) -> str:
    return with_interval(
        results["pir_minus_random_precision_at_k"], results["pir_minus_random_precision_at_k_ci"], signed=True
    )


def selection_rows(selection: dict) -> list[dict[str, str]]:
    """The clip-bound choice on validation: one row per candidate, differences to CE with intervals."""
    rows = []
    for row in selection["candidates"]:
        rows.append(
            {
                "PerCE bounds": f"m={row['clip_min']:g} M={row['clip_max']:g}"
                + (" (paper)" if [row["clip_min"], row["clip_max"]] == selection["paper_bounds"] else ""),
                **{
                    f"{LABELS[m]} − CE": with_interval(row[f"{m}_minus_ce"], row[f"{m}_minus_ce_ci"], True)
                    for m in ("rougeL", "persona_recall", "similarity")
                },
                "mean weight": "" if row["weight_mean"] is None else f"{row['weight_mean']:.3f}",
                "chosen": "yes" if row["chosen"] else "",
            }
        )
    return rows


def write_report(study: Study, results: dict, runs: dict, test, pir_rows: list[dict], pir: dict) -> dict:
    """results.json (with provenance), the plots and report.html in the study's folder."""
    seeds = results["seeds"]
    figures = {
        "metrics": study.save(_plot_metrics(results), "metrics.png"),
        "differences": study.save(_plot_differences(results), "differences.png"),
        "training": study.save(_plot_training(runs, seeds), "training.png"),
        "pir": study.save(_plot_pir(results), "pir_precision.png") if "pir_precision_at_k_ci" in results else None,
        "selection": study.save(_plot_selection(results["clip_selection"]), "clip_selection.png"),
    }
    parts = _parts(results, runs, test.rows, pir_rows, pir, figures)
    return study.finish(results, "PerCE vs CE on persona-chat", parts, shown=("config",), style=STYLE)


def _errors(values: list[float], intervals: list[list[float]]) -> list[list[float]]:
    """matplotlib's asymmetric yerr from means and [low, high] intervals."""
    return [[v - low for v, (low, _) in zip(values, intervals, strict=True)],
            [high - v for v, (_, high) in zip(values, intervals, strict=True)]]  # fmt: skip


def _plot_metrics(results: dict):
    """Each metric: base, CE and PerCE means with their 95% intervals; dots are the seeds' means."""
    shown = _shown(results)
    fig, axes = report.figure(ncols=len(shown), width=3.2 * len(shown), height=3.4)
    for ax, metric in zip(axes if len(shown) > 1 else [axes], shown, strict=True):
        for x, arm in enumerate(("base", *ARMS)):
            value, interval = results[f"{arm}_{metric}"], results[f"{arm}_{metric}_ci"]
            ax.bar(x, value, yerr=_errors([value], [interval]), color=COLOURS[arm], capsize=4)
            seeds = results.get(f"{arm}_{metric}_per_seed", [])
            ax.scatter([x] * len(seeds), seeds, color="black", s=10, zorder=3)
        ax.set_xticks([0, 1, 2], ["base", "CE", "PerCE"])
        ax.set_title(f"{LABELS[metric]} ({results[f'{metric}_items']} items)", fontsize=10)
    fig.suptitle("Held-out persona-chat replies and PrefEval (bars: mean, whiskers: 95% interval; dots: seeds)")
    return fig


def _plot_differences(results: dict):
    """PerCE − CE per metric: the paired mean with its 95% interval, the seeds' differences as dots."""
    shown = _shown(results)
    fig, ax = report.figure(width=6.5, height=0.7 * len(shown) + 1.6)
    values = [results[f"perce_minus_ce_{m}"] for m in shown]
    intervals = [results[f"perce_minus_ce_{m}_ci"] for m in shown]
    ys = list(range(len(shown)))[::-1]
    ax.errorbar(values, ys, xerr=_errors(values, intervals), fmt="o", color=COLOURS["perce"], capsize=4)
    for y, metric in zip(ys, shown, strict=True):
        seeds = results[f"perce_minus_ce_{metric}_per_seed"]
        ax.scatter(seeds, [y - 0.15] * len(seeds), color="black", s=8, zorder=3)
    ax.axvline(0, color="#555555", linestyle="--", linewidth=1)
    ax.set_yticks(ys, [f"{LABELS[m]}\n({results[f'{m}_items']} items)" for m in shown])
    ax.set_xlabel("PerCE − CE (paired per item and seed; 95% interval over items)")
    return fig


def _smoothed(values: list[float]) -> list[float]:
    return [statistics.fmean(values[max(0, i - SMOOTH + 1) : i + 1]) for i in range(len(values))]


def _mean_curve(runs: dict, arm: str, seeds: int, key: str) -> list[float]:
    logs = [runs[f"{arm}-seed{s}"]["train_log"] for s in range(seeds)]
    return _smoothed([statistics.fmean(log[i][key] for log in logs) for i in range(min(len(log) for log in logs))])


def _plot_training(runs: dict, seeds: int):
    """Plain CE of the training tokens per step for both arms; PerCE's weight mean and clip fractions."""
    fig, (left, right) = report.figure(ncols=2, width=10, height=3.4)
    left.plot(_mean_curve(runs, "ce", seeds, "loss"), label="CE run", color=COLOURS["ce"])
    left.plot(_mean_curve(runs, "perce", seeds, "ce"), label="PerCE run (its plain CE)", color=COLOURS["perce"])
    left.set_xlabel("step")
    left.set_ylabel(f"token cross-entropy (seed mean, {SMOOTH}-step mean)")
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
    values = [results["random_precision_at_k"], results["pir_precision_at_k"]]
    intervals = [results["random_precision_at_k_ci"], results["pir_precision_at_k_ci"]]
    ax.bar([0, 1], values, yerr=_errors(values, intervals), color=["#999999", "#C44E52"], capsize=4)
    ax.set_xticks([0, 1], ["random tokens", "top-PIR tokens"])
    ax.set_ylabel(f"precision@{results['pir_k']} vs persona words")
    ax.set_title(f"{results['pir_precision_at_k_items']} replies, 95% intervals", fontsize=10)
    ax.set_ylim(0, 1)
    return fig


def _plot_selection(selection: dict):
    """Validation differences to CE per candidate bound, with 95% intervals; the chosen one marked."""
    rows = selection["candidates"]
    fig, axes = report.figure(ncols=2, width=10, height=3.4)
    for ax, metric in zip(axes, ("rougeL", "persona_recall"), strict=True):
        values = [row[f"{metric}_minus_ce"] for row in rows]
        errors = _errors(values, [row[f"{metric}_minus_ce_ci"] for row in rows])
        colours = [COLOURS["perce"] if row["chosen"] else "#BBBBBB" for row in rows]
        ax.bar(range(len(rows)), values, yerr=errors, color=colours, capsize=4)
        ax.axhline(0, color="#555555", linestyle="--", linewidth=1)
        ax.set_xticks(range(len(rows)), [f"m={r['clip_min']:g}\nM={r['clip_max']:g}" for r in rows])
        ax.set_title(f"{LABELS[metric]} − CE ({rows[0][f'{metric}_items']} validation items)", fontsize=10)
    fig.suptitle(f"PerCE clip bounds on validation conversations (seeds {selection['seeds']}; coloured: chosen)")
    return fig


def _parts(
    results: dict, runs: dict, test: list[dict], pir_rows: list[dict], pir: dict, figures: dict[str, Path | None]
) -> list[str]:
    seeds, data, selection = results["seeds"], results["data"], results["clip_selection"]
    weights, final, cpu = results["perce_weights"], results["final_train_ce"], results["work_cpu_seconds"]
    headline = [dict(zip(HEADLINE_COLUMNS, row, strict=True)) for row in headline_rows(results)]
    per_seed = "; ".join(
        f"{LABELS[m]} {', '.join(f'{d:+.4f}' for d in results[f'perce_minus_ce_{m}_per_seed'])} "
        f"(PerCE ahead in {results[f'perce_wins_{m}']}/{seeds})"
        for m in _shown(results)
    )
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
    chosen = selection["chosen"]
    parts = [
        report.paragraph(
            f"Same base model, LoRA config, training windows, steps and seeds for both arms: every window of "
            f"{data['train_conversations']} training conversations ({data['train_windows']} windows, "
            f"{data['train_steps']} steps × {results['config']['batch_size']}, {data['train_epochs']} passes), "
            f"{seeds} seeds. PerCE uses m={chosen['clip_min']:g}, M={chosen['clip_max']:g}, chosen on "
            f"{selection['validation_conversations']} validation conversations (below). Greedy replies to held-out "
            f"turns of {data['test_conversations']} test conversations: ROUGE-L and MiniLM cosine on "
            f"{data['test_replies']} replies drawn at random, persona-term recall on "
            f"{data['test_replies_with_persona_terms']} replies whose reference shares a content word with the "
            f"speaker's persona (the others have nothing to recall), PrefEval on {data['prefeval_items']} items. "
            f"Data: {data['csv']}."
        ),
        report.table(headline),
        report.paragraph(f"{SEEDS_NOTE} Per-seed PerCE − CE: {per_seed}."),
        report.paragraph(
            f"CPU time on this machine: the training runs and evaluations the results rest on took "
            f"{cpu['total']:.0f} CPU-seconds ({cpu['total'] / 3600:.2f} CPU-hours: training {cpu['training']:.0f} s "
            f"over {cpu['training_runs']} adapters, evaluation {cpu['evaluation']:.0f} s); training took "
            f"{sum(results['train_seconds'].values()):.0f} s of wall time for the {len(results['train_seconds'])} "
            f"headline adapters. This invocation: {results['seconds']} s wall, {results['cpu_seconds']} CPU-seconds "
            f"(units already in the cache are reused)."
        ),
    ]
    if "pir_minus_random_precision_at_k" in results:
        parts.append(
            report.paragraph(
                f"PIR precision@{results['pir_k']} of the base model's top-PIR reply tokens against the persona's "
                f"words: {with_interval(results['pir_precision_at_k'], results['pir_precision_at_k_ci'])} vs "
                f"{with_interval(results['random_precision_at_k'], results['random_precision_at_k_ci'])} for random "
                f"tokens, difference {_pir_gap(results)} "
                f"({results['pir_precision_at_k_items']} replies that contain persona words)."
            )
        )
    parts += [
        report.paragraph(
            f"PerCE's token weights over all steps and seeds: mean {weights['weight_mean']:.3f}; "
            f"{weights['frac_clip_min']:.1%} of\nthe reply tokens at the lower bound m, {weights['frac_clip_max']:.1%} "
            f"at the upper bound M. Plain CE of the training\ntokens at the last step (mean over seeds): "
            f"CE run {final['ce']:.3f}, PerCE run {final['perce']:.3f}."
        ),
        *(report.image(figures[name], name) for name in ("metrics", "differences", "training", "pir") if figures[name]),
        report.section(
            "PerCE clip bounds, chosen on validation conversations",
            report.paragraph(
                f"Each candidate trained on seeds {selection['seeds']} and scored on {selection['validation_replies']} "
                f"validation replies ({selection['validation_recall_replies']} for persona-term recall) against CE of "
                f"the same seeds; no test conversation is involved. Rule: {selection['rule']}."
            ),
            report.table(selection_rows(selection)),
            report.image(figures["selection"], "clip selection"),
        ),
        report.section("Sample replies (seed 0)", report.table(samples)),
        report.section(
            "Which reference tokens depend on the persona (base model PIR)",
            legend(),
            heatmap_sections(examples, set(pir["special"])),
        ),
    ]
    return parts
