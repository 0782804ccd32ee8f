"""`personalm soups experiment`: P-Soups vs the prompted base and vs Prompted-MORL, plus a Pareto front.

For every combination of poles, on held-out prompts, three systems answer the same chat (the
combined preference prompt as system message, greedy decoding):
  * the base model (prompting only);
  * the soup: base + Σ_k w_k·ΔW_k over the combination's pole adapters (exact merge);
  * the Prompted-MORL adapter.
The judge compares the soup with each rival one preference at a time (win = 1, tie = 0.5, loss = 0).
The Pareto front interpolates two pole adapters (λ, 1-λ) and plots their programmatic scores.
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
from personalm.eval.judges import PairJudge, ProgrammaticJudge
from personalm.models.base import SamplingParams
from personalm.models.registry import DEFAULT_MODEL, load_model
from personalm.soups.collect import PMORL, chat
from personalm.soups.preferences import Pole, Preferences, combination_name
from personalm.soups.prompts import load_prompts, split_prompts
from personalm.studies.harness import Study
from personalm.tables import write_rows

SOUP_WEIGHTINGS = ("mean", "sum")


@dataclass
class ExperimentConfig:
    adapters: str
    out: str
    model: str = DEFAULT_MODEL
    prompts: str | None = None
    held_out: int = 8
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


def run(config: ExperimentConfig, judge: PairJudge, log: Callable[[str], None] = print) -> dict:
    if config.threads:
        import torch

        torch.set_num_threads(config.threads)
    prefs = Preferences.default()
    _, questions = split_prompts(load_prompts(config.prompts), config.held_out)
    questions = questions[: config.limit] if config.limit else questions
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

    rows, samples = [], []
    for combo in combos:
        name = combination_name(combo)
        row: dict = {"combination": name}
        for rival, texts in (("prompted", prompted[name]), ("pmorl", pmorl[name])):
            per_pole = [float(np.mean(judge.prefer(p, questions, soups[name], texts))) for p in combo]
            for pole, rate in zip(combo, per_pole, strict=True):
                row[f"vs_{rival}:{pole.dimension}"] = rate
            row[f"vs_{rival}"] = float(np.mean(per_pole))
        rows.append(row)
        for i, q in enumerate(questions):
            samples.append({"combination": name, "prompt": q, "soup": soups[name][i],
                            "prompted": prompted[name][i], "pmorl": pmorl[name][i]})  # fmt: skip
    write_rows(study.out / "samples.jsonl", samples)
    results = {
        "soup_vs_prompted_winrate": float(np.mean([r["vs_prompted"] for r in rows])),
        "soup_vs_pmorl_winrate": float(np.mean([r["vs_pmorl"] for r in rows])),
        "combinations_won_vs_prompted": sum(r["vs_prompted"] > 0.5 for r in rows),
        "merge_seconds_mean": float(np.mean(merge_seconds)),
        "per_combination": rows,
        "pareto": pareto,
        "judge": judge.name,
        "held_out_prompts": len(questions),
        "config": asdict(config),
        "adapters": {k: _train_summary(a.path) for k, a in adapters.items()} | {PMORL: _train_summary(pmorl_dir)},
    }
    return _write_report(study, results, prefs)


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
    """Interpolate two pole adapters (λ, 1-λ) and score the answers on both poles' axes."""
    keys = [k.strip() for k in config.pareto.split(",")]
    if len(keys) != 2:
        raise PersonalmError(
            f"--pareto {config.pareto!r}: expected two poles, e.g. expertise.elementary,style.friendly"
        )
    poles = [prefs.pole(k) for k in keys]
    scorer = ProgrammaticJudge()
    chats = [chat("", q) for q in questions]
    points = []
    for lam in np.linspace(0.0, 1.0, config.pareto_steps):
        weights = {keys[0]: float(lam), keys[1]: float(1.0 - lam)}
        with soup_applied(base, exact_factors(adapters, weights), f"pareto-{lam:.2f}"):
            log(f"pareto λ={lam:.2f}")
            texts = [g.text.strip() for g in base.generate(chats, params)]
        points.append({"lambda": float(lam), keys[0]: float(scorer.scores(poles[0], texts).mean()),
                       keys[1]: float(scorer.scores(poles[1], texts).mean())})  # fmt: skip
    texts = [g.text.strip() for g in base.generate(chats, params)]
    points.append({"lambda": None, keys[0]: float(scorer.scores(poles[0], texts).mean()),
                   keys[1]: float(scorer.scores(poles[1], texts).mean())})  # fmt: skip
    return points


def _write_report(study: Study, results: dict, prefs: Preferences) -> dict:
    rows = results["per_combination"]
    fig, ax = report.figure(ncols=2, width=11)
    labels = [r["combination"].replace("+", "\n") for r in rows]
    for axis, rival in zip(ax, ("prompted", "pmorl"), strict=True):
        axis.barh(range(len(rows)), [r[f"vs_{rival}"] for r in rows], color="#4a7bb7")
        axis.axvline(0.5, color="grey", linestyle="--")
        axis.set_yticks(range(len(rows)), labels, fontsize=6)
        axis.set_xlim(0, 1)
        axis.set_title(f"soup win rate vs {rival}")
    winrates = study.save(fig, "winrates.png")
    keys = [k for k in results["pareto"][0] if k != "lambda"]
    fig, axis = report.figure(width=6)
    soup = [p for p in results["pareto"] if p["lambda"] is not None]
    axis.plot([p[keys[0]] for p in soup], [p[keys[1]] for p in soup], "o-", label="soups (λ·first + (1-λ)·second)")
    for p in soup:
        axis.annotate(f"λ={p['lambda']:.2f}", (p[keys[0]], p[keys[1]]), fontsize=7)
    base = results["pareto"][-1]
    axis.plot([base[keys[0]]], [base[keys[1]]], "s", color="grey", label="base")
    axis.set_xlabel(f"{keys[0]} score")
    axis.set_ylabel(f"{keys[1]} score")
    axis.legend(fontsize=7)
    pareto = study.save(fig, "pareto.png")
    headline = [{"comparison": "soup vs prompted base", "win rate": results["soup_vs_prompted_winrate"]},
                {"comparison": "soup vs P-MORL", "win rate": results["soup_vs_pmorl_winrate"]}]  # fmt: skip
    dims = prefs.names
    parts = [
        report.section("Headline (win = 1, tie = 0.5, judged one preference at a time)", report.table(headline)),
        report.section(
            "Per combination",
            report.table(
                rows,
                [
                    "combination",
                    "vs_prompted",
                    *[f"vs_prompted:{d}" for d in dims],
                    "vs_pmorl",
                    *[f"vs_pmorl:{d}" for d in dims],
                ],
            ),  # fmt: skip
            report.image(winrates, "Soup win rate per combination (0.5 = parity)"),
        ),
        report.section(
            "Pareto front over merge weights",
            report.table(results["pareto"]),
            report.image(pareto, "Programmatic scores of interpolated soups"),
        ),  # fmt: skip
        report.section(
            "Adapters (DPO)", report.table([{"adapter": k} | (v or {}) for k, v in results["adapters"].items()])
        ),
    ]
    return study.finish(results, "Personalized Soups", parts, shown=("config", "judge", "held_out_prompts"))
