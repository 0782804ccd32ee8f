"""Preference memory on PrefEval through the whole avatar path, the second half of `personalm avatar
experiment`: does an avatar that remembers what the person prefers answer by it?

Only topics the preference critic never saw are tested (its meta["topics"]["test"]); its validation
topics choose the retrieval fusion and how many retrieved preferences the critic reads, so nothing is
tuned on a test topic.

Multiple choice. Each item's stated preference is stored as a fact in a fresh avatar memory among
distractor facts (persona sentences of other people and preferences of other topics). The avatar
chat's own rule (`AvatarChat.prepare`) retrieves the facts for the question and recognises the stated
preferences among them; `avatars.preferences.choose` then picks among the four shuffled options with
the critic conditioned on those preferences (ties: the model's mean token log-probability of the
option). Without memory nothing is stated, so the model's own likelihood chooses: the same `choose`
with no preferences.

Free answers. The model answers each test question with the retrieved preferences in its system turn
(a model served with memory), once plainly and once with preference-aware answering (the best of n
candidates by the critic). A different scorer than the critic judges whether an answer respects the
preference, so the critic is never graded by itself:

* embedding rule (default): the answer respects the preference when its mean MiniLM cosine to the
  respecting references (the item's respecting option, and its explanation of what a respecting
  answer does) is higher than its mean cosine to the three violating options. It is validated on the
  options themselves, each judged with itself left out of the references: the respecting option must
  come out respecting, each violating option violating (`judge_validation` in the results). The
  rule was picked among eight (nearest or mean reference, with or without the explanation or the
  preference, MiniLM cosine or word overlap) by that leave-self-out balanced accuracy on the options
  of the critic's train and validation topics (0.61; the next best 0.60), never on its test topics;
* `--judge MODEL`: an LLM asked whether the answer respects the preference (log P(Yes) vs log P(No)).

Every rate carries a 95% bootstrap interval; memory vs no memory and preference-aware vs plain are
paired differences over the same items (eval.bootstrap.paired_bootstrap).
"""

from __future__ import annotations

import csv
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from personalm.avatars.api import AvatarMemory
from personalm.avatars.chat import AvatarChat
from personalm.avatars.ingest import memory_key
from personalm.avatars.preferences import (
    MAX_PREFERENCES,
    Critic,
    PreferenceSettings,
    choose,
    model_likelihood,
    with_preferences,
)
from personalm.avatars.retrieval import PLAIN_RRF, RRF_K, Fusion, hybrid_search
from personalm.avatars.store import NewMemory
from personalm.errors import PersonalmError
from personalm.eval.bootstrap import bootstrap_mean, paired_bootstrap
from personalm.eval.prefeval import PrefEvalItem, load_prefeval
from personalm.models.base import Message, SamplingParams, TextModel

if TYPE_CHECKING:
    from personalm.studies.avatar_experiment import ExperimentConfig, Log

RETRIEVED_FACTS = 5  # facts the avatar chat retrieves for a message (AvatarChat's default)
PREFERENCE_LIMITS = (MAX_PREFERENCES, 3, 2, 1)  # retrieved preferences the critic reads; ties: the first
JUDGE_PROMPT = """A user stated this preference: "{preference}"
The user then asked: "{question}"
An assistant answered: "{answer}"
Does the answer respect the user's preference? Answer Yes or No."""


def persona_sentences(data: Path, limit: int, rng: random.Random) -> list[str]:
    path = data / "persona_chat" / "valid.csv"
    if not path.is_file():
        raise PersonalmError("persona_chat/valid.csv not found (distractor memories)", source=str(path))
    with open(path, encoding="utf-8", newline="") as handle:
        lines = {
            line.strip()
            for row in csv.DictReader(handle)
            for column in ("user 1 personas", "user 2 personas")
            for line in (row.get(column) or "").splitlines()
            if len(line.strip()) > 10
        }
    return rng.sample(sorted(lines), min(limit, len(lines)))


