"""`personalm tone build` and `personalm tone experiment`: tone adapters from simulated data."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from personalm.errors import PersonalmError
from personalm.models.registry import DEFAULT_MODEL
from personalm.paths import data_dir
from personalm.progress import stderr

app = typer.Typer(help="Tone adapters: simulated data, training, and the prompting-vs-LoRA experiment.",
                  no_args_is_help=True)  # fmt: skip

SCORER_HELP = "Tone scorer: flesch (Reading Ease >= 60), embedding (classifier from --labelled) or llm-judge."


def _log(message: str) -> None:
    stderr.print(message, markup=False, highlight=False)


def _check_inputs(source: Path, text_column: str, scorer: str, labelled: Path | None) -> None:
    """Read the corpus and the labelled examples once before any model loads (a bad file costs no load)."""
    from personalm.corpus import read_texts
    from personalm.eval.tone import read_labelled

    if not source.exists():
        raise PersonalmError("no such file or folder", source=str(source))
    read_texts(source, text_column, whole_file=True)
    if scorer == "embedding":
        read_labelled(str(labelled) if labelled else None)


def _scorer(name: str, embedder, labelled: Path | None, judge: str | None):
    from personalm.eval.tone import make_scorer
    from personalm.models.registry import load_model

    judge_model = load_model(judge, cache=True) if judge else None
    return make_scorer(name, embedder, str(labelled) if labelled else None, judge_model)


@app.command("build")
def build(
    source: Path = typer.Argument(
        ..., help="Facts: a folder of .txt/.md, one such file, or JSONL/Parquet with a text column."
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Folder for train.jsonl, test.jsonl, rejects.jsonl, stats.json, adapter/."
    ),
    examples: int = typer.Option(100, min=1, help="Training examples to keep."),
    test: int = typer.Option(48, min=0, help="Held-out questions (from other documents)."),
    teacher: str = typer.Option(DEFAULT_MODEL, help="Model that writes questions, references and tone rewrites."),
    candidates: int = typer.Option(3, min=1, help="Tone rewrites sampled per answer; the scorer picks."),
    temperature: float = typer.Option(0.8, min=0.0),
    max_tokens: int = typer.Option(64, min=8, help="Longest question/answer in tokens."),
    min_semsim: float = typer.Option(0.5, min=-1.0, max=1.0, help="A rewrite must stay this close to the reference."),
    margin: float = typer.Option(0.0, help="Keep only rewrites scoring this far above the tone bar."),
    text_column: str = typer.Option("text", help="Text column of a JSONL/Parquet source."),
    scorer: str = typer.Option("flesch", help=SCORER_HELP),
    labelled: Path = typer.Option(None, help="JSONL/Parquet of {text, label} for --scorer embedding."),
    judge: str = typer.Option(None, help="Model for --scorer llm-judge."),
    train_adapter: bool = typer.Option(True, "--train/--no-train", help="Train the adapter on the kept examples."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="Student base model for the adapter."),
    epochs: int = typer.Option(2, min=1),
    quant: str = typer.Option("fp32", help="Student base during training: fp32 or int8."),
    rounds: int = typer.Option(0, min=0, help="Preference rounds after SFT on the adapter's own samples."),
    round_method: str = typer.Option(
        "dpo",
        help="dpo (pairs: passes vs fails the tone bar), dpo-meaning (vs fails either check) or rft (SFT on passes).",
    ),
    round_samples: int = typer.Option(4, min=2, help="Answers sampled per training question in each round."),
    round_lr: float = typer.Option(2e-4, min=0.0, help="Learning rate of the rounds."),
    seed: int = typer.Option(0),
) -> None:
    """Build a tone training set from a corpus of facts, then train the adapter (OUT/adapter) and
    run its preference rounds (OUT/rounds/round-N/adapter; the last one is the adapter to use)."""
    from personalm.models.embedder import Embedder
    from personalm.models.registry import load_model
    from personalm.tone.pipeline import ToneBuildConfig, ToneBuilder, write_dataset

    if quant not in {"fp32", "int8"}:
        raise PersonalmError(f"--quant {quant}: expected fp32 or int8")
    _check_inputs(source, text_column, scorer, labelled)
    if rounds and not train_adapter:
        raise PersonalmError("--rounds needs the adapter: drop --no-train")
    from personalm.tone.rounds import RoundsConfig, run_rounds

    round_config = RoundsConfig(method=round_method, rounds=rounds, samples=round_samples, lr=round_lr, model=model,
                                seed=seed)  # fmt: skip
    embedder = Embedder()
    tone_scorer = _scorer(scorer, embedder, labelled, judge)
    config = ToneBuildConfig(
        source=str(source), out=str(out), examples=examples, test=test, candidates=candidates,
        temperature=temperature, max_tokens=max_tokens, min_semsim=min_semsim, seed=seed,
        text_column=text_column, scorer=scorer, margin=margin,
    )  # fmt: skip
    with load_model(teacher, cache=True) as teacher_model:
        dataset = ToneBuilder(config, teacher_model, embedder, tone_scorer, _log).build()
    write_dataset(dataset, out, margin)
    stderr.print(f"{len(dataset.examples(margin))} training examples, {len(dataset.test)} test questions, "
                 f"{len(dataset.rejects)} rejects (see {out / 'rejects.jsonl'})", markup=False)  # fmt: skip
    if not train_adapter:
        return
    if not dataset.examples(margin):
        raise PersonalmError("no example passed the tone scorer; nothing to train (see rejects.jsonl)", source=str(out))
    from personalm.train.loop import TrainConfig, finished_run, train

    sft = TrainConfig(data=str(out / "train.jsonl"), out=str(out / "adapter"), model=model, epochs=epochs, max_len=384,
                      quant=quant, seed=seed, save_every=10)  # fmt: skip
    if finished_run(sft):
        _log(f"{sft.out}: trained before with these settings, kept")
    else:
        train(sft, log=_log)
    final = Path(sft.out)
    if rounds:
        records = run_rounds(round_config, final, dataset.examples(margin), out / "rounds", embedder,
                             tone_scorer, _log)  # fmt: skip
        final = next((Path(r["adapter"]) for r in reversed(records) if r["adapter"]), final)
    stderr.print(f"adapter saved to {final} (SFT, then {rounds} round(s)); "
                 f"try: personalm generate QUESTIONS --adapter {final}", markup=False)  # fmt: skip


@app.command("experiment")
def experiment(
    source: Path = typer.Option(
        None, help="Facts corpus (default: the speeches folder of PERSONALM_DATA or ../shared/data)."
    ),
    out: Path = typer.Option(Path("reports/tone"), "--out", "-o", help="Folder for results.json, PNGs, report.html."),
    sizes: str = typer.Option("25,100,300", help="Training-set sizes for the LoRA conditions."),
    curve_size: int = typer.Option(100, min=1, help="Size trained with both fp32 and int8 bases (learning curves)."),
    curve_questions: int = typer.Option(64, min=1, help="Test questions each learning-curve snapshot is scored on."),
    test: int = typer.Option(200, min=1, help="Held-out questions."),
    epochs: int = typer.Option(2, min=1),
    lr: float = typer.Option(3e-4, min=0.0),
    rank: int = typer.Option(16, min=1),
    snapshot_every: int = typer.Option(10, min=1, help="Steps between evaluated snapshots on the learning curves."),
    candidates: int = typer.Option(3, min=1),
    margins: str = typer.Option("0,10,20", help="Tone-bar margins for kept rewrites; the best on validation is used."),
    val: int = typer.Option(
        96, min=0, help="Validation questions (their own documents) for choosing the margin and the rounds."
    ),
    per_doc: int = typer.Option(8, min=1, help="Passages drawn from each document."),
    rounds: int = typer.Option(2, min=0, help="Preference rounds after SFT, for each --round-methods."),
    round_methods: str = typer.Option(
        "dpo,rft,dpo-meaning", help="Any of dpo, rft, dpo-meaning; the best on validation is kept."
    ),
    round_samples: int = typer.Option(4, min=2, help="Answers sampled per training question in each round."),
    round_lr: float = typer.Option(2e-4, min=0.0, help="Learning rate of the rounds."),
    scorer: str = typer.Option("flesch", help=SCORER_HELP),
    labelled: Path = typer.Option(None, help="JSONL/Parquet of {text, label} for --scorer embedding."),
    judge: str = typer.Option(None, help="Model for --scorer llm-judge."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m"),
    seed: int = typer.Option(0),
    as_json: bool = typer.Option(False, "--json", help="End with the results as one JSON line."),
) -> None:
    """Base vs tone system prompt vs LoRA on 25/100/300 examples, and fp32 vs int8 base."""
    from personalm.models.embedder import Embedder
    from personalm.studies.tone import ToneExperimentConfig, run
    from personalm.tone.rounds import METHODS

    try:
        size_list = sorted({int(s) for s in sizes.split(",") if s.strip()})
    except ValueError:
        raise PersonalmError(f"--sizes {sizes!r}: expected comma-separated integers like 25,100,300") from None
    if not size_list or min(size_list) < 1:
        raise PersonalmError(f"--sizes {sizes!r}: expected positive sizes")
    try:
        margin_list = sorted({float(m) for m in margins.split(",") if m.strip()})
    except ValueError:
        raise PersonalmError(f"--margins {margins!r}: expected comma-separated numbers like 0,10,20") from None
    if not margin_list:
        raise PersonalmError(f"--margins {margins!r}: expected at least one margin")
    methods = [m.strip() for m in round_methods.split(",") if m.strip()]
    if not methods or any(m not in METHODS for m in methods):
        raise PersonalmError(f"--round-methods {round_methods!r}: expected one or more of {', '.join(METHODS)}")
    if curve_size not in size_list:
        size_list = sorted({*size_list, curve_size})
    corpus = source or data_dir() / "speeches"
    if not corpus.exists():
        raise PersonalmError("no such corpus (pass --source or set PERSONALM_DATA)", source=str(corpus))
    _check_inputs(corpus, "text", scorer, labelled)
    embedder = Embedder()
    config = ToneExperimentConfig(
        source=str(corpus), out=str(out), sizes=size_list, curve_size=curve_size, curve_questions=curve_questions,
        test=test, epochs=epochs, lr=lr, rank=rank, snapshot_every=snapshot_every, candidates=candidates, margins=margin_list, val=val,
        per_doc=per_doc, rounds=rounds, round_methods=methods, round_samples=round_samples, round_lr=round_lr,
        model=model, seed=seed,
    )  # fmt: skip
    results = run(config, embedder, _scorer(scorer, embedder, labelled, judge), _log)
    from rich.console import Console
    from rich.table import Table

    table = Table("condition", "tone rate", "similarity to reference", "mean words")
    names = [k.removesuffix("_tone_rate") for k in results if k.endswith("_tone_rate")]
    for name in names:
        low, high = results[f"{name}_tone_ci"]
        table.add_row(name, f"{results[f'{name}_tone_rate']:.2f} [{low:.2f}, {high:.2f}]",
                      f"{results[f'{name}_semsim']:.3f}", f"{results[f'{name}_words']:.0f}")  # fmt: skip
    Console(stderr=True).print(table)
    stderr.print(f"lora{curve_size} = {results['kept_adapter']} (chosen on validation); lora{curve_size} - prompted: "
                 f"{results['diff']:+.3f} {results['diff_ci']} over {results['diff_items']} questions",
                 markup=False)  # fmt: skip
    stderr.print(f"training-data margin chosen on validation: {results['chosen_margin']:g}", markup=False)
    stderr.print(f"results: {out / 'results.json'}  report: {out / 'report.html'}", markup=False)
    if as_json:
        typer.echo(json.dumps({k: v for k, v in results.items() if k != "curves"}))
