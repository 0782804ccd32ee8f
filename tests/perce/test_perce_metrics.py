"""The PerCE experiment: the aggregation over seeds, the report files, the CLI errors (its metrics:
tests/eval/test_persona.py, test_text.py and test_prefeval.py)."""

from __future__ import annotations

import json

import pytest

from personalm.errors import PersonalmError
from personalm.paths import data_dir
from personalm.perce.contrast import TokenInfluence
from personalm.studies.harness import Study
from personalm.studies.perce import ExperimentConfig, aggregate, parse_sweep, sweep_name, sweep_table
from personalm.studies.perce_report import markdown_table, write_report

PERSONA = "I love to bake cookies.\nI have two dogs."


def _influence(tokens: list[str], pir: list[float]) -> TokenInfluence:
    return TokenInfluence(list(range(len(tokens))), tokens, pir, [0.0] * len(tokens))


def _fake_runs(seeds: int) -> dict:
    log = [{"step": s, "loss": 2.0 - 0.1 * s, "ce": 2.0 - 0.1 * s, "weight_mean": 1.2, "frac_clip_min": 0.7, "frac_clip_max": 0.02} for s in range(1, 5)]  # fmt: skip
    runs = {"base": {"rougeL": 0.1, "persona_recall": 0.2, "similarity": 0.3, "prefeval_acc": 0.4}}
    for seed in range(seeds):
        for arm, bonus in (("ce", 0.0), ("perce", 0.01 * (seed + 1))):
            runs[f"{arm}-seed{seed}"] = {
                "rougeL": 0.15 + bonus, "persona_recall": 0.25 + bonus, "similarity": 0.35, "prefeval_acc": 0.45,
                "outputs": [f"out {i}" for i in range(3)], "train_log": log, "train_seconds": 1.0,
            }  # fmt: skip
    return runs


def test_aggregate_reports_mean_spread_and_paired_deltas(tmp_path):
    config = ExperimentConfig(out=str(tmp_path), data="x", seeds=3)
    pir = {"k": 3, "pir_precision_at_k": 0.6, "random_precision_at_k": 0.2, "examples_with_persona_tokens": 9}
    results = aggregate(_fake_runs(3), pir, config)
    for key in ("ce_rougeL", "perce_rougeL", "ce_persona_recall", "perce_persona_recall", "ce_prefeval_acc",
                "perce_prefeval_acc", "pir_precision_at_k", "random_precision_at_k"):  # fmt: skip
        assert key in results
    assert results["perce_rougeL"] == pytest.approx(0.17) and results["perce_rougeL_std"] == pytest.approx(0.01)
    assert results["perce_minus_ce_rougeL"] == pytest.approx(0.02) and results["perce_wins_rougeL"] == 3
    assert results["ce_similarity_std"] == 0.0 and results["perce_wins_similarity"] == 0
    assert results["perce_weights"] == {"weight_mean": 1.2, "frac_clip_min": 0.7, "frac_clip_max": 0.02}
    assert results["final_train_ce"] == {"ce": 1.6, "perce": 1.6}


