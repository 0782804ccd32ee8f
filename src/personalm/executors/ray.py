"""The Ray Data executor: the same per-batch functions as the local executor, run as Ray tasks/actors.

Rows carry their input position (`_i`) through Ray and are put back in order on the driver, so
every later decision sees exactly what the local executor would. Connects to RAY_ADDRESS when set,
otherwise starts a local Ray instance.

Synthesis generates through the same Ray Data batches behind the TextModel interface
(`ExecutorModel`). Samples are seeded by a prompt's occurrence within one call; Ray splits a call
into batches, so only a prompt repeated across batches (never the case for distinct personas) can
be sampled differently from the local run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import pyarrow as pa

from personalm.errors import PersonalmError
from personalm.executors import Executor, ExecutorModel
from personalm.models.base import TextModel
from personalm.personas import minhash_stage
from personalm.personas.mining import Generate
from personalm.personas.tokens import TokenSets

BATCH_ROWS = 16_384
EMBED_BATCH = 256
GENERATE_BATCH = 64


def ensure_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise PersonalmError("--engine ray needs Ray: pip install 'personalm[ray]'") from None
    if not ray.is_initialized():
        ray.init(
            address=os.environ.get("RAY_ADDRESS") or None,
            include_dashboard=False,
            log_to_driver=False,
            ignore_reinit_error=True,
            configure_logging=False,
        )
        ray.data.DataContext.get_current().enable_progress_bars = False
    return ray


def _feature_batch(batch: pa.Table, num_perm: int) -> pa.Table:
    feats = minhash_stage.features(batch.column("text"), num_perm)
    tokens = pa.LargeListArray.from_arrays(pa.array(feats.tokens.offsets), pa.array(feats.tokens.hashes))
    signatures = pa.FixedSizeListArray.from_arrays(pa.array(feats.signatures.reshape(-1)), num_perm)
    return pa.table({"_i": batch.column("_i"), "sig": signatures, "tokens": tokens, "set_key": feats.set_keys})


class _Embed:
    def __init__(self, path: str | None):
        from personalm.models.embedder import Embedder

        self.embedder = Embedder(path)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"_i": batch["_i"], "vector": self.embedder.embed(list(batch["text"]))}


class _Generate:
    def __init__(self, model: str, cache: bool | str, api_key: str | None, concurrency: int):
        from personalm.models.registry import load_model

        self.model = load_model(model, cache=cache, api_key=api_key, max_concurrency=concurrency)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from personalm.models.base import SamplingParams

        params = SamplingParams(**json.loads(batch["params"][0]))
        generations = self.model.generate([json.loads(p) for p in batch["prompt"]], params)
        return {"_i": batch["_i"], "generation": [json.dumps(g.to_dict()) for g in generations]}


def _ordered(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda row: int(row["_i"]))


class RayExecutor(Executor):
    """Ray Data execution of the data-parallel steps."""

    name = "ray"

    def minhash_features(self, texts: pa.Array | pa.ChunkedArray, num_perm: int) -> minhash_stage.Features:
        ray = ensure_ray()
        table = pa.table({"_i": pa.array(np.arange(len(texts))), "text": texts})
        out = (
            ray.data.from_arrow(table)
            .map_batches(
                _feature_batch, fn_kwargs={"num_perm": num_perm}, batch_format="pyarrow", batch_size=BATCH_ROWS
            )
            .to_arrow_refs()
        )
        result = pa.concat_tables(ray.get(out)).sort_by("_i").combine_chunks()
        tokens = result.column("tokens").chunk(0) if result.num_rows else pa.array([], pa.large_list(pa.uint64()))
        offsets = np.asarray(tokens.offsets, np.int64) - (tokens.offsets[0].as_py() if len(tokens) else 0)
        return minhash_stage.Features(
            np.asarray(result.column("sig").combine_chunks().flatten(), np.uint32).reshape(-1, num_perm),
            TokenSets.from_hashes(
                np.asarray(tokens.flatten(), np.uint64), offsets if len(tokens) else np.zeros(1, np.int64)
            ),
            np.asarray(result.column("set_key"), np.uint64),
        )

    def embed(self, texts: Sequence[str], embedder: str | None) -> np.ndarray:
        ray = ensure_ray()
        ds = ray.data.from_items([{"_i": i, "text": t} for i, t in enumerate(texts)])
        rows = _ordered(
            ds.map_batches(
                _Embed, fn_constructor_kwargs={"path": embedder}, batch_size=EMBED_BATCH, concurrency=1
            ).take_all()
        )
        return np.stack([np.asarray(r["vector"], np.float32) for r in rows])

    @contextmanager
    def generator(
        self, model: str, cache: bool | str, api_key: str | None, concurrency: int
    ) -> Iterator[tuple[Generate, str]]:
        from personalm.models.registry import load_model

        ray = ensure_ray()
        with load_model(model, cache=False, api_key=api_key, max_concurrency=concurrency) as probe:
            model_id = probe.model_id
        kwargs = {"model": model, "cache": cache, "api_key": api_key, "concurrency": concurrency}

        def generate(batch, params):
            from personalm.models.base import Generation

            items = [
                {"_i": i, "prompt": json.dumps(p), "params": json.dumps(params.to_dict())} for i, p in enumerate(batch)
            ]
            rows = _ordered(
                ray.data.from_items(items)
                .map_batches(_Generate, fn_constructor_kwargs=kwargs, batch_size=GENERATE_BATCH, concurrency=1)
                .take_all()
            )
            return [Generation(**json.loads(r["generation"])) for r in rows]

        yield generate, model_id

    @contextmanager
    def text_model(self, model: str, cache: bool | str, api_key: str | None, concurrency: int) -> Iterator[TextModel]:
        """A TextModel that generates on Ray (scoring needs `--engine local`); closed on exit."""
        with self.generator(model, cache, api_key, concurrency) as (generate, model_id):
            yield ExecutorModel(generate, model_id)
