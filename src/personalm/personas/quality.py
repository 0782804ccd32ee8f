"""Read the model's answer into one persona description, and judge whether it is usable.

Rejects are kept with a reason (see `REASONS`), never silently dropped, so a run can be audited.
"""

from __future__ import annotations

import re

REASONS = ("empty", "too_short", "too_long", "refusal", "boilerplate", "not_a_person")
MIN_WORDS = 3
MAX_WORDS = 60
MAX_CHARS = 400

_LABEL = re.compile(r"^\W*(?:the\s+)?(?:persona|person|answer|description)\s*(?:\d+)?\s*[:\-–—]\s*", re.IGNORECASE)
_PREAMBLE = re.compile(
    r"^(?:the\s+)?(?:person|persona|individual)(?:\s+(?:i'?m|i am)\s+describing|\s+described(?:\s+here)?)?"
    r"\s+(?:is|would be|could be)\s+",
    re.IGNORECASE,
)
_LIST_MARK = re.compile(r"^\s*(?:[-*•>]+|\d+[.)])\s*")
_REFUSAL = re.compile(
    r"\b(i'?m sorry|i am sorry|i cannot|i can'?t|i am unable|i'?m unable|as an ai|language model|i do not have|"
    r"i don'?t have enough|cannot determine|not possible to determine)\b",
    re.IGNORECASE,
)
_BOILERPLATE = re.compile(
    r"^(here is|here's|sure|certainly|of course|okay|the text|this text|the following|based on the text)\b"
    r"|\b(the text above|this text|the given text|the provided text)\b",
    re.IGNORECASE,
)
_PERSON_WORDS = {
    "person", "people", "someone", "somebody", "individual", "man", "woman", "boy", "girl", "child", "kid",
    "teen", "teenager", "adult", "parent", "mother", "father", "mom", "dad", "son", "daughter", "sister",
    "brother", "grandmother", "grandfather", "grandparent", "wife", "husband", "partner", "spouse", "friend",
    "student", "fan", "enthusiast", "expert", "professional", "specialist", "scientist", "engineer", "doctor",
    "nurse", "patient", "chef", "cook", "artist", "scholar", "historian", "journalist", "reporter", "editor",
    "author", "novelist", "poet", "musician", "guitarist", "singer", "athlete", "coach", "player", "owner",
    "entrepreneur", "founder", "executive", "manager", "analyst", "consultant", "lawyer", "attorney", "judge",
    "politician", "activist", "advocate", "volunteer", "veteran", "retiree", "hobbyist", "collector", "traveler",
    "traveller", "tourist", "caregiver", "guardian", "mentor", "colleague", "coworker", "neighbor",
    "neighbour", "client", "customer", "user", "resident", "citizen", "immigrant", "refugee", "worker",
    "employee", "farmer", "pilot", "soldier", "officer", "detective", "priest", "pastor", "monk", "nun",
    "therapist", "psychologist", "psychiatrist", "dentist", "surgeon", "physician", "pharmacist", "veterinarian",
    "architect", "designer", "developer", "programmer", "hacker", "gamer", "blogger", "influencer", "youtuber",
    "vlogger", "critic", "reviewer", "reader", "writer", "researcher", "professor", "lecturer", "tutor",
    "teacher", "educator", "librarian", "graduate", "undergraduate", "freshman", "mathematician", "physicist",
    "chemist", "biologist", "economist", "accountant", "banker", "investor", "trader", "broker", "agent",
    "sailor", "fisherman", "miner", "carpenter", "plumber", "electrician", "mechanic", "driver", "baker",
    "barista", "waiter", "waitress", "bartender", "homeowner", "landlord", "tenant", "voter", "member",
}  # fmt: skip
_PERSON_SUFFIXES = ("er", "or", "ist", "ian", "ant", "ent", "eer", "ess", "ee", "ive", "ic")
_NOT_PERSONS = {
    "weather", "water", "paper", "number", "computer", "other", "after", "over", "under", "never", "ever",
    "however", "winter", "summer", "letter", "matter", "chapter", "center", "centre", "order", "power",
    "color", "colour", "error", "floor", "door", "factor", "sector", "mirror", "horror", "flavor", "flavour",
    "content", "event", "moment", "element", "argument", "document", "environment", "government", "plant",
    "restaurant", "music", "topic", "logic", "public", "traffic", "relative", "perspective", "objective",
}  # fmt: skip
_DETERMINERS = {"a", "an", "the", "one", "this", "that", "some", "any", "every", "my", "their", "his", "her"}
_PERSON_PHRASES = re.compile(r"\b(who|whose|someone|somebody)\b", re.IGNORECASE)


def parse_answer(text: str) -> str:
    """The persona in a model answer: the text after 'Persona:' (else the first non-empty line),
    without list marks, quotes, markdown or a trailing second sentence of chatter."""
    lines = [line.strip() for line in text.replace("\r", "").split("\n")]
    labelled = [line for line in lines if _LABEL.match(_LIST_MARK.sub("", line.replace("*", "")))]
    line = labelled[0] if labelled else next((line for line in lines if line), "")
    line = _LIST_MARK.sub("", line.replace("**", "").replace("__", ""))
    line = _LABEL.sub("", line).strip().strip("\"'“”‘’`").strip()
    line = _PREAMBLE.sub("", line)
    line = line[:1].upper() + line[1:]
    if len(line) > MAX_CHARS:
        cut = line.find(". ", 0, MAX_CHARS)
        line = line[: cut + 1] if cut > 0 else line
    return line


def reject_reason(persona: str) -> str | None:
    """None for a usable persona, else one of REASONS."""
    words = re.findall(r"[\w'-]+", persona.lower())
    if not words:
        return "empty"
    if _REFUSAL.search(persona):
        return "refusal"
    if _BOILERPLATE.search(persona):
        return "boilerplate"
    if len(words) < MIN_WORDS:
        return "too_short"
    if len(words) > MAX_WORDS or len(persona) > MAX_CHARS:
        return "too_long"
    if not _describes_person(words, persona):
        return "not_a_person"
    return None


def _describes_person(words: list[str], persona: str) -> bool:
    if _PERSON_PHRASES.search(persona):
        return True
    head = [w.strip("'-") for w in words[:10]]
    if any(w in _PERSON_WORDS or (w.endswith("s") and w[:-1] in _PERSON_WORDS) for w in head):
        return True
    return head[0] in _DETERMINERS and any(
        len(w) > 4 and w.endswith(_PERSON_SUFFIXES) and w not in _NOT_PERSONS for w in head[1:6]
    )
