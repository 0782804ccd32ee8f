"""The prompts of the tone pipeline and the parsers of the model's answers.

Answers are grounded in a short passage of facts given in the user turn (as a voice agent answers
from retrieved facts), so content can be compared with a reference answer while tone varies.
"""

from __future__ import annotations

import re

from personalm.models.base import Message

TONE_SYSTEM = (
    "You are a friendly voice assistant. Talk the way people speak out loud: short sentences, "
    "simple everyday words, warm and natural."
)

_PREFIX = re.compile(r"^\s*(?:\d+[.)]\s*|[-*]\s*|(?:question|q|answer|a|rewritten answer|rewrite)\s*:\s*)+", re.I)
_SENTENCE_END = re.compile(r"[.!?](?:[\"')\]]*)(?=\s|$)")


def user_turn(facts: str, question: str) -> str:
    return f"Facts: {facts}\n\nQuestion: {question}"


QUESTION_TASK = (
    "Write one short, specific question in plain everyday words that this passage answers. Write only the question."
)
EXAMPLE_PASSAGE = (
    "The canal opened in 1825 after eight years of work. It linked the Hudson River to Lake Erie, and the "
    "cost of moving a ton of grain to New York fell from about 100 dollars to about 10."
)
EXAMPLE_QUESTION = "How much did the canal lower the cost of moving grain to New York?"
GENERIC = re.compile(r"\b(passage|text|the question|this question|the answer|the author)\b", re.I)
META_LINE = re.compile(r"^(sure|fine|okay|ok|certainly|of course|here'?s|here is|rewritten|revised)\b.*", re.I)


def question_prompt(facts: str) -> list[Message]:
    """One worked example first: small models otherwise ask about 'the passage' itself."""
    return [
        {"role": "user", "content": f"{QUESTION_TASK}\n\nPassage: {EXAMPLE_PASSAGE}"},
        {"role": "assistant", "content": EXAMPLE_QUESTION},
        {"role": "user", "content": f"{QUESTION_TASK}\n\nPassage: {facts}"},
    ]


def reference_prompt(facts: str, question: str) -> list[Message]:
    return [{"role": "user", "content": f"Answer the question using only the facts.\n\n{user_turn(facts, question)}"}]


def tone_prompt(question: str, reference: str) -> list[Message]:
    """The question is shown so the rewrite can answer it head-on: references tend to restate the
    question's formal wording, which then dominates the reading ease of the rewrite."""
    return [
        {"role": "system", "content": TONE_SYSTEM},
        {
            "role": "user",
            "content": "Say this answer again so it sounds natural spoken aloud to a friend: short sentences, "
            "simple words, same facts. Start with the answer itself; do not repeat the question."
            f"\n\nQuestion: {question}\nAnswer: {reference}",
        },
    ]


def answer_chat(facts: str, question: str, system: str | None = None) -> list[Message]:
    """The chat an answering model sees: the grounded question, optionally under a system prompt."""
    turn = [{"role": "user", "content": user_turn(facts, question)}]
    return [{"role": "system", "content": system}, *turn] if system else turn


def parse_question(text: str, min_words: int = 4, max_words: int = 40) -> tuple[str | None, str]:
    """(question, "") or (None, reason). Takes the first line with a '?', cut after it."""
    for line in text.splitlines():
        line = _PREFIX.sub("", line).strip().strip('"').strip()
        if "?" not in line:
            continue
        question = line[: line.index("?") + 1].strip()
        if GENERIC.search(question):
            return None, "question about the text itself, not its facts"
        words = len(question.split())
        if words < min_words:
            return None, f"question too short ({words} words)"
        if words > max_words:
            return None, f"question too long ({words} words)"
        return question, ""
    return None, "no question in the answer"


def echoes_question(question: str, answer: str, run: int = 5, opening: int = 12) -> bool:
    """Whether the answer's first `opening` words repeat `run` consecutive words of the question:
    an answer that restates the question carries its formal wording instead of getting to the point."""

    def words(text: str) -> list[str]:
        return re.findall(r"[a-z0-9']+", text.lower())

    asked = words(question)
    grams = {tuple(asked[i : i + run]) for i in range(len(asked) - run + 1)}
    start = words(answer)[:opening]
    return any(tuple(start[i : i + run]) in grams for i in range(len(start) - run + 1))


FORMULA = re.compile(
    r"^(?:(?:so|well|okay|ok),?\s+)?(?:the|my|here'?s\s+the|here\s+is\s+the)\s+(?:short\s+|simple\s+|easy\s+|quick\s+)?"
    r"answer\b(?:\s+to\s+(?:this|that|the|your)\s+question)?\s*(?:is\b)?\s*[:,\-]?\s*",
    re.I,
)


def without_formula(text: str) -> str:
    """The answer without an opening formula about the answer ("The answer to this question is:
    ..."): a rewrite that opens with it teaches the adapter a phrase that passes any reading-ease
    bar while saying nothing (126 of 200 test answers of an SFT adapter opened with it)."""
    rest = FORMULA.sub("", text, count=1)
    return rest[:1].upper() + rest[1:] if rest != text else text


def clean_answer(
    text: str, truncated: bool, min_words: int = 3, drop_formula: bool = False
) -> tuple[str | None, str]:
    """(answer, "") or (None, reason). A cut-off answer is trimmed to its last whole sentence;
    `drop_formula` also drops an opening formula about the answer (`without_formula`)."""
    lines = [_PREFIX.sub("", line).strip() for line in text.strip().splitlines()]
    lines = [line for line in lines if line and not (META_LINE.match(line) and line.rstrip().endswith(":"))]
    answer = " ".join(lines)
    answer = re.sub(r"^(?:sure|fine|okay|ok|certainly|of course)[!,.]\s*", "", answer, flags=re.I)
    if drop_formula:
        answer = without_formula(answer)
    if truncated:
        ends = list(_SENTENCE_END.finditer(answer))
        if not ends:
            return None, "cut off before the first sentence ended"
        answer = answer[: ends[-1].end()]
    if len(answer.split()) < min_words:
        return None, "answer too short"
    return answer, ""
