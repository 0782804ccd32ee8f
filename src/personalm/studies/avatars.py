"""`personalm avatar experiment`: does retrieval make an avatar sound like *this* person, and
does memory make it respect what the person said they prefer?

(a) Likeness on the speeches: per person, memory = speeches before a date cutoff (the first
    `memory_fraction` of them by date); prompts = opening sentences of passages from the later,
    held-out speeches. Three answers per prompt from the same model: avatar with retrieval
    (profile + verbatim exemplars), no retrieval (name only), profile only. A stylometric
    classifier (character n-gram TF-IDF + logistic regression) trained on the memory-period text
    of all persons attributes every answer to a person; we report attribution accuracy and MiniLM
    similarity to the real continuation, plus how much of the RAG answers is copied from the
    retrieved exemplars (8-gram overlap), so a copying avatar cannot pass unnoticed.
(b) Preference memory on PrefEval: each stated preference is stored among distractor memories
    (persona sentences of other people and preferences from other topics); the later question
    retrieves the top 5; the four options, shuffled, are scored by mean token log-likelihood with
    the retrieved memories in context and without any.
"""

from __future__ import annotations

import csv
import json
import math
import random
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from personalm import report
from personalm.avatars.adapter_data import continue_message
from personalm.avatars.api import AvatarMemory
from personalm.avatars.chat import system_prompt
from personalm.avatars.chunking import Chunking, chunk_text, sentences
from personalm.avatars.ingest import memory_key
from personalm.avatars.option_scoring import SCORERS, Passes, Question, accuracy, scorer
from personalm.avatars.profile import clean_profile, display_name, keyword_profile, profile_prompt
from personalm.avatars.retrieval import PLAIN_RRF, RRF_K, Fusion, Recall, hybrid_search
from personalm.avatars.sources import DATE_PREFIX, read_source
from personalm.avatars.sqlite_store import SQLiteStore
from personalm.avatars.store import NewMemory, Profile, SourceRecord
from personalm.errors import PersonalmError
from personalm.models.base import SamplingParams, TextModel

CONDITIONS = ("rag", "norag", "profile")
RETRIEVED_FACTS = 5  # memories put in the context of a PrefEval question
LABELS = {"rag": "avatar with retrieval", "norag": "same model, no retrieval", "profile": "profile only"}


@dataclass
class ExperimentConfig:
    data: Path
    out: Path
    model: str | None = None
    persons: int = 0  # 0: every person with at least 3 speeches
    memory_fraction: float = 0.75
    memory_chunks: int = 300
    classifier_chunks: int = 400
    prompts_per_person: int = 4
    exemplars: int = 3
    max_tokens: int = 64
    temperature: float = 0.5
    prefeval_items: int = 100
    prefeval_validation_items: int = 100
    distractors: int = 50
    seed: int = 0
    prefeval_only: bool = False  # reuse the likeness part of OUT/results.json, rerun PrefEval only


Log = Callable[[str], None]


# ---------------------------------------------------------------- likeness on speeches


@dataclass
class Prompt:
    person: str
    cue: str
    reference: str
    date: str


def speech_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.txt") if DATE_PREFIX.match(p.name))


def split_person(files: list[Path], fraction: float) -> tuple[list[Path], list[Path]]:
    """Memory = the first `fraction` of the speeches by date (at least one held out)."""
    cut = min(len(files) - 1, max(1, math.ceil(len(files) * fraction)))
    return files[:cut], files[cut:]


def spread(items: list, n: int) -> list:
    """n items spread evenly over the list (all of them when it is shorter)."""
    if len(items) <= n:
        return list(items)
    return [items[int(i * len(items) / n)] for i in range(n)]


def person_chunks(files: list[Path], chunking: Chunking) -> list[tuple[str, float | None]]:
    out = []
    for path in files:
        source = read_source(path, set())
        out.extend((chunk, turn.ts) for turn in source.turns if turn.own for chunk in chunk_text(turn.text, chunking))
    return out


def held_out_prompts(person: str, files: list[Path], n: int, rng: random.Random) -> list[Prompt]:
    """Passages of the held-out speeches: the first sentence is the cue, the rest the reference."""
    candidates = []
    for path in files:
        for chunk, _ in person_chunks([path], Chunking(400, 0.0)):
            parts = sentences(chunk)
            if len(parts) >= 2 and 40 <= len(parts[0]) <= 200 and len(" ".join(parts[1:])) >= 120:
                candidates.append(Prompt(person, parts[0], " ".join(parts[1:]), path.name[:10]))
    return rng.sample(candidates, min(n, len(candidates)))


