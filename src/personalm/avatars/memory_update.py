"""Memory updates after each exchange, as in mem0: every new fact is compared with the most
similar stored facts and becomes ADD (new), UPDATE (a changed value of the same thing replaces
the old one), DELETE (the person asks to forget a fact) or NONE (already known).

Nothing is lost on the way: an UPDATE supersedes the old fact (both are kept, the old one ended,
store.py), a negation of a stored fact ("I don't play tennis anymore.") is such an UPDATE (the
negation is stored and the old fact superseded, never both dropped), a DELETE retracts, and a
duplicate changes nothing. Each update records its rule and the extraction path that found the
fact, and the chat turn it came from.

The decision is deterministic: similarity from the embedder plus a 'slot' read from the fact's
first-person form (what the fact is about: a preference, where they live, a favourite X, the
main verb). Single-valued slots (name, age, home, job, a favourite X) update whatever the value;
preferences and other verbs update only when the facts are also close in meaning.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from personalm.avatars.api import AvatarMemory
from personalm.avatars.facts import FactExtractor, content_words, split_retractions
from personalm.avatars.ingest import memory_key
from personalm.avatars.retrieval import Hit, hybrid_search
from personalm.avatars.store import NewMemory

DUPLICATE = 0.95
SAME_TOPIC = (
    0.65  # MiniLM: "I prefer tea." vs "I prefer coffee now." 0.71; "I play tennis." vs "I play the piano." 0.53
)
CANDIDATES = 5
MAX_ORIGIN_CHARS = 300

NEGATION = re.compile(
    r"\b(?:no longer|not anymore|don't|do not|doesn't|didn't|never|stopped|quit|gave up|anymore|any more)\b",
    re.IGNORECASE,
)
PREFERENCE_VERBS = r"prefer|like|love|enjoy|adore|dislike|hate|fancy"
SINGLE_VALUED = [
    (re.compile(r"^my (favou?rite \w+)"), "fav"),
    (re.compile(r"^my name is\b|^i(?:'m| am) called\b"), "name"),
    (re.compile(r"^i(?:'m| am) \d+(?: years old)?\b"), "age"),
    (re.compile(r"^i (?:\w+ly |now |currently )?(?:live|moved|reside)\b"), "home"),
    (re.compile(r"^i (?:\w+ly |now |currently )?work (?:as|at|for)\b|^my job\b"), "job"),
]
VERB = re.compile(
    r"^i(?:'m| am)? (?:(?:do not|don't|no longer|never|also|really|still|now|currently|usually|always|often)\s+)*"
    r"(?:stopped |quit |gave up )?(\w+)"
)


@dataclass
class Update:
    """One decision: `op` ADD, UPDATE, DELETE or NONE; `target` the stored fact it concerns;
    `rule` why; `memory_id` the version now holding the fact (None after a DELETE);
    `decided_by` the extraction path that found the fact (model, rules-fallback, rules)."""

    op: str
    fact: str
    target: int | None = None
    target_text: str | None = None
    rule: str = ""
    memory_id: int | None = None
    decided_by: str = ""


@dataclass
class Learned:
    """What one message taught the memory: the facts extracted (empty: it stated none), the
    extraction path, and the update of each fact and of each request to forget."""

    extracted: list[str]
    extractor: str
    updates: list[Update] = field(default_factory=list)


def canonical(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


def slot(fact: str) -> tuple[str, bool]:
    """(what the fact is about, whether only one value can hold at a time)."""
    low = canonical(fact)
    for pattern, name in SINGLE_VALUED:
        match = pattern.search(low)
        if match:
            return (f"{name}:{match.group(1)}" if match.groups() else name), True
    match = VERB.search(low)
    if not match:
        return "", False
    verb = match.group(1)
    if re.fullmatch(PREFERENCE_VERBS + r"s?", verb):
        return "preference", False
    return f"verb:{verb.removesuffix('ing')}", False


def decide(fact: str, similar: list[Hit]) -> Update:
    """The operation for one new fact given the most similar stored facts (best first)."""
    new_slot, single = slot(fact)
    for hit in similar:
        if canonical(hit.memory.text) == canonical(fact):
            return Update("NONE", fact, hit.memory.id, hit.memory.text, "duplicate: the same words are stored")
        if hit.similarity >= DUPLICATE:
            return Update("NONE", fact, hit.memory.id, hit.memory.text,
                          f"duplicate: similarity {hit.similarity:.2f} >= {DUPLICATE}")  # fmt: skip
    same_slot = [h for h in similar if new_slot and slot(h.memory.text)[0] == new_slot]
    if NEGATION.search(fact):
        negated = content_words(NEGATION.sub(" ", fact))
        for hit in same_slot or similar:
            if NEGATION.search(hit.memory.text):
                continue
            if hit.similarity >= SAME_TOPIC:
                return Update("UPDATE", fact, hit.memory.id, hit.memory.text,
                              f"negation of a stored fact (similarity {hit.similarity:.2f})")  # fmt: skip
            if hit in same_slot and negated and negated <= content_words(hit.memory.text):
                return Update("UPDATE", fact, hit.memory.id, hit.memory.text,
                              f"negation of a stored fact (same slot {new_slot}, its words all in it)")  # fmt: skip
    for hit in same_slot:
        if single:
            return Update("UPDATE", fact, hit.memory.id, hit.memory.text, f"new value of single-valued slot {new_slot}")
        if hit.similarity >= SAME_TOPIC:
            return Update("UPDATE", fact, hit.memory.id, hit.memory.text,
                          f"same slot {new_slot}, similarity {hit.similarity:.2f}")  # fmt: skip
    return Update("ADD", fact, rule="new fact")


def decide_retraction(fact: str, similar: list[Hit]) -> Update:
    """A request to forget `fact`: DELETE the stored fact it names (the same words, the same
    single-valued slot, or close in meaning), else NONE saying nothing matched."""
    wanted, single = slot(fact)
    for hit in similar:
        same = canonical(hit.memory.text) == canonical(fact)
        if same or (single and slot(hit.memory.text)[0] == wanted) or hit.similarity >= SAME_TOPIC:
            how = "the same words" if same else f"similarity {hit.similarity:.2f}"
            return Update("DELETE", fact, hit.memory.id, hit.memory.text, f"asked to forget ({how})")
    return Update("NONE", fact, rule="asked to forget, but no stored fact matches")


def similar_facts(memory: AvatarMemory, avatar: str, fact: str) -> tuple[np.ndarray, list[Hit]]:
    """The fact's vector and the most similar current facts, most similar first."""
    vector = memory.embed([fact])[0]
    similar = hybrid_search(memory.store, avatar, fact, vector, CANDIDATES, ("fact",))
    similar.sort(key=lambda h: -h.similarity)
    return vector, similar


