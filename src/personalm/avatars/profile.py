"""The avatar's profile: a persona description of the person written by the model from a sample
of their own words and their known facts (Persona Hub's text-to-persona, asked about a speaker),
rewritten when memory has grown enough to change it."""

from __future__ import annotations

import re
from collections import Counter

from personalm.avatars.api import AvatarMemory
from personalm.avatars.chunking import sentences
from personalm.avatars.store import Profile
from personalm.eval.text import STOPWORDS
from personalm.models.base import SamplingParams, TextModel

SAMPLES = 12
MAX_FACTS = 12
MAX_SENTENCES = 5
GROWTH = 0.1  # rewrite once memory grew by a tenth (or facts changed)

PROMPT = """Who is likely to have said or written the following passages? They all come from one person, {who}.

{samples}
{facts}
Describe this person in 3 to 5 sentences: who they are, what they care about and believe, and how they speak (tone, typical words). Write in the third person, starting with "{who} is"."""


def display_name(avatar: str) -> str:
    return " ".join(part.capitalize() for part in re.split(r"[_\s]+", avatar) if part)


def sample_utterances(memory: AvatarMemory, avatar: str, n: int = SAMPLES) -> list[str]:
    """n utterances spread evenly over the avatar's memory (oldest to newest by insertion)."""
    total = memory.count(avatar, "utterance")
    if total == 0:
        return []
    offsets = sorted({int(i * total / min(n, total)) for i in range(min(n, total))})
    return [memory.list(avatar, "utterance", limit=1, offset=o)[0].text for o in offsets]


def facts_of(memory: AvatarMemory, avatar: str, n: int = MAX_FACTS) -> list[str]:
    total = memory.count(avatar, "fact")
    return [m.text for m in memory.list(avatar, "fact", limit=n, offset=max(0, total - n))]


def profile_prompt(who: str, samples: list[str], facts: list[str]) -> str:
    quoted = "\n".join(f'- "{s}"' for s in samples)
    known = ("\nWhat is known about them:\n" + "\n".join(f"- {f}" for f in facts) + "\n") if facts else ""
    return PROMPT.format(who=who, samples=quoted, facts=known)


def clean_profile(text: str, who: str) -> str | None:
    """The description from a model reply (first paragraph, whole sentences), or None when the
    reply is unusable (too short, or a list / refusal rather than a description)."""
    text = text.strip().split("\n\n")[0].strip()
    text = re.sub(r"^(sure|here is|here's)[^:\n]*:\s*", "", text, flags=re.IGNORECASE).strip()
    cut = max(text.rfind("."), text.rfind("!"), text.rfind("?"))
    text = text[: cut + 1] if cut > 0 else text
    text = " ".join(list(dict.fromkeys(sentences(text)))[:MAX_SENTENCES])  # small models repeat themselves
    if len(text) < 40 or text.startswith(("-", "*", "1.")) or "as an ai" in text.lower():
        return None
    return text


def keyword_profile(who: str, samples: list[str], facts: list[str]) -> str:
    """A description straight from the data, used when the model's reply is unusable."""
    words = Counter(w for s in samples for w in re.findall(r"[a-z][a-z'-]{3,}", s.lower()) if w not in STOPWORDS)
    topics = ", ".join(w for w, _ in words.most_common(8))
    text = f"{who} often speaks about {topics}." if topics else f"{who}."
    return text + (" " + " ".join(facts[:5]) if facts else "")


def refresh_profile(memory: AvatarMemory, avatar: str, model: TextModel, seed: int = 0) -> Profile:
    """Write the profile from the current memory and store it."""
    who = display_name(avatar)
    samples, facts = sample_utterances(memory, avatar), facts_of(memory, avatar)
    reply = model.generate(
        [[{"role": "user", "content": profile_prompt(who, samples, facts)}]],
        SamplingParams(max_tokens=160, temperature=0.0, seed=seed),
    )[0].text
    text = clean_profile(reply, who)
    profile = Profile(
        text=text or keyword_profile(who, samples, facts),
        memory_count=memory.count(avatar),
        extra={"model": model.model_id, "facts": memory.count(avatar, "fact"), "from_model": text is not None},
    )
    memory.store.set_profile(avatar, profile)
    return profile


def profile_is_stale(memory: AvatarMemory, avatar: str) -> bool:
    """No profile yet, facts changed, or memory grew by more than GROWTH since it was written."""
    profile = memory.store.get_profile(avatar)
    if profile is None:
        return memory.count(avatar) > 0
    if profile.extra.get("facts") != memory.count(avatar, "fact"):
        return True
    return memory.count(avatar) > profile.memory_count * (1 + GROWTH)
