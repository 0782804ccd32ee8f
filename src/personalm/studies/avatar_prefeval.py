"""Preference memory on PrefEval, the second half of `personalm avatar experiment`: does memory
make an avatar respect what the person said they prefer?

Each stated preference is stored among distractor memories (persona sentences of other people and
preferences from other topics); the later question retrieves the top 5; the four options, shuffled,
are scored by likelihood with the retrieved memories in context and without any. The retrieval
fusion and the option scorers (eval.prefeval.SCORERS) are chosen on validation questions that share
no question and no preference with the test questions.
"""

from __future__ import annotations

import csv
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from personalm.avatars.api import AvatarMemory
from personalm.avatars.ingest import memory_key
from personalm.avatars.retrieval import PLAIN_RRF, RRF_K, Fusion, hybrid_search
from personalm.avatars.store import NewMemory
from personalm.errors import PersonalmError
from personalm.eval.prefeval import SCORERS, Passes, PrefEvalItem, Question, accuracy, load_prefeval, scorer
from personalm.models.base import TextModel

if TYPE_CHECKING:
    from personalm.studies.avatar_experiment import ExperimentConfig, Log

RETRIEVED_FACTS = 5  # memories put in the context of a PrefEval question


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
    options in the order shown, the index of the right one, and the memories retrieved for it."""

    item: PrefEvalItem
    texts: list[str]
    options: list[str]
    answer: int
    avatar: str = ""
    ranked: list[str] = field(default_factory=list)


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


def prefeval_split(
    config: ExperimentConfig, items: list[PrefEvalItem]
) -> tuple[list[PrefCase], list[PrefCase], list[str]]:
    """Test cases exactly as every earlier run drew them (seed + 1), then validation cases drawn
    with seed + 2 from the items that share neither question nor preference with any test item;
    validation distractors come from those items too."""
    rng = random.Random(config.seed + 1)
    chosen = rng.sample(items, min(config.prefeval_items, len(items)))
    personas = persona_sentences(config.data, 400, rng)
    test = draw_cases(chosen, items, personas, config.distractors, rng)
    questions, preferences = {i.question for i in chosen}, {i.preference for i in chosen}
    free = [i for i in items if i.question not in questions and i.preference not in preferences]
    val_rng = random.Random(config.seed + 2)
    picked = val_rng.sample(free, min(config.prefeval_validation_items, len(free)))
    if not picked:
        raise PersonalmError(
            "no PrefEval items left for validation once the test items are drawn", source=str(config.data)
        )
    return test, draw_cases(picked, free, personas, config.distractors, val_rng), personas


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
        case.ranked = [h.memory.text for h in hits]
        ranks.append(case.ranked.index(case.item.preference) + 1 if case.item.preference in case.ranked else 0)
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


def questions_for(cases: list[PrefCase]) -> list[Question]:
    return [Question(c.item.question, c.options, c.ranked[:RETRIEVED_FACTS]) for c in cases]


def choose_scorers(model: TextModel, cases: list[PrefCase], log: Log) -> tuple[str, str, list[dict], Passes]:
    """Every scorer on validation, with and without memories; the best of each condition (ties:
    the earlier in SCORERS)."""
    passes = Passes(model, questions_for(cases), log)
    answers = [c.answer for c in cases]
    rows = []
    for s in SCORERS:
        with_memory, without = s.score(passes, True), s.score(passes, False)
        rows.append({"scorer": s.name, "description": s.description, "acc_memory": accuracy(with_memory, answers),
                     "acc_nomemory": None if without is None else accuracy(without, answers)})  # fmt: skip
    best_memory = max(rows, key=lambda r: r["acc_memory"])["scorer"]
    best_none = max((r for r in rows if r["acc_nomemory"] is not None), key=lambda r: r["acc_nomemory"])["scorer"]
    log(f"prefeval: scorer with memory {best_memory}, without memory {best_none} (chosen on validation)")
    return best_memory, best_none, rows, passes


def prefeval(config: ExperimentConfig, model: TextModel, memory: AvatarMemory, log: Log) -> dict:
    """Fusion and option scorers chosen on validation questions; the test questions are retrieved
    and scored once, with the chosen settings only."""
    items = load_prefeval(config.data / "prefeval" / "mcq_options")
    test, validation, personas = prefeval_split(config, items)
    pool = list(dict.fromkeys(personas + [i.preference for i in items]))
    log(f"prefeval: embedding {len(pool)} memories (preferences and distractors)")
    vectors = dict(zip(pool, memory.embed(pool), strict=True))
    val_questions = store_and_rank(memory, validation, vectors)
    test_questions = store_and_rank(memory, test, vectors)

    fusion, fusion_rows = choose_fusion(memory, validation, val_questions, log)
    retrieve(memory, validation, val_questions, fusion)
    memory_scorer, nomemory_scorer, scorer_rows, val_passes = choose_scorers(model, validation, log)

    test_retrieval = retrieve(memory, test, test_questions, fusion)
    log(f"prefeval: test, {len(test)} questions, recall@5 {test_retrieval['recall_at_5']:.2f}")
    test_passes = Passes(model, questions_for(test), log)
    answers = [c.answer for c in test]
    acc_memory = accuracy(scorer(memory_scorer).score(test_passes, True), answers)
    acc_nomemory = accuracy(scorer(nomemory_scorer).score(test_passes, False), answers)
    np.savez(config.out / "prefeval_scores.npz", test_answers=np.array(answers),
             validation_answers=np.array([c.answer for c in validation]),
             **val_passes.arrays("validation"), **test_passes.arrays("test"))  # fmt: skip
    return {
        "items": len(test),
        "distractors": config.distractors,
        "retrieved_facts": RETRIEVED_FACTS,
        "split": {
            "test": {"items": len(test), "seed": config.seed + 1},
            "validation": {"items": len(validation), "seed": config.seed + 2},
            "shared_questions": len({c.item.question for c in test} & {c.item.question for c in validation}),
            "shared_preferences": len(
                {c.item.preference for c in test} & {c.item.preference for c in validation}
            ),
        },
        "fusion": {"chosen": asdict(fusion), "label": fusion.label, "validation": fusion_rows},
        "scorers": {"validation": scorer_rows, "chosen_memory": memory_scorer, "chosen_nomemory": nomemory_scorer},
        "retrieval_recall_at_5": test_retrieval["recall_at_5"],
        "retrieval_mrr": test_retrieval["mrr"],
        "prefeval_acc_memory": acc_memory,
        "prefeval_acc_nomemory": acc_nomemory,
        "by_topic": sorted({c.item.topic for c in test}),
    }
