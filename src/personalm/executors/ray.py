"""The Ray Data executor: the same per-batch functions as the local executor, run as Ray tasks/actors.

MinHash dedup runs on the cluster end to end (`minhash_dedup`), so no process ever holds all the
signatures: workers sign their blocks and key each row's LSH bands; a hash shuffle on the word-set
key brings identical sets together (each row learns its first copy); a second hash shuffle on
(band, band key) brings every candidate pair onto one worker, which keeps the pairs that this band
is the first to share (so each pair is verified once) and computes their exact Jaccard with the
same kernel as the local path. Only the similar pairs and the copies' representatives come back
to the driver, which takes the same greedy decision in input order as the local path: the same
rows kept and dropped. Shuffle volume per row: bands x (24 + 8 x bands + 8 x words) bytes.

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
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from personalm.errors import PersonalmError
from personalm.executors import Executor, ExecutorModel
from personalm.models.base import TextModel
from personalm.personas import kernels, minhash_stage
from personalm.personas.greedy import Decision
from personalm.personas.mining import Generate
from personalm.personas.tokens import TokenSets

BATCH_ROWS = 16_384
WHOLE_PARTITION = 2**60
"""Block size limit while dedup's hash partitions are formed and read: Ray Data would otherwise cut
a partition past its block size (128 MiB), and a group cut in two would miss its pairs."""
EMBED_BATCH = 256
GENERATE_BATCH = 64


def _with_words(block: pa.Table) -> pa.Table:
    """The rows that have words (a wordless row only matches its identical copies)."""
    if not block.num_rows:
        return block
    return block.filter(pc.greater(pc.list_value_length(block.column("tokens")), 0))


def _rows(tables: list[pa.Table]) -> list[pa.Table]:
    """The tables that hold rows (an empty block from Ray may come without the columns)."""
    return [t for t in tables if t.num_rows]


def _cluster_cpus(ray: Any) -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


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
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.shuffle_strategy = ray.data.context.ShuffleStrategy.HASH_SHUFFLE  # repartition by keys
    return ray


_EMPTY_EDGES = pa.table(
    {"left": pa.array([], pa.int64()), "right": pa.array([], pa.int64()), "sim": pa.array([], pa.float32())}
)
_EMPTY_COPIES = pa.table({"_i": pa.array([], pa.int64()), "first": pa.array([], pa.int64())})


def _sign_batch(batch: pa.Table, num_perm: int, bands: int, width: int) -> pa.Table:
    """Per row: its set key, its word hashes and its band keys (with the row position)."""
    feats = minhash_stage.features(batch.column("text"), num_perm)
    keys = kernels.band_keys(feats.signatures, np.arange(len(feats)), bands, width)
    return pa.table({
        "_i": batch.column("_i"),
        "set_key": feats.set_keys,
        "tokens": pa.LargeListArray.from_arrays(pa.array(feats.tokens.offsets), pa.array(feats.tokens.hashes)),
        "keys": pa.FixedSizeListArray.from_arrays(pa.array(keys.reshape(-1)), bands),
    })  # fmt: skip


def _first_of_set(block: pa.Table) -> pa.Table:
    """A block holding every row of its set keys: each row with the first row (in input order) of
    its set."""
    if not block.num_rows:  # an empty block may come without its columns
        return block
    positions = np.asarray(block.column("_i"), np.int64)
    order = np.argsort(positions, kind="stable")
    first_in_order = minhash_stage.first_of_identical(np.asarray(block.column("set_key"), np.uint64)[order])
    first = np.empty(len(positions), np.int64)
    first[order] = positions[order][first_in_order]
    return block.append_column("first", pa.array(first))


def _band_rows(block: pa.Table, bands: int) -> pa.Table:
    """One row per band of each representative with words: (band, key, _i, its keys, its words)."""
    if not block.num_rows:
        return block
    n = block.num_rows
    keys = np.asarray(block.column("keys").combine_chunks().flatten(), np.uint64).reshape(n, bands)
    repeat = pa.array(np.repeat(np.arange(n), bands))
    return pa.table({
        "band": np.tile(np.arange(bands, dtype=np.int16), n),
        "key": keys.reshape(-1),
        "_i": block.column("_i").take(repeat),
        "keys": block.column("keys").take(repeat),
        "tokens": block.column("tokens").take(repeat),
    })  # fmt: skip


def _similar_pairs(block: pa.Table, bands: int, threshold: float) -> pa.Table:
    """A block holding every row of its (band, key) groups: the pairs (i < j) of each group that
    no earlier band shares, with their exact Jaccard, those at or above the threshold."""
    if block.num_rows < 2:
        return _EMPTY_EDGES
    band, key = np.asarray(block.column("band"), np.int64), np.asarray(block.column("key"), np.uint64)
    order = np.lexsort((key, band))
    same = (band[order][1:] == band[order][:-1]) & (key[order][1:] == key[order][:-1])
    starts = np.flatnonzero(np.concatenate([[True], ~same]))
    stops = np.append(starts[1:], len(order))
    groups = [order[a:b] for a, b in zip(starts, stops, strict=True) if b - a > 1]
    if not groups:
        return _EMPTY_EDGES
    positions = np.asarray(block.column("_i"), np.int64)
    keys = np.asarray(block.column("keys").combine_chunks().flatten(), np.uint64).reshape(block.num_rows, bands)
    left, right = [], []
    for rows in groups:
        rows = rows[np.argsort(positions[rows], kind="stable")]
        a, b = np.triu_indices(len(rows), 1)
        a, b = rows[a], rows[b]
        earlier = (keys[a] == keys[b])[:, : band[rows[0]]].any(axis=1)
        left.append(a[~earlier])
        right.append(b[~earlier])
    left, right = np.concatenate(left), np.concatenate(right)
    if not len(left):
        return _EMPTY_EDGES
    words = block.column("tokens").combine_chunks()
    rows = np.concatenate([left, right])
    picked = words.take(pa.array(rows))
    offsets = np.asarray(picked.offsets, np.int64) - picked.offsets[0].as_py()
    tokens = TokenSets.from_hashes(np.asarray(picked.flatten(), np.uint64), offsets)
    sim = minhash_stage.jaccard(tokens, np.arange(len(left)), np.arange(len(left), 2 * len(left)))
    keep = sim >= threshold
    return pa.table({"left": positions[left][keep], "right": positions[right][keep], "sim": sim[keep]})


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

    def minhash_dedup(self, texts: pa.Array | pa.ChunkedArray, num_perm: int, threshold: float) -> Decision:
        """Stage 1 on the cluster (see the module docstring); the decision equals the local one."""
        ray = ensure_ray()
        n = len(texts)
        bands, width = minhash_stage.band_shape(threshold, num_perm)
        partitions = max(2 * _cluster_cpus(ray), -(-n // BATCH_ROWS))
        context = ray.data.DataContext.get_current()
        saved = context.target_max_block_size
        context.target_max_block_size = WHOLE_PARTITION  # a group is whole only within one block
        try:
            table = pa.table({"_i": pa.array(np.arange(n, dtype=np.int64)), "text": texts})
            signed = (
                ray.data.from_arrow(table)
                .map_batches(
                    _sign_batch, fn_kwargs={"num_perm": num_perm, "bands": bands, "width": width},
                    batch_format="pyarrow", batch_size=BATCH_ROWS,
                )
                .repartition(partitions, keys=["set_key"])
                .map_batches(_first_of_set, batch_format="pyarrow", batch_size=None)
                .materialize()
            )  # fmt: skip
            copies = signed.filter(expr="_i != first").select_columns(["_i", "first"]).to_arrow_refs()
            pairs = (
                signed.filter(expr="_i == first")
                .map_batches(_with_words, batch_format="pyarrow")
                .map_batches(_band_rows, fn_kwargs={"bands": bands}, batch_format="pyarrow")
                .repartition(partitions, keys=["band", "key"])
                .map_batches(
                    _similar_pairs, fn_kwargs={"bands": bands, "threshold": threshold}, batch_format="pyarrow",
                    batch_size=None,
                )
                .to_arrow_refs()
            )  # fmt: skip
        finally:
            context.target_max_block_size = saved
        representative = np.arange(n, dtype=np.int64)
        copied = pa.concat_tables([_EMPTY_COPIES, *_rows(ray.get(copies))])
        representative[np.asarray(copied.column("_i"), np.int64)] = np.asarray(copied.column("first"), np.int64)
        edges = pa.concat_tables([_EMPTY_EDGES, *_rows(ray.get(pairs))])
        return minhash_stage.decide(
            representative,
            np.asarray(edges.column("left"), np.int64),
            np.asarray(edges.column("right"), np.int64),
            np.asarray(edges.column("sim"), np.float32),
            threshold,
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