def passage_turns(recall: Recall) -> tuple[list[dict], Recall]:
    """Retrieved passages as worked examples of the task (cue → the person's own continuation),
    and the one-sentence ones left to quote in the system prompt."""
    turns, quotes = [], []
    for hit in recall.exemplars:
        parts = sentences(hit.memory.text)
        if len(parts) < 2:
            quotes.append(hit)
            continue
        turns += [
            {"role": "user", "content": continue_message(parts[0])},
            {"role": "assistant", "content": " ".join(parts[1:])},
        ]
    return turns, Recall(exemplars=quotes)


def ngrams(text: str, n: int = 8) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def copy_rate(output: str, sources: list[str]) -> float:
    """Fraction of the output's word 8-grams found verbatim in the sources."""
    grams = ngrams(output)
    if not grams:
        return 0.0
    pool = set().union(*(ngrams(s) for s in sources)) if sources else set()
    return len(grams & pool) / len(grams)


def train_attributor(texts: list[str], labels: list[str], seed: int):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    classifier = make_pipeline(
        TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True, min_df=2, max_features=300_000),
        LogisticRegression(max_iter=2000, C=10.0, random_state=seed),
    )
    return classifier.fit(texts, labels)


def build_memories(memory: AvatarMemory, persons: dict[str, list[Path]], config: ExperimentConfig, log: Log) -> None:
    """Each person's memory-period chunks (evenly spread, capped) into their avatar; a person
    already stored with the same settings is skipped, so a re-run resumes."""
    for person, files in persons.items():
        key = memory_key("experiment", f"{person}:{[p.name for p in files]}:{config.memory_chunks}")
        if memory.store.has_source(person, key):
            continue
        chunks = spread(person_chunks(files, Chunking()), config.memory_chunks)
        log(f"memory: embedding {len(chunks)} chunks of {person}")
        vectors = memory.embed([c for c, _ in chunks])
        memories = [
            NewMemory("utterance", c, memory_key("utterance", c), v, source=key, ts=ts)
            for (c, ts), v in zip(chunks, vectors, strict=True)
        ]
        memory.store.add(person, memories, SourceRecord(key, str(files[0].parent), len(memories)))


def write_profiles(memory: AvatarMemory, persons: list[str], model: TextModel, seed: int) -> dict[str, str]:
    """Text-to-persona profiles of all persons in one batch (stored with each avatar)."""
    from personalm.avatars.profile import sample_utterances

    profiles = {}
    todo = [p for p in persons if memory.store.get_profile(p) is None]
    samples = {p: sample_utterances(memory, p) for p in todo}
    replies = model.generate(
        [[{"role": "user", "content": profile_prompt(display_name(p), samples[p], [])}] for p in todo],
        SamplingParams(max_tokens=160, seed=seed),
    )
    for person, reply in zip(todo, replies, strict=True):
        text = clean_profile(reply.text, display_name(person))
        profile = Profile(
            text or keyword_profile(display_name(person), samples[person], []),
            memory.count(person),
            extra={"model": model.model_id, "facts": 0, "from_model": text is not None},
        )
        memory.store.set_profile(person, profile)
    for person in persons:
        profiles[person] = memory.store.get_profile(person).text
    return profiles


def answer_prompt(condition: str, prompt: Prompt, profile: str, recall: Recall) -> list[dict]:
    """The chat each condition sends: the avatar (profile + retrieved passages as few-shot turns),
    the bare model told whom to be, or the profile alone."""
    who = display_name(prompt.person)
    ask = {"role": "user", "content": continue_message(prompt.cue)}
    if condition == "rag":
        turns, quotes = passage_turns(recall)
        return [{"role": "system", "content": system_prompt(who, profile, quotes)}, *turns, ask]
    return [
        {"role": "system", "content": system_prompt(who, profile if condition == "profile" else None, Recall())},
        ask,
    ]


