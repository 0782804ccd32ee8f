"""`personalm soups collect|train|merge|experiment`: Personalized Soups (one adapter per preference)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from personalm.adapters import list_adapters
from personalm.errors import PersonalmError
from personalm.models.registry import DEFAULT_MODEL
from personalm.progress import progress_bar, stderr, training_bar
from personalm.soups.prompts import HELD_OUT

app = typer.Typer(help="Personalized Soups: preference feedback, DPO adapters per pole, merging by user weights.",
                  no_args_is_help=True)  # fmt: skip

PREFS_HELP = "YAML/JSON file of extra preference dimensions (see personalm.soups.preferences)."
TRAINER_HELP = (
    "ours: DPO as a pair loss in personalm's LoRA loop (resumes a killed adapter from its checkpoints); "
    "trl: TRL's DPOTrainer. `personalm bench dpo` measures both (ours is the faster)."
)
LR_HELP = (
    "AdamW learning rate. 5e-4: with rank 8, beta 0.1 and one epoch of a few dozen pairs, 5e-5 barely moves the "
    "adapter (held-out DPO loss 0.615 vs 0.398 at 5e-4 for expertise.elementary; reports/soups/dpo_lr_check.json), "
    "and 5e-4 is what gave the soups their wins in an earlier full run."
)


def _log(message: str) -> None:
    stderr.print(message, markup=False, highlight=False)


def _adapter_specs(specs: list[str]) -> dict[str, Path]:
    out = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise PersonalmError(
                f"--adapter {spec!r}: expected NAME=DIR, e.g. expertise.elementary=adapters/expertise.elementary"
            )
        out[name.strip()] = Path(path)
    return out


def resolve_adapters(adapter: list[str], adapters_dir: Path | None) -> dict[str, Path]:
    """NAME=DIR pairs, plus every adapter directory under --adapters-dir (named by folder)."""
    specs = {}
    if adapters_dir is not None:
        if not adapters_dir.is_dir():
            raise PersonalmError("not a directory", source=str(adapters_dir))
        specs = list_adapters(adapters_dir)
    specs.update(_adapter_specs(adapter))
    if not specs:
        raise PersonalmError("no adapters given (use --adapter NAME=DIR or --adapters-dir DIR)")
    return specs


@app.command("collect")
def collect_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="Folder for candidates, labels and dpo/*.jsonl."),
    prompts: Path = typer.Option(None, help="Prompts (text lines, or JSONL/Parquet 'prompt'); default: built-in set."),
    held_out: int = typer.Option(HELD_OUT, min=0, help="Last prompts kept out of training (for the experiment)."),
    limit: int = typer.Option(None, min=1, help="Use only this many training prompts."),
    samples: int = typer.Option(4, min=2, help="Responses sampled per prompt."),
    max_pairs: int = typer.Option(6, min=1, help="Pairs judged per prompt (each once per pole)."),
    max_tokens: int = typer.Option(64, min=8),
    temperature: float = typer.Option(0.9, min=0.0),
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="Policy that writes the responses."),
    judge: str = typer.Option(None, help="Model for the LLM judge; default: programmatic CPU judges."),
    preferences: Path = typer.Option(None, help=PREFS_HELP),
    seed: int = typer.Option(0),
) -> None:
    """Sample responses and label pairs one preference at a time; write per-pole and P-MORL DPO sets."""
    from personalm.eval.judges import make_judge
    from personalm.models.registry import load_model
    from personalm.soups.collect import CollectConfig, collect
    from personalm.soups.preferences import Preferences
    from personalm.soups.prompts import load_prompts, split_prompts

    prefs = Preferences.load(preferences)
    train, _ = split_prompts(load_prompts(prompts), held_out)
    train = train[:limit] if limit else train
    config = CollectConfig(
        samples=samples, max_pairs=max_pairs, max_tokens=max_tokens, temperature=temperature, seed=seed
    )
    judge_model = load_model(judge, cache=True) if judge else None
    with load_model(model, cache=True) as policy, progress_bar("sampling", len(train) * samples) as advance:
        sizes = collect(policy, make_judge(judge_model), prefs, train, out, config, advance, _log)
    print(json.dumps(sizes))


@app.command("train")
def train_cmd(
    data: Path = typer.Argument(..., help="Folder written by `soups collect`."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for one adapter per pole (+ pmorl)."),
    only: str = typer.Option(None, help="Comma-separated subset, e.g. style.friendly,pmorl."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m"),
    rank: int = typer.Option(8, min=1),
    lr: float = typer.Option(5e-4, min=0.0, help=LR_HELP),
    beta: float = typer.Option(0.1, min=0.0),
    epochs: int = typer.Option(1, min=1),
    max_steps: int = typer.Option(-1, help="Stop after this many steps (overrides epochs when > 0)."),
    batch_size: int = typer.Option(4, min=1),
    max_length: int = typer.Option(192, min=16),
    threads: int = typer.Option(None, min=1, help="Torch CPU threads (1 is faster on a busy machine)."),
    seed: int = typer.Option(0),
    trainer: str = typer.Option("ours", help=TRAINER_HELP),
) -> None:
    """DPO-train one LoRA adapter per preference pole and the Prompted-MORL adapter; re-run to resume."""
    from personalm.soups.dpo import DPOSettings, train_all

    settings = DPOSettings(model=model, rank=rank, alpha=2 * rank, lr=lr, beta=beta, epochs=epochs,
                           max_steps=max_steps, batch_size=batch_size, max_length=max_length, seed=seed,
                           threads=threads, trainer=trainer)  # fmt: skip
    chosen = [s.strip() for s in only.split(",") if s.strip()] if only else None
    with training_bar("DPO") as progress:
        results = train_all(data, out, settings, chosen, _log, progress)
    print(
        json.dumps(
            {
                k: {"steps": v["steps"], "seconds": v["seconds"], "final_loss": v["final_loss"]}
                for k, v in results.items()
            }
        )
    )


@app.command("merge")
def merge_cmd(
    weights: str = typer.Option(..., help="Merge weights, e.g. expertise.elementary=0.5,style.friendly=0.5."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the merged (PEFT-loadable) adapter."),
    adapter: list[str] = typer.Option([], help="NAME=DIR of one preference adapter (repeatable)."),
    adapters_dir: Path = typer.Option(None, help="Folder of adapters named by pole (as `soups train` writes)."),
    method: str = typer.Option("exact", help="exact (Σ w·B·A), or PEFT's linear, cat, svd, ties, dare_linear, ..."),
    density: float = typer.Option(None, min=0.0, max=1.0, help="Fraction kept by ties/dare/magnitude_prune."),
    base: str = typer.Option(None, help="Base model for PEFT methods (default: the adapters' base)."),
) -> None:
    """Merge preference adapters with user weights into one adapter."""
    from personalm.soups.merge import load_adapters, merge_to_dir, parse_weights

    specs = resolve_adapters(adapter, adapters_dir)
    parsed = parse_weights(weights, list(specs))
    adapters = load_adapters({n: specs[n] for n in parsed})
    path = merge_to_dir(adapters, parsed, out, method=method, density=density, base=base)
    print(json.dumps({"out": str(path), "method": method, "weights": parsed}))


@app.command("experiment")
def experiment_cmd(
    adapters: Path = typer.Option(..., help="Folder written by `soups train` (one adapter per pole + pmorl)."),
    out: Path = typer.Option(Path("reports/soups"), "--out", "-o", help="results.json, PNG plots, report.html."),
    prompts: Path = typer.Option(None, help="Prompts file; default: built-in set (its held-out tail is used)."),
    data: Path = typer.Option(
        None, help="Evaluate on PrefEval questions from DIR/prefeval/mcq_options instead (--held-out of them, seeded)."
    ),
    held_out: int = typer.Option(HELD_OUT, min=1, help="Same as `soups collect --held-out` (or PrefEval questions)."),
    limit: int = typer.Option(None, min=1, help="Evaluate only this many held-out prompts."),
    max_tokens: int = typer.Option(64, min=8),
    weighting: str = typer.Option("mean", help="Soup weights per combination: mean (1/n each) or sum (1 each)."),
    pareto: str = typer.Option("expertise.elementary,informativeness.informative", help="Two poles to interpolate."),
    pareto_steps: int = typer.Option(5, min=2),
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m"),
    judge: str = typer.Option(
        None, help="A model (e.g. openai:MODEL@URL) judging every pair beside the programmatic judge; their agreement."
    ),
    threads: int = typer.Option(None, min=1, help="Torch CPU threads (1 is faster on a busy machine)."),
    quick: bool = typer.Option(False, "--quick", help="A small run for tests: 3 prompts, 16 tokens, 2 Pareto steps."),
    seed: int = typer.Option(0),
) -> None:
    """Win rates (95% CI over prompts) of the soup vs the prompted base and vs P-MORL for all combinations; Pareto front."""
    from personalm.cli.inputs import data_folder
    from personalm.eval.judges import LLMJudge
    from personalm.models.registry import load_model
    from personalm.studies.soups import ExperimentConfig, run

    folder = data_folder(data, required=["prefeval/mcq_options"]) if data is not None else None
    if quick:
        limit, max_tokens, pareto_steps = min(limit or 3, 3), min(max_tokens, 16), 2
    config = ExperimentConfig(adapters=str(adapters), out=str(out), model=model, prompts=str(prompts) if prompts else None,
                              data=str(folder) if folder else None, held_out=held_out, limit=limit,
                              max_tokens=max_tokens, weighting=weighting, pareto=pareto, pareto_steps=pareto_steps,
                              judge=judge, threads=threads, seed=seed)  # fmt: skip
    results = run(config, _log, LLMJudge(load_model(judge, cache=True)) if judge else None)
    keys = ("soup_vs_prompted_winrate", "soup_vs_prompted_winrate_ci", "soup_vs_pmorl_winrate",
            "soup_vs_pmorl_winrate_ci", "held_out_prompts", "combinations_won_vs_prompted", "merge_seconds_mean")  # fmt: skip
    print(
        json.dumps({k: results[k] for k in keys} | ({"judge_agreement": results["judge_agreement"]} if judge else {}))
    )
    _log(f"report: {out / 'report.html'}")
