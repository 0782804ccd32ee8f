"""The Persona Hub: one Parquet file of personas with lineage, dedup info and embeddings.

Columns (every hub has all of them; missing ones are filled with nulls when a file is added):

| column | meaning |
| --- | --- |
| id | unique string id |
| persona | the persona description |
| origin | "text" (text-to-persona), "expansion" (persona-to-persona) or "import" |
| source_text_id | id of the text a persona was mined from (its root's text for expansions) |
| parent_id, relation, round | for expansions: the persona it came from, how they relate, 1..N |
| duplicates | how many dropped rows (a dedup sidecar) point at this persona |
| embedding | unit-norm sentence embedding (list<float32>), optional |
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from personalm.errors import PersonalmError
from personalm.personas.io import read_personas, sidecar_path
from personalm.tables import read_rows

LINEAGE = {
    "origin": pa.string(),
    "source_text_id": pa.string(),
    "parent_id": pa.string(),
    "relation": pa.string(),
    "round": pa.int64(),
}


def build(inputs: Sequence[Path], embedder: str | None = None, embed: bool = True) -> pa.Table:
    """Merge persona files into one hub table (ids must stay unique across files)."""
    tables = []
    for path in inputs:
        table = read_personas(path)
        for name, kind in LINEAGE.items():
            if name not in table.column_names:
                fill = pa.array(["import"] * table.num_rows) if name == "origin" else pa.nulls(table.num_rows, kind)
                table = table.append_column(name, fill)
            else:
                table = table.set_column(table.schema.get_field_index(name), name, table.column(name).cast(kind))
        table = table.select(["id", "persona", *LINEAGE])
        tables.append(_with_duplicate_counts(table, sidecar_path(path)))
    hub = pa.concat_tables(tables)
    ids = hub.column("id").to_pylist()
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        repeated = next(i for i in ids if i in seen or seen.add(i))
        raise PersonalmError(f"id '{repeated}' appears in more than one input; ids must be unique in a hub")
    if embed:
        from personalm.models.embedder import Embedder

        vectors = Embedder(embedder).embed(hub.column("persona").to_pylist())
        hub = hub.append_column("embedding", _vector_column(vectors))
    return hub


def _with_duplicate_counts(table: pa.Table, dropped_path: Path) -> pa.Table:
    counts = np.zeros(table.num_rows, np.int64)
    if dropped_path.is_file():
        position = {row_id: i for i, row_id in enumerate(table.column("id").to_pylist())}
        for _, row in read_rows(dropped_path):
            if row.get("duplicate_of") in position:
                counts[position[row["duplicate_of"]]] += 1
    return table.append_column("duplicates", pa.array(counts))


def _vector_column(vectors: np.ndarray) -> pa.Array:
    flat = pa.array(np.ascontiguousarray(vectors, np.float32).reshape(-1))
    return (
        pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])
        if len(vectors)
        else pa.array([], pa.list_(pa.float32()))
    )


def load(path: Path) -> pa.Table:
    if not path.is_file():
        raise PersonalmError("no such hub file (build one with `personalm personas hub`)", source=str(path))
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise PersonalmError(f"not a readable Parquet file ({err})", source=str(path)) from None
    missing = [c for c in ("id", "persona") if c not in table.column_names]
    if missing:
        raise PersonalmError(f"not a persona hub: missing column(s) {', '.join(missing)}", source=str(path))
    return table


def vectors_of(table: pa.Table, embedder: str | None = None) -> np.ndarray:
    """The hub's stored embeddings, or fresh ones when it was built without them."""
    if "embedding" in table.column_names:
        column = table.column("embedding").combine_chunks()
        return np.asarray(column.flatten(), np.float32).reshape(table.num_rows, -1)
    from personalm.models.embedder import Embedder

    return Embedder(embedder).embed(table.column("persona").to_pylist())


def parse_filters(filters: Sequence[str], table: pa.Table) -> pa.Array | None:
    """`column=value` (exact, as text) and `column~text` (case-insensitive substring), all ANDed."""
    mask = None
    for item in filters:
        op = "~" if "~" in item and ("=" not in item or item.index("~") < item.index("=")) else "="
        column, _, value = item.partition(op)
        if not column or column not in table.column_names:
            raise PersonalmError(f"filter '{item}': expected COLUMN=VALUE or COLUMN~TEXT with a column of the hub")
        text = pc.cast(table.column(column), pa.string())
        if op == "=":
            this = pc.fill_null(pc.equal(text, value), False)
        else:
            this = pc.fill_null(pc.match_substring(text, value, ignore_case=True), False)
        mask = this if mask is None else pc.and_(mask, this)
    return mask


def search(table: pa.Table, query: str, k: int, filters: Sequence[str] = (), embedder: str | None = None) -> pa.Table:
    """The k personas most similar to the query (cosine), among rows passing the filters."""
    from personalm.models.embedder import Embedder

    mask = parse_filters(filters, table)
    if mask is not None:
        table = table.filter(mask)
    if table.num_rows == 0:
        return table.append_column("score", pa.array([], pa.float32()))
    vectors = vectors_of(table, embedder)
    scores = vectors @ Embedder(embedder).embed([query])[0]
    top = np.argsort(-scores, kind="stable")[:k]
    return table.take(pa.array(top)).append_column("score", pa.array(scores[top]))


def sample(table: pa.Table, n: int, seed: int, filters: Sequence[str] = ()) -> pa.Table:
    """n rows drawn without replacement by a seeded generator (the same seed gives the same rows)."""
    mask = parse_filters(filters, table)
    if mask is not None:
        table = table.filter(mask)
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(table.num_rows, size=min(n, table.num_rows), replace=False))
    return table.take(pa.array(picked, pa.int64()))


def save(path: Path, table: pa.Table) -> None:
    """Atomic Parquet write of the whole hub."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
