"""Facts the person states about themselves in a chat message: a deterministic first-person rule
extractor, and a model extractor (mem0-style prompt) whose output is kept only where it is
grounded in the message, falling back to the rules. Each extraction says which path found its
facts. Requests to forget ("Please forget that I have a dog.") are taken out of the message first:
they retract a stored fact and must never be stored as one."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

from personalm.avatars.chunking import sentences
from personalm.eval.text import STOPWORDS
from personalm.models.base import SamplingParams, TextModel

LEAD_INS = re.compile(
    r"^(?:(?:actually|well|also|so|oh|and|but|by the way|btw|anyway|honestly|ok|okay|yes|no|hmm|as i said|like i said)"
    r"\b[,!.]?\s*)+",
    re.IGNORECASE,
)
FIRST_PERSON = re.compile(r"^(?:i|i'm|i've|i'd|i'll|my|mine)\b", re.IGNORECASE)
MAX_FACT_CHARS = 200

PROMPT = """Extract the facts the speaker states about themselves in the message below (preferences, habits, plans, relationships, places, events). Write each fact as a short sentence in the first person ("I ...", "My ..."), one per line, starting with "- ". If there are none, write "- none".

Message: {message}"""


FORGET = re.compile(
    r"^(?:please\s+)?(?:forget|disregard|scratch)\b[\s,:]*(?:(?:the fact that|that|about|what|where|when|how)\s+)?"
    r"(?:i\s+(?:said|told you|mentioned)\s+(?:that\s+|about\s+)?)?(.+)$",
    re.IGNORECASE,
)


@dataclass
class Extraction:
    """The facts of one message and the path that found them: `model`, `rules-fallback` (the
    model found none grounded in the message) or `rules`."""

    facts: list[str]
    path: str


class FactExtractor(Protocol):
    def extraction(self, message: str) -> Extraction: ...

    def extract(self, message: str) -> list[str]: ...


def normalize_fact(text: str) -> str:
    """One clean sentence: lead-in words dropped, 'I' capitalized, ends with a full stop."""
    text = LEAD_INS.sub("", " ".join(text.split())).strip(" -*\"'")
    if not text:
        return ""
    text = re.sub(r"^i\b", "I", text)
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!" else text.rstrip(",;:") + "."


def split_retractions(message: str) -> tuple[str, list[str]]:
    """(the message without its requests to forget, the first-person facts they ask to forget)."""
    kept, forget = [], []
    for sentence in sentences(message):
        match = FORGET.match(LEAD_INS.sub("", sentence).strip())
        fact = normalize_fact(match.group(1)) if match else ""
        if fact and FIRST_PERSON.match(fact):
            forget.append(fact)
        else:
            kept.append(sentence)
    return " ".join(kept), forget


def statements(message: str) -> list[str]:
    """The message's sentences without its questions (a question states no fact about the person)."""
    return [s for s in sentences(message) if not s.endswith("?")]


class RuleFactExtractor:
    """First-person statements of the message, each as one fact (questions are not facts)."""

    def extraction(self, message: str) -> Extraction:
        return Extraction(self.extract(message), "rules")

    def extract(self, message: str) -> list[str]:
        facts = []
        for sentence in statements(message):
            for clause in re.split(r";\s*|,\s*(?:and|but)\s+(?=i\b|my\b)", sentence, flags=re.IGNORECASE):
                fact = normalize_fact(clause)
                if FIRST_PERSON.match(fact) and 4 < len(fact) <= MAX_FACT_CHARS:
                    facts.append(fact)
        return list(dict.fromkeys(facts))


def content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9']+", text.lower()) if w not in STOPWORDS}


def parse_fact_lines(reply: str, message: str, min_grounding: float = 0.6) -> list[str]:
    """Facts from a model reply: lines in the first person ('- ' bullets as asked, or bare: the
    embedded model often answers a one-fact message with the fact alone) whose content words
    mostly appear in the message (small models invent facts; those are dropped)."""
    said = content_words(message)
    facts = []
    for line in reply.splitlines():
        fact = normalize_fact(line.strip().lstrip("-*• "))
        words = content_words(fact)
        if not FIRST_PERSON.match(fact) or not words or len(fact) > MAX_FACT_CHARS:
            continue
        if len(words & said) / len(words) >= min_grounding:
            facts.append(fact)
    return list(dict.fromkeys(facts))


class ModelFactExtractor:
    """Asks the model for facts; keeps the grounded ones, or the rule facts when none are."""

    version = 2  # changes when what the model is shown or what is kept changes (2: statements only)

    def __init__(self, model: TextModel, fallback: FactExtractor | None = None):
        self.model, self.fallback = model, fallback or RuleFactExtractor()

    def extract(self, message: str) -> list[str]:
        return self.extraction(message).facts

    def extraction(self, message: str) -> Extraction:
        return self.extractions([message])[0]

    def extractions(self, messages: list[str]) -> list[Extraction]:
        """Many messages in one batch of generations (the model batches them). The model reads
        only a message's statements: asked "Do you keep bees?", it would answer "I do keep bees."
        and that would be grounded in the question's words. A message that only asks states nothing."""
        stated = [" ".join(statements(m)) for m in messages]
        asked = [text for text in stated if text]
        prompts = [[{"role": "user", "content": PROMPT.format(message=text)}] for text in asked]
        replies = iter(self.model.generate(prompts, SamplingParams(max_tokens=96)) if prompts else [])
        out = []
        for message, text in zip(messages, stated, strict=True):
            facts = parse_fact_lines(next(replies).text, text) if text else []
            if facts:
                out.append(Extraction(facts, "model"))
            else:
                out.append(Extraction(self.fallback.extract(message), "rules-fallback" if text else "rules"))
        return out
