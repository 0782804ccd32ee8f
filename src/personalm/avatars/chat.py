"""Answering as the person: profile + retrieved facts + style exemplars + recent turns, with an
honest "I don't know" when memory does not cover a question, and memory updates after each
exchange (the one chatting is taken to be the person, telling their avatar about themselves).
A yes/no question whose closest belief is the person's own denial of it is answered with that
denial, not by the model (`denial`). With preference-aware answering on, the stated preferences
among the retrieved facts pick the answer among n sampled candidates (avatars.preferences); an
avatar speaking with a voice adapter, given the adapter's base model, keeps the candidate most in
the person's voice (avatars.preferences.voice_likelihood), or, with a fusion weight, answers by
proxy-tuned decoding (models.fusion.ProxyTuned): the base model reads the retrieved passages and the
adapter's shift over it, on the chat the adapter was trained on (`plain`), is added."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from personalm.avatars.api import AvatarMemory
from personalm.avatars.facts import FactExtractor, content_words
from personalm.avatars.memory_update import NEGATION, Update, learn
from personalm.avatars.preferences import (
    TRAIN_HINT,
    VOICE_CANDIDATES,
    VOICE_FUSION,
    Choice,
    Critic,
    PreferenceSettings,
    answer_with_preferences,
    avatar_settings,
    stated_preferences,
    turn_candidates,
)
from personalm.avatars.profile import display_name
from personalm.avatars.retrieval import PLAIN_RRF, Fusion, Recall
from personalm.errors import PersonalmError
from personalm.models.base import Message, SamplingParams, TextModel

DONT_KNOW = "I don't know. Nothing I remember covers that."
MIN_SUPPORT = 0.25  # cosine (MiniLM) below which retrieved memories are unrelated to the question
HISTORY_TURNS = 6
QUESTION = re.compile(
    r"\?\s*$|^(?:who|what|when|where|why|how|which|do|does|did|is|are|was|were|can|could|would|will|have|has)\b",
    re.IGNORECASE,
)
YES_NO_ABOUT_YOU = re.compile(r"^(?:do|does|did|are|is|was|were|have|has)\s+you\b", re.IGNORECASE)


@dataclass
class Prepared:
    """What memory says about one user message: the recall, the stated preferences among the
    retrieved facts, and the messages for the model, or None when the model is not asked: then
    `answer` is the reply memory gives by itself (a denial the person stated), or, when memory
    does not cover the question, the reply is DONT_KNOW."""

    question: str
    recall: Recall
    messages: list[Message] | None
    preferences: list[str] = field(default_factory=list)
    answer: str | None = None

    @property
    def supported(self) -> bool:
        return self.messages is not None or self.answer is not None

    @property
    def reply(self) -> str:
        """The reply when the model is not asked: the answer memory gave, else DONT_KNOW."""
        return self.answer or DONT_KNOW


def denial(question: str, recall: Recall) -> str | None:
    """The person's own denial when it answers a yes/no question about them: the closest memory
    is a fact they stated negated ("I don't play darts anymore.") that holds every content word of
    the question ("Do you play darts?"). A 135M model shown that fact still picks "Yes, I play darts
    every weekend." (15 of 96 such probes of the memory test's seed 2), so the denial is the reply."""
    if not YES_NO_ABOUT_YOU.match(question.strip()) or not recall.facts:
        return None
    closest = max(recall.facts + recall.exemplars, key=lambda h: h.similarity)
    asked = content_words(question)
    if closest not in recall.facts or not NEGATION.search(closest.memory.text):
        return None
    return closest.memory.text if asked and asked <= content_words(closest.memory.text) else None


@dataclass
class ChatTurn:
    reply: str
    recall: Recall
    supported: bool
    updates: list[Update] = field(default_factory=list)
    choice: Choice | None = None  # set when the answer was chosen among candidates (preferences, voice)
    extracted: list[str] = field(default_factory=list)
    extractor: str = ""


def system_prompt(who: str, profile: str | None, recall: Recall) -> str:
    """The persona instructions: who you are, what you know, how you speak. Exemplars that
    answered someone (chat utterances with context) go in as dialogue turns instead."""
    parts = [f"You are {who}. Answer in the first person as {who}, in {who}'s own voice and style."]
    if profile:
        parts.append(f"About you: {profile}")
    if recall.facts:
        parts.append("Facts about you:\n" + "\n".join(f"- {h.memory.text}" for h in recall.facts))
    quotes = [h.memory.text for h in recall.exemplars if not h.memory.context]
    if quotes:
        parts.append("Things you have said (match this way of speaking):\n" + "\n".join(f'- "{q}"' for q in quotes))
    parts.append("Use only these facts and your own words. If they do not answer the question, say you don't know.")
    return "\n\n".join(parts)


def exemplar_turns(recall: Recall) -> list[Message]:
    """Style exemplars as few-shot dialogue (as ChatHaruhi does with a character's lines): what
    was said to the person, then their verbatim reply."""
    turns: list[Message] = []
    for hit in recall.exemplars:
        if hit.memory.context:
            turns += [
                {"role": "user", "content": hit.memory.context},
                {"role": "assistant", "content": hit.memory.text},
            ]
    return turns


