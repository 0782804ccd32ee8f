"""Experiment metrics on fixed inputs, the aggregation over seeds, the report files, the CLI errors."""

from __future__ import annotations

import json

import pytest

from personalm.errors import PersonalmError
from personalm.models.base import TokenScores
from personalm.paths import data_dir
from personalm.perce import metrics
from personalm.perce.contrast import TokenInfluence
from personalm.studies.perce import ExperimentConfig, aggregate, parse_sweep, sweep_name, sweep_table
from personalm.studies.perce_report import markdown_table, write_report

PERSONA = "I love to bake cookies.\nI have two dogs."


def _influence(tokens: list[str], pir: list[float]) -> TokenInfluence:
    return TokenInfluence(list(range(len(tokens))), tokens, pir, [0.0] * len(tokens))


def test_content_words_drop_stop_words_and_match_by_stem():
    assert metrics.content_words("I have the two Dogs and a cookie!") == {"dog", "cooki"}
    assert metrics.content_stem("the") is None and metrics.content_stem("an") is None


def test_rouge_l_and_persona_recall():
    assert metrics.rouge_l("I bake cookies", "I bake cookies") == pytest.approx(1.0)
    assert metrics.rouge_l("rockets fly", "I bake cookies") == 0.0
    reference = "My dogs love it when I bake cookies."
    assert metrics.persona_recall("I baked a cookie today", reference, PERSONA) == pytest.approx(2 / 4)
    assert metrics.persona_recall("Nice weather", reference, PERSONA) == 0.0
    assert metrics.persona_recall("anything", "Hello there, how are you?", PERSONA) is None


def test_precision_at_k_of_top_pir_tokens_against_persona_words():
    tokens = ["I", " bake", " cook", "ies", " for", " my", " friends", ".", "<|im_end|>"]
    pir = [0.1, 3.0, 2.5, 0.2, 0.0, 0.4, 2.8, 0.0, 5.0]
    special = frozenset({"<|im_end|>"})
    candidate, flags = metrics.persona_token_flags(_influence(tokens, pir), PERSONA, special)
    assert flags == [False, True, True, True, False, False, False, False, False]
    assert candidate[-1] is False and candidate[-2] is False
    top, random_ = metrics.precision_at_k(_influence(tokens, pir), PERSONA, 3, special)
    assert top == pytest.approx(2 / 3)
    assert random_ == pytest.approx(3 / 7)
    assert metrics.precision_at_k(_influence(["Hello", " there"], [1.0, 2.0]), PERSONA, 1) is None
    assert metrics.precision_at_k(_influence([" cookies"], [1.0]), PERSONA, 2) is None


class _LengthModel:
    """Scores the option whose text contains 'shelter' highest; records what it was asked."""

    def __init__(self):
        self.calls = []

    def score(self, contexts, continuations):
        self.calls.append((contexts, continuations))
        return [TokenScores([c], [0.0 if "shelter" in c else -1.0]) for c in continuations]


def test_choice_accuracy_shuffles_options_and_reads_the_first_as_right():
    items = [
        metrics.ChoiceItem("pets", "I adopt from shelters.", f"Where to get cat {i}?", ["a shelter", "b", "c", "d"])
        for i in range(6)
    ]
    model = _LengthModel()
    assert metrics.choice_accuracy(model, items, seed=1) == 1.0
    contexts, continuations = model.calls[0]
    assert contexts[0] == [{"role": "user", "content": "I adopt from shelters.\n\nWhere to get cat 0?"}]
    positions = {continuations[4 * i : 4 * i + 4].index("a shelter") for i in range(6)}
    assert len(positions) > 1


def test_prefeval_loader_keeps_four_option_items(tmp_path):
    rows = [
        {"preference": "p", "question": "q", "classification_task_options": ["a", "b", "c", "d"]},
        {"preference": "p", "question": "q", "classification_task_options": ["a", "b"]},
    ]
    (tmp_path / "topic.json").write_text(json.dumps(rows))
    items = metrics.load_prefeval(tmp_path, 10)
    assert len(items) == 1 and items[0].topic == "topic" and items[0].options[0] == "a"
    real = data_dir() / "prefeval" / "mcq_options"
    if real.is_dir():
        assert len(metrics.load_prefeval(real, 50, seed=0)) == 50


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
    write_report(tmp_path, results, runs, [row] * 3, [row], pir)
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
def test_tiny_experiment_runs_the_sweep_and_reuses_its_cache(tmp_path, monkeypatch):
    from personalm.studies import perce as experiment

    if not (data_dir() / "persona_chat" / "valid.csv").is_file():
        pytest.skip("persona-chat data not found (set PERSONALM_DATA)")
    monkeypatch.setattr(experiment, "home", lambda: tmp_path / "home")
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
