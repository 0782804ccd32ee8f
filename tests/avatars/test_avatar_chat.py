"""Chat with an avatar and memory updates (ADD / UPDATE / DELETE / NONE) on scripted
conversations; one smoke run on the real embedded model."""

from __future__ import annotations

import time

import pytest
from test_avatar_profile import ScriptedModel

from personalm.avatars.api import AvatarMemory
from personalm.avatars.chat import DONT_KNOW, AvatarChat, denial, exemplar_turns, system_prompt
from personalm.avatars.facts import Extraction, RuleFactExtractor, parse_fact_lines
from personalm.avatars.memory_update import decide, slot
from personalm.avatars.retrieval import Hit, Recall
from personalm.avatars.sqlite_store import SQLiteStore
from personalm.avatars.store import Memory


@pytest.fixture
def memory(tmp_path, embedder):
    memory = AvatarMemory(SQLiteStore(tmp_path / "m.db", embedder.dimension), embedder)
    yield memory
    memory.close()


def facts(memory):
    return sorted(m.text for m in memory.list("ada", kind="fact"))


def hit(text, similarity, memory_id=1):
    return Hit(Memory(memory_id, "fact", text), 0.0, similarity)


def test_decide_on_fixed_similarities():
    assert decide("I live in Paris.", [hit("I live in Paris.", 1.0)]).op == "NONE"
    assert decide("I live in Rome.", [hit("I live in Paris.", 0.4)]).op == "UPDATE"  # one home at a time
    assert decide("I prefer coffee now.", [hit("I prefer tea.", 0.71)]).op == "UPDATE"
    assert decide("I prefer window seats.", [hit("I prefer tea.", 0.32)]).op == "ADD"
    assert decide("I play the piano.", [hit("I play tennis.", 0.53)]).op == "ADD"
    negated = decide("I don't play tennis anymore.", [hit("I play tennis.", 0.83, 7)])
    assert (negated.op, negated.target) == ("UPDATE", 7) and negated.rule.startswith("negation")
    dog = decide("I don't have a dog anymore.", [hit("I have a dog named Rex.", 0.53, 8)])  # its words are all in it
    assert (dog.op, dog.target) == ("UPDATE", 8) and "same slot verb:have" in dog.rule
    assert decide("I don't have a car anymore.", [hit("I have a dog named Rex.", 0.4)]).op == "ADD"
    assert decide("I don't eat meat.", []).op == "ADD"
    assert slot("My favourite colour is blue.") == ("fav:favourite colour", True)


def test_rule_extractor_and_grounded_model_facts():
    extract = RuleFactExtractor().extract
    assert extract("Hi! Actually, I live in Paris, and my dog is called Rex. Where do you live?") == [
        "I live in Paris.",
        "My dog is called Rex.",
    ]
    assert extract("What is the time?") == []
    reply = "- I live in Paris.\n- I am a famous astronaut.\n- none\nSome chatter"
    assert parse_fact_lines(reply, "I live in Paris with my cat.") == ["I live in Paris."]
    assert parse_fact_lines("I moved to Lisbon.", "I moved to Lisbon.") == ["I moved to Lisbon."]  # no bullet
    assert parse_fact_lines("I'm a freelance writer, happy to assist.", "Hi! What do you do?") == []


def test_scripted_conversation_updates_memory(memory):
    model = ScriptedModel(*["Noted."] * 8)
    chat = AvatarChat(memory, "ada", model, RuleFactExtractor())
    ops = [
        [u.op for u in chat.send(message).updates]
        for message in [
            "I prefer tea in the morning.",
            "I live in Paris. I play tennis.",
            "I live in Paris.",  # repeating a fact adds nothing
            "Actually, I prefer coffee in the morning now.",  # a changed preference replaces the old one
            "I don't play tennis anymore.",
            "My favourite colour is blue.",
        ]
    ]
    assert ops == [["ADD"], ["ADD", "ADD"], ["NONE"], ["UPDATE"], ["UPDATE"], ["ADD"]]
    assert facts(memory) == [
        "I don't play tennis anymore.",  # the negation supersedes the old fact; both are kept
        "I live in Paris.",
        "I prefer coffee in the morning now.",
        "My favourite colour is blue.",
    ]
    coffee = next(m for m in memory.list("ada", kind="fact") if "coffee" in m.text)
    tea = memory.history("ada", coffee.id)
    assert [(m.text, m.status) for m in tea] == [("I prefer tea in the morning.", "superseded"),
                                                 ("I prefer coffee in the morning now.", "current")]  # fmt: skip


