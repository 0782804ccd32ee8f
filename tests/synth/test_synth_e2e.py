"""Every synthesis task in every prompting mode on the real embedded model (tiny budgets), and the
CLI end to end with math verification. The model is small: these check plumbing, not quality."""

from __future__ import annotations

import json

import pytest

from personalm.cli.app import main
from personalm.synth import modes, run, tasks
from personalm.synth.modes import Demo

PERSONAS = [
    {"id": "bee", "persona": "A beekeeper in Vermont who sells honey at farmers' markets."},
    {"id": "nurse", "persona": "A night-shift nurse studying for a pharmacology exam."},
]
DEMOS = [Demo("A bakery sells 120 rolls a day at $0.75 each. How much does it earn in a week?")]


@pytest.mark.slow
def test_every_task_and_mode_runs_on_the_embedded_model(embedded_model):
    demos = modes.with_personas(DEMOS, embedded_model)
    assert demos[0].persona and demos[0].inferred
    for name in tasks.TASKS:
        task = tasks.get_task(name, world="A desert trading city", template="A short note for {{ persona }}.")
        for mode in modes.MODES:
            options = run.SynthOptions(mode, ("short",), max_tokens=12, turns=2, turn_tokens=8)
            rows = run.synthesize(PERSONAS, task, embedded_model, options, demos)
            assert [r["persona_id"] for r in rows] == ["bee", "nurse"], (name, mode)
            assert all(r["model_id"] == embedded_model.model_id and r["mode"] == mode for r in rows)
            assert all(isinstance(r["flags"], list) and r["finish_reason"] in {"stop", "length"} for r in rows)


def _ok(args: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 0


@pytest.mark.slow
def test_cli_math_with_verification(tmp_path, capsys):
    personas = tmp_path / "p.jsonl"
    personas.write_text("".join(json.dumps(p) + "\n" for p in PERSONAS))
    out = tmp_path / "math.jsonl"
    args = ["synth", "-p", str(personas), "-t", "math", "-o", str(out), "--max-tokens", "24", "--k", "3"]
    _ok(args)
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary["rows"] == len(rows) == 2 and "math_kept" in summary
    for row in rows:
        v = row["verification"]
        assert v["k"] == 3 and v["seeds"] == [1, 2, 3] and v["kept"] == (v["agreement"] >= 2)
        assert len(v["answers"]) == (3 if row["valid"] else 0)
    _ok(args)  # a re-run is served from the cache and writes the same rows
    assert [json.loads(line) for line in out.read_text().splitlines()] == rows


@pytest.mark.slow
def test_bench_synth_local_compares_the_reference_pattern_and_our_engine(capsys):
    _ok(["bench", "synth", "--personas", "2", "--sequential", "1", "--max-tokens", "4", "--no-http", "--json"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    local = summary["local"]
    assert local["ours"]["rows"] == 2
    assert local["reference_hf_one_at_a_time"]["rows"] == local["own_engine_one_at_a_time"]["rows"] == 1
    assert summary["local_speedup"] > 0 and summary["local_speedup_vs_own_sequential"] > 0
    assert summary["http_speedup"] is None
    assert summary["versions"]["transformers"] and isinstance(summary["seed"], int)


@pytest.mark.slow
def test_cli_diversity_quick_reports_every_task_with_intervals(tmp_path, capsys):
    from personalm.paths import data_dir

    if not (data_dir() / "personahub" / "tool_personas.jsonl").is_file():
        pytest.skip("no personahub data (set PERSONALM_DATA)")
    out = tmp_path / "report"
    _ok(["synth", "diversity", "--quick", "-o", str(out), "--no-cache", "--data", str(data_dir())])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    saved = json.loads((out / "results.json").read_text())
    for task in ("math", "instruction", "knowledge", "npc"):
        low, high = saved[f"similarity_gap_{task}_ci"]
        assert low <= saved[f"similarity_gap_{task}"] <= high and saved[f"similarity_gap_{task}_items"] == 6
        assert printed[f"similarity_gap_{task}"] == saved[f"similarity_gap_{task}"]
    assert saved["settings"]["world"] and saved["provenance"]["seconds"] > 0
    assert (out / "arms.png").is_file() and "Similarity gap per task" in (out / "report.html").read_text()
