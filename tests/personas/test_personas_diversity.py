"""Diversity metrics on sets whose answers are known, and the report files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from personalm.personas import diversity


def test_identical_and_orthogonal_sets():
    same = np.tile(np.eye(4, dtype=np.float32)[:1], (5, 1))
    basis = np.eye(4, dtype=np.float32)
    assert diversity.mean_pairwise_cosine(same) == pytest.approx(1.0)
    assert diversity.vendi_score(same) == pytest.approx(1.0)
    assert diversity.mean_pairwise_cosine(basis) == pytest.approx(0.0)
    assert diversity.vendi_score(basis) == pytest.approx(4.0)


def test_distinct_n():
    texts = ["a nurse who sings", "a nurse who dances"]
    assert diversity.distinct_n(texts, 1) == pytest.approx(5 / 8)
    assert diversity.distinct_n(texts, 2) == pytest.approx(4 / 6)
    assert np.isnan(diversity.distinct_n(["one"], 2))


def test_report_files(tmp_path, embedder):
    from personalm.studies.personas_diversity import diversity_report

    before = tmp_path / "before.jsonl"
    after = tmp_path / "after.jsonl"
    rows = ["A nurse who sings in a choir", "a nurse who sings in a choir!", "A pilot who flies cargo planes"]
    before.write_text("".join(json.dumps({"persona": r}) + "\n" for r in rows))
    after.write_text("".join(json.dumps({"persona": r}) + "\n" for r in rows[::2]))
    result = diversity_report([before, after], tmp_path / "report")
    assert result["sets"]["after"]["mean_pairwise_cosine"] < result["sets"]["before"]["mean_pairwise_cosine"]
    assert {p.name for p in (tmp_path / "report").iterdir()} == {"results.json", "diversity.png", "report.html"}
