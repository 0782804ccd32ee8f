"""The Ray Data executor on a local Ray instance gives the same results as the in-process executor."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'personalm[ray]')")

from personalm.executors import Executor  # noqa: E402
from personalm.executors.ray import RayExecutor  # noqa: E402
from personalm.models.registry import DEFAULT_MODEL  # noqa: E402
from personalm.personas import mining  # noqa: E402
from personalm.personas.dedup import DedupOptions, dedup_table  # noqa: E402

pytestmark = pytest.mark.slow

PERSONAS = [
    "A pediatric nurse who works night shifts in Ohio",
    "a pediatric NURSE who works night shifts in Ohio!",
    "A pediatric nurse working the night shift in Ohio",
    "A pastry chef who runs a small bakery in Lyon",
    "A retired physics teacher who builds telescopes",
    "A retired physics teacher who builds telescopes at home",
    "!!!",
    "!!!",
    "A marine biologist studying coral bleaching",
]


@pytest.fixture(scope="module")
def ray_executor():
    import ray

    executor = RayExecutor()
    yield executor
    ray.shutdown()


def test_dedup_on_ray_matches_local(ray_executor):
    rng = np.random.default_rng(0)
    texts = PERSONAS + [f"A {w} who collects {v} stamps" for w, v in rng.choice(["baker", "pilot", "judge"], (30, 2))]
    table = pa.table({"id": [str(i) for i in range(len(texts))], "persona": texts})
    options = DedupOptions(minhash_threshold=0.9, embedding_threshold=0.85)
    local = dedup_table(table, options, Executor())
    remote = dedup_table(table, options, ray_executor)
    assert remote.kept.column("id").to_pylist() == local.kept.column("id").to_pylist()
    for column in ("id", "duplicate_of", "stage"):
        assert remote.dropped.column(column).to_pylist() == local.dropped.column(column).to_pylist()
    assert np.allclose(remote.dropped.column("similarity"), local.dropped.column("similarity"), atol=1e-5)
    assert local.summary["dropped_minhash"] >= 3 and local.summary["dropped_embedding"] >= 1


def test_extract_on_ray_matches_local(ray_executor, tmp_path: Path):
    texts = [("bees", "Bees need water near the hive in summer."), ("tax", "File the VAT return by the 7th.")]
    options = mining.MiningOptions(max_tokens=20, temperature=0.0)
    results = []
    for executor, cache in ((Executor(), tmp_path / "a.sqlite"), (ray_executor, tmp_path / "b.sqlite")):
        with executor.generator(DEFAULT_MODEL, str(cache), None, 1) as (generate, model_id):
            results.append(mining.extract(texts, generate, model_id, ("read",), options))
    assert json.dumps(results[0]) == json.dumps(results[1])


def test_minhash_stage_on_the_cluster_decides_like_one_process(ray_executor):
    """A planted set (near copies, exact copies, wordless rows) through the cluster's two hash
    shuffles: the same rows kept and dropped, pointing at the same rows, as the local path, also
    when Ray Data cuts everything else into tiny blocks."""
    import ray

    rng = np.random.default_rng(3)
    words = [f"w{i}" for i in range(200)]
    originals = [rng.choice(words, 12, replace=False).tolist() for _ in range(150)]
    texts = []
    for _ in range(1200):
        row = list(originals[rng.integers(len(originals))])
        if rng.random() < 0.5:
            row[rng.integers(len(row))] = str(rng.choice(words))  # a near copy
        texts.append(" ".join(row) if rng.random() > 0.03 else "!!!")
    texts = pa.array(texts)
    local = Executor().minhash_dedup(texts, 128, 0.7)
    context = ray.data.DataContext.get_current()
    saved, context.target_max_block_size = context.target_max_block_size, 4096
    try:
        remote = ray_executor.minhash_dedup(texts, 128, 0.7)
    finally:
        context.target_max_block_size = saved
    assert 300 < (~local.keep).sum() < 1150
    np.testing.assert_array_equal(remote.keep, local.keep)
    np.testing.assert_array_equal(remote.duplicate_of, local.duplicate_of)
    np.testing.assert_array_equal(remote.similarity, local.similarity)