def test_learning_reports_what_it_extracted_forgets_on_request_and_records_the_turn(memory):
    from personalm.avatars.facts import ModelFactExtractor, split_retractions
    from personalm.avatars.memory_update import learn

    assert split_retractions("Hi. Please forget that I said I have a dog. I like tea.") == (
        "Hi. I like tea.", ["I have a dog."])  # fmt: skip
    assert split_retractions("Forget where I live.") == ("", ["I live."])
    rules = RuleFactExtractor()
    nothing = learn(memory, "ada", "What a lovely day, isn't it?", rules)
    assert (nothing.extracted, nothing.extractor, nothing.updates) == ([], "rules", [])
    first = learn(memory, "ada", "I have a dog named Rex. I live in Paris.", rules)
    assert [u.op for u in first.updates] == ["ADD", "ADD"] and first.extractor == "rules"
    rex = first.updates[0].memory_id
    assert memory.store.get("ada", [rex])[0].origin == "chat: I have a dog named Rex. I live in Paris."
    forgot = learn(memory, "ada", "Please forget that I have a dog named Rex.", rules)
    assert forgot.extracted == [] and [(u.op, u.target) for u in forgot.updates] == [("DELETE", rex)]
    assert memory.store.get("ada", [rex])[0].status == "retracted"
    assert facts(memory) == ["I live in Paris."]
    model = ScriptedModel("- I live in Rome now.", "- none")
    moved = learn(memory, "ada", "Actually I live in Rome now.", ModelFactExtractor(model))
    assert moved.extractor == "model" and moved.updates[0].op == "UPDATE" and moved.updates[0].decided_by == "model"
    assert memory.store.get("ada", [moved.updates[0].memory_id])[0].rule.endswith("extracted by model")
    fallback = learn(memory, "ada", "I grow basil.", ModelFactExtractor(model))
    assert (fallback.extracted, fallback.extractor) == (["I grow basil."], "rules-fallback")


def test_the_model_reads_statements_only_so_a_question_is_never_a_fact():
    from personalm.avatars.facts import ModelFactExtractor

    model = ScriptedModel("- I do keep bees.", "- I keep bees.")
    extractor = ModelFactExtractor(model)
    assert extractor.extraction("Do you keep bees?") == Extraction([], "rules") and model.prompts == []
    mixed = extractor.extraction("I keep bees. Do you keep bees too?")
    assert mixed == Extraction(["I do keep bees."], "model")
    assert "I keep bees." in model.prompts[0][0]["content"] and "too?" not in model.prompts[0][0]["content"]


def test_unsupported_question_gets_dont_know_without_the_model(memory):
    memory.remember("ada", "I prefer green tea.")
    model = ScriptedModel("I drink green tea, of course.")
    chat = AvatarChat(memory, "ada", model)
    turn = chat.send("What is the boiling point of tungsten in kelvin?")
    assert (turn.reply, turn.supported, model.prompts) == (DONT_KNOW, False, [])
    turn = chat.send("What tea do you drink?")
    assert turn.supported and turn.reply == "I drink green tea, of course."
    system = model.prompts[0][0]["content"]
    assert "Facts about you:\n- I prefer green tea." in system and "You are Ada." in system
    assert model.prompts[0][1:3] == [
        {"role": "user", "content": "What is the boiling point of tungsten in kelvin?"},
        {"role": "assistant", "content": DONT_KNOW},
    ]


