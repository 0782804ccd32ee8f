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
    quick: bool = typer.Option(False, "--quick", help="A small run for tests: 1 seed, 2 steps, a few replies."),
    train_conversations: int = typer.Option(
        0, min=0, help="Persona-chat conversations to train on, every window (0: enough to fill --steps batches)."
    ),
    validation_conversations: int = typer.Option(100, min=1, help="Conversations the clip bounds are chosen on."),
    test_replies: int = typer.Option(500, min=1, help="Test replies drawn at random (ROUGE-L, similarity)."),
    recall_replies: int = typer.Option(
        300, min=1, help="Test replies whose reference shares a content word with the persona (persona-term recall)."
    ),
    validation_replies: int = typer.Option(300, min=1, help="Validation replies drawn at random."),
    validation_recall_replies: int = typer.Option(200, min=1, help="Validation replies for persona-term recall."),
    prefeval_items: int = typer.Option(100, min=0, help="PrefEval multiple-choice items (0 skips the transfer check)."),
    pir_examples: int = typer.Option(200, min=1, help="Test replies that use a persona word, for PIR precision@k."),
    k: int = typer.Option(3, min=1, help="k of PIR precision@k."),
    steps: int = typer.Option(
        300, min=1, help="Optimizer steps per run (same for CE and PerCE); raised to one pass over every window."
    ),
    batch_size: int = typer.Option(2, min=1, help="Training windows per step."),
    lr: float = typer.Option(1e-3, min=0.0),
    rank: int = typer.Option(16, min=1, help="LoRA rank."),
    window: int = typer.Option(6, min=2, help="Turns per training example / context turns before a test reply."),
    max_len: int = typer.Option(256, min=32, help="Longest training example in tokens."),
    max_tokens: int = typer.Option(32, min=1, help="Generated tokens per held-out reply."),
    split_seed: int = typer.Option(0, help="Seed of the split by conversation and of the bootstrap."),
    candidates: str = typer.Option(
        "0.8:5,1:5", help="PerCE clip bounds m:M to choose from on validation (comma-separated; one: no choice)."
    ),
    selection_seeds: int = typer.Option(1, min=1, help="Seeds (0, 1, ...) every candidate trains for the choice."),
) -> None:
    """CE vs PerCE on persona-chat: same model, adapter config, data, steps and seeds; PerCE's clip bounds
    chosen on validation conversations; paired intervals on held-out test conversations."""
    from rich.table import Table

    from personalm.cli.inputs import data_folder
    from personalm.studies.perce import ExperimentConfig, parse_bounds, run
    from personalm.studies.perce_report import HEADLINE_COLUMNS, headline_rows

    needed = ["persona_chat/valid.csv"] + (["prefeval/mcq_options"] if prefeval_items else [])
    bounds = parse_bounds(candidates)  # the options first: they need no data folder
    config = ExperimentConfig(
        out=str(out), data=str(data_folder(data, required=needed)), model=model, seeds=seeds, quick=quick,
        train_conversations=train_conversations, validation_conversations=validation_conversations,
        test_replies=test_replies, recall_replies=recall_replies, validation_replies=validation_replies,
        validation_recall_replies=validation_recall_replies, prefeval_items=prefeval_items,
        pir_examples=pir_examples, k=k, steps=steps, batch_size=batch_size, lr=lr, rank=rank, window=window,
        max_len=max_len, max_tokens=max_tokens, split_seed=split_seed, candidates=bounds,
        selection_seeds=selection_seeds,
    )  # fmt: skip
    results = run(config, log=lambda m: stderr.print(m, markup=False))
    title = (
        f"held-out persona-chat, {results['seeds']} seeds, PerCE m={results['perce_clip_min']:g} "
        f"M={results['perce_clip_max']:g}: mean [95% interval]"
    )
    table = Table(*HEADLINE_COLUMNS, title=title)
    for row in headline_rows(results):
        table.add_row(*row)
    console = Console()
    console.print(table)
    console.print(
        f"PIR precision@{k}: {results['pir_precision_at_k']:.3f} (top-PIR tokens) vs "
        f"{results['random_precision_at_k']:.3f} (random tokens); report in {out}"
    )
