"""Preference rounds after tone SFT: echo detection, pairs and expert-iteration data from scored
samples, and a real round on the embedded model that is kept when run again."""

from __future__ import annotations

import json

import numpy as np
import pytest

from personalm.errors import PersonalmError
from personalm.eval.tone import FleschScorer
from personalm.tone import prompts
from personalm.tone.rounds import RoundsConfig, passing_examples, preference_pairs, run_rounds, score_samples


def _sample(pid: str, answer: str, tone: float, semsim: float, bar: float = 60.0) -> dict:
    return {"passage_id": pid, "question": f"q {pid}?", "facts": f"facts {pid}", "answer": answer,
            "tone_score": tone, "tone_ok": tone >= bar, "semsim": semsim, "passes": tone >= bar and semsim >= 0.5}  # fmt: skip


def test_an_answer_that_restates_the_question_is_an_echo():
    question = "What did the president say about the tariff on imported goods?"
    assert prompts.echoes_question(question, "The president said about the tariff on imported goods that it must go.")
    assert not prompts.echoes_question(question, "He wants it gone. It hurts farmers, he said.")
    assert not prompts.echoes_question("Why?", "Why not, indeed, my friend?")


def test_a_rewrite_loses_its_opening_formula_about_the_answer():
    assert prompts.without_formula("The answer to this question is: ten dollars a ton.") == "Ten dollars a ton."
    assert prompts.without_formula("So, the answer to your question is yes, it did.") == "Yes, it did."
    assert prompts.without_formula("Here is the answer: it opened in 1825.") == "It opened in 1825."
    assert prompts.without_formula("The answer to this question is:") == ""
    for kept in ("The answers vary from year to year.", "The canal opened in 1825.", "An answer came in May."):
        assert prompts.without_formula(kept) == kept
    assert prompts.clean_answer("Sure! The answer is: ten dollars a ton.", False, drop_formula=True) == ("Ten dollars a ton.", "")
    assert prompts.clean_answer("The answer is: ten dollars.", False) == ("The answer is: ten dollars.", "")
    assert prompts.clean_answer("The answer is:", False, drop_formula=True) == (None, "answer too short")


def test_pairs_put_passing_samples_against_ones_that_fail_the_tone_bar():
    samples = [
        _sample("a", "plain and close", 80, 0.9), _sample("a", "plain but off topic", 85, 0.2),
        _sample("a", "ornate verbosity", 30, 0.9), _sample("a", "more ornate verbosity", 20, 0.8),
        _sample("b", "all plain", 90, 0.9), _sample("b", "still plain", 70, 0.8),
        _sample("c", "dense prose", 10, 0.9), _sample("c", "dense prose", 10, 0.9),
    ]  # fmt: skip
    pairs = preference_pairs(samples, per_question=2)
    assert [p["passage_id"] for p in pairs] == ["a"]  # b: nothing fails; c: nothing passes
    (pair,) = pairs
    assert pair["chosen"][0]["content"] == "plain and close"  # off-topic plain text never chosen
    assert pair["rejected"][0]["content"] == "more ornate verbosity"  # the lowest tone score first
    assert pair["prompt"] == [{"role": "user", "content": prompts.user_turn("facts a", "q a?")}]
    assert len(preference_pairs(samples + [_sample("a", "plain, close too", 75, 0.7)], per_question=2)) == 2


def test_pairs_can_also_reject_answers_that_hold_the_tone_but_lose_the_meaning():
    samples = [_sample("a", "plain and close", 80, 0.9), _sample("a", "The answer is:", 95, 0.1),
               _sample("a", "plain, a bit off", 90, 0.4), _sample("b", "all good", 90, 0.9),
               _sample("b", "still good", 70, 0.8)]  # fmt: skip
    assert preference_pairs(samples, per_question=2) == []  # nothing fails the tone bar
    pairs = preference_pairs(samples, per_question=2, reject_meaning=True)
    assert [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs] == [
        ("plain and close", "The answer is:")
    ]
    with_tone_fail = [*samples, _sample("a", "dense prose", 20, 0.95), _sample("a", "fine too", 70, 0.8)]
    rejected = [p["rejected"][0]["content"] for p in preference_pairs(with_tone_fail, 2, reject_meaning=True)]
    assert rejected == ["dense prose", "The answer is:"]  # tone failures first, then the least similar


def test_expert_iteration_keeps_distinct_passing_samples_as_chats():
    samples = [_sample("a", "plain", 80, 0.9), _sample("a", "plain", 80, 0.9), _sample("a", "dense", 10, 0.9),
               _sample("b", "easy words", 75, 0.7)]  # fmt: skip
    rows = passing_examples(samples)
    assert [r["messages"][-1]["content"] for r in rows] == ["plain", "easy words"]
    assert rows[0]["messages"][0] == {"role": "user", "content": prompts.user_turn("facts a", "q a?")}


