"""Preference-aware answering with a stand-in critic: which retrieved facts are stated preferences,
n candidates from one generate call, the critic's pick (ties: the model's likelihood), the avatar's
stored default, and the one clear error without a trained critic."""

from __future__ import annotations

import numpy as np
import pytest

from personalm.avatars.api import AvatarMemory
from personalm.avatars.chat import AvatarChat
from personalm.avatars.preferences import (
    MAX_CANDIDATES,
    PreferenceSettings,
    answer_with_preferences,
    avatar_settings,
    candidate_count,
    choose,
    is_preference,
    load_critic,
    sample_candidates,
    save_avatar_settings,
    stated_preferences,
    turn_candidates,
    voice_likelihood,
    with_preferences,
)
from personalm.avatars.retrieval import Hit, Recall
from personalm.avatars.sqlite_store import SQLiteStore
from personalm.avatars.store import Memory
from personalm.errors import PersonalmError
from personalm.models.base import Generation, SamplingParams, TextModel, TokenScores


class CandidateModel(TextModel):
    """Replies with fixed texts in turn, counting generate calls; scores a reply by its length
    (longer: likelier), so likelihood tie-breaks are predictable."""

    model_id = "candidates"

    def __init__(self, *replies: str):
        self.replies, self.calls, self.scored = list(replies), [], []

    def generate(self, prompts, params=None, progress=None):
        self.calls.append(list(prompts))
        return [Generation(self.replies.pop(0), "stop", 1, 1) for _ in prompts]

    def score(self, contexts, continuations):
        self.scored.append(list(continuations))
        return [TokenScores(["x"], [float(len(c))]) for c in continuations]


@pytest.fixture
def memory(tmp_path, word_hash_embedder):
    embedder = word_hash_embedder()
    memory = AvatarMemory(SQLiteStore(tmp_path / "m.db", embedder.dimension), embedder)
    yield memory
    memory.close()


def fact(text: str, memory_id: int = 1) -> Hit:
    return Hit(Memory(memory_id, "fact", text), 0.0, 0.5)


def test_stated_preferences_are_recognised_among_retrieved_facts():
    for text in ("I avoid dairy products due to lactose intolerance.", "My favourite colour is green.",
                 "I have no interest in superhero movies.", "Due to a medical condition, I need to avoid heat.",
                 "I don\u2019t eat sugar.", "I dislike floral patterns."):  # fmt: skip
        assert is_preference(text), text
    for text in ("I moved to Lisbon in 2024.", "My name is Ann.", "I play tennis.", "The train was late."):
        assert not is_preference(text), text
    recall = Recall(facts=[fact("I live in Paris.", 1), fact("I hate jazz.", 2), fact("I love opera.", 3)])
    assert stated_preferences(recall) == ["I hate jazz.", "I love opera."]
    assert stated_preferences(recall, limit=1) == ["I hate jazz."]
    chat = with_preferences([{"role": "user", "content": "Music tonight?"}], ["I hate jazz."])
    assert chat[0]["role"] == "system" and "I hate jazz." in chat[0]["content"] and len(chat) == 2
    system = with_preferences([{"role": "system", "content": "Be brief."}, *chat[1:]], ["I hate jazz."])
    assert len(system) == 2 and system[0]["content"].startswith("Be brief.")
    assert with_preferences(chat[1:], []) == chat[1:]


def test_settings_are_checked():
    assert PreferenceSettings() == PreferenceSettings(apply=False, candidates=4)
    for bad in ({"candidates": 0}, {"candidates": MAX_CANDIDATES + 1}, {"candidates": True}, {"candidates": "4"},
                {"apply": "yes"}, {"n": 4}):  # fmt: skip
        with pytest.raises(PersonalmError, match="preferences"):
            PreferenceSettings.from_dict(bad)
    with pytest.raises(PersonalmError, match="expected an object"):
        PreferenceSettings.from_dict([4])
    assert PreferenceSettings.from_dict({"apply": True, "candidates": 2}).to_dict() == {"apply": True, "candidates": 2}