def apply_facts(
    memory: AvatarMemory,
    avatar: str,
    facts: list[str],
    ts: float | None = None,
    origin: str = "",
    decided_by: str = "",
    forget: Sequence[str] = (),
) -> list[Update]:
    """Decide and apply each request to forget, then each fact, in turn (later ones see the
    effect of earlier ones); every change records `origin` and its rule."""
    updates = []
    for fact in forget:
        update = decide_retraction(fact, similar_facts(memory, avatar, fact)[1])
        if update.op == "DELETE":
            memory.store.delete(avatar, [update.target], origin, update.rule)
        updates.append(update)
    for fact in facts:
        vector, similar = similar_facts(memory, avatar, fact)
        update = decide(fact, similar)
        update.decided_by = decided_by
        rule = f"{update.rule}; extracted by {decided_by}" if decided_by else update.rule
        new = NewMemory("fact", fact, memory_key("fact", fact), vector, ts=ts, origin=origin, rule=rule)
        if update.op == "UPDATE":
            update.memory_id = memory.store.update(avatar, update.target, new)
        if update.op == "ADD" or (update.op == "UPDATE" and update.memory_id is None):  # the target ended meanwhile
            ids = memory.store.add(avatar, [new])
            update.op, update.memory_id = "ADD", ids[0] if ids else None
        elif update.op == "NONE":
            update.memory_id = update.target
        updates.append(update)
    return updates


def learn(
    memory: AvatarMemory, avatar: str, message: str, extractor: FactExtractor, ts: float | None = None
) -> Learned:
    """What the person said in one message, into memory: requests to forget retract, the facts
    extracted from the rest are decided and applied; the chat turn is their origin."""
    rest, forget = split_retractions(message)
    extraction = extractor.extraction(rest) if rest.strip() else None
    facts = extraction.facts if extraction else []
    path = extraction.path if extraction else ""
    origin = "chat: " + " ".join(message.split())[:MAX_ORIGIN_CHARS]
    return Learned(facts, path, apply_facts(memory, avatar, facts, ts, origin, path, forget))