def test_prepare_holds_the_support_rule_the_server_uses(memory):
    memory.remember("ada", "I prefer green tea.")
    chat = AvatarChat(memory, "ada", ScriptedModel())
    unknown = chat.prepare("What is the boiling point of tungsten in kelvin?")
    assert not unknown.supported and unknown.messages is None
    known = chat.prepare("What tea do you drink?")
    assert known.supported and known.messages[-1] == {"role": "user", "content": "What tea do you drink?"}
    assert "I prefer green tea." in known.messages[0]["content"]
    assert [h.memory.text for h in known.recall.facts] == ["I prefer green tea."]
    assert chat.prepare("Tungsten boils at a very high temperature.").supported  # not a question


def test_a_question_about_a_fact_taken_back_is_not_answered_by_the_model(memory):
    memory.remember("ada", "I prefer green tea.")
    chess = memory.remember("ada", "I play chess every weekend.")
    chat = AvatarChat(memory, "ada", ScriptedModel())
    question = "Do you play chess every weekend?"
    assert chat.prepare(question).supported and chat.prepare(question).recall.taken_back is None
    time.sleep(0.01)
    before = time.time()
    time.sleep(0.01)
    assert memory.delete("ada", [chess]) == 1
    gone = chat.prepare(question)
    assert gone.recall.forgotten and gone.messages is None
    assert gone.recall.taken_back.memory.text == "I play chess every weekend."
    assert chat.prepare("What tea do you drink?").supported  # what is still believed answers as before
    assert chat.prepare(question, as_of=before).supported  # it was believed then
    assert memory.undo("ada", chess).action == "restored"
    back = chat.prepare(question)
    assert back.supported and not back.recall.forgotten and back.recall.taken_back is not None


def test_a_yes_no_question_the_persons_own_denial_answers_gets_that_denial(memory):
    model = ScriptedModel("Nice.", "I see.")  # the two statements; a third call would fail
    chat = AvatarChat(memory, "ada", model, RuleFactExtractor())
    chat.send("I play darts every weekend.")
    time.sleep(0.01)
    between = time.time()
    time.sleep(0.01)
    assert chat.send("I don't play darts anymore.").updates[0].op == "UPDATE"  # supersedes, both kept
    prepared = chat.prepare("Do you play darts?")
    assert prepared.messages is None and prepared.supported and prepared.reply == "I don't play darts anymore."
    turn = chat.send("Do you play darts?")
    assert turn.reply == "I don't play darts anymore." and turn.supported and len(model.prompts) == 2
    # asked as of before the denial, when memory believed the fact: the model answers from it
    then = chat.prepare("Do you play darts?", as_of=between)
    assert then.messages is not None and [h.memory.text for h in then.recall.facts] == ["I play darts every weekend."]
    # the model still answers what the denial does not: other words, open questions
    assert chat.prepare("Do you play darts with your brother?").messages is not None
    assert chat.prepare("What do you play every weekend?").messages is not None


def test_denial_needs_a_negated_closest_fact_holding_the_question():
    darts = hit("I don't play darts anymore.", 0.8)
    assert denial("Do you play darts?", Recall([], [darts])) == "I don't play darts anymore."
    assert denial("Are you playing darts?", Recall([], [darts])) is None  # "playing" is not in it
    assert denial("Do you have a dog?", Recall([], [hit("I don't have a cat anymore.", 0.7)])) is None
    assert denial("Do you play darts?", Recall([], [hit("I play darts every weekend.", 0.9)])) is None
    assert denial("Can you recommend a darts pub?", Recall([], [darts])) is None  # a request, not about you
    closer = Hit(Memory(2, "utterance", "Darts, darts, darts!"), 0.0, 0.9)  # an exemplar is closest
    assert denial("Do you play darts?", Recall([closer], [darts])) is None
    assert denial("Do you play darts?", Recall([], [])) is None