class _Embedder:
    """Each text as a one-hot of its first word's length: equal first-word lengths mean cosine 1."""

    def embed(self, texts):
        out = np.zeros((len(texts), 32), dtype=np.float32)
        for row, text in enumerate(texts):
            out[row, min(len(text.split()[0]) if text.split() else 0, 31)] = 1.0
        return out


def test_samples_are_scored_against_their_own_reference():
    items = [{"passage_id": "a", "question": "q?", "facts": "f", "reference": "Cats are small."},
             {"passage_id": "b", "question": "q?", "facts": "f", "reference": "Elephants never forget anything."}]  # fmt: skip
    texts = ["Dogs run fast.", "Notwithstanding considerable multifactorial epistemological uncertainty.",
             "Elephants do not forget. Not at all.", "Cats nap a lot."]  # fmt: skip
    rows = score_samples(items, texts, 2, _Embedder(), FleschScorer(), min_semsim=0.5)
    assert [r["passage_id"] for r in rows] == ["a", "a", "b", "b"]
    assert [r["semsim"] for r in rows] == [1.0, 0.0, 1.0, 0.0]
    assert [r["tone_ok"] for r in rows] == [True, False, True, True]
    assert [r["passes"] for r in rows] == [True, False, True, False]


def test_bad_round_settings_are_refused():
    with pytest.raises(PersonalmError, match="--round-method ppo: expected one of dpo, rft, dpo-meaning"):
        RoundsConfig(method="ppo")
    with pytest.raises(PersonalmError, match="samples >= 2"):
        RoundsConfig(samples=1)


@pytest.mark.slow
def test_a_dpo_round_trains_from_the_sft_adapter_and_is_kept_when_run_again(tmp_path, embedder):
    from personalm.train.loop import TrainConfig, train

    facts = "The canal opened in 1825. It cut the cost of moving grain from 100 dollars a ton to 10."
    items = [{"passage_id": f"p{i}", "facts": facts, "question": q, "reference": "It cut the cost from 100 to 10."}
             for i, q in enumerate(["How much did the canal cut costs?", "When did the canal open?"])]  # fmt: skip
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": prompts.user_turn(facts, i["question"])},
                                                     {"role": "assistant", "content": "It got cheap. Ten bucks."}]}) + "\n"
                            for i in items))  # fmt: skip
    sft = tmp_path / "sft"
    train(TrainConfig(data=str(data), out=str(sft), rank=4, alpha=8, max_steps=1, batch_size=2, max_len=128),
          log=lambda _: None)  # fmt: skip
    config = RoundsConfig(rounds=1, samples=6, temperature=1.3, max_tokens=32, rank=4, min_semsim=-1.0)
    records = run_rounds(config, sft, items, tmp_path / "rounds", embedder, FleschScorer(), log=lambda _: None)
    (record,) = records
    samples = [json.loads(line) for line in (tmp_path / "rounds" / "round-1" / "samples.jsonl").open()]
    assert len(samples) == 12 and record["samples"] == 12
    assert record["sample_pass_rate"] == pytest.approx(np.mean([s["passes"] for s in samples]), abs=1e-4)
    pairs = (tmp_path / "rounds" / "round-1" / "pairs.jsonl").read_text().splitlines()
    assert record["training_rows"] == len(pairs)
    if pairs:
        assert record["adapter"] and record["steps"] >= 1 and 0.0 <= record["reward_accuracy"] <= 1.0
        assert record["first_loss"] == pytest.approx(np.log(2), abs=1e-3)  # the SFT adapter is the reference
    logged: list[str] = []
    again = run_rounds(config, sft, items, tmp_path / "rounds", embedder, FleschScorer(), log=logged.append)
    assert again == records and any("finished before, kept" in line for line in logged)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("tone", "build", "{corpus}", "-o", "{out}", "--rounds", "1", "--no-train"), "--rounds needs the adapter"),
        (("tone", "build", "{corpus}", "-o", "{out}", "--rounds", "1", "--round-method", "ppo"), "--round-method ppo"),
        (("tone", "experiment", "--source", "{corpus}", "-o", "{out}", "--round-methods", "dpo,x"), "--round-methods"),
        (("tone", "experiment", "--source", "{corpus}", "-o", "{out}", "--round-samples", "1"), "--round-samples"),
    ],
)
def test_bad_round_options_are_one_line_exit_2(tmp_path, cli, args, needle):
    corpus = tmp_path / "facts"
    corpus.mkdir()
    (corpus / "a.txt").write_text("The canal opened in 1825. It cut the cost of grain by nine tenths.\n")
    argv = [a.format(corpus=corpus, out=tmp_path / "out") for a in args]
    result = cli.run(*argv)
    assert result.returncode == 2, str(result)
    assert needle in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "adapter").exists()
