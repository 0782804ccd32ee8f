"""Text-to-persona and expansion: parsing and the quality filter on fixed strings, lineage with
scripted answers, and on the real embedded model a killed run that resumes from the cache."""

from __future__ import annotations

import pytest

from personalm.models.base import Generation
from personalm.models.cache import CachedModel, GenerationCache
from personalm.personas import mining, prompts
from personalm.personas.quality import parse_answer, reject_reason


@pytest.mark.parametrize(
    "answer,persona",
    [
        ("Persona: A pediatric nurse who works night shifts.", "A pediatric nurse who works night shifts."),
        ('**Persona:** "a retired sailor who restores boats"', "A retired sailor who restores boats"),
        ("Sure! Here it is.\n\nPersona: A young coder", "A young coder"),
        ("1. A software engineer focused on compilers\n2. Another", "A software engineer focused on compilers"),
        ("The person I'm describing is a beekeeper in Vermont.", "A beekeeper in Vermont."),
        ("", ""),
    ],
)
def test_parse_answer(answer, persona):
    assert parse_answer(answer) == persona


@pytest.mark.parametrize(
    "persona,reason",
    [
        ("A pediatric nurse who works night shifts.", None),
        ("An avid birdwatcher in rural Ohio", None),
        ("", "empty"),
        ("Nurse", "too_short"),
        ("I'm sorry, but I cannot determine who would read this.", "refusal"),
        ("The text is about sourdough starters and flour", "boilerplate"),
        ("Sourdough needs a starter fed daily with flour.", "not_a_person"),
        ("A nurse " + "who cares " * 40, "too_long"),
    ],
)
def test_quality_filter(persona, reason):
    assert reject_reason(persona) == reason


def test_prompts_cover_variants_and_granularity():
    fine = prompts.text_to_persona("Some text", "dislike", "fine")
    coarse = prompts.text_to_persona("Some text", "write", "coarse")
    assert "dislike this text" in fine[-1]["content"] and "have written this text" in coarse[-1]["content"]
    assert "one sentence" in fine[-1]["content"] and "eight words" in coarse[-1]["content"]
    assert fine[1]["role"] == "assistant" and fine[1]["content"].startswith("Persona:")
    with pytest.raises(ValueError):
        prompts.text_to_persona("x", "hate")


def scripted(answers: dict[str, str]):
    """A generate function answering by a keyword found in the prompt's last turn."""

    def generate(batch, params):
        out = []
        for prompt in batch:
            last = prompt[-1]["content"]
            text = next((a for key, a in answers.items() if key in last), "I'm sorry, I cannot help.")
            out.append(Generation(text, "stop", 10, 5))
        return out

    return generate


def test_extract_and_expand_keep_lineage():
    generate = scripted(
        {
            "Persona: The neighbour's daughter": "I cannot help with that.",
            "Persona: The baker's neighbour": "Persona: The neighbour's daughter who studies chemistry.",
            "Persona: A home baker": "Persona: The baker's neighbour who buys bread every Sunday.",
            "sourdough": "Persona: A home baker who keeps a sourdough starter.",
        }
    )
    texts = [("t1", "All about sourdough."), ("t2", "Quarterly VAT filing rules.")]
    rows, rejects = mining.extract(texts, generate, "m", variants=("read", "like"))
    assert [r["id"] for r in rows] == ["t1#read", "t1#like"]
    assert {r["id"]: r["reason"] for r in rejects} == {"t2#read": "refusal", "t2#like": "refusal"}
    grown, rejected = mining.expand(rows[:1], generate, "m", rounds=6)
    assert [(r["id"], r["round"], r["parent_id"]) for r in grown] == [
        ("t1#read>0", 1, "t1#read"),
        ("t1#read>0>0", 2, "t1#read>0"),
    ]
    assert len(rejected) == 1
    assert all(r["source_text_id"] == "t1" and r["relation"] in prompts.RELATIONS for r in grown)
    assert rejected[0]["round"] == 3 and rejected[0]["reason"] == "refusal"


class Interrupt(Exception):
    pass


@pytest.mark.slow
def test_killed_extract_resumes_without_lost_or_doubled_personas(tmp_path, embedded_model):
    texts = [(f"t{i}", f"Notes on topic {i}: bees, hives and honey harvests in spring.") for i in range(3)]
    options = mining.MiningOptions(max_tokens=24, batch=2)
    cache = GenerationCache(tmp_path / "cache.sqlite")
    model = CachedModel(embedded_model, cache)
    calls = []

    def dies_after_first_batch(batch, params):
        if calls:
            raise Interrupt
        calls.append(len(batch))
        return model.generate(batch, params)

    with pytest.raises(Interrupt):
        mining.extract(texts, dies_after_first_batch, model.model_id, ("read", "like"), options)
    assert len(cache) == 2

    fresh = []

    def counting(batch, params):
        fresh.append(len(batch))
        return model.generate(batch, params)

    rows, rejects = mining.extract(texts, counting, model.model_id, ("read", "like"), options)
    ids = [r["id"] for r in rows + rejects]
    assert sorted(ids) == sorted(f"t{i}#{v}" for i in range(3) for v in ("read", "like"))
    assert len(cache) == 6
    again, again_rejects = mining.extract(texts, model.generate, model.model_id, ("read", "like"), options)
    assert again == rows and again_rejects == rejects


@pytest.mark.slow
def test_killed_expand_resumes_without_lost_or_doubled_personas(tmp_path, embedded_model):
    seeds = [
        {"id": f"p{i}", "persona": persona, "source_text_id": f"t{i}"}
        for i, persona in enumerate(["A beekeeper in Vermont", "A night-shift nurse", "A ferry captain"])
    ]
    options = mining.MiningOptions(max_tokens=24, batch=2, temperature=0.7)
    cache = GenerationCache(tmp_path / "cache.sqlite")
    model = CachedModel(embedded_model, cache)
    calls = []

    def dies_in_round_two(batch, params):
        calls.append(len(batch))
        if sum(calls) > len(seeds) + 1:
            raise Interrupt
        return model.generate(batch, params)

    with pytest.raises(Interrupt):
        mining.expand(seeds, dies_in_round_two, model.model_id, rounds=3, options=options)
    assert len(cache) >= len(seeds)

    grown, rejects = mining.expand(seeds, model.generate, model.model_id, rounds=3, options=options)
    ids = [r["id"] for r in grown + rejects]
    assert len(ids) == len(set(ids))
    known = {s["id"] for s in seeds} | {r["id"] for r in grown}
    assert all(r["parent_id"] in known for r in grown + rejects)

    fresh_model = CachedModel(embedded_model, GenerationCache(tmp_path / "fresh.sqlite"))
    uninterrupted = mining.expand(seeds, fresh_model.generate, fresh_model.model_id, rounds=3, options=options)
    assert uninterrupted == (grown, rejects)
    assert len(fresh_model.cache) == len(cache)
