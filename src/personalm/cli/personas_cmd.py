"""`personalm personas ...`: mine, expand, deduplicate, store, search and sample personas."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from personalm.errors import PersonalmError
from personalm.progress import stderr
from personalm.tables import output_format

app = typer.Typer(help="Persona Hub: text-to-persona, persona expansion, dedup, search, sample.", no_args_is_help=True)

ENGINE_HELP = (
    "Where batch work runs: local (this process) or ray (Ray Data; a local instance unless RAY_ADDRESS is set)."
)
MODEL_HELP = "Model name, local directory or openai:MODEL@URL (generation at scale: an OpenAI-compatible server)."
MODEL = typer.Option("smollm2-135m-instruct", "--model", "-m", help=MODEL_HELP)
MAX_TOKENS = typer.Option(64, min=8)
TEMPERATURE = typer.Option(0.7, min=0.0)
BATCH = typer.Option(64, min=1, help="Prompts per cached batch (a killed run redoes at most one).")
CACHE = typer.Option(True, "--cache/--no-cache", help="Generation cache: re-running a killed command resumes it.")
API_KEY = typer.Option(None, envvar="OPENAI_API_KEY")
ENGINE = typer.Option("local", help=ENGINE_HELP)


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
    engine: str = ENGINE,
) -> None:
    """Two-stage near-duplicate removal; every dropped row names the kept row it duplicates."""
    from personalm.executors import get_executor
    from personalm.personas.dedup import DedupOptions, dedup_table
    from personalm.personas.io import read_personas, write_dedup_outputs

    output_format(out)
    try:
        options = DedupOptions(minhash_threshold, embedding_threshold if embedding else None, embedder=embedder)
    except ValueError as err:
        raise PersonalmError(str(err)) from None
    table = read_personas(input, column)
    result = dedup_table(table, options, get_executor(engine), column=column)
    dropped_path = write_dedup_outputs(out, result.kept, result.dropped)
    s = result.summary
    stderr.print(
        f"kept {s['kept_rows']} of {s['input_rows']} personas -> {out}; dropped {s['dropped_minhash']} by MinHash "
        f"and {s['dropped_embedding']} by embeddings -> {dropped_path}",
        markup=False,
    )
    typer.echo(json.dumps(s))


HUB_HELP = "The hub Parquet file (built with `personalm personas hub`)."
FILTER_HELP = "Filter rows: COLUMN=VALUE (exact) or COLUMN~TEXT (substring, any case); repeatable, ANDed."


def _emit(table, out: Path | None) -> None:
    """Rows as JSONL on stdout (embeddings left out), or the whole table to a file."""
    from personalm.personas.io import write_table

    if out is not None:
        write_table(out, table)
        stderr.print(f"wrote {table.num_rows} personas to {out}", markup=False)
        return
    shown = table.drop_columns([c for c in ("embedding",) if c in table.column_names])
    for row in shown.to_pylist():
        typer.echo(json.dumps(row, ensure_ascii=False))


@app.command("hub")
def hub_build(
    inputs: list[Path] = typer.Argument(..., help="Persona files (.jsonl/.parquet): mined, expanded or deduplicated."),
    out: Path = typer.Option(..., "--out", "-o", help="The hub Parquet file to write."),
    embed: bool = typer.Option(True, "--embed/--no-embed", help="Store sentence embeddings (makes search instant)."),
    embedder: str = typer.Option(None, help="A local sentence-transformers directory (default: all-MiniLM-L6-v2)."),
) -> None:
    """Merge persona files into one hub with lineage, duplicate counts (from dedup sidecars) and embeddings."""
    from personalm.personas import hub

    if out.suffix.lower() != ".parquet":
        raise PersonalmError("a hub is a .parquet file", source=str(out))
    table = hub.build(inputs, embedder, embed)
    hub.save(out, table)
    stderr.print(f"hub of {table.num_rows} personas -> {out}", markup=False)


@app.command("search")
def hub_search(
    query: str = typer.Argument(..., help="What to look for, e.g. 'a nurse who works night shifts'."),
    hub_path: Path = typer.Option(..., "--hub", help=HUB_HELP),
    k: int = typer.Option(10, "-k", min=1, help="How many personas to return."),
    where: list[str] = typer.Option([], "--where", help=FILTER_HELP),
    embedder: str = typer.Option(None, help="The embedder the hub was built with (default: all-MiniLM-L6-v2)."),
    out: Path = typer.Option(None, "--out", "-o", help="Write the subset to .jsonl/.parquet instead of stdout."),
) -> None:
    """The k personas closest in meaning to QUERY (cosine), after the filters; with a `score` column."""
    from personalm.personas import hub

    if out is not None:
        output_format(out)
    _emit(hub.search(hub.load(hub_path), query, k, where, embedder), out)


@app.command("sample")
def hub_sample(
    hub_path: Path = typer.Option(..., "--hub", help=HUB_HELP),
    n: int = typer.Option(10, "-n", min=1, help="How many personas to draw (without replacement)."),
    seed: int = typer.Option(0, help="Seed of the draw: the same seed gives the same personas."),
    where: list[str] = typer.Option([], "--where", help=FILTER_HELP),
    out: Path = typer.Option(None, "--out", "-o", help="Write the sample to .jsonl/.parquet instead of stdout."),
) -> None:
    """A seeded random sample of the hub (after the filters)."""
    from personalm.personas import hub

    if out is not None:
        output_format(out)
    _emit(hub.sample(hub.load(hub_path), n, seed, where), out)


def _mining_options(granularity: str, max_tokens: int, temperature: float, seed: int, batch: int):
    from personalm.personas.mining import MiningOptions
    from personalm.personas.prompts import GRANULARITIES

    if granularity not in GRANULARITIES:
        raise PersonalmError(f"--granularity {granularity}: expected one of {', '.join(GRANULARITIES)}")
    return MiningOptions(granularity, max_tokens, temperature, seed, batch)


def _write_mined(out: Path, rows: list[dict], rejects: list[dict]) -> Path:
    from personalm.tables import write_rows

    rejects_path = out.with_name(f"{out.stem}.rejected{out.suffix}")
    write_rows(rejects_path, rejects)
    write_rows(out, rows)
    return rejects_path


@app.command("extract")
def extract(
    corpus: Path = typer.Argument(
        ..., help="A folder of .txt/.md files, or .jsonl/.parquet with a text column, or .txt (a text per line)."
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Personas (.jsonl/.parquet); rejects go to OUT's stem + '.rejected' + suffix."
    ),
    column: str = typer.Option("text", help="Column holding the text (JSONL/Parquet)."),
    variant: list[str] = typer.Option(
        ["read"], "--variant", help="read, write, like or dislike (repeatable: one persona each)."
    ),
    granularity: str = typer.Option("fine", help="coarse ('a computer scientist') or fine (role plus focus)."),
    model: str = MODEL,
    max_tokens: int = MAX_TOKENS,
    temperature: float = TEMPERATURE,
    seed: int = typer.Option(0),
    batch: int = BATCH,
    cache: bool = CACHE,
    api_key: str = API_KEY,
    concurrency: int = typer.Option(8, min=1, help="Concurrent requests to an openai: endpoint."),
    engine: str = ENGINE,
) -> None:
    """Text-to-persona: who would read / write / like / dislike each text."""
    from personalm.corpus import read_texts
    from personalm.executors import get_executor
    from personalm.personas import mining
    from personalm.personas.prompts import VARIANTS

    output_format(out)
    bad = [v for v in variant if v not in VARIANTS]
    if bad:
        raise PersonalmError(f"--variant {bad[0]}: expected one of {', '.join(VARIANTS)}")
    options = _mining_options(granularity, max_tokens, temperature, seed, batch)
    if not corpus.exists():
        raise PersonalmError("no such file or folder", source=str(corpus))
    texts = read_texts(corpus, column)
    with get_executor(engine).generator(model, cache, api_key, concurrency) as (generate, model_id):
        rows, rejects = mining.extract(texts, generate, model_id, list(dict.fromkeys(variant)), options)
    rejects_path = _write_mined(out, rows, rejects)
    stderr.print(
        f"{len(rows)} personas from {len(texts)} texts -> {out}; {len(rejects)} rejected -> {rejects_path}",
        markup=False,
    )


@app.command("expand")
def expand(
    input: Path = typer.Argument(..., help="Personas to grow from (.jsonl/.parquet with 'persona', optional 'id')."),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Input personas plus every expansion, with lineage; rejects beside it."
    ),
    rounds: int = typer.Option(6, min=1, help="Rounds of persona-to-persona expansion (6 in the paper)."),
    fanout: int = typer.Option(1, min=1, help="Related personas asked for per persona per round."),
    relation: list[str] = typer.Option(
        [], "--relation", help="Relations to ask for (repeatable; default: a built-in list)."
    ),
    granularity: str = typer.Option("fine", help="coarse or fine."),
    model: str = MODEL,
    max_tokens: int = MAX_TOKENS,
    temperature: float = TEMPERATURE,
    seed: int = typer.Option(0),
    batch: int = BATCH,
    cache: bool = CACHE,
    api_key: str = API_KEY,
    concurrency: int = typer.Option(8, min=1),
    engine: str = ENGINE,
) -> None:
    """Persona-to-persona: who is close to each persona (colleague, family, caregiver, ...), N rounds."""
    from personalm.executors import get_executor
    from personalm.personas import mining
    from personalm.personas.io import read_personas
    from personalm.personas.prompts import RELATIONS

    output_format(out)
    options = _mining_options(granularity, max_tokens, temperature, seed, batch)
    seeds = []
    for row in read_personas(input).to_pylist():
        row.setdefault("origin", "import")
        row["round"] = row.get("round") or 0
        seeds.append(row)
    with get_executor(engine).generator(model, cache, api_key, concurrency) as (generate, model_id):
        grown, rejects = mining.expand(
            seeds, generate, model_id, rounds, fanout, relation or RELATIONS, options,
            on_round=lambda r, k: stderr.print(f"round {r}: {k} new personas", markup=False),
        )  # fmt: skip
    rejects_path = _write_mined(out, seeds + grown, rejects)
    stderr.print(
        f"{len(grown)} new personas over {rounds} rounds -> {out}; {len(rejects)} rejected -> {rejects_path}",
        markup=False,
    )


@app.command("diversity")
def diversity_cmd(
    inputs: list[Path] = typer.Argument(..., help="Persona files to compare, e.g. before.jsonl after.jsonl."),
    out: Path = typer.Option(..., "--out", "-o", help="Report folder: results.json, diversity.png, report.html."),
    label: list[str] = typer.Option([], "--label", help="A name per input (default: file stems)."),
    embedder: str = typer.Option(None, help="A local sentence-transformers directory (default: all-MiniLM-L6-v2)."),
    seed: int = typer.Option(0, help="Seed of the pair sample for the mean cosine."),
) -> None:
    """Mean pairwise cosine, distinct-n and Vendi score of each persona set, with a plot and an HTML page."""
    from personalm.personas.io import read_personas
    from personalm.studies.personas_diversity import diversity_report

    if label and len(label) != len(inputs):
        raise PersonalmError(f"got {len(label)} --label for {len(inputs)} inputs; give one per input or none")
    for path in inputs:  # every file is checked before the embedder loads
        read_personas(path)
    result = diversity_report(inputs, out, label or None, embedder, seed)
    for name, row in result["sets"].items():
        typer.echo(json.dumps({"set": name} | {k: v for k, v in row.items() if k != "file"}))
    stderr.print(f"report -> {out / 'report.html'}", markup=False)
