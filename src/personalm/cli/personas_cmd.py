"""`personalm personas ...`: mine, expand, deduplicate, store, search and sample personas."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from personalm.cli.progress import stderr
from personalm.errors import PersonalmError
from personalm.tables import output_format

app = typer.Typer(help="Persona Hub: text-to-persona, persona expansion, dedup, search, sample.", no_args_is_help=True)

ENGINE_HELP = (
    "Where batch work runs: local (this process) or ray (Ray Data; a local instance unless RAY_ADDRESS is set)."
)


@app.command("dedup")
def dedup(
    input: Path = typer.Argument(..., help="Personas: .jsonl or .parquet with a 'persona' column (optional 'id')."),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Kept rows (.jsonl or .parquet). Dropped rows go to OUT's stem + '.dropped' + suffix."
    ),
    column: str = typer.Option("persona", help="Column holding the persona text."),
    minhash_threshold: float = typer.Option(0.9, help="Stage 1: word 1-gram Jaccard at or above this is a duplicate."),
    embedding_threshold: float = typer.Option(0.9, help="Stage 2: cosine at or above this is a duplicate (0.5 to 1)."),
    embedding: bool = typer.Option(True, "--embedding/--no-embedding", help="Run stage 2 (sentence embeddings)."),
    embedder: str = typer.Option(None, help="A local sentence-transformers directory (default: all-MiniLM-L6-v2)."),
    engine: str = typer.Option("local", help=ENGINE_HELP),
) -> None:
    """Two-stage near-duplicate removal; every dropped row names the kept row it duplicates."""
    from personalm.personas.dedup import DedupOptions, dedup_table
    from personalm.personas.engine import get_engine
    from personalm.personas.io import read_personas, sidecar_path, write_table

    output_format(out)
    try:
        options = DedupOptions(minhash_threshold, embedding_threshold if embedding else None, embedder=embedder)
    except ValueError as err:
        raise PersonalmError(str(err)) from None
    table = read_personas(input, column)
    result = dedup_table(table, options, get_engine(engine), column=column)
    dropped_path = sidecar_path(out)
    write_table(dropped_path, result.dropped)
    write_table(out, result.kept)
    s = result.summary
    stderr.print(
        f"kept {s['kept_rows']} of {s['input_rows']} personas -> {out}; dropped {s['dropped_minhash']} by MinHash "
        f"and {s['dropped_embedding']} by embeddings -> {dropped_path}",
        markup=False,
    )
    typer.echo(json.dumps(s))
