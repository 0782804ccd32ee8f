"""Two-stage persona dedup: MinHash on word sets, then embedding cosine on what survives.

Which row is kept is decided in input order (personas.greedy). Every dropped row records the
kept row it duplicates (`duplicate_of`, that row's id), the `stage` that dropped it and the
`similarity` (Jaccard for stage "minhash", cosine for stage "embedding").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from personalm.executors import Executor
from personalm.personas import embedding_stage, minhash_stage

DEDUP_COLUMNS = ("duplicate_of", "stage", "similarity")


@dataclass
class DedupOptions:
    minhash_threshold: float = 0.9
    embedding_threshold: float | None = embedding_stage.DEFAULT_THRESHOLD  # None: stage 1 only
    num_perm: int = minhash_stage.NUM_PERM
    embedder: str | None = None  # a sentence-transformers directory; None: the embedded MiniLM

    def __post_init__(self) -> None:
        if not 0 < self.minhash_threshold <= 1:
            raise ValueError(f"MinHash threshold must be in (0, 1], got {self.minhash_threshold}")
        low = embedding_stage.MIN_THRESHOLD
        if self.embedding_threshold is not None and not low <= self.embedding_threshold <= 1:
            raise ValueError(f"embedding threshold must be in [{low}, 1], got {self.embedding_threshold}")


@dataclass
class DedupResult:
    kept: pa.Table
    dropped: pa.Table
    summary: dict[str, Any] = field(default_factory=dict)


def dedup_table(
    table: pa.Table,
    options: DedupOptions,
    executor: Executor,
    column: str = "persona",
    vectors: np.ndarray | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> DedupResult:
    """Run both stages on a table with `id` and `column`; `vectors` skips computing embeddings."""
    started = time.perf_counter()
    n = table.num_rows
    ids = np.asarray(table.column("id").to_pylist(), dtype=object)
    texts = table.column(column)
    first = executor.minhash_dedup(texts, options.num_perm, options.minhash_threshold)
    stage1_s = time.perf_counter() - started

    duplicate_of = np.full(n, None, dtype=object)
    stage = np.full(n, None, dtype=object)
    similarity = np.full(n, np.nan, dtype=np.float64)
    dropped1 = first.dropped
    duplicate_of[dropped1] = ids[first.duplicate_of[dropped1]]
    stage[dropped1] = "minhash"
    similarity[dropped1] = first.similarity[dropped1]

    survivors = np.flatnonzero(first.keep)
    stage2_s = 0.0
    if options.embedding_threshold is not None and len(survivors) > 1:
        start2 = time.perf_counter()
        if vectors is None:
            survivor_vectors = executor.embed(texts.take(pa.array(survivors)).to_pylist(), options.embedder)
        else:
            survivor_vectors = vectors[survivors]
        advance = (lambda k: progress("embedding dedup", k, len(survivors))) if progress else None
        second = embedding_stage.dedup(survivor_vectors, options.embedding_threshold, advance)
        dropped2 = survivors[second.dropped]
        duplicate_of[dropped2] = ids[survivors[second.duplicate_of[second.dropped]]]
        stage[dropped2] = "embedding"
        similarity[dropped2] = second.similarity[second.dropped]
        stage2_s = time.perf_counter() - start2

    dropped_mask = stage != None  # noqa: E711 (element-wise on an object array)
    kept = table.filter(pa.array(~dropped_mask))
    dropped = table.filter(pa.array(dropped_mask))
    dropped = (
        dropped.append_column("duplicate_of", pa.array(duplicate_of[dropped_mask].tolist(), pa.string()))
        .append_column("stage", pa.array(stage[dropped_mask].tolist(), pa.string()))
        .append_column("similarity", pa.array(similarity[dropped_mask], pa.float64()))
    )
    summary = {
        "input_rows": n,
        "kept_rows": kept.num_rows,
        "dropped_minhash": int((stage == "minhash").sum()),
        "dropped_embedding": int((stage == "embedding").sum()),
        "minhash_threshold": options.minhash_threshold,
        "embedding_threshold": options.embedding_threshold,
        "num_perm": options.num_perm,
        "engine": executor.name,
        "minhash_seconds": round(stage1_s, 3),
        "embedding_seconds": round(stage2_s, 3),
    }
    return DedupResult(kept, dropped, summary)
