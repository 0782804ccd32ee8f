"""Preference-aware answering: the person's stated preferences, recognised among the facts memory
retrieved for a message, decide which of n sampled answers is returned.

A small model given "I avoid dairy" in its prompt still suggests cheese; reading the preference is
easy for a trained critic and hard for a 135M generator. So the generator proposes n candidates (one
generate call, each seeded by its position) and the preference critic (`personalm critic train`)
ranks them by the probability that they respect every stated preference; ties go to the model's own
mean token log-probability of the answer. With nothing stated the model's likelihood alone decides.

An avatar with a voice adapter ranks by its *voice* likelihood instead (`voice_likelihood`): how much
more the adapter expects the answer than the base model it was trained from, given the same chat.
The base's term cancels what any answer to that chat would say (the retrieved passages' content), so
what is left is the person's way of saying it; with a base given, candidates are sampled even when no
preference is stated.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from personalm.avatars.retrieval import Recall
from personalm.errors import PersonalmError
from personalm.models.base import Message, Prompt, SamplingParams, TextModel

DEFAULT_CANDIDATES = 4
VOICE_CANDIDATES = 1
"""Answers an avatar with a voice adapter samples per turn, ranked by voice likelihood when more than
one. 1, one sample: the avatar study chose it over 4 on validation persons (docs/avatars.md)."""
VOICE_FUSION: float | None = 1.0
"""The proxy-tuning weight an avatar with a voice adapter answers with (models.fusion: the base model
reads the retrieved passages, the adapter's shift over it on the name-only chat it was trained on is
added at this weight), or None: the adapter reads the passages itself. 1.0: the avatar study chose it
on validation persons over the adapter reading the passages (0.533 vs 0.450 attribution) and over
weights 0.5 and 1.5 (docs/avatars.md)."""
MAX_CANDIDATES = 16
MAX_PREFERENCES = 5  # stated preferences the critic is conditioned on (the best retrieved first)
TIE = 1e-6  # critic scores closer than this are a tie, broken by the model's likelihood
TRAIN_HINT = "train one with `personalm critic train`"

FIRST_PERSON = re.compile(r"\b(?:i|i'm|i've|i'd|my|me)\b", re.IGNORECASE)
CUES = re.compile(
    r"\b(?:prefer\w*|like|likes|love|loves|enjoy\w*|dislike\w*|hate|hates|avoid\w*|aversion|allerg\w*|refuse\w*"
    r"|can't stand|cannot stand|not (?:interested|a fan|into|comfortable)|no interest|fan of|favou?rite|fear\w*"
    r"|phobia|afraid|scared|uncomfortable|comfortable|opposed|tolerate|despise|loathe|only|exclusively|strict\w*"
    r"|never|rather|vegan|vegetarian|intoleran\w*|sensitive to|passionate|keen on|fond of|best|boring|tedious"
    r"|don't|do not|won't|will not|cannot|can't|need|needs|priorit\w*|uninterested|averse|diet|stay away)\b",
    re.IGNORECASE,
)


class Critic(Protocol):
    """What answering needs of a preference critic (personalm.critic.PreferenceCritic has it)."""

    def score(self, preferences: Sequence[str], question: str, answers: Sequence[str]) -> np.ndarray:
        """P(answer respects all the stated preferences), one float in [0, 1] per answer."""


@dataclass(frozen=True)
class PreferenceSettings:
    """Whether answers follow the stated preferences, and from how many sampled candidates."""

    apply: bool = False
    candidates: int = DEFAULT_CANDIDATES

    def __post_init__(self) -> None:
        if not isinstance(self.apply, bool):
            raise PersonalmError(f"preferences apply {self.apply!r}: expected true or false")
        if isinstance(self.candidates, bool) or not isinstance(self.candidates, int):
            raise PersonalmError(f"preferences candidates {self.candidates!r}: expected an integer")
        if not 1 <= self.candidates <= MAX_CANDIDATES:
            raise PersonalmError(f"preferences candidates {self.candidates}: use 1 to {MAX_CANDIDATES}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PreferenceSettings:
        """Settings from stored or sent JSON; unknown keys are refused, not ignored."""
        if not isinstance(values, Mapping):
            raise PersonalmError(f"preferences {values!r}: expected an object with apply and candidates")
        unknown = sorted(set(values) - {"apply", "candidates"})
        if unknown:
            raise PersonalmError(f"preferences: unknown setting {unknown[0]!r} (expected apply, candidates)")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def avatar_settings(store, avatar: str) -> PreferenceSettings:
    """The avatar's stored default (off, 4 candidates, when none was set)."""
    return PreferenceSettings.from_dict(store.get_settings(avatar).get("preferences", {}))