@dataclass
class PrefCase:
    """One PrefEval question as stored and asked: the memories stored with its preference, the
    options in the order shown, the index of the right one, and what the avatar chat retrieved:
    the facts, the stated preferences among them, and its prompt."""

    item: PrefEvalItem
    texts: list[str]
    options: list[str]
    answer: int
    avatar: str = ""
    ranked: list[str] = field(default_factory=list)
    preferences: list[str] = field(default_factory=list)
    prompt: list[Message] = field(default_factory=list)


def draw_cases(
    chosen: list[PrefEvalItem], hard_pool: list[PrefEvalItem], personas: list[str], distractors: int, rng: random.Random
) -> list[PrefCase]:
    """Per question: 10 preferences of other topics and the rest persona sentences as distractors,
    and the options shuffled (in this order of draws, so a seed always gives the same cases)."""
    cases = []
    for item in chosen:
        others = [i.preference for i in hard_pool if i.topic != item.topic]
        hard = rng.sample(others, min(10, len(others)))
        texts = [item.preference, *rng.sample(personas, distractors - len(hard)), *hard]
        shuffled = list(range(4))
        rng.shuffle(shuffled)
        options = [item.options[i] for i in shuffled]
        cases.append(PrefCase(item, texts, options, shuffled.index(0)))
    return cases


def critic_topics(critic: Critic, items: list[PrefEvalItem], source: str) -> dict[str, list[str]]:
    """The critic's validation and test topics, each present in the data; the test topics must be
    ones it never trained on."""
    topics = (getattr(critic, "meta", None) or {}).get("topics") or {}
    test, validation, train = (list(topics.get(k) or []) for k in ("test", "validation", "train"))
    present = {i.topic for i in items}
    if not test:
        raise PersonalmError("the preference critic names no test topics (meta['topics']['test']); retrain it")
    if set(test) & set(train):
        raise PersonalmError(f"the critic trained on test topics {sorted(set(test) & set(train))}; retrain it")
    missing = [t for t in test + validation if t not in present]
    if missing:
        raise PersonalmError(
            f"the critic's topics {missing} are not in this data (it has {sorted(present)}); train the critic on "
            "this folder's topics (`personalm critic train --data DIR`)",
            source=source,
        )
    if not validation:
        raise PersonalmError("the preference critic names no validation topics (meta['topics']['validation'])")
    return {"test": test, "validation": validation, "train": train}


def prefeval_split(
    config: ExperimentConfig, items: list[PrefEvalItem], topics: dict[str, list[str]]
) -> tuple[list[PrefCase], list[PrefCase], list[str]]:
    """Test cases from the critic's test topics (seed + 1; all of them unless prefeval_items caps
    it) and validation cases from its validation topics (seed + 2); distractor preferences come
    from any other topic."""
    rng = random.Random(config.seed + 1)
    pool = [i for i in items if i.topic in topics["test"]]
    chosen = rng.sample(pool, min(config.prefeval_items, len(pool))) if config.prefeval_items else pool
    personas = persona_sentences(config.data, 400, rng)
    test = draw_cases(chosen, items, personas, config.distractors, rng)
    val_rng = random.Random(config.seed + 2)
    val_pool = [i for i in items if i.topic in topics["validation"]]
    picked = val_rng.sample(val_pool, min(config.prefeval_validation_items, len(val_pool)))
    return test, draw_cases(picked, items, personas, config.distractors, val_rng), personas


