"""Tone pipeline: prompts and parsers, corpus splitting, scorers, and one tiny end-to-end run of
`personalm tone experiment` on the real embedded model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from personalm.cli.app import main
from personalm.errors import PersonalmError
from personalm.eval.text import flesch_reading_ease
from personalm.eval.tone import EmbeddingToneClassifier, FleschScorer, LLMJudge, make_scorer
from personalm.tone import prompts
from personalm.tone.corpus import load_passages, passages
from personalm.tone.pipeline import ToneBuildConfig, ToneBuilder, ToneDataset

SPEECH = """President: Test Person
The canal opened in 1825 after eight years of work. It linked the Hudson River to Lake Erie.
The cost of moving a ton of grain to New York fell from about 100 dollars to about 10. Towns grew along it.
Farmers in the west could sell in the east for the first time. The state paid for it with bonds that were
repaid within ten years. Engineers learned their trade on the job, and many went on to build railroads.
"""


def test_questions_are_parsed_and_generic_ones_refused():
    assert prompts.parse_question("Question: 1. Who built the canal in 1825? It was...") == (
        "Who built the canal in 1825?",
        "",
    )
    assert prompts.parse_question("What is the passage about?")[0] is None
    assert prompts.parse_question("Why?")[1].startswith("question too short")
    assert prompts.parse_question("No question here.")[1] == "no question in the answer"


def test_answers_lose_meta_lines_and_cut_tails():
    assert prompts.clean_answer("Here's a friendlier version:\nThe canal opened. It cost a lot and", True) == (
        "The canal opened.",
        "",
    )
    assert prompts.clean_answer("Sure! Grain got cheaper by ninety dollars.", False) == (
        "Grain got cheaper by ninety dollars.",
        "",
    )
    assert prompts.clean_answer("It was cheap and", True)[0] is None


def test_passages_skip_headers_and_split_by_document(tmp_path):
    chunks = passages(SPEECH, words=30, min_words=10)
    assert chunks and not any("President:" in c for c in chunks)
    assert all(c.endswith(".") for c in chunks)
    for n in range(12):
        (tmp_path / f"doc{n}.txt").write_text(SPEECH)
    pool = load_passages(tmp_path, words=30, per_doc=2, test_fraction=0.3, seed=1)
    by_doc = {}
    for p in pool:
        by_doc.setdefault(p.doc, set()).add(p.split)
    assert all(len(splits) == 1 for splits in by_doc.values())
    assert {p.split for p in pool} == {"train", "test"}
    assert [p.id for p in pool] == [
        p.id for p in load_passages(tmp_path, words=30, per_doc=2, test_fraction=0.3, seed=1)
    ]


def test_validation_documents_leave_test_documents_and_earlier_picks_alone(tmp_path):
    for n in range(40):
        (tmp_path / f"doc{n}.txt").write_text(3 * SPEECH.replace("1825", str(1800 + n)))
    two = load_passages(tmp_path, words=25, per_doc=2, test_fraction=0.2, seed=3)
    three = load_passages(tmp_path, words=25, per_doc=3, test_fraction=0.2, seed=3, val_fraction=0.2)
    assert {p.split for p in three} == {"train", "val", "test"}
    assert {p.doc for p in two if p.split == "test"} == {p.doc for p in three if p.split == "test"}
    assert {p.id for p in two} < {p.id for p in three}
    by_doc = {}
    for p in three:
        by_doc.setdefault(p.doc, set()).add(p.split)
    assert all(len(splits) == 1 for splits in by_doc.values())


def test_training_examples_are_drawn_at_a_tone_margin():
    item = {"facts": "F", "question": "Q?", "candidates": [
        {"text": "close but plain enough", "tone_score": 64.0, "semsim": 0.9},
        {"text": "plainer, a bit further", "tone_score": 78.0, "semsim": 0.7},
    ]}  # fmt: skip
    dataset = ToneDataset([item, item | {"candidates": item["candidates"][:1]}], [], bar=60.0)
    assert [e["answer"] for e in dataset.examples(0)] == ["close but plain enough"] * 2
    assert [e["answer"] for e in dataset.examples(10)] == ["plainer, a bit further"]
    assert dataset.examples(20) == []
    assert dataset.examples(10)[0]["messages"][-1] == {"role": "assistant", "content": "plainer, a bit further"}


def test_a_split_asked_for_zero_items_stays_empty_and_untouched():
    """The demo builds with test=0: nothing may be generated for, or picked from, that split."""
    builder = ToneBuilder(ToneBuildConfig(source="unused", out="unused"), None, None, FleschScorer())
    seen: list = []
    passages = [object()] * 5
    assert builder._collect(passages, 0, "test", lambda batch: seen.extend(batch) or [{}] * len(batch)) == []
    assert seen == []
    kept = builder._collect(passages, 2, "train", lambda batch: [{"n": i} for i, _ in enumerate(batch)])
    assert len(kept) == 2


def test_corpus_errors_are_one_line(tmp_path):
    with pytest.raises(PersonalmError, match="no .txt or .md"):
        load_passages(tmp_path)
    (tmp_path / "rows.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(PersonalmError, match="rows.jsonl:1: .*'text'"):
        load_passages(tmp_path / "rows.jsonl")


def test_flesch_orders_plain_above_dense_text():
    plain = "We fixed the road. Cars move fast now. People are glad."
    dense = "Notwithstanding considerable administrative complications, infrastructural rehabilitation necessitated extraordinary appropriations."
    assert flesch_reading_ease(plain) > 60 > flesch_reading_ease(dense)
    scorer = FleschScorer()
    assert scorer.accepts([plain, dense, "Yes."]).tolist() == [True, False, False]
    assert not scorer.accepts([plain], margin=200.0)[0]


class BagOfWords:
    """A stand-in embedder with real signal: counts of two marker words."""

    def embed(self, texts):
        return np.array([[t.count("hey"), t.count("hereby")] for t in texts], dtype=float)


def test_embedding_classifier_learns_labelled_tone(tmp_path):
    labelled = tmp_path / "labels.jsonl"
    rows = [{"text": "hey there " * (i % 3 + 1), "label": 1} for i in range(6)]
    rows += [{"text": "we hereby declare " * (i % 3 + 1), "label": 0} for i in range(6)]
    labelled.write_text("".join(json.dumps(r) + "\n" for r in rows))
    scorer = make_scorer("embedding", BagOfWords(), str(labelled))
    assert isinstance(scorer, EmbeddingToneClassifier)
    assert scorer.accepts(["hey hey", "hereby hereby"]).tolist() == [True, False]
    labelled.write_text('{"text": "only one class", "label": 1}\n')
    with pytest.raises(PersonalmError, match="both classes"):
        make_scorer("embedding", BagOfWords(), str(labelled))
    with pytest.raises(PersonalmError, match="unknown tone scorer"):
        make_scorer("sparkle")


@pytest.mark.slow
def test_llm_judge_scores_with_the_real_model():
    from personalm.models.registry import load_model

    judge = LLMJudge(load_model())
    scores = judge.score(["Hey! Sure thing, happy to help.", "Pursuant to section 4(b), the party shall comply."])
    assert scores.shape == (2,) and np.all(np.isfinite(scores))
    assert judge.accepts(["Hey! Sure thing."]).dtype == bool


@pytest.mark.slow
def test_tone_experiment_end_to_end_on_a_tiny_corpus(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PERSONALM_HOME", str(tmp_path / "home"))
    corpus = tmp_path / "facts"
    corpus.mkdir()
    for n in range(30):
        (corpus / f"{n:02d}.txt").write_text(SPEECH.replace("1825", str(1800 + n)))
    out = tmp_path / "report"
    argv = ["tone", "experiment", "--source", str(corpus), "-o", str(out), "--sizes", "2,3", "--curve-size", "3",
            "--test", "2", "--val", "2", "--epochs", "1", "--snapshot-every", "1", "--candidates", "1",
            "--rounds", "1", "--round-samples", "2", "--json"]  # fmt: skip
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 0
    results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("prompted_tone_rate", "lora3_tone_rate", "prompted_semsim", "lora3_semsim", "base_tone_rate"):
        assert 0.0 <= results[key] <= 1.0 or key.endswith("semsim")
    saved = json.loads((out / "results.json").read_text())
    assert saved["seed"] == 0 and "torch" in saved["versions"]
    assert [p["step"] for p in saved["curves"]["int8"]][0] == 0 and len(saved["curves"]["int8"]) >= 2
    assert (out / "conditions.png").stat().st_size > 0 and (out / "int8_vs_fp32.png").stat().st_size > 0
    assert "fp32 vs int8" in (out / "report.html").read_text()
    assert saved["chosen_margin"] in (0.0, 10.0, 20.0) and "by_margin" in saved["margin_selection"]
    assert saved["kept_adapter"] in saved["rounds"]["by_adapter"] or saved["rounds"]["by_adapter"] == {}
    assert set(saved["rounds"]["records"]) == {"dpo", "rft", "dpo-meaning"} and saved["lora3_sft_tone_rate"] >= 0.0
    low, high = saved["diff_ci"]
    assert low <= saved["diff"] <= high and saved["diff_items"] == saved["test_questions"]
    assert saved["lora3_tone_ci"][0] <= saved["lora3_tone_rate"] <= saved["lora3_tone_ci"][1]
    train_rows = [json.loads(line) for line in (out / "data" / "train.jsonl").read_text().splitlines()]
    assert train_rows and all(r["messages"][-1]["role"] == "assistant" for r in train_rows)
    test_docs = {json.loads(line)["doc"] for line in (out / "data" / "test.jsonl").read_text().splitlines()}
    assert not test_docs & {r["doc"] for r in train_rows}


def test_one_rule_keeps_margins_and_rounds_on_validation():
    """keep_on_validation: the best tone rate among candidates that keep 95% of the prompted base's
    similarity; all scored ones when none does; ties to the highest tiebreak; None when none scored."""
    from personalm.studies.tone import keep_on_validation

    prompted = {"semsim": 0.60}
    scores = {
        "0": {"val_tone_rate": 0.70, "val_semsim": 0.58},
        "10": {"val_tone_rate": 0.90, "val_semsim": 0.50},  # best tone, lost meaning: not eligible
        "20": {"val_tone_rate": 0.70, "val_semsim": 0.59},
        "30": {"examples": 4},  # too few examples, never scored
    }
    assert keep_on_validation(scores, prompted, lambda m: -float(m)) == "0"  # tie: the smaller margin
    assert keep_on_validation(scores, prompted, lambda m: float(m)) == "20"
    lost = {k: v | {"val_semsim": 0.1} for k, v in scores.items() if "val_tone_rate" in v}
    assert keep_on_validation(lost, prompted, lambda m: 0) == "10"  # none eligible: the best of all scored
    assert keep_on_validation({"30": {"examples": 4}}, prompted, lambda m: 0) is None
