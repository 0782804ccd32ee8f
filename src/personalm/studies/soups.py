"""`personalm soups experiment`: P-Soups vs the prompted base and vs Prompted-MORL, plus a Pareto front.

For every combination of poles, on held-out prompts, three systems answer the same chat (the
combined preference prompt as system message, greedy decoding):
  * the base model (prompting only);
  * the soup: base + Σ_k w_k·ΔW_k over the combination's pole adapters (exact merge);
  * the Prompted-MORL adapter.
The programmatic judge compares the soup with each rival one preference at a time (win = 1, tie =
0.5, loss = 0); a prompt's score for a combination is the mean over its poles, and every win rate
carries a 95% bootstrap interval over the prompts (the headline: over the prompts' means across all
combinations). With a judge model configured, the LLM judge scores the same pairs beside it, and the
two judges' agreement on the pairs both decided is reported. The Pareto front interpolates two pole
adapters (λ, 1-λ) and plots their programmatic scores with intervals over the prompts.

Held-out prompts: the built-in set's last 50 (never collected on), a prompts file's tail, or with
`--data DIR` PrefEval questions from DIR (real users' questions nobody wrote for this study).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from personalm import report
from personalm.adapters import Adapter, exact_factors, is_adapter_dir, load_adapter, soup_applied
from personalm.errors import PersonalmError
from personalm.eval.bootstrap import bootstrap_mean
from personalm.eval.judges import PairJudge, ProgrammaticJudge, agreement
from personalm.eval.prefeval import load_prefeval
from personalm.models.base import SamplingParams
from personalm.models.registry import DEFAULT_MODEL, load_model
from personalm.soups.collect import PMORL, chat
from personalm.soups.preferences import Pole, Preferences, combination_name
from personalm.soups.prompts import HELD_OUT, load_prompts, split_prompts
from personalm.studies.harness import Study
from personalm.tables import write_rows

SOUP_WEIGHTINGS = ("mean", "sum")
RIVALS = ("prompted", "pmorl")
Verdicts = dict[str, dict[str, dict[str, np.ndarray]]]
"""rival -> combination -> pole key -> one verdict per held-out prompt"""


@dataclass
class ExperimentConfig:
    adapters: str
    out: str
    model: str = DEFAULT_MODEL
    prompts: str | None = None
    data: str | None = None  # held-out prompts: PrefEval questions from DATA/prefeval/mcq_options
    held_out: int = HELD_OUT
    limit: int | None = None
    max_tokens: int = 64
    weighting: str = "mean"
    pareto: str = "expertise.elementary,informativeness.informative"
    pareto_steps: int = 5
    judge: str | None = None
    threads: int | None = None
    seed: int = 0


def soup_weights(combo: Sequence[Pole], weighting: str) -> dict[str, float]:
    """`mean`: each pole 1/n (the paper's uniform soup); `sum`: each pole 1 (task arithmetic)."""
    if weighting not in SOUP_WEIGHTINGS:
        raise PersonalmError(f"--weighting {weighting}: expected {' or '.join(SOUP_WEIGHTINGS)}")
    w = 1.0 / len(combo) if weighting == "mean" else 1.0
    return {p.key: w for p in combo}


def load_pole_adapters(root: Path, prefs: Preferences) -> tuple[dict[str, Adapter], Path]:
    missing = [key for key in [*(p.key for p in prefs.poles), PMORL] if not is_adapter_dir(root / key)]
    if missing:
        raise PersonalmError(f"missing adapters: {', '.join(missing)} (run `personalm soups train`)", source=str(root))
    return {p.key: load_adapter(root / p.key, p.key) for p in prefs.poles}, root / PMORL


def held_out_questions(config: ExperimentConfig) -> list[str]:
    """`held_out` PrefEval questions drawn with the seed (with --data), else the prompts' held-out tail."""
    if config.data:
        questions = [item.question for item in load_prefeval(Path(config.data) / "prefeval" / "mcq_options",
                                                             config.held_out, config.seed)]  # fmt: skip
    else:
        _, questions = split_prompts(load_prompts(config.prompts), config.held_out)
    return questions[: config.limit] if config.limit else questions


def run(config: ExperimentConfig, log: Callable[[str], None] = print, llm_judge: PairJudge | None = None) -> dict:
    """The study; `llm_judge` (the model of config.judge) scores every pair beside the programmatic judge."""
    if config.threads:
        import torch

        torch.set_num_threads(config.threads)
    prefs = Preferences.default()
    questions = held_out_questions(config)
    adapters, pmorl_dir = load_pole_adapters(Path(config.adapters), prefs)
    study = Study(config.out, config, packages=("personalm", "torch", "transformers", "peft", "trl", "vaderSentiment"))
    params = SamplingParams(max_tokens=config.max_tokens, temperature=0.0, seed=config.seed)
    combos = prefs.combinations()
    chats = {combination_name(c): [chat(prefs.combined_prompt(c), q) for q in questions] for c in combos}
    flat = [m for c in combos for m in chats[combination_name(c)]]

    base = load_model(config.model)
    if not hasattr(base, "weights_changed"):
        raise PersonalmError(f"model '{config.model}': soups need local weights (not an endpoint)")
    log(f"prompted base: {len(flat)} answers")
    prompted = _split([g.text.strip() for g in base.generate(flat, params)], combos, len(questions))
    soups, merge_seconds = {}, []
    for combo in combos:
        name = combination_name(combo)
        start = time.perf_counter()
        factors = exact_factors(adapters, soup_weights(combo, config.weighting))
        with soup_applied(base, factors, name):
            merge_seconds.append(time.perf_counter() - start)
            log(f"soup {name}")
            soups[name] = [g.text.strip() for g in base.generate(chats[name], params)]
    pareto = _pareto(base, adapters, prefs, questions, params, config, log)
    base.close()
    log("P-MORL adapter")
    with load_model(config.model, adapter=pmorl_dir) as pmorl_model:
        pmorl = _split([g.text.strip() for g in pmorl_model.generate(flat, params)], combos, len(questions))

    rivals = {"prompted": prompted, "pmorl": pmorl}
    verdicts = judge_all(ProgrammaticJudge(), combos, questions, soups, rivals)
    rows, headline = win_rates(verdicts, combos, config.seed)
    samples = [
        {
            "combination": name,
            "prompt": q,
            "soup": soups[name][i],
            "prompted": prompted[name][i],
            "pmorl": pmorl[name][i],
        }
        for name in map(combination_name, combos)
        for i, q in enumerate(questions)
    ]
    write_rows(study.out / "samples.jsonl", samples)
    results = headline | {
        "combinations_won_vs_prompted": sum(r["vs_prompted"] > 0.5 for r in rows),
        "merge_seconds_mean": float(np.mean(merge_seconds)),
        "per_combination": rows,
        "pareto": pareto,
        "judge": ProgrammaticJudge.name,
        "held_out_prompts": len(questions),
        "prompt_source": f"PrefEval questions in {config.data}" if config.data else (config.prompts or "built-in"),
        "config": asdict(config),
        "adapters": {k: _train_summary(a.path) for k, a in adapters.items()} | {PMORL: _train_summary(pmorl_dir)},
    }
    if llm_judge is not None:
        log(f"LLM judge {config.judge}: the same pairs")
        llm = judge_all(llm_judge, combos, questions, soups, rivals)
        llm_rows, llm_headline = win_rates(llm, combos, config.seed)
        results |= {k.replace("_winrate", "_winrate_llm"): v for k, v in llm_headline.items()}
        results["per_combination_llm"] = llm_rows
        results["llm_judge"] = config.judge
        results["judge_agreement"] = {rival: agreement(flat_verdicts(verdicts[rival]), flat_verdicts(llm[rival]))
                                      for rival in RIVALS}  # fmt: skip
    results["seconds"] = round(time.time() - study.started, 1)
    return _write_report(study, results, prefs)


def judge_all(
    judge: PairJudge,
    combos: list[tuple[Pole, ...]],
    questions: list[str],
    soups: dict[str, list[str]],
    rivals: dict[str, dict[str, list[str]]],
) -> Verdicts:
    """The soup against each rival, one pole at a time: a verdict per held-out prompt."""
    return {
        rival: {
            combination_name(c): {p.key: np.asarray(judge.prefer(p, questions, soups[combination_name(c)],
                                                                  texts[combination_name(c)]), dtype=float)
                                  for p in c}
            for c in combos
        }
        for rival, texts in rivals.items()
    }  # fmt: skip


def flat_verdicts(by_combination: dict[str, dict[str, np.ndarray]]) -> np.ndarray:
    """Every (combination, pole, prompt) verdict in one fixed order, for comparing two judges."""
    return np.concatenate([v for poles in by_combination.values() for v in poles.values()])


def win_rates(verdicts: Verdicts, combos: list[tuple[Pole, ...]], seed: int = 0) -> tuple[list[dict], dict]:
    """Per combination: each pole's win rate and the mean over poles with its interval over the
    prompts; the headline per rival: the mean over combinations, with its interval over the prompts
    (a prompt's score is its mean over every combination and pole), and the prompt count."""
    rows, per_prompt = [], {rival: [] for rival in verdicts}
    for combo in combos:
        name = combination_name(combo)
        row: dict = {"combination": name}
        for rival, by_combination in verdicts.items():
            for pole in combo:
                row[f"vs_{rival}:{pole.dimension}"] = float(by_combination[name][pole.key].mean())
            scores = np.mean([by_combination[name][p.key] for p in combo], axis=0)
            estimate = bootstrap_mean(scores, seed=seed)
            row[f"vs_{rival}"] = estimate.mean
            row[f"vs_{rival}_ci"] = [estimate.low, estimate.high]
            per_prompt[rival].append(scores)
        rows.append(row)
    headline = {}
    for rival, scores in per_prompt.items():
        estimate = bootstrap_mean(np.mean(scores, axis=0), seed=seed)
        key = f"soup_vs_{rival}_winrate"
        headline |= {key: estimate.mean, f"{key}_ci": [estimate.low, estimate.high], f"{key}_items": estimate.n}
    return rows, headline


def _split(texts: list[str], combos, n: int) -> dict[str, list[str]]:
    return {combination_name(c): texts[i * n : (i + 1) * n] for i, c in enumerate(combos)}


def _train_summary(path: Path) -> dict | None:
    file = path / "dpo.json"
    if not file.is_file():
        return None
    data = json.loads(file.read_text())
    keys = ("trainer", "pairs", "steps", "seconds", "first_loss", "final_loss", "final_reward_accuracy")
    return {k: data.get(k) for k in keys}


def _pareto(base, adapters, prefs: Preferences, questions, params, config: ExperimentConfig, log) -> list[dict]:
    """Interpolate two pole adapters (λ, 1-λ) and score the answers on both poles' axes (mean and
    95% interval over the prompts); the last point is the base model."""
    keys = [k.strip() for k in config.pareto.split(",")]
    if len(keys) != 2:
        raise PersonalmError(
            f"--pareto {config.pareto!r}: expected two poles, e.g. expertise.elementary,style.friendly"
        )
    poles = [prefs.pole(k) for k in keys]
    scorer = ProgrammaticJudge()
    chats = [chat("", q) for q in questions]

    def point(lam: float | None, texts: list[str]) -> dict:
        out: dict = {"lambda": lam}
        for key, pole in zip(keys, poles, strict=True):
            estimate = bootstrap_mean(scorer.scores(pole, texts), seed=config.seed)
            out |= {key: estimate.mean, f"{key}_ci": [estimate.low, estimate.high]}
        return out

    points = []
    for lam in np.linspace(0.0, 1.0, config.pareto_steps):
        weights = {keys[0]: float(lam), keys[1]: float(1.0 - lam)}
        with soup_applied(base, exact_factors(adapters, weights), f"pareto-{lam:.2f}"):
            log(f"pareto λ={lam:.2f}")
            points.append(point(float(lam), [g.text.strip() for g in base.generate(chats, params)]))
    points.append(point(None, [g.text.strip() for g in base.generate(chats, params)]))
    return points


def _errors(rows: list[dict], key: str) -> np.ndarray:
    """matplotlib's (2, n) error spans of `key` from `<key>_ci`."""
    return np.array([[r[key] - r[f"{key}_ci"][0], r[f"{key}_ci"][1] - r[key]] for r in rows]).T


def _write_report(study: Study, results: dict, prefs: Preferences) -> dict:
    rows = results["per_combination"]
    fig, ax = report.figure(ncols=2, width=11)
    labels = [r["combination"].replace("+", "\n") for r in rows]
    for axis, rival in zip(ax, RIVALS, strict=True):
        axis.barh(range(len(rows)), [r[f"vs_{rival}"] for r in rows], xerr=_errors(rows, f"vs_{rival}"),
                  capsize=3, color="#4a7bb7")  # fmt: skip
        axis.axvline(0.5, color="grey", linestyle="--")
        axis.set_yticks(range(len(rows)), labels, fontsize=6)
        axis.set_xlim(0, 1)
        axis.set_title(f"soup win rate vs {rival} (95% CI over prompts)")
    winrates = study.save(fig, "winrates.png")
    keys = [k for k in results["pareto"][0] if k != "lambda" and not k.endswith("_ci")]
    fig, axis = report.figure(width=6)
    soup = [p for p in results["pareto"] if p["lambda"] is not None]
    axis.errorbar([p[keys[0]] for p in soup], [p[keys[1]] for p in soup], xerr=_errors(soup, keys[0]),
                  yerr=_errors(soup, keys[1]), fmt="o-", capsize=3, label="soups (λ·first + (1-λ)·second)")  # fmt: skip
    for p in soup:
        axis.annotate(f"λ={p['lambda']:.2f}", (p[keys[0]], p[keys[1]]), fontsize=7)
    base = results["pareto"][-1:]
    axis.errorbar([base[0][keys[0]]], [base[0][keys[1]]], xerr=_errors(base, keys[0]), yerr=_errors(base, keys[1]),
                  fmt="s", color="grey", capsize=3, label="base")  # fmt: skip
    axis.set_xlabel(f"{keys[0]} score")
    axis.set_ylabel(f"{keys[1]} score")
    axis.legend(fontsize=7)
    pareto = study.save(fig, "pareto.png")
    judges = [("programmatic", "")] + ([(f"LLM ({results['llm_judge']})", "_llm")] if "llm_judge" in results else [])
    headline = [
        {"comparison": f"soup vs {rival}", "judge": judge, "win rate [95% CI]":
         report.interval(results, f"soup_vs_{rival}_winrate{suffix}"),
         "prompts": results[f"soup_vs_{rival}_winrate{suffix}_items"]}
        for rival in RIVALS for judge, suffix in judges
    ]  # fmt: skip
    dims = prefs.names
    columns = ["combination", *[c for rival in RIVALS for c in (f"vs_{rival}", *[f"vs_{rival}:{d}" for d in dims])]]
    shown = [r | {f"vs_{rival}": report.interval(r, f"vs_{rival}") for rival in RIVALS} for r in rows]
    parts = [
        report.paragraph(
            f"{results['held_out_prompts']} held-out prompts ({results['prompt_source']}) × {len(rows)} combinations, "
            f"{results['seconds']} s. Win = 1, tie = 0.5, judged one preference at a time; a prompt's score is its "
            "mean over the combination's poles; 95% bootstrap intervals over the prompts."
        ),
        report.section("Headline", report.table(headline)),
        report.section(
            "Per combination (programmatic judge)",
            report.table(shown, columns),
            report.image(winrates, "Soup win rate per combination (0.5 = parity), 95% CI over prompts"),
        ),
    ]
    if "llm_judge" in results:
        llm_rows = [r | {f"vs_{rival}": report.interval(r, f"vs_{rival}") for rival in RIVALS}
                    for r in results["per_combination_llm"]]  # fmt: skip
        parts.append(
            report.section(
                f"LLM judge ({results['llm_judge']}) and agreement with the programmatic judge",
                report.table(llm_rows, columns),
                report.paragraph(
                    "Agreement on the pairs both judges decided (neither a tie): share naming the same winner, "
                    "and Cohen's kappa."
                ),
                report.table([{"rival": rival} | v for rival, v in results["judge_agreement"].items()]),
            )
        )
    parts += [
        report.section(
            "Pareto front over merge weights",
            report.table(results["pareto"]),
            report.image(pareto, "Programmatic scores of interpolated soups (95% CI over prompts)"),
        ),  # fmt: skip
        report.section(
            "Adapters (DPO)", report.table([{"adapter": k} | (v or {}) for k, v in results["adapters"].items()])
        ),
    ]
    return study.finish(results, "Personalized Soups", parts, shown=("config", "judge", "held_out_prompts"))