def likeness(config: ExperimentConfig, model: TextModel, memory: AvatarMemory, log: Log) -> dict:
    rng = random.Random(config.seed)
    root = config.data / "speeches"
    if not root.is_dir():
        raise PersonalmError("speeches folder not found (set --data or PERSONALM_DATA)", source=str(root))
    folders = sorted(p for p in root.iterdir() if p.is_dir() and len(speech_files(p)) >= 3)
    if config.persons:
        folders = folders[: config.persons]
    if len(folders) < 2:
        raise PersonalmError("need at least two persons with three or more speeches each", source=str(root))
    split = {f.name: split_person(speech_files(f), config.memory_fraction) for f in folders}
    build_memories(memory, {p: mem for p, (mem, _) in split.items()}, config, log)

    log("likeness: training the stylometric attributor on memory-period text")
    texts, labels = [], []
    for person, (mem_files, _) in split.items():
        chunks = spread([c for c, _ in person_chunks(mem_files, Chunking())], config.classifier_chunks)
        texts += chunks
        labels += [person] * len(chunks)
    attributor = train_attributor(texts, labels, config.seed)

    prompts = [
        p for person, (_, held) in split.items() for p in held_out_prompts(person, held, config.prompts_per_person, rng)
    ]
    log(f"likeness: {len(prompts)} held-out prompts from {len(split)} persons; writing profiles")
    profiles = write_profiles(memory, list(split), model, config.seed)
    recalls = []
    for prompt in prompts:
        vector = memory.embed([prompt.cue])[0]
        hits = hybrid_search(memory.store, prompt.person, prompt.cue, vector, config.exemplars, ("utterance",))
        recalls.append(Recall(exemplars=hits))
    params = SamplingParams(max_tokens=config.max_tokens, temperature=config.temperature, top_p=0.9, seed=config.seed)
    outputs: dict[str, list[str]] = {}
    for condition in CONDITIONS:
        log(f"likeness: generating {len(prompts)} answers ({LABELS[condition]})")
        batch = [answer_prompt(condition, p, profiles[p.person], r) for p, r in zip(prompts, recalls, strict=True)]
        # An answer that repeats the cue would be credited with the real person's words: cut it.
        outputs[condition] = [
            g.text.replace(p.cue, " ").strip() for g, p in zip(model.generate(batch, params), prompts, strict=True)
        ]

    truth = [p.person for p in prompts]
    references = [p.reference for p in prompts]
    ref_vectors = memory.embed(references)
    result: dict = {"persons": len(split), "prompts": len(prompts), "per_person": {}}
    real_pred = attributor.predict(references)
    result["attribution_acc_real"] = float(np.mean(real_pred == np.array(truth)))
    for condition in CONDITIONS:
        texts_out = [o or "." for o in outputs[condition]]
        predicted = attributor.predict(texts_out)
        correct = predicted == np.array(truth)
        similarity = np.sum(memory.embed(texts_out) * ref_vectors, axis=1)
        result[f"attribution_acc_{condition}"] = float(correct.mean())
        result[f"similarity_{condition}"] = float(similarity.mean())
        for person in split:
            mask = np.array(truth) == person
            if mask.any():
                row = result["per_person"].setdefault(person, {"prompts": int(mask.sum())})
                row[f"acc_{condition}"] = float(correct[mask].mean())
                row[f"sim_{condition}"] = float(similarity[mask].mean())
    result["rag_copy_rate"] = float(
        np.mean(
            [copy_rate(o, [h.memory.text for h in r.exemplars]) for o, r in zip(outputs["rag"], recalls, strict=True)]
        )
    )
    result["examples"] = [
        {"person": p.person, "date": p.date, "cue": p.cue, "reference": p.reference[:300],
         **{c: outputs[c][i] for c in CONDITIONS}}
        for i, p in enumerate(prompts[:: max(1, len(prompts) // 6)][:6])
    ]  # fmt: skip
    result["split"] = {
        p: {"memory_speeches": len(m), "held_out_speeches": len(h), "cutoff": h[0].name[:10]}
        for p, (m, h) in split.items()
    }
    return result


# ---------------------------------------------------------------- preference memory (PrefEval)


def load_prefeval(data: Path) -> list[dict]:
    folder = data / "prefeval" / "mcq_options"
    files = sorted(folder.glob("*.json"))
    if not files:
        raise PersonalmError("no PrefEval files (prefeval/mcq_options/*.json)", source=str(folder))
    items = []
    for path in files:
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise PersonalmError(f"not readable JSON ({err})", source=str(path)) from None
        for row in rows:
            options = row.get("classification_task_options") or []
            if isinstance(row.get("preference"), str) and isinstance(row.get("question"), str) and len(options) == 4:
                items.append({"topic": path.stem, **row})
    return items


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

    item: dict
    texts: list[str]
    options: list[str]
    answer: int
    avatar: str = ""
    ranked: list[str] = field(default_factory=list)


def draw_cases(
    chosen: list[dict], hard_pool: list[dict], personas: list[str], distractors: int, rng: random.Random
) -> list[PrefCase]:
    """Per question: 10 preferences of other topics and the rest persona sentences as distractors,
    and the options shuffled (in this order of draws, so a seed always gives the same cases)."""
    cases = []
    for item in chosen:
        others = [i["preference"] for i in hard_pool if i["topic"] != item["topic"]]
        hard = rng.sample(others, min(10, len(others)))
        texts = [item["preference"], *rng.sample(personas, distractors - len(hard)), *hard]
        shuffled = list(range(4))
        rng.shuffle(shuffled)
        options = [item["classification_task_options"][i] for i in shuffled]
        cases.append(PrefCase(item, texts, options, shuffled.index(0)))
    return cases


def prefeval_split(config: ExperimentConfig, items: list[dict]) -> tuple[list[PrefCase], list[PrefCase], list[str]]:
    """Test cases exactly as every earlier run drew them (seed + 1), then validation cases drawn
    with seed + 2 from the items that share neither question nor preference with any test item;
    validation distractors come from those items too."""
    rng = random.Random(config.seed + 1)
    chosen = rng.sample(items, min(config.prefeval_items, len(items)))
    personas = persona_sentences(config.data, 400, rng)
    test = draw_cases(chosen, items, personas, config.distractors, rng)
    questions, preferences = {i["question"] for i in chosen}, {i["preference"] for i in chosen}
    free = [i for i in items if i["question"] not in questions and i["preference"] not in preferences]
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
    return list(memory.embed([c.item["question"] for c in cases]))


def retrieve(memory: AvatarMemory, cases: list[PrefCase], questions: list[np.ndarray], fusion: Fusion) -> dict:
    """Rank every case's memories with `fusion`; recall@5 and mean reciprocal rank of the preference."""
    ranks = []
    for case, vector in zip(cases, questions, strict=True):
        hits = hybrid_search(memory.store, case.avatar, case.item["question"], vector, len(case.texts), ("fact",),
                             fusion=fusion)  # fmt: skip
        case.ranked = [h.memory.text for h in hits]
        ranks.append(case.ranked.index(case.item["preference"]) + 1 if case.item["preference"] in case.ranked else 0)
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
    return [Question(c.item["question"], c.options, c.ranked[:RETRIEVED_FACTS]) for c in cases]


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
    items = load_prefeval(config.data)
    test, validation, personas = prefeval_split(config, items)
    pool = list(dict.fromkeys(personas + [i["preference"] for i in items]))
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
            "shared_questions": len({c.item["question"] for c in test} & {c.item["question"] for c in validation}),
            "shared_preferences": len(
                {c.item["preference"] for c in test} & {c.item["preference"] for c in validation}
            ),
        },
        "fusion": {"chosen": asdict(fusion), "label": fusion.label, "validation": fusion_rows},
        "scorers": {"validation": scorer_rows, "chosen_memory": memory_scorer, "chosen_nomemory": nomemory_scorer},
        "retrieval_recall_at_5": test_retrieval["recall_at_5"],
        "retrieval_mrr": test_retrieval["mrr"],
        "prefeval_acc_memory": acc_memory,
        "prefeval_acc_nomemory": acc_nomemory,
        "by_topic": sorted({c.item["topic"] for c in test}),
    }


# ---------------------------------------------------------------- run + report


def work_dir(config: ExperimentConfig) -> Path:
    """Caches under OUT/.cache so a re-run resumes: generations (keyed by model, prompt and
    sampling) are shared; the memory store is one per setting that decides what memories and
    profiles hold, so a changed setting never mixes with an old one's memories."""
    settings = [str(config.data), config.model, config.persons, config.memory_fraction, config.memory_chunks]
    work = config.out / ".cache" / memory_key("memory", json.dumps(settings))[:16]
    work.mkdir(parents=True, exist_ok=True)
    (config.out / ".cache" / ".gitignore").write_text("*\n")
    return work


def earlier_likeness(config: ExperimentConfig) -> tuple[dict, dict]:
    """The likeness part of the results.json already in config.out, and how that run was made
    (carried over from run to run, so it always names the run that computed it)."""
    path = config.out / "results.json"
    if not path.is_file():
        raise PersonalmError("--prefeval-only needs an earlier results.json with the likeness part", source=str(path))
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PersonalmError(f"not readable JSON ({err})", source=str(path)) from None
    like = old.get("likeness") if isinstance(old, dict) else None
    if not isinstance(like, dict) or "attribution_acc_rag" not in like:
        raise PersonalmError(
            "no likeness part (expected a 'likeness' object from `avatar experiment`)", source=str(path)
        )
    made = old.get("likeness_run") or {
        k: old.get(k) for k in ("model", "config", "seed", "versions", "machine", "seconds")
    }
    if made.get("seed") != config.seed or (made.get("config") or {}).get("model") != config.model:
        raise PersonalmError(
            f"the likeness part was made with seed {made.get('seed')} and model {(made.get('config') or {}).get('model')};"
            " rerun without --prefeval-only to change them",
            source=str(path),
        )
    return like, made


def run(
    config: ExperimentConfig,
    log: Log = lambda m: None,
    model: TextModel | None = None,
    memory: AvatarMemory | None = None,
) -> dict:
    """Both experiments (or PrefEval only, the likeness part taken from the results.json already
    there); writes results.json, avatar.png and report.html into config.out. Generations are cached
    there, so a killed run resumes (a given model/memory is used as is)."""
    from personalm.provenance import machine, versions
    from personalm.models import load_model

    if config.distractors < 10:
        raise PersonalmError(f"--distractors {config.distractors}: use at least 10")
    earlier = earlier_likeness(config) if config.prefeval_only else None
    config.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    work = work_dir(config)
    if model is None:
        model = load_model(config.model or "smollm2-135m-instruct", cache=config.out / ".cache" / "generations.db")
    if memory is None:
        memory = AvatarMemory(SQLiteStore(work / "memory.db", 384))
    try:
        like = earlier[0] if earlier else likeness(config, model, memory, log)
        pref = prefeval(config, model, memory, log)
    finally:
        memory.close()
        model.close()
    results = {
        "attribution_acc_rag": like["attribution_acc_rag"],
        "attribution_acc_norag": like["attribution_acc_norag"],
        "attribution_acc_profile": like["attribution_acc_profile"],
        "attribution_acc_real": like["attribution_acc_real"],
        "similarity_rag": like["similarity_rag"],
        "similarity_norag": like["similarity_norag"],
        "similarity_profile": like["similarity_profile"],
        "rag_copy_rate": like["rag_copy_rate"],
        "prefeval_acc_memory": pref["prefeval_acc_memory"],
        "prefeval_acc_nomemory": pref["prefeval_acc_nomemory"],
        "retrieval_recall_at_5": pref["retrieval_recall_at_5"],
        "chance_attribution": 1.0 / like["persons"],
        "chance_prefeval": 0.25,
        "likeness": like,
        "prefeval": pref,
        "model": model.model_id,
        "embedder": memory.embedder.name,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        "seed": config.seed,
        "versions": versions("personalm", "torch", "transformers", "sentence-transformers", "scikit-learn", "numpy"),
        "machine": machine(),
        "seconds": round(time.time() - started, 1),
    }
    if earlier:
        results["likeness_run"] = earlier[1]
    report.write_json(config.out / "results.json", results)
    plot(results, config.out / "avatar.png")
    write_report(results, config.out / "report.html")
    return results


def plot(results: dict, path: Path) -> None:
    fig, axes = report.figure(3, width=13)
    names = [LABELS[c] for c in CONDITIONS]
    colors = ["#2b6cb0", "#a0aec0", "#68a063"]
    acc = [results[f"attribution_acc_{c}"] for c in CONDITIONS]
    axes[0].bar(names, acc, color=colors)
    axes[0].axhline(results["chance_attribution"], ls="--", c="k", lw=1, label="chance")
    axes[0].axhline(results["attribution_acc_real"], ls=":", c="r", lw=1, label="real held-out text")
    axes[0].set_title("attributed to the right person")
    axes[0].legend(fontsize=8)
    axes[1].bar(names, [results[f"similarity_{c}"] for c in CONDITIONS], color=colors)
    axes[1].set_title("MiniLM similarity to the real passage")
    axes[2].bar(["with memory", "without"], [results["prefeval_acc_memory"], results["prefeval_acc_nomemory"]],
                color=[colors[0], colors[1]])  # fmt: skip
    axes[2].axhline(0.25, ls="--", c="k", lw=1)
    axes[2].set_title(f"PrefEval test accuracy (recall@5 {results['retrieval_recall_at_5']:.2f})")
    for ax in axes:
        ax.tick_params(axis="x", labelsize=8)
        ax.set_ylim(0, max(1.0, ax.get_ylim()[1]))
    report.save_figure(fig, path)


def headline_rows(results: dict) -> list[tuple[str, str, str]]:
    rows = [
        (LABELS[c], f"{results[f'attribution_acc_{c}']:.3f}", f"{results[f'similarity_{c}']:.3f}") for c in CONDITIONS
    ]
    return rows + [("real held-out passages", f"{results['attribution_acc_real']:.3f}", "1.000")]


def write_report(results: dict, path: Path) -> Path:
    like, pref = results["likeness"], results["prefeval"]
    split = pref["split"]
    headline = [
        {"answers by": a, "attribution accuracy": b, "similarity to real passage": c}
        for a, b, c in headline_rows(results)
    ]
    per_person = [
        {"person": p, "prompts": r["prompts"]} | {LABELS[c]: r[f"acc_{c}"] for c in CONDITIONS}
        for p, r in like["per_person"].items()
    ]
    examples = [
        {"person": display_name(e["person"]), "date": e["date"], "cue": e["cue"], "real": e["reference"]}
        | {LABELS[c]: e[c] for c in CONDITIONS}
        for e in like["examples"]
    ]
    parts = [
        report.paragraph(
            f"Model {results['model']}, embedder {results['embedder']}, seed {results['seed']}, "
            f"{like['persons']} persons, {like['prompts']} held-out prompts, {pref['items']} PrefEval "
            f"questions, {results['seconds']} s"
            + (
                f" (PrefEval only; the likeness part is from an earlier run of {results['likeness_run']['seconds']} s)."
                if "likeness_run" in results
                else "."
            )
        ),
        report.image(path.with_name("avatar.png"), "attribution accuracy, similarity and PrefEval accuracy"),
        report.section(
            f"Likeness (chance {results['chance_attribution']:.3f})",
            report.table(headline),
            report.paragraph(
                "Share of the RAG answers' word 8-grams copied from the retrieved exemplars: "
                f"{results['rag_copy_rate']:.3f}."
            ),
        ),
        report.section(
            "Preference memory (PrefEval, chance 0.25)",
            report.paragraph(
                f"Test: {split['test']['items']} questions (seed {split['test']['seed']}); every choice below was "
                f"made on {split['validation']['items']} validation questions (seed {split['validation']['seed']}) "
                f"that share no question and no preference with the test questions. Retrieval: {pref['fusion']['label']}; "
                f"option scorer with memory: {pref['scorers']['chosen_memory']}, without: "
                f"{pref['scorers']['chosen_nomemory']} (the best of each condition on validation)."
            ),
            report.table(
                [
                    {
                        "test: with memory": results["prefeval_acc_memory"],
                        "test: without memory": results["prefeval_acc_nomemory"],
                        "test: retrieval recall@5": results["retrieval_recall_at_5"],
                    }
                ]
            ),
            report.paragraph("Option scorers on validation:"),
            report.table(pref["scorers"]["validation"]),
            report.paragraph("Reciprocal-rank fusion on validation (retrieval of the stated preference):"),
            report.table(pref["fusion"]["validation"]),
        ),
        report.section("Per person (attribution accuracy)", report.table(per_person)),
        report.section("Examples", report.table(examples)),
    ]
    settings = {"config": results["config"], "seed": results["seed"], "versions": results["versions"]}
    return report.write_page(path, "Personal avatars: likeness and preference memory", parts, settings)
