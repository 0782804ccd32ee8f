"""The avatar experiment's pieces, and a whole run on small synthetic data with a scripted model and
a stand-in preference critic (the real model's run is the committed report under reports/avatar/)."""

from __future__ import annotations

import json
import random
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest

from personalm.avatars.api import AvatarMemory
from personalm.avatars.retrieval import Hit, Recall
from personalm.avatars.sqlite_store import SQLiteStore
from personalm.avatars.store import Memory
from personalm.errors import PersonalmError
from personalm.eval.prefeval import load_prefeval
from personalm.models.base import Generation, TextModel, TokenScores
from personalm.studies.avatar_experiment import ExperimentConfig, run
from personalm.studies.avatar_likeness import (
    Candidates,
    Composition,
    Prompt,
    VoiceSetting,
    answer_prompt,
    compositions,
    copy_rate,
    held_out_prompts,
    parse_candidates,
    parse_fusion,
    parse_voice_grid,
    passage_turns,
    split_person,
    spread,
)
from personalm.studies.avatar_prefeval import EmbeddingJudge, PrefCase, critic_topics, prefeval_split

TOPICS = {"train": [], "validation": ["travel"], "test": ["food"]}


@pytest.fixture
def critic(keyword_critic):
    """The keyword critic, trained (as it were) on no topic, validated on travel, tested on food."""
    keyword_critic.meta["topics"] = TOPICS
    return keyword_critic


STYLES = {
    "ann_a": "Verily, harvest number {i} is bountiful, and verily the river runs clear.",
    "bob_b": "Folks, jobs are back in town {i}, folks, and the economy is roaring, believe me.",
    "cy_c": "In summation, committee {i} shall deliberate upon the aforementioned statute.",
}


class EchoStyleModel(TextModel):
    """Answers with the last assistant turn it was shown (a few-shot exemplar) or a fixed line,
    and scores an option higher when its words appear in the context: enough to check that the
    pipeline wires retrieval into prompts and scores."""

    model_id = "echo-style"

    def generate(self, prompts, params=None, progress=None):
        out = []
        for chat in prompts:
            shots = [m["content"] for m in chat if m["role"] == "assistant"]
            out.append(Generation(shots[-1] if shots else "I shall speak plainly today.", "stop", 1, 1))
        return out

    def score(self, contexts, continuations):
        scores = []
        for context, option in zip(contexts, continuations, strict=True):
            seen = set(json.dumps(context).lower().split())
            hits = sum(w.lower() in seen for w in option.split())
            scores.append(TokenScores(["x"], [float(hits)]))
        return scores


