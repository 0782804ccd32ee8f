"""The persona diversity report files (the measures: tests/eval/test_diversity.py)."""

from __future__ import annotations

import json


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