def store_and_rank(memory: AvatarMemory, cases: list[PrefCase], vectors: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Each case's memories into its own avatar (one per exact memory set); the question vectors."""
    for case in cases:
        case.avatar = "prefeval-" + memory_key("prefeval", "\n".join(case.texts))[:24]
        memory.store.add(case.avatar, [NewMemory("fact", t, memory_key("fact", t), vectors[t]) for t in case.texts])
    return list(memory.embed([c.item.question for c in cases]))


def retrieve(memory: AvatarMemory, cases: list[PrefCase], questions: list[np.ndarray], fusion: Fusion) -> dict:
    """Rank every case's memories with `fusion`; recall@5 and mean reciprocal rank of the preference."""
    ranks = []
    for case, vector in zip(cases, questions, strict=True):
        hits = hybrid_search(memory.store, case.avatar, case.item.question, vector, len(case.texts), ("fact",),
                             fusion=fusion)  # fmt: skip
        ranked = [h.memory.text for h in hits]
        ranks.append(ranked.index(case.item.preference) + 1 if case.item.preference in ranked else 0)
    return {
        "recall_at_5": float(np.mean([0 < r <= RETRIEVED_FACTS for r in ranks])),
        "mrr": float(np.mean([1 / r if r else 0.0 for r in ranks])),
    }


def fusion_grid() -> list[Fusion]:
    """Plain RRF first (it wins ties), then dense:keyword weight ratios x rank offsets, and each
    list alone. Only the ratio of the weights matters, so the keyword weight stays 1."""
    grid = [PLAIN_RRF]
    for k in (5, 10, 20, 60):
        grid += [
            Fusion(1.0, dense, k) for dense in (0.5, 1.0, 2.0, 3.0, 5.0, 8.0) if Fusion(1.0, dense, k) != PLAIN_RRF
        ]
    return grid + [Fusion(1.0, 0.0, RRF_K), Fusion(0.0, 1.0, RRF_K)]


def choose_fusion(memory: AvatarMemory, cases: list[PrefCase], questions: list[np.ndarray], log: Log) -> tuple:
    """The fusion with the best validation recall@5 (then reciprocal rank; then the earlier in the grid)."""
    rows = [{"keyword": f.keyword, "dense": f.dense, "k": f.k, **retrieve(memory, cases, questions, f)}
            for f in fusion_grid()]  # fmt: skip
    best = max(range(len(rows)), key=lambda i: (rows[i]["recall_at_5"], rows[i]["mrr"], -i))
    chosen = Fusion(rows[best]["keyword"], rows[best]["dense"], rows[best]["k"])
    log(f"prefeval: fusion {chosen.label} (validation recall@5 {rows[best]['recall_at_5']:.2f})")
    return chosen, rows


def recall_cases(memory: AvatarMemory, model: TextModel, cases: list[PrefCase], fusion: Fusion) -> float:
    """The avatar chat's retrieval and preference rule for each question (every question gets a
    prompt: a multiple-choice question has no "I don't know"); returns recall@5 of the preference."""
    for case in cases:
        talk = AvatarChat(memory, case.avatar, model, preferences=PreferenceSettings(), min_support=0.0, fusion=fusion)
        prepared = talk.prepare(case.item.question)
        case.ranked = [h.memory.text for h in prepared.recall.facts]
        case.preferences = prepared.preferences
        case.prompt = prepared.messages or talk.compose(case.item.question, prepared.recall)
    return float(np.mean([c.item.preference in c.ranked for c in cases])) if cases else 0.0


def question_chat(case: PrefCase) -> list[Message]:
    return [{"role": "user", "content": case.item.question}]


def bare_likelihoods(model: TextModel, cases: list[PrefCase]) -> np.ndarray:
    """The model's mean token log-probability of every option (one row per question) as the reply
    to the bare question, in one score call: the choice without memory."""
    if not cases:
        return np.zeros((0, 4))
    scores = model.score([question_chat(c) for c in cases for _ in range(4)], [o for c in cases for o in c.options])
    return np.array([s.mean for s in scores]).reshape(len(cases), 4)


class PromptLikelihoods:
    """The model's mean token log-probability of options as the reply to the avatar's prompt,
    computed only for the options a choice asks about (critic ties) and kept."""

    def __init__(self, model: TextModel):
        self.model = model
        self.kept: dict[tuple[int, int], float] = {}

    def __call__(self, position: int, case: PrefCase) -> Callable[[list[int]], list[float]]:
        def score(indices: list[int]) -> list[float]:
            missing = [i for i in indices if (position, i) not in self.kept]
            if missing:
                found = model_likelihood(self.model, case.prompt, case.options)(missing)
                self.kept.update(((position, i), v) for i, v in zip(missing, found, strict=True))
            return [self.kept[(position, i)] for i in indices]

        return score


def multiple_choice(
    critic: Critic, cases: list[PrefCase], limit: int, likelihoods: PromptLikelihoods | np.ndarray
) -> np.ndarray:
    """1.0 where the option chosen is the one that respects the preference. With memory
    (`PromptLikelihoods`), the critic chooses on the first `limit` retrieved preferences (ties: the
    likelihoods); without (an array of bare-question likelihoods), nothing is stated and the
    likelihoods alone choose."""
    memory = isinstance(likelihoods, PromptLikelihoods)
    right = []
    for position, case in enumerate(cases):
        if memory:
            stated, likelihood = case.preferences[:limit], likelihoods(position, case)
        else:
            stated, likelihood = [], lambda indices, row=likelihoods[position]: row[indices]
        picked = choose(critic, stated, case.item.question, case.options, likelihood)
        right.append(float(picked.index == case.answer))
    return np.array(right)


def choose_limit(critic: Critic, model: TextModel, cases: list[PrefCase], log: Log) -> tuple[int, list[dict]]:
    """How many retrieved preferences the critic reads: the best validation accuracy (ties: more)."""
    likelihoods = PromptLikelihoods(model)
    rows = [{"preferences": k, "acc_memory": float(multiple_choice(critic, cases, k, likelihoods).mean())}
            for k in PREFERENCE_LIMITS]  # fmt: skip
    best = max(rows, key=lambda r: r["acc_memory"])
    log(
        f"prefeval: the critic reads the top {best['preferences']} retrieved preferences "
        f"(validation accuracy {best['acc_memory']:.3f})"
    )
    return best["preferences"], rows


def rate(values: Sequence[float], seed: int) -> dict[str, Any]:
    """A share with its 95% percentile bootstrap interval (the items resampled)."""
    boot = bootstrap_mean(values, seed=seed)
    return {"mean": boot.mean, "ci": [boot.low, boot.high], "n": boot.n}


def difference(a: Sequence[float], b: Sequence[float], seed: int) -> dict[str, Any]:
    boot = paired_bootstrap(a, b, seed=seed)
    return {"mean": boot.mean, "ci": [boot.low, boot.high], "share_above_zero": boot.share_above_zero, "n": boot.n}


class EmbeddingJudge:
    """Respects when nearer on average (MiniLM cosine) to the respecting references (the respecting
    option, the item's explanation) than to the violating options."""

    name = "embedding rule (mean MiniLM cosine to respecting vs violating references)"

    def __init__(self, embed: Callable[[list[str]], np.ndarray]):
        self.embed = embed

    def _respects(self, answers: list[str], good: list[list[str]], bad: list[list[str]]) -> np.ndarray:
        texts = list(dict.fromkeys(answers + [t for refs in good + bad for t in refs]))
        vectors = dict(zip(texts, self.embed(texts), strict=True))
        out = []
        for answer, respecting, violating in zip(answers, good, bad, strict=True):
            near = [float(vectors[answer] @ vectors[r]) for r in respecting]
            far = [float(vectors[answer] @ vectors[v]) for v in violating]
            out.append(float(np.mean(near)) > float(np.mean(far)) if near and far else False)
        return np.array(out, dtype=float)

    def respects(self, cases: list[PrefCase], answers: list[str]) -> np.ndarray:
        good = [[c.item.options[0], *([c.item.explanation] if c.item.explanation else [])] for c in cases]
        return self._respects(answers, good, [c.item.options[1:] for c in cases])

    def validate(self, cases: list[PrefCase]) -> dict[str, Any]:
        """The rule on the options themselves, each left out of its own references."""
        usable = [c for c in cases if c.item.explanation]
        answers, good, bad, truth = [], [], [], []
        for case in usable:
            respecting, violating = case.item.options[0], case.item.options[1:]
            rows = [(respecting, [case.item.explanation], violating, 1.0)]
            rows += [(v, [respecting, case.item.explanation], [w for w in violating if w != v], 0.0) for v in violating]
            for answer, near, far, right in rows:
                answers.append(answer)
                good.append(near)
                bad.append(far)
                truth.append(right)
        judged = self._respects(answers, good, bad) if answers else np.zeros(0)
        truth_array = np.array(truth)
        respecting = judged[truth_array == 1.0]
        violating = 1.0 - judged[truth_array == 0.0]
        return {
            "judge": self.name,
            "items": len(usable),
            "respecting_options_judged_respecting": float(respecting.mean()) if len(respecting) else None,
            "violating_options_judged_violating": float(violating.mean()) if len(violating) else None,
            "balanced_accuracy": float((respecting.mean() + violating.mean()) / 2) if len(respecting) else None,
        }


class ModelJudge:
    """An LLM asked whether the answer respects the stated preference: log P(Yes) > log P(No)."""

    def __init__(self, model: TextModel):
        self.model, self.name = model, f"LLM judge {model.model_id}"

    def respects(self, cases: list[PrefCase], answers: list[str]) -> np.ndarray:
        prompts = [[{"role": "user", "content": JUDGE_PROMPT.format(preference=c.item.preference,
                                                                    question=c.item.question, answer=a)}]
                   for c, a in zip(cases, answers, strict=True)]  # fmt: skip
        scores = self.model.score([p for p in prompts for _ in (0, 1)], ["Yes", "No"] * len(prompts))
        totals = np.array([s.total for s in scores]).reshape(-1, 2)
        return (totals[:, 0] > totals[:, 1]).astype(float)

    def validate(self, cases: list[PrefCase]) -> dict[str, Any]:
        options = [(c, o, float(i == 0)) for c in cases for i, o in enumerate(c.item.options)]
        judged = self.respects([c for c, _, _ in options], [o for _, o, _ in options])
        truth = np.array([t for _, _, t in options])
        respecting, violating = judged[truth == 1.0].mean(), (1.0 - judged[truth == 0.0]).mean()
        return {"judge": self.name, "items": len(cases), "respecting_options_judged_respecting": float(respecting),
                "violating_options_judged_violating": float(violating),
                "balanced_accuracy": float((respecting + violating) / 2)}  # fmt: skip


def free_answers(
    model: TextModel, critic: Critic, cases: list[PrefCase], limit: int, candidates: int, params: SamplingParams
) -> tuple[list[str], list[str]]:
    """Plain and preference-aware answers with every retrieved stated preference in the system turn
    (as the avatar chat shows the model every retrieved fact); the critic reads the first `limit`.
    The candidates of every question come from one generate call (candidate i of a question is its
    i-th identical prompt, so candidate 0 is the plain answer); the critic keeps one per question."""
    prompts = [with_preferences(question_chat(c), c.preferences) for c in cases]
    texts = [g.text.strip() for g in model.generate([p for p in prompts for _ in range(candidates)], params)]
    plain, aware = [], []
    for i, (case, prompt) in enumerate(zip(cases, prompts, strict=True)):
        answers = texts[i * candidates : (i + 1) * candidates]
        picked = choose(critic, case.preferences[:limit], case.item.question, answers,
                        model_likelihood(model, prompt, answers))  # fmt: skip
        plain.append(answers[0])
        aware.append(picked.answer)
    return plain, aware


def prefeval(
    config: ExperimentConfig,
    model: TextModel,
    memory: AvatarMemory,
    critic: Critic,
    log: Log,
    judge_model: TextModel | None = None,
) -> dict:
    """Fusion and the number of preferences the critic reads chosen on the critic's validation
    topics; the test topics' questions are retrieved and answered once, with those settings."""
    source = str(config.data / "prefeval" / "mcq_options")
    items = load_prefeval(source)
    topics = critic_topics(critic, items, source)
    test, validation, personas = prefeval_split(config, items, topics)
    log(f"prefeval: {len(test)} test questions on the critic's unseen topics {topics['test']}, "
        f"{len(validation)} validation questions on {topics['validation']}")  # fmt: skip
    pool = list(dict.fromkeys(personas + [i.preference for i in items]))
    log(f"prefeval: embedding {len(pool)} memories (preferences and distractors)")
    vectors = dict(zip(pool, memory.embed(pool), strict=True))
    val_questions = store_and_rank(memory, validation, vectors)
    test_questions = store_and_rank(memory, test, vectors)

    fusion, fusion_rows = choose_fusion(memory, validation, val_questions, log)
    recall_cases(memory, model, validation, fusion)
    limit, limit_rows = choose_limit(critic, model, validation, log)

    test_retrieval = retrieve(memory, test, test_questions, fusion)
    recall_at_5 = recall_cases(memory, model, test, fusion)
    log(f"prefeval: test recall@5 {recall_at_5:.2f}; choosing among the options")
    with_memory = multiple_choice(critic, test, limit, PromptLikelihoods(model))
    without = multiple_choice(critic, test, limit, bare_likelihoods(model, test))

    judge = ModelJudge(judge_model) if judge_model is not None else EmbeddingJudge(memory.embed)
    free = test[: config.free_items] if config.free_items else test
    params = SamplingParams(max_tokens=config.max_tokens, temperature=config.candidate_temperature, top_p=0.9,
                            seed=config.seed)  # fmt: skip
    log(
        f"prefeval: free answers to {len(free)} questions ({config.candidates} candidates each), judged by {judge.name}"
    )
    plain, aware = free_answers(model, critic, free, limit, config.candidates, params)
    plain_ok, aware_ok = judge.respects(free, plain), judge.respects(free, aware)
    seed = config.seed
    acc_memory, acc_none = rate(with_memory, seed), rate(without, seed)
    return {
        "items": len(test),
        "validation_items": len(validation),
        "topics": topics,
        "distractors": config.distractors,
        "retrieved_facts": RETRIEVED_FACTS,
        "fusion": {"chosen": asdict(fusion), "label": fusion.label, "validation": fusion_rows},
        "preferences_read": {"chosen": limit, "validation": limit_rows},
        "retrieval_recall_at_5": recall_at_5,
        "retrieval_mrr": test_retrieval["mrr"],
        "retrieved_preferences_mean": float(np.mean([len(c.preferences[:limit]) for c in test])),
        "prefeval_acc_memory": acc_memory["mean"],
        "prefeval_acc_memory_ci": acc_memory["ci"],
        "prefeval_acc_nomemory": acc_none["mean"],
        "prefeval_acc_nomemory_ci": acc_none["ci"],
        "prefeval_acc_difference": difference(with_memory, without, seed),
        "by_topic": {
            t: {
                "items": int(sum(c.item.topic == t for c in test)),
                "acc_memory": float(np.mean([r for c, r in zip(test, with_memory, strict=True) if c.item.topic == t])),
                "acc_nomemory": float(np.mean([r for c, r in zip(test, without, strict=True) if c.item.topic == t])),
            }
            for t in sorted({c.item.topic for c in test})
        },  # fmt: skip
        "free_answers": {
            "items": len(free),
            "candidates": config.candidates,
            "temperature": config.candidate_temperature,
            "max_tokens": config.max_tokens,
            "judge": judge.name,
            "judge_validation": judge.validate(free),
            "respect_plain": rate(plain_ok, seed),
            "respect_preferences": rate(aware_ok, seed),
            "difference": difference(aware_ok, plain_ok, seed),
            "examples": [
                {
                    "preference": c.item.preference,
                    "question": c.item.question,
                    "plain": p,
                    "preference_aware": a,
                    "plain_respects": bool(po),
                    "preference_aware_respects": bool(ao),
                }
                for c, p, a, po, ao in list(zip(free, plain, aware, plain_ok, aware_ok, strict=True))[:8]
            ],  # fmt: skip
        },
    }