class FakeVoices:
    """Voices whose 'adapter' speaks the first reply it was trained on (the person's own words) when
    trained for more than one epoch and a plain line otherwise, and which record every training and
    every chat sent to an adapter."""

    model_name = "fake-base"

    def __init__(self):
        self.trained, self.chats, self.fitted, self.pairs = [], [], [], []

    def fit(self, config):
        """What the trainer leaves: an adapter folder and its run record (avatar create/update train here)."""
        out = Path(config.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": config.rank}))
        first = json.loads(Path(config.data).read_text().splitlines()[0])
        (out / "reply.txt").write_text(first["messages"][-1]["content"])
        (out / "train_config.json").write_text(json.dumps({"config": asdict(config), "steps": 1, "seconds": 0.1,
                                                           "final_loss": 1.0}))  # fmt: skip
        self.fitted.append(config)

    def train(self, rows, out, setting):
        out.mkdir(parents=True, exist_ok=True)
        first = json.loads(rows.read_text().splitlines()[0])
        (out / "reply.txt").write_text(first["messages"][-1]["content"] if setting.epochs > 1 else "Plain words.")
        self.trained.append((rows.stem.split("-rows")[0], setting))
        return {"steps": 1, "examples": len(rows.read_text().splitlines()), "seconds": 0.0, "final_loss": 1.0}

    def model(self, adapter):
        voices, reply = self, (adapter / "reply.txt").read_text()

        class Spoken(EchoStyleModel):
            def generate(self, prompts, params=None, progress=None):
                voices.chats += prompts
                return [Generation(reply, "stop", 1, 1) for _ in prompts]

        return Spoken()

    def fused(self, base, voice, weight):
        """Proxy-tuned 'decoding' reduced to its two ends: the voice on the plain chat at weight 1 or
        more, the base on the served chat below."""
        voices = self

        class Fused(EchoStyleModel):
            def generate(self, prompts, params=None, progress=None):
                voices.pairs += prompts
                if weight >= 1:
                    return voice.generate([plain for _, plain in prompts], params)
                return base.generate([served for served, _ in prompts], params)

        return Fused()


def make_data(root):
    for person, line in STYLES.items():
        folder = root / "speeches" / person
        folder.mkdir(parents=True)
        for year in range(1900, 1904):
            body = " ".join(line.format(i=f"{year}-{i}") for i in range(24))
            (folder / f"{year}-01-01-speech.txt").write_text(f"President: {person}\n\n{body}\n")
    (root / "prefeval" / "mcq_options").mkdir(parents=True)
    for topic, noun in (("food", "pasta"), ("travel", "mountains")):
        items = [
            {"preference": f"I love {noun} number {i}.", "question": f"What {topic} should I pick for evening {i}?",
             "classification_task_options": [f"{noun} number {i}", "something else", "another thing", "nothing"],
             "explanation": f"Suggest {noun} number {i}."}
            for i in range(6)
        ]  # fmt: skip
        (root / "prefeval" / "mcq_options" / f"{topic}.json").write_text(json.dumps(items))
    (root / "persona_chat").mkdir()
    rows = "".join(f'"I have {i} cats.\nI like blue {i}.","I am tall {i}.",conv\n' for i in range(40))
    (root / "persona_chat" / "valid.csv").write_text(
        "user 1 personas,user 2 personas,Best Generated Conversation\n" + rows
    )


def test_small_pieces(tmp_path):
    files = [tmp_path / f"{y}-01-01-x.txt" for y in range(1900, 1904)]
    assert split_person(files, 0.75) == (files[:3], files[3:])
    assert split_person(files[:2], 0.99) == (files[:1], files[1:2])
    assert spread(list(range(10)), 3) == [0, 3, 6] and spread([1], 3) == [1]
    source = "one two three four five six seven eight nine ten"
    assert copy_rate("one two three four five six seven eight", [source]) == 1.0
    assert copy_rate("completely different words here and there in this answer", [source]) == 0.0
    recall = Recall([Hit(Memory(1, "utterance", "First sentence here. Then the rest."), 0, 0.5),
                     Hit(Memory(2, "utterance", "Only one."), 0, 0.4)])  # fmt: skip
    turns, quotes = passage_turns(recall)
    assert (
        turns[1] == {"role": "assistant", "content": "Then the rest."} and "First sentence here." in turns[0]["content"]
    )
    assert [h.memory.text for h in quotes.exemplars] == ["Only one."]
    prompt = Prompt("ann_a", "A cue sentence.", "The rest.", "1903-01-01")
    rag = answer_prompt("rag", prompt, "Ann is calm.", recall)
    assert len(rag) == 4 and "Ann is calm." in rag[0]["content"] and '"Only one."' in rag[0]["content"]
    norag = answer_prompt("norag", prompt, "Ann is calm.", recall)
    assert len(norag) == 2 and "Ann is calm." not in norag[0]["content"]


def test_voice_grid_parses_and_bad_grids_are_one_error():
    assert parse_voice_grid(" 1:2e-4, 3:1e-3,1:2e-4") == (VoiceSetting(1, 2e-4), VoiceSetting(3, 1e-3))
    assert VoiceSetting(3, 1e-3).label == "3 epochs, lr 0.001" and VoiceSetting(1, 2e-4).key == "epochs1-lr0.0002"
    for bad, message in (("3", "expected EPOCHS:LR"), ("x:1e-3", "expected EPOCHS:LR"), ("0:1e-3", ">= 1"),
                         ("2:5", r"in \(0, 1\)"), (" , ", "empty")):  # fmt: skip
        with pytest.raises(PersonalmError, match=message):
            parse_voice_grid(bad)


def test_voice_rows_spread_passages_of_the_memory_period_speeches(tmp_path):
    from personalm.studies.avatar_likeness import voice_training_rows

    make_data(tmp_path)
    files = sorted((tmp_path / "speeches" / "ann_a").glob("*.txt"))[:3]
    config = ExperimentConfig(data=tmp_path, out=tmp_path / "out", voice_rows=600)
    every = voice_training_rows(config, "ann_a", files, memory=None)
    assert len(every) >= 3 and {r["id"].split(":")[0] for r in every} == {"ann_a"}
    chat = every[0]["messages"]
    assert chat[0]["content"].startswith("You are Ann A.") and chat[1]["content"].startswith("Continue this passage")
    assert chat[2]["content"] and "Verily" in chat[2]["content"]
    two = voice_training_rows(replace(config, voice_rows=2), "ann_a", files, memory=None)
    assert [r["id"] for r in two] == [every[0]["id"], every[len(every) // 2]["id"]]  # spread, not the first two


def test_the_served_answer_is_the_best_of_the_first_n_by_voice_likelihood():
    pool = Candidates([["a", "b", "c"], ["d", "e", "f"]], [[0.1, 0.3, 0.2], [0.5, 0.5, 0.9]])
    assert pool.chosen(1) == ["a", "d"] and pool.chosen(2) == ["b", "d"] and pool.chosen(3) == ["b", "f"]
    assert parse_candidates(" 8,1,4,1") == (1, 4, 8)
    for bad in ("", "0,4", "4,x", "17"):
        with pytest.raises(PersonalmError, match="--voice-candidates"):
            parse_candidates(bad)


def test_compositions_and_fusion_weights():
    config = ExperimentConfig(data=Path("."), out=Path("."), voice_candidates=(1, 4), voice_fusion=(0.5, 1.0))
    assert compositions(config) == [Composition(1), Composition(4), Composition(1, 0.5), Composition(1, 1.0)]
    assert Composition(4).label == "the adapter reads the passages, best of 4"
    assert Composition(1, 0.5).label.startswith("proxy-tuned at weight 0.5")
    assert parse_fusion(" 1, 0.5,1") == (1.0, 0.5) and parse_fusion("") == ()
    for bad in ("0", "-1", "x", "5"):
        with pytest.raises(PersonalmError, match="--voice-fusion"):
            parse_fusion(bad)


def test_held_out_prompts_split_cue_and_reference(tmp_path):
    make_data(tmp_path)
    files = sorted((tmp_path / "speeches" / "ann_a").glob("*.txt"))
    prompts = held_out_prompts("ann_a", files[3:], 3, random.Random(0))
    assert (
        len(prompts) == 3
        and all(p.cue.startswith("Verily") for p in prompts)
        and all(p.date == "1903-01-01" and p.cue not in p.reference for p in prompts)
    )


def test_whole_run_on_synthetic_data(tmp_path, word_hash_embedder, critic):
    make_data(tmp_path / "data")
    embedder = word_hash_embedder()
    memory = AvatarMemory(SQLiteStore(tmp_path / "m.db", embedder.dimension), embedder)
    config = ExperimentConfig(
        data=tmp_path / "data", out=tmp_path / "out", memory_chunks=20, classifier_chunks=50,
        prompts_per_person=2, prefeval_items=6, prefeval_validation_items=6, distractors=12, voice_persons=2,
        update_persons=1, update_speeches=1, voice_candidates=(1, 2), voice_fusion=(0.5, 1.0),
    )  # fmt: skip
    voices = FakeVoices()
    results = run(config, model=EchoStyleModel(), memory=memory, critic=critic, voices=voices)
    for key in ("attribution_acc_rag", "attribution_acc_norag", "prefeval_acc_memory", "prefeval_acc_nomemory",
                "retrieval_recall_at_5", "attribution_acc_profile", "similarity_rag", "rag_copy_rate",
                "free_answer_respect_plain", "free_answer_respect_preferences"):  # fmt: skip
        assert 0.0 <= results[key] <= 1.0, key
    for key in ("prefeval_acc_memory", "prefeval_acc_nomemory", "prefeval_acc_difference", "free_answer_difference",
                *[f"{m}_{c}" for m in ("attribution_acc", "similarity") for c in ("rag", "norag", "profile")],
                "attribution_acc_real", "attribution_acc_difference", "similarity_difference"):  # fmt: skip
        low, high = results[f"{key}_ci"]
        assert low <= results[key] <= high, key
    prompts = results["likeness"]["prompts"]
    assert prompts == 6 and results["attribution_acc_difference_items"] == results["attribution_acc_real_items"] == 6
    # paired over the same prompts: the difference is the difference of the two rates
    assert results["attribution_acc_difference"] == pytest.approx(
        results["attribution_acc_rag"] - results["attribution_acc_norag"]
    )
    assert results["prefeval_items"] == 6 and results["free_answer_items"] == 6
    assert results["prefeval"]["topics"]["test"] == ["food"] and set(results["prefeval"]["by_topic"]) == {"food"}
    # the keyword critic finds the option that shares the words of the retrieved preference
    assert results["prefeval_acc_memory"] == 1.0 and results["prefeval_acc_difference_ci"][0] > 0
    # The echo model repeats retrieved exemplars: with retrieval every answer is in the person's style.
    assert results["attribution_acc_rag"] == 1.0 and results["rag_copy_rate"] > 0.5
    assert results["attribution_acc_norag"] < 1.0
    assert results["prefeval_acc_memory"] > results["prefeval_acc_nomemory"]
    assert results["seed"] == 0 and results["versions"]["numpy"] == np.__version__
    # The voice setting and composition are chosen on the one person neither voiced nor
    # update-checked (cy_c): every combination tried there, the first of those that speak in the
    # person's words kept; the voice persons are trained with it alone (nothing tried on them).
    # On this toy data every combination is attributed right (even the fake's "Plain words." falls
    # to cy_c), so the most similar answers win the tie: proxy-tuned at 0.5 the fake base echoes a
    # retrieved passage of the person, and the first setting with it is kept.
    voice = results["likeness"]["voice"]
    validation = voice["validation"]
    assert validation["persons"] == ["cy_c"] and validation["prompts"] == 2
    tried = [(1, None), (2, None), (1, 0.5), (1, 1.0)]
    assert [(r["epochs"], r["lr"], r["candidates"], r["weight"]) for r in validation["settings"]] == [
        (e, lr, n, w) for e, lr in ((1, 2e-4), (3, 2e-4), (3, 1e-3)) for n, w in tried]  # fmt: skip
    accuracy = [r["attribution_acc_voice_rag"] for r in validation["settings"]]
    assert accuracy == [1.0] * 12
    assert validation["chosen"] == voice["setting"] | {"candidates": 1, "weight": 0.5}
    assert voice["setting"] == {"epochs": 1, "lr": 2e-4}
    assert voice["candidates"] == 1 and set(voice["by_candidates"]) == {"1", "2"} and set(voice["by_fusion"]) == {
        "0.5", "1"}  # fmt: skip
    assert voice["composition"]["weight"] == 0.5 and voice["composition"]["label"].startswith(
        "proxy-tuned at weight 0.5"
    )
    assert voice["by_fusion"]["0.5"]["attribution_acc"] == results["attribution_acc_voice_rag"] == 1.0
    # the fused model got (served, plain) pairs: the avatar's chat with passages, the adapter's own chat
    served, plain = voices.pairs[0]
    assert any(m["role"] == "assistant" for m in served) and [m["role"] for m in plain] == ["system", "user"]
    assert served[-1] == plain[-1] and len(voices.pairs) == 2 * 2 * 3 + 2 * 4  # 2 weights: 3 settings x 2, then 4
    assert voices.trained == [("cy_c", s) for s in config.voice_grid] + [("ann_a", VoiceSetting(1, 2e-4)),
                                                                         ("bob_b", VoiceSetting(1, 2e-4))]  # fmt: skip
    # Voice conditions: 2 of the 3 persons (spread), their 4 prompts, an adapter each trained on
    # passages of the person's memory-period speeches (not the memory's capped utterances); the
    # adapter gets exactly the chats of its counterpart without it.
    rows = next((tmp_path / "out" / ".cache").rglob("ann_a-rows600.jsonl")).read_text().splitlines()
    assert rows and all(json.loads(r)["id"].startswith("ann_a:") for r in rows)
    assert voice["persons"] == ["ann_a", "bob_b"] and voice["prompts"] == 4
    assert results["attribution_acc_voice"] < 1.0 and results["attribution_acc_voice_items"] == 4
    low, high = results["attribution_acc_real_voice_persons_ci"]  # the ceiling on the same prompts
    assert low <= results["attribution_acc_real_voice_persons"] <= high
    assert results["attribution_acc_real_voice_persons_items"] == 4
    for a, b in (("voice_rag", "rag"), ("rag", "norag"), ("voice", "norag"), ("voice_rag", "voice")):
        key = f"attribution_acc_{a}_minus_{b}"
        low, high = results[f"{key}_ci"]
        assert low <= results[key] <= high and results[f"{key}_items"] == 4, key
        first = a if a.startswith("voice") else f"{a}_voice_persons"
        second = b if b.startswith("voice") else f"{b}_voice_persons"
        assert results[key] == pytest.approx(results[f"attribution_acc_{first}"] - results[f"attribution_acc_{second}"])
    assert sum(m["role"] == "assistant" for chat in voices.chats for m in chat) > 0  # the rag chats went in too
    # The update check: create on the earlier speech (v1), update with the later one (v2, from v1's
    # weights), create on both from scratch; v1 and v2 scored on both windows' held-out cues.
    update = results["likeness"]["update"]
    row = update["per_person"]["ann_a"]
    assert update["persons"] == ["ann_a"] and row["earlier"] == ["1901-01-01-speech.txt"]
    assert row["later"] == ["1902-01-01-speech.txt"] and min(row["held_out"].values()) >= 1
    assert len(voices.fitted) == 3 and voices.fitted[1].init_adapter and not voices.fitted[2].init_adapter
    assert {(c.epochs, c.lr) for c in voices.fitted} == {(1, 2e-4)}  # the chosen setting
    assert row["v2_replayed"] >= 1 and set(row["seconds"]) == {"create_earlier", "update_later", "create_both"}
    for window in ("earlier", "later"):
        for metric in ("similarity", "attribution_acc"):
            key = f"update_{metric}_{window}_v2_minus_v1"
            assert results[f"{key}_ci"][0] <= results[key] <= results[f"{key}_ci"][1]
            assert results[f"{key}_items"] == row["held_out"][window]
    assert results["update_time_ratio"] == pytest.approx(row["seconds"]["update_later"]
                                                         / row["seconds"]["create_both"], abs=1e-3)  # fmt: skip
    assert results["attribution_acc_norag_voice_persons"] < 1.0
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["attribution_acc_rag"] == results["attribution_acc_rag"]
    assert (tmp_path / "out" / "avatar.png").stat().st_size > 1000
    page = (tmp_path / "out" / "report.html").read_text()
    assert "Preference memory" in page and "Voice adapters" in page and "Update check" in page
    assert "1 epoch, lr 0.0002: chosen with the composition among 12 combinations on 1 other person," in page
    assert "proxy-tuned decoding at weight 0.5" in page and "adapter reads the passages, best of 2" in page
    assert saved["provenance"]["settings"]["critic"] is None


def test_prefeval_split_keeps_to_the_critics_topics_and_is_fixed(tmp_path, critic):
    """Test cases come from the critic's test topics only, validation from its validation topics,
    and the test cases do not depend on the validation size."""
    make_data(tmp_path)
    items = load_prefeval(tmp_path / "prefeval" / "mcq_options")
    topics = critic_topics(critic, items, "data")
    config = ExperimentConfig(data=tmp_path, out=tmp_path / "out", prefeval_items=0, distractors=12)
    test, validation, _ = prefeval_split(replace(config, prefeval_validation_items=6), items, topics)
    test_again, fewer, _ = prefeval_split(replace(config, prefeval_validation_items=2), items, topics)
    assert [(c.texts, c.options, c.answer) for c in test] == [(c.texts, c.options, c.answer) for c in test_again]
    assert len(test) == 6 and len(validation) == 6 and len(fewer) == 2
    assert {c.item.topic for c in test} == {"food"} and {c.item.topic for c in validation} == {"travel"}
    assert all(c.options[c.answer] == c.item.options[0] for c in test + validation)


@pytest.mark.parametrize(
    ("topics", "message"),
    [
        ({"train": ["food"], "validation": ["travel"], "test": []}, "no test topics"),
        ({"train": ["food"], "validation": ["travel"], "test": ["food"]}, "trained on test topics"),
        ({"train": [], "validation": ["travel"], "test": ["cooking"]}, r"topics \['cooking'\] are not in this data"),
        ({"train": [], "validation": [], "test": ["food"]}, "no validation topics"),
    ],
)
def test_a_critic_whose_topics_do_not_fit_the_data_is_one_error(tmp_path, critic, topics, message):
    make_data(tmp_path)
    items = load_prefeval(tmp_path / "prefeval" / "mcq_options")
    critic.meta["topics"] = topics
    with pytest.raises(PersonalmError, match=message):
        critic_topics(critic, items, "data")


def test_the_free_answer_judge_on_options_and_answers(tmp_path, word_hash_embedder):
    make_data(tmp_path)
    items = load_prefeval(tmp_path / "prefeval" / "mcq_options")
    cases = [PrefCase(i, [], i.options, 0) for i in items]
    judge = EmbeddingJudge(word_hash_embedder().embed)
    answers = [f"I would suggest {c.item.options[0]} tonight." for c in cases] + ["something else then"] * len(cases)
    judged = judge.respects(cases + cases, answers)
    assert judged[: len(cases)].all() and not judged[len(cases) :].any()
    checked = judge.validate(cases)
    assert checked["items"] == len(cases) and checked["respecting_options_judged_respecting"] == 1.0


def test_prefeval_only_reuses_the_likeness_part(tmp_path, word_hash_embedder, critic):
    make_data(tmp_path / "data")
    embedder = word_hash_embedder()
    config = ExperimentConfig(
        data=tmp_path / "data", out=tmp_path / "out", memory_chunks=20, classifier_chunks=50,
        prompts_per_person=2, prefeval_items=6, prefeval_validation_items=6, distractors=12, prefeval_only=True,
        voice_persons=0,
    )  # fmt: skip
    with pytest.raises(PersonalmError, match="needs an earlier results.json"):
        run(config, model=EchoStyleModel(), memory=AvatarMemory(SQLiteStore(tmp_path / "a.db", 512), embedder),
            critic=critic)  # fmt: skip
    first = run(replace(config, prefeval_only=False), model=EchoStyleModel(),
                memory=AvatarMemory(SQLiteStore(tmp_path / "b.db", 512), embedder), critic=critic)  # fmt: skip
    again = run(replace(config, prefeval_validation_items=4), model=EchoStyleModel(),
                memory=AvatarMemory(SQLiteStore(tmp_path / "c.db", 512), embedder), critic=critic)  # fmt: skip
    assert again["likeness"] == first["likeness"] and again["attribution_acc_rag"] == first["attribution_acc_rag"]
    assert again["likeness_run"]["seconds"] == first["seconds"] and again["prefeval"]["validation_items"] == 4
    read = again["prefeval"]["preferences_read"]
    assert read["chosen"] in [row["preferences"] for row in read["validation"]]
    with pytest.raises(PersonalmError, match="seed 0"):
        run(
            replace(config, seed=1),
            model=EchoStyleModel(),
            memory=AvatarMemory(SQLiteStore(tmp_path / "d.db", 512), embedder),
            critic=critic,
        )
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    del saved["likeness"]["attribution_acc_difference_ci"]
    (tmp_path / "out" / "results.json").write_text(json.dumps(saved))
    with pytest.raises(PersonalmError, match="no intervals"):
        run(config, model=EchoStyleModel(), memory=AvatarMemory(SQLiteStore(tmp_path / "e.db", 512), embedder),
            critic=critic)  # fmt: skip


@pytest.mark.slow
def test_real_voices_train_once_and_speak(tmp_path):
    """The study's voices on the embedded model: trained with `avatar create`'s settings, kept when
    asked again (a re-run resumes), and answering with the adapter merged."""
    from personalm.models import load_model
    from personalm.models.base import SamplingParams
    from personalm.models.registry import DEFAULT_MODEL
    from personalm.studies.avatar_likeness import AdapterVoices
    from personalm.tables import write_rows

    rows = tmp_path / "train.jsonl"
    chat = [{"role": "system", "content": "You are Ann A."}, {"role": "user", "content": "Continue: Verily."}]
    write_rows(rows, [{"messages": [*chat, {"role": "assistant", "content": STYLES["ann_a"].format(i=i)}]}
                      for i in range(4)])  # fmt: skip
    voices = AdapterVoices(DEFAULT_MODEL, 0, 2, tmp_path / "generations.db", lambda m: None)
    first = voices.train(rows, tmp_path / "adapter", VoiceSetting(3, 1e-3))
    assert first["steps"] == 2 and first["examples"] == 4 and first["final_loss"] > 0
    assert voices.train(rows, tmp_path / "adapter", VoiceSetting(3, 1e-3)) == first  # kept, not trained again
    saved = json.loads((tmp_path / "adapter" / "train_config.json").read_text())["config"]
    assert (saved["epochs"], saved["lr"], saved["rank"]) == (3, 1e-3, 16)  # the setting, else create's defaults
    spoken = voices.model(tmp_path / "adapter")
    base = load_model(DEFAULT_MODEL)
    try:
        assert spoken.generate([chat], SamplingParams(max_tokens=8, seed=0))[0].text.strip()
        assert spoken.info()["adapter"] == str(tmp_path / "adapter")
        fused = voices.fused(base, spoken, 1.0)  # proxy-tuned, cached with the study's generations
        served = [chat[0], {"role": "user", "content": "Continue: Once."}, {"role": "assistant", "content": "Verily."},
                  chat[1]]  # fmt: skip
        first = fused.generate([(served, chat)], SamplingParams(max_tokens=8, seed=0))[0].text
        assert first.strip() and fused.model_id.startswith("proxy:") and "generations.db" in fused.info()["cache"]
        assert fused.generate([(served, chat)], SamplingParams(max_tokens=8, seed=0))[0].text == first
    finally:
        spoken.close()
        base.close()


def test_cli_passes_its_options_to_the_study(tmp_path, cli, monkeypatch):
    """Every option reaches the config as given (an import in the command once shadowed
    --voice-rows with a function of the same name)."""
    import personalm.avatars.preferences
    import personalm.studies.avatar_experiment as experiment

    make_data(tmp_path)
    seen = {}

    def capture(config, **_):
        seen["config"] = config
        raise PersonalmError("captured")

    monkeypatch.setattr(personalm.avatars.preferences, "load_critic", lambda path: None)
    monkeypatch.setattr(experiment, "run", capture)
    cli.one_error_line(cli.invoke("avatar", "experiment", "--data", str(tmp_path), "-o", str(tmp_path / "out"),
                                  "--voice-rows", "17", "--voice-persons", "3", "--update-persons", "1"))  # fmt: skip
    config = seen["config"]
    assert (config.voice_rows, config.voice_persons, config.update_persons) == (17, 3, 1)
