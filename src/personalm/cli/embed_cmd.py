"""`personalm embed`: texts in, normalized MiniLM embeddings out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from personalm.errors import PersonalmError
from personalm.models.embedder import Embedder
from personalm.progress import progress_bar, stderr
from personalm.tables import input_format, output_format, read_rows, require, write_rows


def embed(
    input: str = typer.Argument(
        "-", help="Texts: .txt (one per line), .jsonl/.parquet with a text column, or - for stdin."
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Output .jsonl, .parquet (text + embedding columns) or .npy (matrix)."
    ),
    column: str = typer.Option("text", help="Column holding the text."),
    fmt: str = typer.Option(
        None, "--format", help="Input format when the extension does not say: jsonl, parquet, text."
    ),
    model: str = typer.Option(
        None, help="A local sentence-transformers directory (default: the embedded all-MiniLM-L6-v2)."
    ),
    batch_size: int = typer.Option(64, min=1),
) -> None:
    """Embed texts (unit-norm vectors: a dot product is a cosine similarity)."""
    if fmt and fmt not in {"jsonl", "parquet", "text"}:
        raise PersonalmError(f"--format {fmt}: expected jsonl, parquet or text")
    as_matrix = out.suffix.lower() == ".npy"
    if not as_matrix:
        output_format(out)
    fmt = input_format(input, fmt)
    source = "<stdin>" if input == "-" else input
    rows = [(line, row) for line, row in read_rows(input, fmt)]
    texts = [require(row, column, str, source, line) for line, row in rows]
    if not texts:
        raise PersonalmError("no texts found (empty input)", source=source)
    embedder = Embedder(model, batch_size=batch_size)
    _warn_overlong(embedder, texts, [line for line, _ in rows], source)
    with progress_bar("embedding", len(texts)) as advance:
        vectors = embedder.embed(texts, advance)
    if as_matrix:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp.npy")
        np.save(tmp, vectors)
        tmp.replace(out)
    else:
        write_rows(
            out,
            [
                {"id": str(row.get("id", line)), "text": t, "embedding": v.tolist()}
                for (line, row), t, v in zip(rows, texts, vectors, strict=True)
            ],
        )
    typer.echo(f"wrote {len(texts)} embeddings ({embedder.dimension}-d, {embedder.name}) to {out}", err=True)


SHOWN_LINES = 10


def _warn_overlong(embedder: Embedder, texts: list[str], lines: list[int], source: str) -> None:
    """Say which texts the model will cut to its window (it embeds only their first tokens)."""
    window = embedder.model.max_seq_length
    lengths = embedder.model.tokenizer(texts, truncation=True, max_length=window + 1, return_length=True)["length"]
    over = [line for line, n in zip(lines, lengths, strict=True) if n > window]
    if not over:
        return
    shown = ", ".join(map(str, over[:SHOWN_LINES])) + (", ..." if len(over) > SHOWN_LINES else "")
    stderr.print(
        f"warning: {source}: {len(over)} of {len(texts)} texts are longer than the model's {window} tokens; "
        f"only their first {window} tokens are embedded (lines {shown})",
        markup=False, highlight=False, soft_wrap=True,
    )  # fmt: skip