def save_avatar_settings(store, avatar: str, settings: PreferenceSettings) -> None:
    store.set_settings(avatar, store.get_settings(avatar) | {"preferences": settings.to_dict()})


def is_preference(text: str) -> bool:
    """A first-person statement of a like, dislike, need or refusal ("I avoid dairy.", "My
    favourite colour is green.") rather than an event or a plain fact."""
    text = text.replace("\u2019", "'")
    return bool(FIRST_PERSON.search(text) and CUES.search(text))


def stated_preferences(recall: Recall, limit: int = MAX_PREFERENCES) -> list[str]:
    """The retrieved facts that state a preference, best retrieved first, at most `limit`."""
    return [h.memory.text for h in recall.facts if is_preference(h.memory.text)][:limit]


def with_preferences(messages: Sequence[Message], preferences: Sequence[str]) -> list[Message]:
    """A chat with the user's stated preferences in a system turn (a model served with memory)."""
    if not preferences:
        return list(messages)
    note = "What you remember about the user:\n" + "\n".join(f"- {p}" for p in preferences)
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": messages[0]["content"] + "\n\n" + note}, *messages[1:]]
    return [{"role": "system", "content": note}, *messages]


def load_critic(path: str | Path | None = None) -> Critic:
    """The trained critic at `path` (default PERSONALM_HOME/critic), or one error naming the fix."""
    from personalm.critic import PreferenceCritic, default_critic_dir

    folder = Path(path) if path else default_critic_dir()
    PreferenceCritic.check_dir(folder)  # a missing or foreign folder: an error that names `personalm critic train`
    try:
        return PreferenceCritic.load(folder)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise PersonalmError(f"the preference critic does not load ({err}); {TRAIN_HINT}", source=str(folder)) from None


@dataclass
class Choice:
    """The answer kept among the candidates, and why: the critic's scores and the preferences."""

    index: int
    answers: list[str]
    preferences: list[str]
    scores: list[float] | None = None  # None: nothing stated, the critic was not asked
    likelihoods: dict[int, float] = field(default_factory=dict)  # mean token log-prob of the tied ones

    @property
    def answer(self) -> str:
        return self.answers[self.index]

    def to_dict(self) -> dict[str, Any]:
        """The `preferences` field of a chat response."""
        return {
            "applied": self.preferences,
            "candidates": len(self.answers),
            "chosen": self.index,
            "scores": None if self.scores is None else [round(s, 4) for s in self.scores],
        }


def choose(
    critic: Critic | None,
    preferences: Sequence[str],
    question: str,
    answers: Sequence[str],
    likelihood: Callable[[list[int]], Sequence[float]],
) -> Choice:
    """The answer the critic ranks highest; `likelihood(indices)` (the model's mean token
    log-probability of those answers) is asked only to break a tie, or to decide alone when no
    preference is stated."""
    if not answers:
        raise PersonalmError("no candidate answers to choose from")
    preferences = list(preferences)
    scores = None
    tied = list(range(len(answers)))
    if preferences:
        if critic is None:
            raise PersonalmError(f"preferences are stated but no preference critic is loaded; {TRAIN_HINT}")
        scores = [float(s) for s in np.asarray(critic.score(preferences, question, list(answers)), dtype=float)]
        if len(scores) != len(answers) or not all(np.isfinite(scores)):
            raise PersonalmError(f"the critic returned {len(scores)} scores for {len(answers)} answers")
        best = max(scores)
        tied = [i for i, s in enumerate(scores) if best - s <= TIE]
    likelihoods: dict[int, float] = {}
    if len(tied) > 1:
        likelihoods = dict(zip(tied, (float(v) for v in likelihood(tied)), strict=True))
        tied = [max(tied, key=lambda i: (likelihoods[i], -i))]
    return Choice(tied[0], list(answers), preferences, scores, likelihoods)


