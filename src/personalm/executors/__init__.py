"""Where data-parallel work runs: in this process (default) or on Ray Data (`--engine ray`).

Both engines call the same per-batch functions, and every decision that depends on the whole
dataset (which rows are duplicates, which persona comes from which) is taken afterwards from
their outputs in input order, so the two engines give the same result.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import pyarrow as pa

from personalm.errors import PersonalmError
from personalm.personas import minhash_stage
from personalm.personas.mining import Generate
from personalm.personas.tokens import TokenSets

ENGINES = ("local", "ray")
FEATURE_BATCH = 65_536


class Engine:
    """In-process execution."""

    name = "local"

    def minhash_features(self, texts: pa.Array | pa.ChunkedArray, num_perm: int) -> minhash_stage.Features:
        """Batches on a thread per core (Arrow kernels and numpy release the GIL)."""
        if isinstance(texts, pa.ChunkedArray):
            texts = texts.combine_chunks()
        threads = os.cpu_count() or 1
        n = len(texts)
        size = max(1, min(FEATURE_BATCH, -(-n // threads)))
        signatures = np.empty((n, num_perm), np.uint32)
        starts = range(0, max(n, 1), size)
        with ThreadPoolExecutor(threads) as pool:
            parts = list(
                pool.map(
                    lambda start: minhash_stage.features(
                        texts.slice(start, size), num_perm, out=signatures[start : start + size]
                    ),
                    starts,
                )
            )
        return minhash_stage.Features(
            signatures,
            TokenSets.concat([p.tokens for p in parts]),
            np.concatenate([p.set_keys for p in parts]),
        )

    def embed(self, texts: Sequence[str], embedder: str | None) -> np.ndarray:
        from personalm.models.embedder import Embedder

        return Embedder(embedder).embed(list(texts))

    @contextmanager
    def generator(
        self, model: str, cache: bool | str, api_key: str | None, concurrency: int
    ) -> Iterator[tuple[Generate, str]]:
        """(generate function, model id) for the mining stages; closed on exit."""
        from personalm.models.registry import load_model

        with load_model(model, cache=cache, api_key=api_key, max_concurrency=concurrency) as loaded:
            yield (lambda batch, params: loaded.generate(batch, params)), loaded.model_id


def get_engine(name: str) -> Engine:
    if name == "local":
        return Engine()
    if name == "ray":
        from personalm.executors.ray import RayEngine

        return RayEngine()
    raise PersonalmError(f"unknown engine '{name}'; expected one of {', '.join(ENGINES)}")
