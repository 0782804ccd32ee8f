"""Does a reply carry the persona? Persona-term recall of a reply, and PIR precision@k: whether the
tokens that a persona influenced most are the persona's own words.

Words are compared as content-word stems (eval.text.content_words).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from personalm.eval.text import LETTERS, content_stem, content_words

if TYPE_CHECKING:
    from personalm.perce.contrast import TokenInfluence


def persona_recall(prediction: str, reference: str, persona: str) -> float | None:
    """Of the content words the reference shares with the persona, the fraction the prediction has;
    None when the reference shares none (the turn says nothing persona-specific)."""
    shared = content_words(reference) & content_words(persona)
    if not shared:
        return None
    return len(shared & content_words(prediction)) / len(shared)


def persona_token_flags(
    influence: TokenInfluence, persona: str, special: frozenset[str] = frozenset()
) -> tuple[list[bool], list[bool]]:
    """(candidate, persona) flags per reply token. Candidates hold a letter or digit and are not
    special tokens; a token is a persona token when it overlaps a word of the reply that is a
    content word of the persona."""
    stems = content_words(persona)
    text = "".join(influence.tokens)
    starts, position = [], 0
    for token in influence.tokens:
        starts.append(position)
        position += len(token)
    marked = [False] * len(text)
    for match in LETTERS.finditer(text):
        if content_stem(match.group()) in stems:
            marked[match.start() : match.end()] = [True] * (match.end() - match.start())
    candidate = [token not in special and any(c.isalnum() for c in token) for token in influence.tokens]
    persona_flags = [any(marked[s : s + len(t)]) for s, t in zip(starts, influence.tokens, strict=True)]
    return candidate, persona_flags


def precision_at_k(
    influence: TokenInfluence, persona: str, k: int, special: frozenset[str] = frozenset()
) -> tuple[float, float] | None:
    """(precision@k of the top-PIR tokens, expected precision@k of k random tokens) against the
    tokens that appear in the persona; None when the reply has no persona token or under k tokens."""
    candidate, flags = persona_token_flags(influence, persona, special)
    pool = [(pir, flag) for pir, flag, ok in zip(influence.pir, flags, candidate, strict=True) if ok]
    if len(pool) < k or not any(flag for _, flag in pool):
        return None
    top = sorted(pool, key=lambda item: -item[0])[:k]
    return sum(flag for _, flag in top) / k, sum(flag for _, flag in pool) / len(pool)