def test_report_writes_json_plots_and_html(tmp_path):
    config = ExperimentConfig(out=str(tmp_path), data="x", seeds=2)
    influence = _influence(["I", " bake", " cookies", "<|im_end|>"], [0.0, 2.0, 3.0, 1.0]).to_dict()
    pir = {"k": 3, "pir_precision_at_k": 0.6, "random_precision_at_k": 0.2, "examples_with_persona_tokens": 1,
           "influences": [influence], "special": ["<|im_end|>", "\n"]}  # fmt: skip
    results = aggregate(_fake_runs(2), pir, config) | {
        "config": {"seeds": 2},
        "data": {"test_replies": 3, "test_conversations": 2, "test_replies_with_persona_terms": 2},
        "seconds": 1.0,
        "versions": {},
    }
    row = {"persona": PERSONA, "context": [{"role": "user", "content": "hi <b>"}], "reply": "I bake cookies"}
    runs = _fake_runs(2)
    runs[sweep_name(0.5, 10.0, 0)] = runs["perce-seed0"]
    results["sweep"] = sweep_table(runs, ExperimentConfig(out="o", data="x", seeds=2, sweep=((0.5, 10.0),)))
    write_report(Study(tmp_path, config), results, runs, [row] * 3, [row], pir)
    assert json.loads((tmp_path / "results.json").read_text())["perce_rougeL"] == results["perce_rougeL"]
    for name in ("metrics.png", "training.png", "pir_precision.png", "clip_sweep.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    page = (tmp_path / "report.html").read_text()
    assert "hi &lt;b&gt;" in page and "PIR +3.00" in page and "PerCE better in 2/2 seeds" in page
    assert "<td>PerCE m=0.5 M=10</td><td>0.1600</td>" in page
    assert "70.0% of\nthe reply tokens at the lower bound" in page
    assert "scored on the 2 of them" in page
    assert "| ROUGE-L F1 | 0.1000 | 0.1500 ± 0.0000 | 0.1650 ± 0.0071 | +0.0150 |" in markdown_table(results)


def test_sweep_bounds_parse_and_bad_ones_fail():
    assert parse_sweep("0.5:10, 1:3,") == ((0.5, 10.0), (1.0, 3.0)) and parse_sweep("") == ()
    for bad in ("0.5", "a:b", "1:2:3"):
        with pytest.raises(PersonalmError, match="m:M pairs"):
            parse_sweep(bad)


def test_sweep_table_compares_clip_bounds_with_ce_on_the_sweep_seed(tmp_path):
    config = ExperimentConfig(out=str(tmp_path), data="x", seeds=2, sweep=((0.5, 10.0), (0.8, 5.0)), sweep_seeds=2)
    runs = _fake_runs(2)
    runs[sweep_name(0.5, 10.0, 0)] = runs["perce-seed0"] | {"rougeL": 0.3}
    runs[sweep_name(0.5, 10.0, 1)] = runs["perce-seed1"] | {"rougeL": 0.2}
    table = sweep_table(runs, config)
    assert [(row["arm"], row["clip_min"]) for row in table] == [("ce", None), ("perce", 0.8), ("perce", 0.5)]
    assert table[0]["weight_mean"] is None and table[1]["clip_max"] == 5.0 and table[2]["weight_mean"] == 1.2
    assert table[2]["rougeL"] == 0.25 and table[2]["rougeL_per_seed"] == [0.3, 0.2] and table[1]["seeds"] == 2
    assert sweep_table(runs, ExperimentConfig(out="o", data="x", seeds=2, sweep_seeds=0)) == []
    assert ExperimentConfig(out="o", data="x", seeds=2, sweep=()).fingerprint() == config.fingerprint()


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
        (("perce", "experiment", "--sweep", "1:x", "-o", str(tmp_path / "r")), "--sweep: expected m:M pairs"),
        (("perce", "experiment", "--sweep", "3:1", "-o", str(tmp_path / "r")), "m must not exceed M"),
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
def test_tiny_experiment_runs_the_sweep_and_reuses_its_cache(tmp_path):
    from personalm.studies import perce as experiment

    if not (data_dir() / "persona_chat" / "valid.csv").is_file():
        pytest.skip("persona-chat data not found (set PERSONALM_DATA)")
    config = ExperimentConfig(
        out=str(tmp_path / "r"), data=str(data_dir()), seeds=1, train_conversations=4, test_turns=4,
        prefeval_items=2, pir_examples=4, steps=1, batch_size=2, max_tokens=8, sweep=((1.0, 3.0),),
    )  # fmt: skip
    results = experiment.run(config, log=lambda message: None)
    assert [row["clip_min"] for row in results["sweep"]] == [None, 0.8, 1.0]
    assert results["sweep"][2]["weight_mean"] >= 1.0  # every weight is at least m
    for key in (
        "ce_rougeL",
        "perce_persona_recall",
        "perce_prefeval_acc",
        "pir_precision_at_k",
        "random_precision_at_k",
    ):
        assert key in results
    assert (tmp_path / "r" / "clip_sweep.png").is_file() and (tmp_path / "r" / "report.html").is_file()
    again = experiment.run(config, log=lambda message: None)
    assert again["sweep"] == results["sweep"] and again["ce_rougeL"] == results["ce_rougeL"]