def test_the_critic_picks_and_the_model_breaks_ties(keyword_critic):
    answers = ["Try the cheese platter.", "A vegan curry is lovely.", "Have a vegan salad, it is a lovely choice."]

    def likelihood(indices):
        asked.append(indices)
        return [len(answers[i]) for i in indices]

    asked: list[list[int]] = []
    picked = choose(keyword_critic, ["I eat only vegan food."], "Dinner ideas?", answers[:2], likelihood)
    assert (picked.index, picked.scores, asked) == (1, [0.0, 1.0], [])  # a clear winner: no likelihood asked
    tie = choose(keyword_critic, ["I eat only vegan food."], "Dinner ideas?", answers, likelihood)
    assert (tie.index, asked, tie.answer) == (2, [[1, 2]], answers[2])
    assert tie.to_dict() == {"applied": ["I eat only vegan food."], "candidates": 3, "chosen": 2,
                             "scores": [0.0, 1.0, 1.0]}  # fmt: skip
    calls = len(keyword_critic.calls)
    nothing = choose(keyword_critic, [], "Dinner ideas?", answers, likelihood)
    assert (nothing.index, nothing.scores, len(keyword_critic.calls)) == (2, None, calls)
    with pytest.raises(PersonalmError, match="personalm critic train"):
        choose(None, ["I eat only vegan food."], "Dinner ideas?", answers, likelihood)


def test_candidates_come_from_one_generate_call():
    model = CandidateModel("a", "b", "c")
    assert sample_candidates(model, "hi", SamplingParams(temperature=0.7), 3) == ["a", "b", "c"]
    assert model.calls == [["hi", "hi", "hi"]]
    greedy = CandidateModel("only")
    assert sample_candidates(greedy, "hi", SamplingParams(temperature=0.0), 3) == ["only"]


class WordScores(CandidateModel):
    """A CandidateModel whose score gives each word of a reply its log-probability in `table` (-1 otherwise)."""

    def __init__(self, table: dict[str, float], *replies: str):
        super().__init__(*replies)
        self.table = table

    def score(self, contexts, continuations):
        self.scored.append(list(continuations))
        return [TokenScores(c.split(), [self.table.get(w, -1.0) for w in c.split()]) for c in continuations]


def test_the_voice_likelihood_keeps_the_answer_the_adapter_expects_most_over_its_base():
    replies = ["The bill passed today.", "Verily the bill passed.", "Verily, verily."]
    voice = WordScores({"Verily": -0.5, "Verily,": -0.5, "verily.": -0.5}, *replies)
    base = WordScores({"The": -0.5})
    # per token: (voice total - base total) / tokens
    assert voice_likelihood(voice, base, "hi", replies)([0, 1, 2]) == pytest.approx([-0.125, 0.5 / 4, 0.5])
    assert voice_likelihood(voice, base, "hi", [""])([0]) == [0.0]
    picked = answer_with_preferences(voice, None, "hi", "hi", [], SamplingParams(temperature=0.7), 3, base=base)
    assert (picked.index, picked.answer, picked.scores) == (2, "Verily, verily.", None)
    assert voice.calls == [["hi"] * 3] and base.calls == []  # sampled by the voice, scored by both
    assert picked.likelihoods == pytest.approx({0: -0.125, 1: 0.125, 2: 0.5})
    one = CandidateModel("Only one.")
    assert answer_with_preferences(one, None, "hi", "hi", [], SamplingParams(temperature=0.7), 3).index == 0
    assert one.calls == [["hi"]]  # no base, nothing stated: one answer as usual