def model_likelihood(model: TextModel, prompt: Prompt, answers: Sequence[str]) -> Callable[[list[int]], list[float]]:
    """Mean token log-probability of answers[i] as the reply to `prompt` (one score call)."""

    def score(indices: list[int]) -> list[float]:
        return [s.mean for s in model.score([prompt] * len(indices), [answers[i] for i in indices])]

    return score


def voice_likelihood(voice: TextModel, base: TextModel, prompt: Prompt,
                     answers: Sequence[str]) -> Callable[[list[int]], list[float]]:  # fmt: skip
    """Mean token log-likelihood ratio of answers[i] as the reply to `prompt`, the voice adapter's
    over the base model's (two score calls); an empty answer scores 0."""

    def score(indices: list[int]) -> list[float]:
        texts = [answers[i] for i in indices]
        mine, theirs = voice.score([prompt] * len(texts), texts), base.score([prompt] * len(texts), texts)
        return [(a.total - b.total) / max(len(a.logprobs), 1) for a, b in zip(mine, theirs, strict=True)]

    return score


def ranking_likelihood(model: TextModel, prompt: Prompt, answers: Sequence[str],
                       base: TextModel | None = None) -> Callable[[list[int]], list[float]]:  # fmt: skip
    """What breaks the critic's ties (and ranks alone with nothing stated): the voice likelihood
    when `base`, the voice adapter's base model, is given, else the model's own likelihood."""
    return model_likelihood(model, prompt, answers) if base is None else voice_likelihood(model, base, prompt, answers)


def turn_candidates(settings: PreferenceSettings, preferences: Sequence[str],
                    voice_candidates: int) -> tuple[list[str], int]:  # fmt: skip
    """What one avatar turn ranks by, for `AvatarChat.send` and the server's avatar chat alike: the
    stated preferences memory retrieved when answering follows them (else none), and how many
    candidates to sample: the preference setting's count when any are stated, else the voice's."""
    stated = list(preferences) if settings.apply else []
    return stated, settings.candidates if stated else voice_candidates


def candidate_count(preferences: Sequence[str], n: int, ranked: bool, greedy: bool) -> int:
    """How many of the n candidates to sample: all when there is something to rank them by (stated
    preferences, or with `ranked` a voice's likelihood), else one; one when decoding greedily (n
    copies of one answer)."""
    return n if (preferences or ranked) and not greedy else 1


def sample_candidates(model: TextModel, prompt: Prompt, params: SamplingParams, n: int) -> list[str]:
    """n answers in one generate call: identical prompts are seeded by their position, so the
    candidates differ and the same seed gives the same candidates. Greedy decoding would give n
    copies of one answer, so it samples one."""
    count = 1 if params.greedy else n
    return [g.text.strip() for g in model.generate([prompt] * count, params)]


def answer_with_preferences(
    model: TextModel,
    critic: Critic | None,
    prompt: Prompt,
    question: str,
    preferences: Sequence[str],
    params: SamplingParams,
    n: int,
    base: TextModel | None = None,
) -> Choice:
    """Sample n candidates for `prompt` and keep the one that best respects `preferences`; with
    none stated there is nothing to rank, and one answer is sampled as usual. With `base` (the
    model `model`'s voice adapter was trained from) the voice likelihood breaks ties, and decides
    among the n candidates when nothing is stated."""
    answers = sample_candidates(model, prompt, params, candidate_count(preferences, n, base is not None, params.greedy))
    return choose(critic, preferences, question, answers, ranking_likelihood(model, prompt, answers, base))
