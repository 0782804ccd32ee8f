"""The PerCE experiment: the aggregation over items and seeds, the report files, the CLI errors and a
quick real run (its metrics: tests/eval/test_persona.py, test_text.py and test_prefeval.py; its
design pieces: test_perce_design.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from personalm.errors import PersonalmError
from personalm.paths import data_dir
from personalm.perce.contrast import TokenInfluence
from personalm.studies.harness import Study
from personalm.studies.perce import ExperimentConfig, HeldOut, aggregate, choose_clip, parse_bounds, selection_table
from personalm.studies.perce_report import markdown_table, write_report

PERSONA = "I love to bake cookies.\nI have two dogs."
METRIC_KEYS = ("rougeL", "persona_recall", "similarity", "prefeval_acc")
HELD = HeldOut([{}] * 4, rouge=[0, 1, 2], recall=[1, 3])


def _influence(tokens: list[str], pir: list[float]) -> TokenInfluence:
    return TokenInfluence(list(range(len(tokens))), tokens, pir, [0.0] * len(tokens))


def _evaluation(rouge: list[float], bonus: float = 0.0, log: list | None = None) -> dict:
    return {
        "rougeL": [r + bonus for r in rouge],
        "similarity": [0.3, 0.3, 0.3, 0.3],
        "persona_recall": [None, 0.2 + bonus, None, 0.4 + bonus],
        "prefeval_correct": [True, False, True],
        "outputs": [f"out {i}" for i in range(4)],
        "train_log": log or [],
        "train_seconds": 1.0,
        "eval_cpu_seconds": 2.0,
    }


def _fake_runs(seeds: int) -> dict:
    log = [{"step": s, "loss": 2.0 - 0.1 * s, "ce": 2.0 - 0.1 * s, "weight_mean": 1.2, "frac_clip_min": 0.7, "frac_clip_max": 0.02} for s in range(1, 5)]  # fmt: skip
    runs = {"base": _evaluation([0.1, 0.1, 0.1, 0.1])}
    del runs["base"]["train_seconds"]
    for seed in range(seeds):
        runs[f"ce-seed{seed}"] = _evaluation([0.1, 0.2, 0.3, 0.9], log=log)
        runs[f"perce-seed{seed}"] = _evaluation([0.1, 0.2, 0.3, 0.9], bonus=0.01 * (seed + 1), log=log)
    return runs


def _pir() -> dict:
    return {"k": 3, "pir": [1.0, 0.0, 0.5], "random": [0.2, 0.1, 0.3], "examples_with_persona_tokens": 3}


def test_aggregate_pairs_items_and_seeds_and_keeps_the_keys_read_today(tmp_path):
    results = aggregate(_fake_runs(3), _pir(), ExperimentConfig(out=str(tmp_path), data="x", seeds=3), HELD)
    for metric in METRIC_KEYS:
        for key in (f"ce_{metric}", f"perce_{metric}", f"perce_minus_ce_{metric}", f"perce_minus_ce_{metric}_ci",
                    f"{metric}_items", f"ce_{metric}_ci", f"base_{metric}_ci"):  # fmt: skip
            assert key in results, key
    assert "pir_precision_at_k" in results and "random_precision_at_k" in results
    # ROUGE-L on items 0-2 only (item 3 is a recall item beyond the random draw), persona recall on 1 and 3
    assert results["ce_rougeL"] == pytest.approx(0.2) and results["rougeL_items"] == 3
    assert results["ce_persona_recall"] == pytest.approx(0.3) and results["persona_recall_items"] == 2
    assert results["prefeval_acc_items"] == 3 and results["perce_minus_ce_prefeval_acc"] == 0.0
    # every (item, seed) pair gains 0.01 * (seed + 1): the seed-averaged difference is 0.02 on every item
    assert results["perce_minus_ce_rougeL"] == pytest.approx(0.02)
    assert results["perce_minus_ce_rougeL_ci"] == pytest.approx([0.02, 0.02])
    assert results["perce_minus_ce_rougeL_per_seed"] == pytest.approx([0.01, 0.02, 0.03])
    assert results["perce_wins_rougeL"] == 3 and results["perce_rougeL_std"] == pytest.approx(0.01)
    low, high = results["ce_rougeL_ci"]
    assert low < results["ce_rougeL"] < high
    assert results["pir_minus_random_precision_at_k"] == pytest.approx(0.3) and results["pir_precision_at_k_items"] == 3
    assert results["perce_weights"] == {"weight_mean": 1.2, "frac_clip_min": 0.7, "frac_clip_max": 0.02}
    assert results["final_train_ce"] == {"ce": 1.6, "perce": 1.6}


def _selection(seeds: int = 1) -> dict:
    ce = [_evaluation([0.1, 0.2, 0.3, 0.9])] * seeds
    candidates = {(0.8, 5.0): [_evaluation([0.1, 0.2, 0.3, 0.9], bonus=0.05)] * seeds,
                  (1.0, 5.0): [_evaluation([0.1, 0.2, 0.3, 0.9], bonus=0.02)] * seeds}  # fmt: skip
    table = selection_table(ce, candidates, HELD, seed=0)
    chosen = choose_clip(table)
    for row in table:
        row["chosen"] = (row["clip_min"], row["clip_max"]) == chosen
    return {"rule": "r", "chosen": {"clip_min": chosen[0], "clip_max": chosen[1]}, "paper_bounds": [0.8, 5.0],
            "seeds": [0], "validation_conversations": 5, "validation_replies": 3, "validation_recall_replies": 2,
            "candidates": table}  # fmt: skip


def test_report_writes_json_plots_and_html_with_intervals(tmp_path):
    config = ExperimentConfig(out=str(tmp_path), data="x", seeds=2)
    influence = _influence(["I", " bake", " cookies", "<|im_end|>"], [0.0, 2.0, 3.0, 1.0]).to_dict()
    pir = _pir() | {"influences": [influence], "special": ["<|im_end|>", "\n"]}
    runs = _fake_runs(2)
    results = aggregate(runs, pir, config, HELD) | {
        "perce_clip_min": 0.8,
        "perce_clip_max": 5.0,
        "clip_selection": _selection(),
        "config": {"seeds": 2, "batch_size": 3},
        "data": {
            "train_conversations": 9,
            "train_windows": 90,
            "train_steps": 30,
            "train_epochs": 1.0,
            "test_replies": 3,
            "test_conversations": 2,
            "test_replies_with_persona_terms": 2,
            "prefeval_items": 3,
            "csv": "x/persona_chat/valid.csv",
        },  # fmt: skip
        "seconds": 1.0,
        "cpu_seconds": 2.0,
        "work_cpu_seconds": {"training": 10.0, "evaluation": 5.0, "total": 15.0, "training_runs": 4},
        "versions": {},
    }
    row = {"persona": PERSONA, "context": [{"role": "user", "content": "hi <b>"}], "reply": "I bake cookies"}
    write_report(Study(tmp_path, config), results, runs, HeldOut([row] * 4, [0, 1, 2], [1, 3]), [row], pir)
    assert json.loads((tmp_path / "results.json").read_text())["perce_rougeL"] == results["perce_rougeL"]
    for name in ("metrics.png", "differences.png", "training.png", "pir_precision.png", "clip_selection.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    page = (tmp_path / "report.html").read_text()
    assert "hi &lt;b&gt;" in page and "PIR +3.00" in page and "PerCE ahead in 2/2" in page
    assert "<td>+0.0150 [+0.0150, +0.0150]</td><td>3</td>" in page  # PerCE − CE on ROUGE-L, its items
    assert "<td>m=0.8 M=5 (paper)</td><td>+0.0500 [+0.0500, +0.0500]</td>" in page
    assert "15 CPU-seconds" in page and "not resampled" in page
    assert "70.0% of\nthe reply tokens at the lower bound" in page
    assert "| ROUGE-L F1 | 0.1000 [0.1000, 0.1000] | 0.2000 [" in markdown_table(results)


def test_clip_bounds_parse_and_bad_ones_fail():
    assert parse_bounds("0.8:5, 1:5, 0.8:5,") == ((0.8, 5.0), (1.0, 5.0))
    for bad in ("0.5", "a:b", "1:2:3"):
        with pytest.raises(PersonalmError, match="m:M pairs"):
            parse_bounds(bad)
    with pytest.raises(PersonalmError, match="at least one"):
        parse_bounds(" , ")
    with pytest.raises(PersonalmError, match="m must not exceed M"):
        parse_bounds("3:1")


def test_cli_errors_are_one_line(tmp_path, cli):
    bad = tmp_path / "rows.jsonl"
    bad.write_text(json.dumps({"persona": "p", "messages": [{"role": "user", "content": "hi"}]}) + "\n")
    nopersona = tmp_path / "np.jsonl"
    nopersona.write_text(json.dumps({"messages": [{"role": "assistant", "content": "hi"}]}) + "\n")
    for args, needle in (
        (("explain",), "nothing to explain"),
        (("explain", str(bad), "--persona", "p"), "not both"),
        (("explain", str(bad)), "rows.jsonl:1: no assistant turn"),
        (("explain", str(nopersona)), "np.jsonl:1:"),
        (("explain", "--persona", "p", "--response", "r", "-m", "nope"), "unknown model 'nope'"),
        (("perce", "experiment", "--data", str(tmp_path), "-o", str(tmp_path / "r")), "valid.csv: no such file"),
        (("perce", "experiment", "--candidates", "1:x", "-o", str(tmp_path / "r")), "--candidates: expected m:M"),
        (("perce", "experiment", "--candidates", "3:1", "-o", str(tmp_path / "r")), "m must not exceed M"),
    ):
        run = cli.run(*args, timeout=300)
        assert run.returncode == 2, (args, run.stderr[-1500:])
        assert needle in run.stderr and "Traceback" not in run.stderr, run.stderr[-1500:]


@pytest.mark.slow
def test_explain_prints_colours_json_and_writes_a_heatmap(tmp_path, cli):
    args = (
        "explain",
        "--persona",
        "I have a cat named Whiskers.",
        "--prompt",
        "Pets?",
        "--response",
        "My cat Whiskers.",
    )
    run = cli.run(*args, "--html", str(tmp_path / "h.html"), timeout=300)
    assert run.returncode == 0, run.stderr[-1500:]
    assert "highest PIR:" in run.stdout and "Whiskers" in run.stdout
    assert "PIR +" in (tmp_path / "h.html").read_text()
    as_json = json.loads(cli.run(*args, "--json", timeout=300).stdout.splitlines()[0])
    assert len(as_json["tokens"]) == len(as_json["pir"]) > 3
    assert max(as_json["pir"]) == max(as_json["pir"][:4])


@pytest.mark.slow
def test_quick_experiment_chooses_bounds_on_validation_and_reuses_its_cache(tmp_path):
    from personalm.studies import perce as experiment

    if not (data_dir() / "persona_chat" / "valid.csv").is_file():
        pytest.skip("persona-chat data not found (set PERSONALM_DATA)")
    config = ExperimentConfig(out=str(tmp_path / "r"), data=str(data_dir()), quick=True)
    results = experiment.run(config, log=lambda message: None)
    selection = results["clip_selection"]
    assert [(row["clip_min"], row["clip_max"]) for row in selection["candidates"]] == [(0.8, 5.0), (1.0, 5.0)]
    assert selection["candidates"][1]["weight_mean"] >= 1.0  # every weight is at least m
    assert sum(row["chosen"] for row in selection["candidates"]) == 1
    assert (results["perce_clip_min"], results["perce_clip_max"]) in [(0.8, 5.0), (1.0, 5.0)]
    for key in ("ce_rougeL", "perce_persona_recall", "perce_prefeval_acc", "pir_precision_at_k",
                "random_precision_at_k", "perce_minus_ce_persona_recall_ci", "rougeL_items"):  # fmt: skip
        assert key in results
    assert results["rougeL_items"] == 6 and results["persona_recall_items"] == 4
    assert results["data"]["path"] == str(data_dir()) and results["work_cpu_seconds"]["training_runs"] == 3
    assert np.isfinite(results["perce_minus_ce_rougeL_ci"]).all()
    assert (tmp_path / "r" / "clip_selection.png").is_file() and (tmp_path / "r" / "report.html").is_file()
    again = experiment.run(config, log=lambda message: None)
    assert again["clip_selection"] == selection and again["ce_rougeL"] == results["ce_rougeL"]
