"""Prompts of text-to-persona and persona-to-persona (Persona Hub, arXiv 2406.20094).

The model is asked for exactly one line, `Persona: ...`, so that even a small model's answer can
be parsed; the parser still copes with answers that ignore the format.
"""

from __future__ import annotations

from personalm.models.base import Message

VARIANTS = ("read", "write", "like", "dislike")
GRANULARITIES = ("coarse", "fine")
RELATIONS = (
    "a close colleague",
    "a family member",
    "someone who takes care of them",
    "someone they help or take care of",
    "a close friend",
    "a client or customer",
    "a mentor or teacher",
    "a rival or competitor",
)
MAX_TEXT_CHARS = 2000

_GRANULARITY = {
    "coarse": "Be brief and general: just a role or occupation, in at most eight words.",
    "fine": "Be specific: the role plus what they focus on, care about or are going through, in one sentence.",
}
_VERB = {"read": "read", "write": "have written", "like": "like", "dislike": "dislike"}
_INSTRUCTION = "Answer with one line that starts with 'Persona:'."

# One worked example shows a small model the format; its topic is far from most corpora, and the
# parser strips the label whether or not the model repeats it.
_DEMO_TEXT = "Form 1120-S: report each shareholder's pro rata share of income on Schedule K-1 by March 15."
_DEMO_PERSONA = {
    "coarse": "Persona: A tax accountant.",
    "fine": "Persona: A tax accountant who prepares returns for small family-owned corporations.",
}
_DEMO_RELATED = {
    "coarse": "Persona: A bookkeeper.",
    "fine": "Persona: The bookkeeper of a family bakery who sends the accountant receipts every quarter.",
}


def _check(variant: str, granularity: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {', '.join(GRANULARITIES)}")


def _ask_text(text: str, variant: str, granularity: str) -> str:
    return (
        f"Text:\n{text.strip()[:MAX_TEXT_CHARS]}\n\n"
        f"Who is likely to {_VERB[variant]} this text? Describe that one person. {_GRANULARITY[granularity]} "
        f"{_INSTRUCTION}"
    )


def _ask_related(persona: str, relation: str, granularity: str) -> str:
    return (
        f"Persona: {persona.strip()}\n\n"
        f"Describe one person who is {relation} of this persona. {_GRANULARITY[granularity]} {_INSTRUCTION}"
    )


def text_to_persona(text: str, variant: str = "read", granularity: str = "fine") -> list[Message]:
    """Who would read / have written / like / dislike this text? (one demonstration, then the text)"""
    _check(variant, granularity)
    return [
        {"role": "user", "content": _ask_text(_DEMO_TEXT, "read", granularity)},
        {"role": "assistant", "content": _DEMO_PERSONA[granularity]},
        {"role": "user", "content": _ask_text(text, variant, granularity)},
    ]


def persona_to_persona(persona: str, relation: str, granularity: str = "fine") -> list[Message]:
    """Who is in a close relationship (of the given kind) with this persona?"""
    _check("read", granularity)
    demo = _DEMO_PERSONA[granularity].removeprefix("Persona: ")
    return [
        {"role": "user", "content": _ask_related(demo, "a client", granularity)},
        {"role": "assistant", "content": _DEMO_RELATED[granularity]},
        {"role": "user", "content": _ask_related(persona, relation, granularity)},
    ]
