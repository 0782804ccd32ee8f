"""The profile: text-to-persona over the person's words, rewritten as memory grows."""

from __future__ import annotations

import pytest

from personalm.avatars.api import AvatarMemory
from personalm.avatars.profile import (
    clean_profile,
    display_name,
    profile_is_stale,
    profile_prompt,
    refresh_profile,
)
from personalm.avatars.sqlite_store import SQLiteStore
from personalm.models.base import Generation, TextModel


class ScriptedModel(TextModel):
    """Replies with fixed texts in turn and records the prompts it got."""

    model_id = "scripted"

    def __init__(self, *replies: str):
        self.replies, self.prompts = list(replies), []

    def generate(self, prompts, params=None, progress=None):
        self.prompts.extend(prompts)
        return [Generation(self.replies.pop(0), "stop", 1, 1) for _ in prompts]

    def score(self, contexts, continuations):
        raise NotImplementedError


@pytest.fixture
def memory(tmp_path, word_hash_embedder):
    embedder = word_hash_embedder()
    yield AvatarMemory(SQLiteStore(tmp_path / "m.db", embedder.dimension), embedder)


def test_clean_profile_takes_the_description_or_refuses():
    who = "Ada Lovelace"
    reply = (
        "Sure, here is the description:\nAda Lovelace is a mathematician who loves engines. She speaks precisely. And"
    )
    assert clean_profile(reply, who) == "Ada Lovelace is a mathematician who loves engines. She speaks precisely."
    assert clean_profile("- a list\n- of things", who) is None
    assert clean_profile("Ok.", who) is None
    assert display_name("ada_lovelace") == who


def test_refresh_profile_uses_samples_and_facts_and_goes_stale(memory, tmp_path):
    (tmp_path / "a.txt").write_text(" ".join(f"The analytical engine weaves pattern {i}." for i in range(30)))
    memory.ingest("ada", [tmp_path / "a.txt"])
    memory.remember("ada", "Ada prefers green tea.")
    assert profile_is_stale(memory, "ada")
    model = ScriptedModel("Ada is an inventor of engines who speaks in metaphors.", "not usable")
    profile = refresh_profile(memory, "ada", model)
    prompt = model.prompts[0][0]["content"]
    assert "analytical engine" in prompt and "Ada prefers green tea." in prompt
    assert profile.text.startswith("Ada is an inventor") and profile.extra["from_model"]
    assert memory.store.get_profile("ada").text == profile.text and not profile_is_stale(memory, "ada")
    memory.remember("ada", "Ada moved to London.")
    assert profile_is_stale(memory, "ada")
    fallback = refresh_profile(memory, "ada", model)
    assert not fallback.extra["from_model"] and "engine" in fallback.text and "Ada moved to London." in fallback.text


def test_profile_prompt_without_facts():
    prompt = profile_prompt("Ada", ["One.", "Two."], [])
    assert '- "One."' in prompt and "known" not in prompt


def test_clean_profile_drops_repeats_and_caps_length():
    reply = "Ada is kind. She bakes. Ada is kind. She sails. She sings. She reads. She writes. She"
    assert clean_profile(reply, "Ada") == "Ada is kind. She bakes. She sails. She sings. She reads."
