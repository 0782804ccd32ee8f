"""Memory updates after each exchange, as in mem0: every new fact is compared with the most
similar stored facts and becomes ADD (new), UPDATE (a changed value of the same thing replaces
the old one), DELETE (the person says an old fact no longer holds) or NONE (already known).

The decision is deterministic: similarity from the embedder plus a 'slot' read from the fact's
first-person form (what the fact is about: a preference, where they live, a favourite X, the
main verb). Single-valued slots (name, age, home, job, a favourite X) update whatever the value;
preferences and other verbs update only when the facts are also close in meaning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from personalm.avatars.api import AvatarMemory
from personalm.avatars.ingest import memory_key
from personalm.avatars.retrieval import Hit, hybrid_search

DUPLICATE = 0.95
SAME_TOPIC = (
    0.65  # MiniLM: "I prefer tea." vs "I prefer coffee now." 0.71; "I play tennis." vs "I play the piano." 0.53
)
CANDIDATES = 5

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
    op: str  # ADD, UPDATE, DELETE or NONE
    fact: str
    target: int | None = None
    target_text: str | None = None


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
        if canonical(hit.memory.text) == canonical(fact) or hit.similarity >= DUPLICATE:
            return Update("NONE", fact, hit.memory.id, hit.memory.text)
    same_slot = [h for h in similar if new_slot and slot(h.memory.text)[0] == new_slot]
    if NEGATION.search(fact):
        for hit in same_slot or similar:
            if hit.similarity >= SAME_TOPIC and not NEGATION.search(hit.memory.text):
                return Update("DELETE", fact, hit.memory.id, hit.memory.text)
    for hit in same_slot:
        if single or hit.similarity >= SAME_TOPIC:
            return Update("UPDATE", fact, hit.memory.id, hit.memory.text)
    return Update("ADD", fact)


def apply_facts(memory: AvatarMemory, avatar: str, facts: list[str], ts: float | None = None) -> list[Update]:
    """Decide and apply each fact in turn (later facts see the effect of earlier ones)."""
    updates = []
    for fact in facts:
        vector = memory.embed([fact])[0]
        similar = hybrid_search(memory.store, avatar, fact, vector, CANDIDATES, ("fact",))
        similar.sort(key=lambda h: -h.similarity)
        update = decide(fact, similar)
        if update.op == "ADD":
            memory.remember(avatar, fact, ts=ts)
        elif update.op == "UPDATE":
            memory.store.update(avatar, update.target, fact, memory_key("fact", fact), vector)
        elif update.op == "DELETE":
            memory.store.delete(avatar, [update.target])
        updates.append(update)
    return updates
