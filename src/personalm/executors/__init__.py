"""Where data-parallel work runs, for personas and synth: in this process (default) or on Ray Data
(`--engine ray` on the CLI).

Both executors call the same per-batch functions, and every decision that depends on the whole
dataset (which rows are duplicates, which persona comes from which) is taken afterwards from
their outputs in input order, so the two executors give the same result. Generation is offered two
ways over the same machinery: `generator` (a batch function, for persona mining) and `text_model`
(a `TextModel`, for synthesis).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import pyarrow as pa

from personalm.errors import PersonalmError
from personalm.models.base import Generation, ProgressCallback, Prompt, SamplingParams, TextModel, TokenScores
from personalm.personas import minhash_stage
from personalm.personas.greedy import Decision
from personalm.personas.mining import Generate
from personalm.personas.tokens import TokenSets

EXECUTORS = ("local", "ray")
FEATURE_BATCH = 65_536


class Executor:
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

    def minhash_dedup(self, texts: pa.Array | pa.ChunkedArray, num_perm: int, threshold: float) -> Decision:
        """Stage 1 of dedup: which rows are near-duplicates of an earlier kept row."""
        return minhash_stage.dedup(self.minhash_features(texts, num_perm), threshold)

    def embed(self, texts: Sequence[str], embedder: str | None) -> np.ndarray:
        from personalm.models.embedder import Embedder

        return Embedder(embedder).embed(list(texts))

    @contextmanager
    def text_model(self, model: str, cache: bool | str, api_key: str | None, concurrency: int) -> Iterator[TextModel]:
        """The model itself, loaded in this process (so it can also score); closed on exit."""
        from personalm.models.registry import load_model

        with load_model(model, cache=cache, api_key=api_key, max_concurrency=concurrency) as loaded:
            yield loaded

    @contextmanager
    def generator(
        self, model: str, cache: bool | str, api_key: str | None, concurrency: int
    ) -> Iterator[tuple[Generate, str]]:
        """(generate function, model id) for the mining stages; closed on exit."""
        with self.text_model(model, cache, api_key, concurrency) as loaded:
            yield (lambda batch, params: loaded.generate(batch, params)), loaded.model_id


class ExecutorModel(TextModel):
    """A `TextModel` whose generation is an executor's batch function (Ray: batches on model actors),
    so code written against TextModel runs unchanged there; scoring needs a model in this process."""

    def __init__(self, generate: Generate, model_id: str):
        self._generate = generate
        self.model_id = model_id

    def generate(
        self, prompts: Sequence[Prompt], params: SamplingParams | None = None, progress: ProgressCallback | None = None
    ) -> list[Generation]:
        out = self._generate(list(prompts), params or SamplingParams()) if prompts else []
        if progress:
            progress(len(out))
        return out

    def score(self, contexts: Sequence[Prompt], continuations: Sequence[str]) -> list[TokenScores]:
        raise PersonalmError("scoring runs on a model in this process; use --engine local")


def get_executor(name: str) -> Executor:
    """The executor `--engine name` asks for."""
    if name == "local":
        return Executor()
    if name == "ray":
        from personalm.executors.ray import RayExecutor

        return RayExecutor()
    raise PersonalmError(f"unknown engine '{name}'; expected one of {', '.join(EXECUTORS)}")