def test_an_avatar_with_a_voice_keeps_its_most_voiced_answer(memory, keyword_critic):
    memory.remember("ada", "I avoid dairy because of lactose intolerance.")
    replies = ["Verily, verily.", "Cheese, verily.", "Anything without dairy, thanks."]
    voice = WordScores({"Verily,": -0.5, "verily.": -0.5}, *replies)
    chat = AvatarChat(memory, "ada", voice, min_support=0.0, voice_base=WordScores({}), voice_candidates=2,
                      voice_fusion=None)  # fmt: skip
    turn = chat.send("What do you say?")
    assert turn.reply == "Verily, verily." and voice.calls[0] == [voice.calls[0][0]] * 2  # the first 2 sampled
    assert turn.choice.preferences == [] and len(turn.choice.answers) == 2
    # With preferences stated, the critic decides among their candidates and the voice breaks ties.
    voiced = WordScores({"Cheese,": -0.5}, *replies)
    settings = PreferenceSettings(apply=True, candidates=3)
    chat = AvatarChat(memory, "ada", voiced, critic=keyword_critic, preferences=settings, min_support=0.0,
                      voice_base=WordScores({}), voice_fusion=None)  # fmt: skip
    turn = chat.send("Which dairy foods do you like?")
    assert turn.choice.preferences and len(turn.choice.answers) == 3 and turn.reply == replies[2]


def test_avatar_chat_answers_with_the_preference_it_retrieved(memory, keyword_critic):
    memory.remember("ada", "I avoid dairy because of lactose intolerance.")
    memory.remember("ada", "I live in Paris.")
    replies = ["Cheese and milk, always.", "Anything without dairy, thanks to my intolerance.", "Pizza."]
    model = CandidateModel(*replies)
    settings = PreferenceSettings(apply=True, candidates=3)
    chat = AvatarChat(memory, "ada", model, critic=keyword_critic, preferences=settings, min_support=0.0)
    prepared = chat.prepare("Which dairy foods do you like?")
    assert prepared.preferences == ["I avoid dairy because of lactose intolerance."]
    turn = chat.send("Which dairy foods do you like?")
    assert turn.reply == replies[1] and len(model.calls) == 1 and len(model.calls[0]) == 3
    assert turn.choice.preferences == prepared.preferences and turn.choice.index == 1
    assert keyword_critic.calls[-1][1] == "Which dairy foods do you like?"
    plain = AvatarChat(memory, "ada", CandidateModel("Brie."), min_support=0.0)
    assert plain.send("Which dairy foods do you like?").choice is None


def test_the_avatar_default_is_stored_and_needs_a_critic(memory, tmp_path, monkeypatch):
    memory.remember("ada", "I avoid dairy.")
    assert avatar_settings(memory.store, "ada") == PreferenceSettings()
    save_avatar_settings(memory.store, "ada", PreferenceSettings(apply=True, candidates=6))
    reopened = SQLiteStore(tmp_path / "m.db", memory.store.dimension)
    assert avatar_settings(reopened, "ada") == PreferenceSettings(apply=True, candidates=6)
    reopened.close()
    with pytest.raises(PersonalmError, match="personalm critic train"):
        AvatarChat(memory, "ada", CandidateModel())  # the stored default turns it on; no critic given
    monkeypatch.setenv("PERSONALM_HOME", str(tmp_path / "home"))
    with pytest.raises(PersonalmError, match="personalm critic train"):
        load_critic(tmp_path / "no-critic")
    with pytest.raises(PersonalmError, match="personalm critic train"):
        load_critic()


def test_settings_column_on_both_backends(make_store, unit):
    store = make_store(unit.dim)
    assert store.get_settings("ada") == {}
    store.set_settings("ada", {"preferences": {"apply": True, "candidates": 2}})
    assert store.get_settings("ada") == {"preferences": {"apply": True, "candidates": 2}}
    assert "ada" in store.avatar_names() and store.get_settings("bob") == {}


