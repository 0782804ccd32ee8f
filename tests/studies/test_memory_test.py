"""The memory test's scripted histories and its three memories, on a tiny data folder with the rule
extractor and a word-hash embedder (the run on the embedded model is `personalm avatar memory-test`)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from personalm.avatars.api import AvatarMemory
from personalm.avatars.facts import RuleFactExtractor, split_retractions
from personalm.avatars.sqlite_store import SQLiteStore
from personalm.studies import memory_test as mt

PROFILES = [
    ["I love to bake cookies.", "I have two brothers.", "Knitting is my passion.", "I drive a red truck."],
    ["I am a night owl.", "I collect old maps.", "My father was a sailor.", "I sing in a choir."],
    ["I grow roses.", "I was born in June.", "I read every night.", "I have never flown."],
]


def write_data(root: Path) -> Path:
    (root / "persona_chat").mkdir(parents=True)
    with open(root / "persona_chat" / "valid.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user 1 personas", "user 2 personas", "Best Generated Conversation"])
        for profile in PROFILES:
            talk = "\n".join(f"User 1: {line} Tell me about your week." for line in ("Hello there!", "How are you?",
                                                                                     "Nice weather today."))  # fmt: skip
            writer.writerow(["\n".join(profile), "I am someone else.", talk])
    prefs = [f"I strongly prefer option {i} for my shows." for i in range(5)]
    items = [{"preference": p, "question": "What should I watch?", "classification_task_options": ["a", "b", "c", "d"]}
             for p in prefs]  # fmt: skip
    (root / "prefeval" / "mcq_options").mkdir(parents=True)
    (root / "prefeval" / "mcq_options" / "entertain_shows.json").write_text(json.dumps(items))
    return root


def test_scripts_are_seeded_and_their_probes_are_answerable(tmp_path):
    config = mt.MemoryTestConfig(data=write_data(tmp_path / "data"), people=3, conversations=5, seed=3)
    first, again = mt.scripts(config), mt.scripts(config)
    assert [[t.text for t in s.turns] for s in first] == [[t.text for t in s.turns] for s in again]
    for history in first:
        times = [t.at for t in history.turns]
        assert times == sorted(times) and {t.conversation for t in history.turns} == set(range(5))
        kinds = [p.kind for p in history.probes]
        assert kinds.count("latest") == kinds.count("as_of") == kinds.count("retracted") == 2
        said = " ".join(t.text for t in history.turns)
        for probe in history.probes:
            assert mt.DONT_KNOW in probe.options
            if probe.kind == "retracted":
                assert probe.answer == -1 and probe.options[probe.asserted].startswith("Yes, ")
                continue
            right = probe.options[probe.answer]
            if probe.kind == "kept":
                assert right in said
            else:  # the value of the right option was stated in the history
                value = right.removeprefix("I live in ").removeprefix("I work as ").rstrip(".").split(" is ")[-1]
                assert value in said
        for latest, then in zip(*[[p for p in history.probes if p.kind == k] for k in ("latest", "as_of")],
                                strict=True):  # fmt: skip
            assert sorted(then.options) == sorted(latest.options)
            assert then.options[then.answer] != latest.options[latest.answer]  # the past differs from now
            assert then.as_of is not None and mt.date_of(then.as_of) in then.question


def test_versioned_memory_keeps_what_overwrite_loses(tmp_path, word_hash_embedder):
    config = mt.MemoryTestConfig(data=write_data(tmp_path / "data"), people=3, conversations=5, seed=1)
    histories = mt.scripts(config)
    rules = RuleFactExtractor()
    texts = {t.text for h in histories for t in h.turns}
    found = {m: rules.extraction(m) for m in texts | {split_retractions(m)[0] for m in texts}}
    embedder = word_hash_embedder()
    built, checks = {}, {}
    for condition in ("versioned", "overwrite"):
        clock = mt.Clock()
        path = tmp_path / f"{condition}.db"
        memory = AvatarMemory(SQLiteStore(path, embedder.dimension, clock), embedder)
        built[condition] = mt.build(memory, clock, histories, found, condition == "versioned")
        duplicates = built[condition].pop("duplicates")
        checks[condition] = mt.memory_checks(memory, path, histories, found, duplicates)
        states = [mt.memory_state(memory, p, condition == "versioned") for h in histories for p in h.probes
                  if p.kind in mt.STATE_KINDS]  # fmt: skip
        checks[condition]["state"] = sum(states) / len(states)
        if condition == "versioned":
            probes = [p for h in histories for p in h.probes]
            seen = mt.contexts(condition, probes, {condition: memory}, {h.avatar: h for h in histories}, None, 2048)
            replies = {p.question: (c, p.options[pick]) for p, c, pick in zip(probes, seen, mt.choose(None, probes, [
                c if not isinstance(c, list) else None for c in seen], {}), strict=True) if isinstance(c, str)}  # fmt: skip
        memory.close()
    versioned, overwrite = checks["versioned"], checks["overwrite"]
    assert versioned["stated_facts_lost"] == 0 < versioned["stated_facts"]  # nothing stated is lost
    assert versioned["state"] > overwrite["state"]  # it holds the right beliefs more often (as_of above all)
    assert versioned["recorded_twice"] == 0 and versioned["integrity"] == []
    assert versioned["versions"] > versioned["current"]  # superseded and retracted versions are kept
    assert overwrite["stated_facts_lost"] > 0  # a negation's fact was dropped
    assert built["versioned"]["operations"].get("DELETE", 0) > 0  # requests to forget retract
    # a yes/no question the person's own denial answers gets the denial, read as the option that denies
    assert replies and all(mt.denies(reply) and pick.startswith("No, ") for reply, pick in replies.values())
    paths = built["versioned"]["extraction_paths"]  # "none": a message that only asked to forget
    assert set(paths) == {"rules", "none"} and sum(paths.values()) == sum(len(h.turns) for h in histories)


def test_a_reply_from_memory_picks_the_option_it_says():
    options = ["Yes, I play darts every weekend.", "No, I don't play darts.", mt.DONT_KNOW]
    assert mt.reply_option(options, "I don't play darts anymore.") == 1
    assert mt.reply_option(options, "I play darts on Sundays.") == 0
    assert mt.reply_option(options, "I don't have a cat anymore.") == 2  # says none of them
    learning = ["Yes, I am learning Greek.", "No, I am not learning Greek.", mt.DONT_KNOW]
    assert mt.reply_option(learning, "I stopped learning Greek.") == 1


@pytest.mark.slow
def test_shared_context_scores_equal_scoring_each_option_alone(embedded_model):
    contexts = [[{"role": "system", "content": "Facts about you:\n- I live in Lisbon."},
                 {"role": "user", "content": "Where do you live?"}], [{"role": "user", "content": "Answer:"}]]  # fmt: skip
    options = [["I live in Lisbon.", "I live in Porto.", mt.DONT_KNOW], ["Yes.", "No, I don't have a dog."]]
    packed = mt.shared_context_scores(embedded_model, contexts, options)
    for context, choices, row in zip(contexts, options, packed, strict=True):
        alone = [s.total for s in embedded_model.score([context] * len(choices), [" " + c for c in choices])]
        assert row == pytest.approx(alone, abs=1e-3)


def test_headline_keys_carry_each_rate_and_difference_with_its_interval_and_items():
    rate = {"mean": 0.96875, "low": 0.90625, "high": 1.0, "n": 32}
    keys = mt.headline_keys({"versioned": {"latest": rate, "retracted": rate | {"mean": 0.0625}}},
                         {"overwrite": {"as_of": rate | {"mean": 0.5, "low": 0.25}}})  # fmt: skip
    assert keys["latest_acc"] == 0.9688 and keys["latest_acc_ci"] == [0.9062, 1.0] and keys["latest_acc_items"] == 32
    assert keys["retracted_asserted"] == 0.0625 and keys["retracted_asserted_ci"] == [0.9062, 1.0]
    assert keys["as_of_vs_overwrite"] == 0.5 and keys["as_of_vs_overwrite_ci"] == [0.25, 1.0]
    assert keys["as_of_vs_overwrite_items"] == 32
