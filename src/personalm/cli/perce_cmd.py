"""`personalm explain` (which reply tokens depend on the persona) and `personalm perce experiment`."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from personalm.errors import PersonalmError
from personalm.models.registry import DEFAULT_MODEL
from personalm.progress import stderr

app = typer.Typer(help="Token-level personalization: PerContrast / PerCE.", no_args_is_help=True)


def read_explain_rows(path: Path, limit: int) -> list[tuple[str, list[dict[str, str]]]]:
    """(persona, messages) rows of a JSONL/Parquet file, validated like training data."""
    from personalm.tables import input_format, read_rows, require
    from personalm.train.data import validate_messages

    source = str(path)
    rows = []
    for line, row in read_rows(path, input_format(source)):
        persona = require(row, "persona", str, source, line)
        if not persona.strip():
            raise PersonalmError("'persona' is empty", source=source, line=line)
        rows.append((persona, validate_messages(require(row, "messages", list, source, line), source, line)))
        if len(rows) == limit:
            break
    if not rows:
        raise PersonalmError("no examples", source=source)
    return rows


def explain(
    data: Path = typer.Argument(None, help="JSONL/Parquet rows with `persona` and `messages` (replies are scored)."),
    persona: str = typer.Option(None, help="Inline example: the persona / user profile."),
    prompt: str = typer.Option("", help="Inline example: the user's message before the reply."),
    response: str = typer.Option(None, help="Inline example: the reply to explain."),
    limit: int = typer.Option(5, min=1, help="Rows of DATA to explain."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="Local model (name or HF directory)."),
    adapter: Path = typer.Option(None, help="PEFT adapter directory to apply."),
    html: Path = typer.Option(None, help="Also write an HTML heatmap here."),
    as_json: bool = typer.Option(False, "--json", help="Print tokens and PIR as JSON lines instead of colours."),
) -> None:
    """Colour each reply token by PIR = log p(token | persona, context) − log p(token | context)."""
    from personalm.models.local import LocalModel
    from personalm.models.registry import load_model
    from personalm.perce.contrast import PerContrast
    from personalm.perce.explain import Explained, terminal_text, top_tokens, write_html

    if data is not None and (persona or response):
        raise PersonalmError("give either a DATA file or --persona/--response, not both")
    if data is None:
        if not persona or not response:
            raise PersonalmError("nothing to explain: give a DATA file, or --persona and --response")
        chat = ([{"role": "user", "content": prompt}] if prompt else []) + [{"role": "assistant", "content": response}]
        rows = [(persona, chat)]
    else:
        rows = read_explain_rows(data, limit)
    local = load_model(model, adapter=adapter)
    if not isinstance(local, LocalModel):
        raise PersonalmError("explain needs a local model (PIR needs the model's own log-probabilities)")
    influences = PerContrast.from_local(local).influence(rows)
    items = [Explained(p, m, i) for (p, m), i in zip(rows, influences, strict=True)]
    special = set(local.tokenizer.all_special_tokens) | {"\n"}
    if as_json:
        for item in items:
            typer.echo(json.dumps({"persona": item.persona, **item.influence.to_dict()}))
    else:
        console = Console()
        for item in items:
            console.rule(f"[bold]persona[/]: {item.persona[:100]}")
            console.print(terminal_text(item.influence, special))
            top = ", ".join(f"{t} {p:+.2f}" for t, p in top_tokens(item.influence, special))
            console.print(f"[dim]highest PIR: {top}[/]")
        console.print("[dim]red: the persona made the token more likely; blue: less likely[/]")
    if html:
        html.parent.mkdir(parents=True, exist_ok=True)
        write_html(html, items, special)
        stderr.print(f"heatmap written to {html}", markup=False)


@app.command("experiment")
def experiment(
    out: Path = typer.Option(Path("reports/perce"), "--out", "-o", help="Report folder (results.json, PNG, HTML)."),
    data: Path = typer.Option(None, help="Data folder with persona_chat/ and prefeval/ (default: PERSONALM_DATA)."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="Base model for both arms."),
    seeds: int = typer.Option(3, min=1, help="Seeds per arm (each seed: its own data order and LoRA init)."),
    train_conversations: int = typer.Option(64, min=1, help="Persona-chat conversations to train on."),
    test_turns: int = typer.Option(64, min=1, help="Held-out turns to generate and score."),
    prefeval_items: int = typer.Option(60, min=0, help="PrefEval multiple-choice items (0 skips the transfer check)."),
    pir_examples: int = typer.Option(48, min=1, help="Held-out replies that use a persona word, for PIR precision@k."),
    k: int = typer.Option(3, min=1, help="k of PIR precision@k."),
    steps: int = typer.Option(12, min=1, help="Optimizer steps per run (same for CE and PerCE)."),
    batch_size: int = typer.Option(4, min=1),
    lr: float = typer.Option(1e-3, min=0.0),
    rank: int = typer.Option(16, min=1, help="LoRA rank."),
    window: int = typer.Option(6, min=2, help="Turns per training example / context turns before a test reply."),
    max_len: int = typer.Option(256, min=32, help="Longest training example in tokens."),
    max_tokens: int = typer.Option(32, min=1, help="Generated tokens per held-out reply."),
    clip_min: float = typer.Option(0.8, help="PerCE lower weight bound m."),
    clip_max: float = typer.Option(5.0, help="PerCE upper weight bound M."),
    split_seed: int = typer.Option(0, help="Seed of the train/test split by conversation."),
    sweep: str = typer.Option("0.5:10,1:3,0.8:2", help="Extra PerCE clip bounds m:M, comma-separated ('' for none)."),
    sweep_seeds: int = typer.Option(1, min=0, help="Seeds the clip-bound sweep trains (0, 1, ...)."),
) -> None:
    """CE vs PerCE on persona-chat: same model, adapter config, data, steps and seeds; held-out eval."""
    from rich.table import Table

    from personalm.cli.inputs import data_folder
    from personalm.studies.perce import ExperimentConfig, parse_sweep, run
    from personalm.studies.perce_report import headline_rows

    needed = ["persona_chat/valid.csv"] + (["prefeval/mcq_options"] if prefeval_items else [])
    clip_bounds = parse_sweep(sweep)  # the options first: they need no data folder
    config = ExperimentConfig(
        out=str(out), data=str(data_folder(data, required=needed)), model=model, seeds=seeds,
        train_conversations=train_conversations, test_turns=test_turns, prefeval_items=prefeval_items,
        pir_examples=pir_examples, k=k, steps=steps, batch_size=batch_size, lr=lr, rank=rank, window=window,
        max_len=max_len, max_tokens=max_tokens, clip_min=clip_min, clip_max=clip_max, split_seed=split_seed,
        sweep=clip_bounds, sweep_seeds=sweep_seeds,
    )  # fmt: skip
    results = run(config, log=lambda m: stderr.print(m, markup=False))
    table = Table("metric", "base model", f"CE ({seeds} seeds)", "PerCE", "PerCE − CE", title="held-out persona-chat")
    for row in headline_rows(results):
        table.add_row(*row)
    console = Console()
    console.print(table)
    console.print(
        f"PIR precision@{k}: {results['pir_precision_at_k']:.3f} (top-PIR tokens) vs "
        f"{results['random_precision_at_k']:.3f} (random tokens); report in {out}"
    )