def is_question(text: str) -> bool:
    return bool(QUESTION.search(text.strip()))


class AvatarChat:
    """One conversation with an avatar; `send` answers and then updates memory. `preferences`
    (default: the avatar's stored setting) turns preference-aware answering on; it needs `critic`.
    `voice_base`, the base model of `model`'s voice adapter, turns voice ranking on: the best of
    `voice_candidates` answers by voice likelihood (with preferences stated, their candidates), or
    with `voice_fusion` (a weight) answers by proxy-tuned decoding, the base reading the passages
    (candidates for stated preferences then come from it, ties going to its own likelihood)."""

    def __init__(
        self,
        memory: AvatarMemory,
        avatar: str,
        model: TextModel,
        extractor: FactExtractor | None = None,
        params: SamplingParams | None = None,
        exemplars: int = 3,
        facts: int = 5,
        min_support: float = MIN_SUPPORT,
        critic: Critic | None = None,
        preferences: PreferenceSettings | None = None,
        fusion: Fusion = PLAIN_RRF,
        voice_base: TextModel | None = None,
        voice_candidates: int = VOICE_CANDIDATES,
        voice_fusion: float | None = VOICE_FUSION,
    ):
        self.memory, self.avatar, self.model = memory, avatar, model
        self.voice_base, self.voice_candidates = voice_base, voice_candidates
        self.fused: TextModel | None = None
        if voice_base is not None and voice_fusion is not None:
            from personalm.models.fusion import ProxyTuned

            self.fused = ProxyTuned(voice_base, model, voice_fusion)
        self.extractor = extractor
        self.params = params or SamplingParams(max_tokens=128, temperature=0.7, top_p=0.9, stop=("\n\n\n",))
        self.exemplars, self.facts, self.min_support = exemplars, facts, min_support
        self.critic, self.fusion = critic, fusion
        self.preferences = preferences if preferences is not None else avatar_settings(memory.store, avatar)
        if self.preferences.apply and critic is None:
            raise PersonalmError(f"preference-aware answering needs a preference critic; {TRAIN_HINT}")
        self.history: list[Message] = []
        self.who = display_name(avatar)

    def compose(self, user: str, recall: Recall) -> list[Message]:
        profile = self.memory.store.get_profile(self.avatar)
        system = system_prompt(self.who, profile.text if profile else None, recall)
        recent = self.history[-HISTORY_TURNS:]
        shots = exemplar_turns(recall)
        return [{"role": "system", "content": system}, *shots, *recent, {"role": "user", "content": user}]

    def plain(self, user: str) -> list[Message]:
        """The chat a voice adapter was trained on: the person's name, the recent turns and the
        message (no profile, facts or passages: in a fused answer the base reads those)."""
        recent = self.history[-HISTORY_TURNS:]
        return [{"role": "system", "content": system_prompt(self.who, None, Recall())}, *recent,
                {"role": "user", "content": user}]  # fmt: skip

    def prepare(self, user: str, as_of: float | None = None) -> Prepared:
        """Retrieval, the support rule, the denial rule and the stated preferences: a question no
        memory supports, or one closer to a fact the user took back than to anything still believed,
        gets no prompt (the reply is DONT_KNOW); a yes/no question the person's own denial answers
        gets that denial (`denial`). The one place these rules live: `send` and the server's avatar
        chat both come through here. `as_of`: answer from what memory believed then."""
        recall = self.memory.recall(self.avatar, user, self.exemplars, self.facts, fusion=self.fusion, as_of=as_of)
        supported = (recall.support >= self.min_support and not recall.forgotten) or not is_question(user)
        denied = denial(user, recall) if supported else None
        messages = self.compose(user, recall) if supported and denied is None else None
        return Prepared(user, recall, messages, stated_preferences(recall), denied)

    def send(self, user: str) -> ChatTurn:
        prepared = self.prepare(user)
        choice = None
        if prepared.messages is not None:
            seed = self.params.seed + len(self.history)
            params = SamplingParams(**{**self.params.to_dict(), "seed": seed})
            if self.preferences.apply or self.voice_base is not None:
                stated, n = turn_candidates(self.preferences, prepared.preferences, self.voice_candidates)
                model, prompt, base = self.model, prepared.messages, self.voice_base
                if self.fused is not None:
                    model, prompt, base = self.fused, (prepared.messages, self.plain(user)), None
                choice = answer_with_preferences(model, self.critic, prompt, user, stated, params, n, base)
                reply = choice.answer or DONT_KNOW
            else:
                reply = self.model.generate([prepared.messages], params)[0].text.strip() or DONT_KNOW
        else:
            reply = prepared.reply
        self.history += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
        if self.extractor is None:
            return ChatTurn(reply, prepared.recall, prepared.supported, choice=choice)
        learned = learn(self.memory, self.avatar, user, self.extractor, ts=time.time())
        return ChatTurn(reply, prepared.recall, prepared.supported, learned.updates, choice, learned.extracted,
                        learned.extractor)  # fmt: skip