def test_system_prompt_keeps_exemplars_apart_from_facts():
    recall = Recall([Hit(Memory(1, "utterance", "Well, my friends."), 0, 0.5)], [hit("I like tea.", 0.5)])
    text = system_prompt("Ada", "Ada is kind.", recall)
    assert text.index("About you: Ada is kind.") < text.index("Facts about you") < text.index("Things you have said")
    assert '- "Well, my friends."' in text


def test_chat_exemplars_with_context_become_dialogue_turns():
    replied = Hit(Memory(2, "utterance", "Green tea, always.", context="What do you drink?"), 0, 0.6)
    recall = Recall([replied, Hit(Memory(1, "utterance", "Well, my friends."), 0, 0.5)], [])
    assert exemplar_turns(recall) == [
        {"role": "user", "content": "What do you drink?"},
        {"role": "assistant", "content": "Green tea, always."},
    ]
    assert "Green tea, always." not in system_prompt("Ada", None, recall)


@pytest.mark.slow
def test_smoke_real_model_chat_and_fact_extraction(memory, embedded_model, tmp_path):
    from personalm.avatars.facts import ModelFactExtractor

    (tmp_path / "ada.txt").write_text("I have always loved mathematics. The engine can weave algebraic patterns.")
    memory.ingest("ada", [tmp_path / "ada.txt"])
    chat = AvatarChat(memory, "ada", embedded_model, ModelFactExtractor(embedded_model))
    first = chat.send("I moved to London last spring.")
    second = chat.send("Where did you move last spring?")
    assert first.reply and first.supported and second.reply
    assert any("London" in m.text for m in memory.list("ada", kind="fact"))


def test_demo_step_creates_updates_and_chats(tmp_path, word_hash_embedder):
    """The demo's avatar step runs `avatar create` then `avatar update` (v1, v2; the update ingests
    only the later note) and chats with the latest version's model."""
    from rich.console import Console
    from test_avatar_voice import FakeTrainer

    from personalm.demo import avatars as demo

    console = Console(record=True, width=200)
    replies = [
        "Mara Keel is a patient sailor and gardener who speaks plainly.",  # profile (create)
        "Mara Keel is a patient sailor, baker and gardener.",  # profile (update)
        "Bees are patient too.",  # first answer
        "- I started keeping bees.",  # facts of the first message
        "Tomatoes, by the wall.",  # second answer
        "- none",  # facts of the second message
    ]
    model, trainer, spoken = ScriptedModel(*replies), FakeTrainer(), []
    demo.run(console, model, tmp_path, word_hash_embedder(), speaker=lambda v: spoken.append(v) or model, train=trainer)
    text = console.export_text()
    assert "4 files (0 already ingested), 4 new memories" in text
    assert "profile: Mara Keel is a patient sailor and gardener" in text and "v1 published" in text
    assert "5 files (4 already ingested), 1 new memories" in text and "v2 published" in text  # only the later note
    assert "v2: 1 utterances trained, 1 replayed" in text
    assert [v.label for v in spoken] == ["v2"] and len(trainer.configs) == 2
    assert trainer.configs[1].init_adapter == str(tmp_path / "avatar-memory-adapters" / demo.NAME / "v1")
    assert any("I baked four loaves" in row["messages"][-1]["content"] for row in trainer.rows[1])
    assert "memory ADD: I started keeping bees." in text and "Mara Keel: Tomatoes, by the wall." in text


@pytest.mark.slow
def test_demo_step_on_the_embedded_model(tmp_path, embedded_model):
    """The real step: adapters trained for a few steps, the chat answered by v2 merged into the base."""
    from rich.console import Console

    from personalm.demo import avatars as demo

    console = Console(record=True, width=200)
    demo.run(console, embedded_model, tmp_path)
    text = console.export_text()
    assert "v1 published" in text and "v2 published" in text and "chatting with avatar:mara_keel (voice v2" in text
    assert (tmp_path / "avatar-memory-adapters" / demo.NAME / "v2" / "adapter_model.safetensors").is_file()
