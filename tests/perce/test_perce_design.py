"""The PerCE study's design: three disjoint splits by conversation, every window of the training
conversations, the held-out item sets, pairing over items and seeds, and the clip bounds chosen on
validation conversations only (a whole run with training and generation stubbed out)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from personalm.errors import PersonalmError
from personalm.eval.bootstrap import paired_bootstrap
from personalm.perce.persona_chat import load_conversations, reply_rows, window_rows
from personalm.studies import perce
from personalm.studies.perce import (
    ExperimentConfig,
    choose_clip,
    has_terms,
    held_out,
    paired_over_seeds,
    split_conversations,
    training_steps,
)

HEADER = ["user 1 personas", "user 2 personas", "Best Generated Conversation"]


def _write_csv(path: Path, count: int) -> Path:
    """`count` conversations of 10 turns; every third reply repeats a persona word."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        for i in range(count):
            talk = "\n".join(
                f"User {1 + t % 2}: chat {i} turn {t} " + ("about cookies and rockets" if t % 3 == 0 else "hello there")
                for t in range(10)
            )
            writer.writerow(["I bake cookies.\nI have two dogs.", "I build rockets.\nMy name is Sam.", talk])
    return path


def test_the_three_splits_are_disjoint_and_training_fills_the_steps_with_whole_conversations(tmp_path):
    conversations = load_conversations(_write_csv(tmp_path / "c.csv", 50))
    config = ExperimentConfig(out="o", data="d", validation_conversations=8, steps=10, batch_size=3)
    splits = split_conversations(conversations, config)
    lines = [{c.line for c in part} for part in (splits.train, splits.validation, splits.test)]
    assert len(lines[1]) == 8 and len(lines[2]) == 10
    assert not (lines[0] & lines[1] or lines[0] & lines[2] or lines[1] & lines[2])
    windows = len(window_rows(splits.train, config.window))
    per_conversation = len(window_rows(splits.train[:1], config.window))
    assert 30 <= windows < 30 + per_conversation  # the fewest whole conversations whose windows fill 10 x 3
    steps = training_steps(config, windows)
    assert steps == -(-windows // 3) and steps >= 10  # one pass over every window, at least the steps asked
    fixed = ExperimentConfig(out="o", data="d", validation_conversations=8, train_conversations=2, steps=10)
    assert len(split_conversations(conversations, fixed).train) == 2 and training_steps(fixed, 500) == 10
    with pytest.raises(PersonalmError, match="too few"):
        split_conversations(conversations, ExperimentConfig(out="o", data="d", validation_conversations=40))


def test_held_out_draws_replies_at_random_then_tops_up_the_recall_items(tmp_path):
    replies = reply_rows(load_conversations(_write_csv(tmp_path / "c.csv", 30)), window=6)
    held = held_out(replies, n_all=20, n_recall=40, seed=3, label="test")
    assert held.rouge == list(range(20)) and len(held.recall) == 40
    assert all(has_terms(held.rows[i]) for i in held.recall)
    assert sum(has_terms(held.rows[i]) for i in held.rouge) == sum(i < 20 for i in held.recall)  # drawn ones count
    assert len(held.rows) == 20 + sum(i >= 20 for i in held.recall)
    assert held_out(replies, 20, 40, 3, "test").rows == held.rows  # seeded
    with pytest.raises(PersonalmError, match="no reply whose reference"):
        held_out([r for r in replies if not has_terms(r)], 5, 5, 0, "test")


def test_pairing_averages_each_items_seeds_and_resamples_items():
    rng = np.random.default_rng(0)
    ce = rng.random((3, 40))
    treated = ce + rng.normal(0.05, 0.02, (3, 40))
    diff = paired_over_seeds(treated, ce, seed=1)
    assert diff.n == 40 and diff.mean == pytest.approx(float((treated - ce).mean()))
    assert diff == paired_bootstrap(treated.mean(axis=0), ce.mean(axis=0), seed=1)
    assert 0 < diff.low < diff.mean < diff.high
    with pytest.raises(ValueError, match="seeds, items"):
        paired_over_seeds(treated[:, :5], ce)


def _row(bounds, rouge, rouge_ci, recall):
    return {"clip_min": bounds[0], "clip_max": bounds[1], "rougeL_minus_ce": rouge, "rougeL_minus_ce_ci": rouge_ci,
            "persona_recall_minus_ce": recall}  # fmt: skip


def test_the_rule_keeps_rouge_not_worse_then_takes_the_most_recall():
    paper, generic = (0.8, 5.0), (1.0, 5.0)
    assert choose_clip([_row(paper, -0.01, [-0.02, 0.001], 0.05), _row(generic, 0.0, [-0.01, 0.01], 0.03)]) == paper
    assert choose_clip([_row(paper, -0.02, [-0.03, -0.01], 0.09), _row(generic, 0.0, [-0.01, 0.01], 0.03)]) == generic
    assert (
        choose_clip([_row(paper, -0.02, [-0.03, -0.01], 0.09), _row(generic, -0.01, [-0.02, -0.001], 0.0)]) == generic
    )
    tie = [_row(paper, 0.0, [-0.01, 0.01], 0.03), _row(generic, 0.01, [0.0, 0.02], 0.03)]
    assert choose_clip(tie) == paper  # equal recall: the candidate listed first


def test_bounds_are_chosen_on_validation_conversations_only(tmp_path, monkeypatch, word_hash_embedder):
    """Training and generation stubbed: on validation m=1 wins, on test m=0.8 would; the run must
    pick m=1, score candidates on validation replies only, and never show validation to the test."""
    _write_csv(tmp_path / "data" / "persona_chat" / "valid.csv", 60)
    evaluated: dict[str, list[int]] = {}

    def fake_train(folder, data, arm, seed, bounds, steps, config, log):
        weights = {"weight_mean": bounds[0] if bounds else 1.0, "frac_clip_min": 0.5, "frac_clip_max": 0.0}
        log = [{"step": 1, "loss": 2.0, "ce": 2.0} | weights]
        return {"name": folder.name, "train_log": log, "train_seconds": 1.0, "train_cpu_seconds": 1.0}

    def fake_evaluate(name, base, adapter, rows, references, prefeval, embedder, config, log):
        evaluated[name] = sorted({row["conversation"] for row in rows})
        part, run = name.split(" ")
        better = ("-m1-" in run) == (part == "validation")
        bonus = 0.1 if run.startswith("perce") and better else 0.0
        return {
            "rougeL": [0.2 + bonus] * len(rows),
            "similarity": [0.5] * len(rows),
            "persona_recall": [0.3 + bonus if has_terms(r) else None for r in rows],
            "prefeval_correct": None,
            "outputs": ["reply"] * len(rows),
            "eval_seconds": 0.0,
            "eval_cpu_seconds": 1.0,
        }

    def fake_pir(base, rows, config, log):
        return {"k": 3, "examples": len(rows), "examples_with_persona_tokens": 0, "pir": [], "random": [],
                "influences": [], "special": [], "cpu_seconds": 0.0}  # fmt: skip

    monkeypatch.setattr(perce, "_train", fake_train)
    monkeypatch.setattr(perce, "_evaluate", fake_evaluate)
    monkeypatch.setattr(perce, "_pir_check", fake_pir)
    monkeypatch.setattr("personalm.models.embedder.Embedder", word_hash_embedder)
    monkeypatch.setattr("personalm.models.registry.resolve_local", lambda name: Path("base"))
    config = ExperimentConfig(
        out=str(tmp_path / "out"), data=str(tmp_path / "data"), seeds=2, validation_conversations=10, steps=4,
        batch_size=2, test_replies=30, recall_replies=10, validation_replies=20, validation_recall_replies=8,
        prefeval_items=0,
    )  # fmt: skip
    results = perce.run(config, log=lambda message: None)
    assert (results["perce_clip_min"], results["perce_clip_max"]) == (1.0, 5.0)
    table = results["clip_selection"]["candidates"]
    assert [row["chosen"] for row in table] == [False, True] and table[1]["persona_recall_minus_ce"] == 0.1
    assert table[0]["rougeL_items"] == 20 and table[0]["persona_recall_items"] == 8
    validation = {c for name, cs in evaluated.items() if name.startswith("validation") for c in cs}
    test = {c for name, cs in evaluated.items() if name.startswith("test") for c in cs}
    assert validation and test and not validation & test
    assert sorted(n for n in evaluated if n.startswith("validation")) == [
        "validation ce-seed0", "validation perce-m0.8-M5-seed0", "validation perce-m1-M5-seed0"
    ]  # fmt: skip
    assert sorted(n for n in evaluated if n.startswith("test")) == [
        "test base", "test ce-seed0", "test ce-seed1", "test perce-m1-M5-seed0", "test perce-m1-M5-seed1"
    ]  # fmt: skip
    assert results["perce_minus_ce_rougeL"] == pytest.approx(-0.0)  # the chosen bounds lose on test here
    assert results["perce_minus_ce_rougeL_ci"] == [0.0, 0.0] and results["rougeL_items"] == 30
    assert results["work_cpu_seconds"]["training_runs"] == 5  # the selection's seed-0 adapters are reused
    assert results["data"]["train_steps"] >= 4 and results["data"]["validation_conversations"] == 10
