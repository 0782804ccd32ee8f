"""Facts the person states about themselves in a chat message: a deterministic first-person rule
extractor, and a model extractor (mem0-style prompt) whose output is kept only where it is
grounded in the message, falling back to the rules."""

from __future__ import annotations

import re
from typing import Protocol

from personalm.avatars.chunking import sentences
from personalm.eval.text import STOPWORDS
from personalm.models.base import SamplingParams, TextModel

LEAD_INS = re.compile(
    r"^(?:(?:actually|well|also|so|oh|and|but|by the way|btw|anyway|honestly|ok|okay|yes|no|hmm)\b[,!.]?\s*)+",
    re.IGNORECASE,
)
FIRST_PERSON = re.compile(r"^(?:i|i'm|i've|i'd|i'll|my|mine)\b", re.IGNORECASE)
MAX_FACT_CHARS = 200

PROMPT = """Extract the facts the speaker states about themselves in the message below (preferences, habits, plans, relationships, places, events). Write each fact as a short sentence in the first person ("I ...", "My ..."), one per line, starting with "- ". If there are none, write "- none".

Message: {message}"""


class FactExtractor(Protocol):
    def extract(self, message: str) -> list[str]: ...


def normalize_fact(text: str) -> str:
    """One clean sentence: lead-in words dropped, 'I' capitalized, ends with a full stop."""
    text = LEAD_INS.sub("", " ".join(text.split())).strip(" -*\"'")
    if not text:
        return ""
    text = re.sub(r"^i\b", "I", text)
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!" else text.rstrip(",;:") + "."


class RuleFactExtractor:
    """First-person statements of the message, each as one fact (questions are not facts)."""

    def extract(self, message: str) -> list[str]:
        facts = []
        for sentence in sentences(message):
            if sentence.endswith("?"):
                continue
            for clause in re.split(r";\s*|,\s*(?:and|but)\s+(?=i\b|my\b)", sentence, flags=re.IGNORECASE):
                fact = normalize_fact(clause)
                if FIRST_PERSON.match(fact) and 4 < len(fact) <= MAX_FACT_CHARS:
                    facts.append(fact)
        return list(dict.fromkeys(facts))


def content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9']+", text.lower()) if w not in STOPWORDS}


def parse_fact_lines(reply: str, message: str, min_grounding: float = 0.6) -> list[str]:
    """Facts from a model reply: '- ' lines in the first person whose content words mostly
    appear in the message (small models invent facts; those are dropped)."""
    said = content_words(message)
    facts = []
    for line in reply.splitlines():
        line = line.strip()
        if not line.startswith(("-", "*", "•")):
            continue
        fact = normalize_fact(line.lstrip("-*• "))
        words = content_words(fact)
        if not FIRST_PERSON.match(fact) or not words or len(fact) > MAX_FACT_CHARS:
            continue
        if len(words & said) / len(words) >= min_grounding:
            facts.append(fact)
    return list(dict.fromkeys(facts))


class ModelFactExtractor:
    """Asks the model for facts; keeps the grounded ones, or the rule facts when none are."""

    def __init__(self, model: TextModel, fallback: FactExtractor | None = None):
        self.model, self.fallback = model, fallback or RuleFactExtractor()

    def extract(self, message: str) -> list[str]:
        reply = self.model.generate(
            [[{"role": "user", "content": PROMPT.format(message=message)}]], SamplingParams(max_tokens=96)
        )[0].text
        return parse_fact_lines(reply, message) or self.fallback.extract(message)