@pytest.mark.slow
def test_the_real_critic_loads_and_its_best_answer_is_returned(tmp_path, memory):
    from personalm.critic import PreferenceCritic

    PreferenceCritic.initial(seed=0).save(tmp_path / "critic")  # untrained weights: the wiring, not the skill
    critic = load_critic(tmp_path / "critic")
    memory.remember("ada", "I avoid dairy because of lactose intolerance.")
    replies = ["Cheese and milk, always.", "Anything without dairy.", "Pizza with extra mozzarella."]
    chat = AvatarChat(memory, "ada", CandidateModel(*replies), critic=critic,
                      preferences=PreferenceSettings(apply=True, candidates=3), min_support=0.0)  # fmt: skip
    turn = chat.send("Which dairy foods do you like?")
    scores = critic.score(turn.choice.preferences, "Which dairy foods do you like?", replies)
    assert turn.choice.answers == replies and turn.choice.scores == pytest.approx(scores.tolist())
    assert turn.reply == replies[int(np.argmax(scores))]


def test_an_avatar_with_a_fused_voice_answers_by_proxy_tuning(memory, embedded_model, keyword_critic, tmp_path):
    """With a fusion weight the real base reads the retrieved passages and the adapter's shift over
    it is added on the chat the adapter was trained on: the reply is ProxyTuned's answer to exactly
    (the avatar's chat, the name-only chat); stated preferences rank its candidates."""
    from personalm.models.fusion import ProxyTuned
    from personalm.models.local import LocalModel
    from tests.conftest import random_adapter

    adapter = random_adapter(embedded_model.model, tmp_path / "adapter", seed=5, rank=4, scale=0.5)
    voice = LocalModel(embedded_model.path, adapter=adapter, name="voice")
    memory.remember("ada", "I avoid dairy because of lactose intolerance.")
    memory.remember("ada", "I was born in London in 1815.")
    params = SamplingParams(max_tokens=12, temperature=0.0)
    chat = AvatarChat(memory, "ada", voice, params=params, min_support=0.0, voice_base=embedded_model,
                      voice_fusion=1.0)  # fmt: skip
    prepared = chat.prepare("Where were you born?")
    plain = chat.plain("Where were you born?")
    assert [m["role"] for m in plain] == ["system", "user"] and "London" not in plain[0]["content"]
    assert "London" in prepared.messages[0]["content"]  # the base reads the facts
    turn = chat.send("Where were you born?")
    expected = ProxyTuned(embedded_model, voice, 1.0).generate([(prepared.messages, plain)], params)[0].text.strip()
    assert turn.reply == expected and len(turn.choice.answers) == 1
    assert [m["role"] for m in chat.plain("And then?")] == ["system", "user", "assistant", "user"]  # the turns so far
    settings = PreferenceSettings(apply=True, candidates=3)
    sampled = SamplingParams(max_tokens=12, temperature=0.8, seed=1)
    chat = AvatarChat(memory, "ada", voice, params=sampled, critic=keyword_critic, preferences=settings,
                      min_support=0.0, voice_base=embedded_model, voice_fusion=1.0)  # fmt: skip
    turn = chat.send("Which dairy foods do you like?")
    assert turn.choice.preferences and len(turn.choice.answers) == 3 and turn.reply in turn.choice.answers
    assert all(v <= 0 for v in turn.choice.likelihoods.values())  # ties: the fused model's own likelihood


def test_a_turn_samples_what_it_can_rank():
    """Stated preferences (when answering follows them) take the preference count; otherwise the
    voice's count, which only samples more than one when a voice likelihood ranks them; greedy: one."""
    on, off = PreferenceSettings(apply=True, candidates=3), PreferenceSettings(apply=False, candidates=3)
    assert turn_candidates(on, ["I avoid dairy."], 2) == (["I avoid dairy."], 3)
    assert turn_candidates(off, ["I avoid dairy."], 2) == ([], 2)
    assert turn_candidates(on, [], 1) == ([], 1)
    assert candidate_count(["I avoid dairy."], 3, ranked=False, greedy=False) == 3
    assert candidate_count([], 4, ranked=True, greedy=False) == 4
    assert candidate_count([], 4, ranked=False, greedy=False) == 1
    assert candidate_count(["I avoid dairy."], 3, ranked=True, greedy=True) == 1
