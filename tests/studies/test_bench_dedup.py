"""`personalm bench dedup`, MinHash part, at a small size on the real personas."""

from __future__ import annotations

import pytest

from personalm.paths import data_dir
from personalm.studies.bench import dedup
from personalm.studies.bench.dedup_data import PERSONAS_FILE


def test_minhash_bench_is_exact_and_finds_the_planted_duplicates():
    if not (data_dir() / PERSONAS_FILE).is_file():
        pytest.skip(f"needs the Persona Hub sample at {data_dir() / PERSONAS_FILE}")
    result = dedup.run_minhash(data_dir(), 8000, seed=1, log=lambda _: None)
    assert result["planted"] > 200
    assert result["ours"]["precision"] == 1.0
    assert result["ours"]["recall"] >= 0.95 and result["ours_planted_recall"] >= 0.95
    assert result["ours"]["dropped"] >= result["planted_at_or_above_threshold"] * 0.95
    assert result["ours_seconds"] > 0 and result["peer_seconds"] > 0


@pytest.mark.slow
def test_minhash_bench_on_ray_prints_both_rates_and_the_same_decision():
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'personalm[ray]')")
    if not (data_dir() / PERSONAS_FILE).is_file():
        pytest.skip(f"needs the Persona Hub sample at {data_dir() / PERSONAS_FILE}")
    try:
        result = dedup.run_minhash(data_dir(), 3000, seed=2, log=lambda _: None, engine="ray")
    finally:
        ray.shutdown()
    assert result["ray_same_decision"] is True
    assert result["ray_rows_per_s"] > 0 and result["ours_rows_per_s"] > 0 and result["ray_cpus"] >= 1
