"""Likeness, the first half of `personalm avatar experiment`: does retrieval make an avatar sound
like *this* person?

Per person, memory = speeches before a date cutoff (the first `memory_fraction` of them by date);
prompts = opening sentences of passages from the later, held-out speeches. Three answers per prompt
from the same model: avatar with retrieval (profile + verbatim exemplars), no retrieval (name only),
profile only. A stylometric classifier (character n-gram TF-IDF + logistic regression) trained on
the memory-period text of all persons attributes every answer to a person; we report attribution
accuracy and MiniLM similarity to the real continuation, plus how much of the RAG answers is copied
from the retrieved exemplars (8-gram overlap), so a copying avatar cannot pass unnoticed. Every rate
carries a 95% bootstrap interval over the prompts (`*_ci`, `*_items`); retrieval minus no retrieval
is paired over the same prompts; the classifier's ceiling is its accuracy on the real passages.

The voice conditions (issue 24): for `voice_persons` persons spread over the list, a LoRA voice
adapter trained as `avatar create` trains one (avatars.voice.train_adapter) on up to `voice_rows`
passages of that person's memory-period speeches, then the same prompts answered by the adapter
alone (name only) and by the adapter with retrieval, in one of two compositions (`Composition`):
the adapter reads the retrieved passages itself and the best of n sampled answers by voice
likelihood is kept (avatars.preferences.voice_likelihood; n = 1 is one sample), or proxy-tuned
decoding at a weight w (models.fusion: the base model reads the passages, the adapter's shift over
the base, read on the name-only chat it was trained on, is added at w). Its epochs, learning rate
and composition are chosen among `voice_grid` x (`voice_candidates` + `voice_fusion`) on
`voice_validation_persons` other persons (the combination whose adapter + retrieval answers are
attributed best on their held-out prompts), never on the persons it is then measured on. On those persons' prompts the chain adapter + retrieval vs retrieval only vs none is compared
pairwise, each difference with its 95% paired interval.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from personalm.avatars.adapter_data import continue_message, example, training_examples
from personalm.avatars.api import AvatarMemory
from personalm.avatars.chat import system_prompt
from personalm.avatars.chunking import Chunking, chunk_text, sentences
from personalm.avatars.ingest import memory_key
from personalm.avatars.preferences import MAX_CANDIDATES, choose, voice_likelihood
from personalm.avatars.profile import clean_profile, display_name, keyword_profile, profile_prompt
from personalm.avatars.retrieval import Recall, hybrid_search
from personalm.avatars.sources import DATE_PREFIX, read_source
from personalm.avatars.store import NewMemory, Profile, SourceRecord
from personalm.errors import PersonalmError
from personalm.eval.bootstrap import bootstrap_mean, paired_bootstrap
from personalm.models.base import SamplingParams, TextModel
from personalm.models.fusion import MAX_WEIGHT
from personalm.tables import write_rows

if TYPE_CHECKING:
    from personalm.avatars.voice import VoiceOptions
    from personalm.studies.avatar_experiment import ExperimentConfig, Log

CONDITIONS = ("rag", "norag", "profile")
VOICE_CONDITIONS = ("voice_rag", "voice")
LABELS = {"rag": "avatar with retrieval", "norag": "same model, no retrieval", "profile": "profile only",
          "voice_rag": "voice adapter + retrieval", "voice": "voice adapter, no retrieval"}  # fmt: skip
VOICE_DIFFERENCES = (("voice_rag", "rag"), ("rag", "norag"), ("voice", "norag"), ("voice_rag", "voice"))
"""The paired comparisons on the voice persons' prompts: adapter + retrieval > retrieval > none."""


@dataclass(frozen=True)
class VoiceSetting:
    """What the study chooses for the voice adapters on validation persons: epochs and learning
    rate (the rest as `avatar create` trains)."""

    epochs: int
    lr: float

    @property
    def label(self) -> str:
        return f"{self.epochs} epoch{'s' if self.epochs != 1 else ''}, lr {self.lr:g}"

    @property
    def key(self) -> str:
        return f"epochs{self.epochs}-lr{self.lr:g}"

    def options(self, model: str, seed: int, steps: int = 0) -> VoiceOptions:
        """`avatar create`'s training options with this setting's epochs and learning rate (at most
        `steps` steps when given)."""
        from personalm.avatars.voice import VoiceOptions

        return VoiceOptions(model=model, seed=seed, max_steps=steps or None, epochs=self.epochs, lr=self.lr)


def parse_candidates(text: str) -> tuple[int, ...]:
    """`1,4,8` into the candidate counts to choose among (ascending: the cheapest first)."""
    try:
        counts = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise PersonalmError(f"--voice-candidates {text!r}: expected counts like 1,4,8") from None
    if not counts or not all(1 <= n <= MAX_CANDIDATES for n in counts):
        raise PersonalmError(f"--voice-candidates {text!r}: expected counts from 1 to {MAX_CANDIDATES}, like 1,4,8")
    return tuple(counts)


def parse_fusion(text: str) -> tuple[float, ...]:
    """`0.5,1` into the proxy-tuning weights to choose among (empty: none)."""
    try:
        weights = tuple(dict.fromkeys(float(part) for part in text.split(",") if part.strip()))
    except ValueError:
        raise PersonalmError(f"--voice-fusion {text!r}: expected weights like 0.5,1") from None
    if not all(0 < w <= MAX_WEIGHT for w in weights):
        raise PersonalmError(f"--voice-fusion {text!r}: expected weights in (0, {MAX_WEIGHT:g}], like 0.5,1")
    return weights


def parse_voice_grid(text: str) -> tuple[VoiceSetting, ...]:
    """`EPOCHS:LR,...` (for example `1:2e-4,3:1e-3`) into the settings to choose among."""
    settings = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        epochs, _, lr = item.partition(":")
        try:
            setting = VoiceSetting(int(epochs), float(lr))
        except ValueError:
            raise PersonalmError(f"--voice-grid {item!r}: expected EPOCHS:LR, for example 3:1e-3") from None
        if setting.epochs < 1 or not 0 < setting.lr < 1:
            raise PersonalmError(f"--voice-grid {item!r}: epochs must be >= 1 and the learning rate in (0, 1)")
        settings.append(setting)
    if not settings:
        raise PersonalmError("--voice-grid is empty: expected EPOCHS:LR,... for example 1:2e-4,3:1e-3")
    return tuple(dict.fromkeys(settings))


class Voices(Protocol):
    """Where the voice conditions get a person's adapter and a model speaking with it (and the
    update check its trainer and base model)."""

    model_name: str

    def fit(self, config: Any) -> Any:
        """Run one training (a train.loop.TrainConfig), as train.loop.train does."""
        ...

    def train(self, rows: Path, out: Path, setting: VoiceSetting) -> dict:
        """Train (or keep a finished run of) a voice adapter on `rows` into `out`; its summary."""
        ...

    def model(self, adapter: Path) -> TextModel:
        """The study's base model with `adapter` applied (closed by the caller)."""
        ...

    def fused(self, base: TextModel, voice: TextModel, weight: float) -> TextModel:
        """A model answering (served, plain) chat pairs as base(served) + weight · (voice(plain) −
        base(plain)) (models.fusion.ProxyTuned)."""
        ...


@dataclass(frozen=True)
class Composition:
    """How adapter + retrieval answers: the adapter reads the retrieved passages itself and the best
    of `candidates` samples by voice likelihood is kept, or (`weight` set) proxy-tuned decoding:
    the base reads the passages and the adapter's shift over its base is added at `weight`."""

    candidates: int = 1
    weight: float | None = None

    @property
    def label(self) -> str:
        if self.weight is not None:
            return f"proxy-tuned at weight {self.weight:g} (the base reads the passages)"
        return "the adapter reads the passages" + (f", best of {self.candidates}" if self.candidates > 1 else "")


def compositions(config: ExperimentConfig) -> list[Composition]:
    """What adapter + retrieval is chosen among: every candidate count, then every fusion weight."""
    return [Composition(n) for n in config.voice_candidates] + [Composition(1, w) for w in config.voice_fusion]


@dataclass
class Prompt:
    person: str
    cue: str
    reference: str
    date: str


@dataclass
class Candidates:
    """Each prompt's sampled adapter + retrieval answers (cue cut) and their voice likelihoods, in
    sampling order: the first n are what the served avatar samples with n candidates."""

    texts: list[list[str]]
    scores: list[list[float]]

    def chosen(self, n: int) -> list[str]:
        """Per prompt, the answer `choose` keeps among the first n (the avatar as served with n)."""
        return [
            answers[choose(None, [], "", answers[:n], lambda idx, s=scores: [s[i] for i in idx]).index]
            for answers, scores in zip(self.texts, self.scores, strict=True)
        ]


@dataclass
class VoiceAnswers:
    """The voice persons' answers, aligned with their prompts: one sample per prompt for each
    plain condition (`outputs`), adapter + retrieval's candidates (`pool`) and its proxy-tuned
    answers per weight (`fused`)."""

    outputs: dict[str, list[str]]
    pool: Candidates
    fused: dict[float, list[str]]

    def of(self, composition: Composition) -> list[str]:
        """Adapter + retrieval's answers in this composition."""
        if composition.weight is None:
            return self.pool.chosen(composition.candidates)
        return self.fused[composition.weight]


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
    the bare model told whom to be, or the profile alone; a voice condition sends what its
    counterpart without the adapter sends (the adapter is the only change)."""
    who = display_name(prompt.person)
    ask = {"role": "user", "content": continue_message(prompt.cue)}
    if condition == "voice_rag":
        condition = "rag"
    if condition == "voice":
        condition = "norag"
    if condition == "rag":
        turns, quotes = passage_turns(recall)
        return [{"role": "system", "content": system_prompt(who, profile, quotes)}, *turns, ask]
    return [
        {"role": "system", "content": system_prompt(who, profile if condition == "profile" else None, Recall())},
        ask,
    ]


def estimate(key: str, values: np.ndarray, seed: int) -> dict:
    """`key` (the mean), `key_ci` (its 95% bootstrap interval over the prompts) and `key_items`."""
    found = bootstrap_mean(np.asarray(values, dtype=float), seed=seed)
    return {key: found.mean, f"{key}_ci": [found.low, found.high], f"{key}_items": found.n}


def paired_estimate(key: str, a: np.ndarray, b: np.ndarray, seed: int) -> dict:
    """`key` (mean of a − b over the same prompts), `key_ci` (its 95% paired bootstrap interval),
    `key_items` and `key_share_above_zero`."""
    diff = paired_bootstrap(a, b, seed=seed)
    return {key: diff.mean, f"{key}_ci": [diff.low, diff.high], f"{key}_items": diff.n,
            f"{key}_share_above_zero": diff.share_above_zero}  # fmt: skip


def without_cue(text: str, cue: str) -> str:
    """An answer that repeats the cue would be credited with the real person's words: cut it."""
    return text.replace(cue, " ").strip()


def score_texts(texts: list[str], truth: list[str], attributor, memory: AvatarMemory,
                ref_vectors: np.ndarray) -> dict[str, np.ndarray]:  # fmt: skip
    """Per answer: attributed to its true person (1/0), and MiniLM similarity to its reference."""
    texts = [t or "." for t in texts]
    return {"attribution_acc": (attributor.predict(texts) == np.array(truth)).astype(float),
            "similarity": np.sum(memory.embed(texts) * ref_vectors, axis=1)}  # fmt: skip


@dataclass
class AdapterVoices:
    """The real voices: adapters trained as `avatar create` trains them (its defaults but the
    setting's epochs and learning rate, at most `steps` steps when given), merged into the base
    model to answer."""

    model_name: str
    seed: int
    steps: int
    cache: Path
    log: Log

    def train(self, rows: Path, out: Path, setting: VoiceSetting) -> dict:
        from personalm.avatars.voice import train_adapter

        run = train_adapter(rows, out, setting.options(self.model_name, self.seed, self.steps), trainer=self.fit)
        return {k: run[k] for k in ("steps", "examples", "tokens_seen", "seconds", "final_loss")}

    def fit(self, config: Any) -> Any:
        from personalm.train.loop import train

        return train(config, log=self.log)

    def model(self, adapter: Path) -> TextModel:
        from personalm.models import load_model

        return load_model(self.model_name, adapter=adapter, cache=self.cache)

    def fused(self, base: TextModel, voice: TextModel, weight: float) -> TextModel:
        from personalm.models.cache import CachedModel, GenerationCache
        from personalm.models.fusion import ProxyTuned

        return CachedModel(ProxyTuned(base, voice, weight), GenerationCache(self.cache))


def voice_training_rows(config: ExperimentConfig, person: str, files: list[Path],
                        memory: AvatarMemory) -> list[dict]:  # fmt: skip
    """A voice adapter's training rows: up to `voice_rows` passages spread over the person's
    memory-period speeches (`avatar create` trains on everything its sources hold; the study's
    memory keeps only `memory_chunks` of them for retrieval), or with 0 the memory's utterances."""
    if not config.voice_rows:
        return list(training_examples(memory, person))
    who = display_name(person)
    rows = [
        example(who, chunk, row_id=f"{person}:{i}") for i, (chunk, _) in enumerate(person_chunks(files, Chunking()))
    ]
    return spread([r for r in rows if r is not None], config.voice_rows)


def voice_outputs(config: ExperimentConfig, persons: list[str], judges: VoiceJudges, voices: Voices, work: Path,
                  params: SamplingParams, log: Log, setting: VoiceSetting, conditions: tuple[str, ...] = VOICE_CONDITIONS,
                  candidates: int = 1, fusion: tuple[float, ...] = ()) -> tuple[VoiceAnswers, dict[str, dict]]:  # fmt: skip
    """Per voice person: its adapter trained with `setting` on its training rows (kept across runs), then
    its prompts answered with the adapter in each of `conditions`; adapter + retrieval samples
    `candidates` answers per prompt, each with its voice likelihood (against the study's base
    model), and answers proxy-tuned at each weight of `fusion`. The answers align with the prompts
    of `persons` in order; the second value is each person's training summary."""
    prompts, batches = judges.prompts, judges.batches
    outputs: dict[str, list[str]] = {c: [] for c in conditions if c != "voice_rag"}
    pool = Candidates([], [])
    fused: dict[float, list[str]] = {w: [] for w in fusion}
    training: dict[str, dict] = {}
    for number, person in enumerate(persons, start=1):
        rows = work / "voice" / f"{person}-rows{config.voice_rows}.jsonl"
        if not rows.is_file():
            write_rows(rows, voice_training_rows(config, person, judges.sources[person], judges.memory))
        adapter = (
            work
            / "voice"
            / f"{person}-seed{config.seed}-steps{config.voice_steps}-rows{config.voice_rows}-{setting.key}"
        )
        log(f"likeness: voice adapter {number}/{len(persons)} ({person}, {setting.label})")
        training[person] = voices.train(rows, adapter, setting)
        mine = [i for i, p in enumerate(prompts) if p.person == person]
        spoken = voices.model(adapter)
        try:
            for condition in conditions:
                n = candidates if condition == "voice_rag" else 1
                chats = [batches[condition][i] for i in mine]
                generated = [g.text.strip() for g in spoken.generate([c for c in chats for _ in range(n)], params)]
                for k, (chat, i) in enumerate(zip(chats, mine, strict=True)):
                    answers = generated[k * n : (k + 1) * n]
                    if condition != "voice_rag":
                        outputs[condition].append(without_cue(answers[0], prompts[i].cue))
                        continue
                    pool.texts.append([without_cue(a, prompts[i].cue) for a in answers])
                    pool.scores.append(voice_likelihood(spoken, judges.base, chat, answers)(list(range(n)))
                                       if n > 1 else [0.0])  # fmt: skip
            pairs = [(batches["voice_rag"][i], batches["voice"][i]) for i in mine]
            for weight in fusion:
                proxy = voices.fused(judges.base, spoken, weight)
                try:
                    fused[weight] += [without_cue(g.text.strip(), prompts[i].cue)
                                      for g, i in zip(proxy.generate(pairs, params), mine, strict=True)]  # fmt: skip
                finally:
                    proxy.close()
        finally:
            spoken.close()
    return VoiceAnswers(outputs, pool, fused), training


def likeness(config: ExperimentConfig, model: TextModel, memory: AvatarMemory, log: Log,
             work: Path, voices: Voices | None = None) -> dict:  # fmt: skip
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
    batches = {
        c: [answer_prompt(c, p, profiles[p.person], r) for p, r in zip(prompts, recalls, strict=True)]
        for c in CONDITIONS + VOICE_CONDITIONS
    }
    outputs: dict[str, list[str]] = {}
    for condition in CONDITIONS:
        log(f"likeness: generating {len(prompts)} answers ({LABELS[condition]})")
        outputs[condition] = [
            without_cue(g.text, p.cue) for g, p in zip(model.generate(batches[condition], params), prompts, strict=True)
        ]

    truth = [p.person for p in prompts]
    references = [p.reference for p in prompts]
    ref_vectors = memory.embed(references)
    result: dict = {"persons": len(split), "prompts": len(prompts), "per_person": {}}
    real = (attributor.predict(references) == np.array(truth)).astype(float)
    result |= estimate("attribution_acc_real", real, config.seed)
    scores: dict[str, dict[str, np.ndarray]] = {}
    for condition in CONDITIONS:
        scores[condition] = score_texts(outputs[condition], truth, attributor, memory, ref_vectors)
        correct, similarity = scores[condition]["attribution_acc"], scores[condition]["similarity"]
        result |= estimate(f"attribution_acc_{condition}", correct, config.seed)
        result |= estimate(f"similarity_{condition}", similarity, config.seed)
        for person in split:
            mask = np.array(truth) == person
            if mask.any():
                row = result["per_person"].setdefault(person, {"prompts": int(mask.sum())})
                row[f"acc_{condition}"] = float(correct[mask].mean())
                row[f"sim_{condition}"] = float(similarity[mask].mean())
    for metric in ("attribution_acc", "similarity"):
        result |= paired_estimate(f"{metric}_difference", scores["rag"][metric], scores["norag"][metric], config.seed)
    voiced = spread(list(split), config.voice_persons) if voices is not None and config.voice_persons else []
    checked = spread(list(split), config.update_persons) if voices is not None and config.update_persons else []
    setting, composition, validation = config.voice_grid[0], compositions(config)[0], None
    judges = VoiceJudges(prompts, batches, scores, attributor, memory, ref_vectors,
                         {p: mem for p, (mem, _) in split.items()}, model)  # fmt: skip
    if voiced or checked:
        rest = [p for p in split if p not in voiced and p not in checked]
        setting, composition, validation = choose_voice(config, spread(rest, config.voice_validation_persons), judges,
                                                        voices, work, params, log)  # fmt: skip
    if voiced:
        order = [i for person in voiced for i, p in enumerate(prompts) if p.person == person]
        answers, training = voice_outputs(config, voiced, judges, voices, work, params, log, setting,
                                          candidates=max(config.voice_candidates), fusion=config.voice_fusion)  # fmt: skip
        plain = {c: {m: v[order] for m, v in scores[c].items()} for c in ("rag", "norag")}
        result["voice"] = voice_results(config, answers, composition, training, [prompts[i] for i in order],
                                        plain | {"real": {"attribution_acc": real[order]}}, attributor, memory,
                                        ref_vectors[order])  # fmt: skip
        result["voice"] |= {"setting": asdict(setting), "candidates": composition.candidates,
                            "composition": asdict(composition) | {"label": composition.label},
                            "validation": validation}  # fmt: skip
    if checked:
        from personalm.studies.avatar_update import update_check

        result["update"] = update_check(config, {p: split[p][0] for p in checked}, attributor, memory, voices,
                                        work, params, log, setting)  # fmt: skip
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


@dataclass
class VoiceJudges:
    """What training and scoring voices on some persons needs: every prompt with its chats per
    condition, the scores of the conditions without an adapter, the scorers, each person's
    memory-period speeches (the voices' training text) and the base model."""

    prompts: list[Prompt]
    batches: dict[str, list]
    scores: dict[str, dict[str, np.ndarray]]
    attributor: Any
    memory: AvatarMemory
    ref_vectors: np.ndarray
    sources: dict[str, list[Path]]
    base: TextModel  # the model the voices were trained from (the voice likelihood's denominator)


def choose_voice(config: ExperimentConfig, persons: list[str], judges: VoiceJudges, voices: Voices, work: Path,
                 params: SamplingParams, log: Log) -> tuple[VoiceSetting, Composition, dict | None]:  # fmt: skip
    """The setting of `config.voice_grid` and the composition (`compositions`) whose adapter +
    retrieval answers on `persons`' held-out prompts are attributed best (then the most similar;
    then the first, the cheapest), and a record of every combination's scores there. With one
    combination or no validation persons: the first, unscored."""
    combos = [(setting, c) for setting in config.voice_grid for c in compositions(config)]
    if len(combos) == 1 or not persons:
        return *combos[0], None
    order = [i for person in persons for i, p in enumerate(judges.prompts) if p.person == person]
    truth = [judges.prompts[i].person for i in order]
    rag = {m: v[order] for m, v in judges.scores["rag"].items()}
    rows = []
    for setting in config.voice_grid:
        log(f"likeness: choosing the voice setting on {len(persons)} validation persons: {setting.label}")
        answers, training = voice_outputs(config, persons, judges, voices, work, params, log, setting, ("voice_rag",),
                                          max(config.voice_candidates), config.voice_fusion)  # fmt: skip
        for composition in compositions(config):
            found = score_texts(answers.of(composition), truth, judges.attributor, judges.memory,
                                judges.ref_vectors[order])  # fmt: skip
            row: dict[str, Any] = asdict(setting) | asdict(composition)
            row["steps"] = sum(t["steps"] for t in training.values())
            for metric in ("attribution_acc", "similarity"):
                row |= estimate(f"{metric}_voice_rag", found[metric], config.seed)
                row |= paired_estimate(f"{metric}_voice_rag_minus_rag", found[metric], rag[metric], config.seed)
            rows.append(row)
            log(f"likeness: validation, {setting.label}, {composition.label}: attribution "
                f"{row['attribution_acc_voice_rag']:.3f} (retrieval only {rag['attribution_acc'].mean():.3f})")  # fmt: skip
    best = max(range(len(combos)), key=lambda k: (rows[k]["attribution_acc_voice_rag"], rows[k]["similarity_voice_rag"],
                                                  -k))  # fmt: skip
    setting, composition = combos[best]
    log(f"likeness: chosen on validation persons: {setting.label}, {composition.label}")
    return setting, composition, {"persons": persons, "prompts": len(order), "settings": rows,
                                  "chosen": asdict(setting) | asdict(composition)}  # fmt: skip


def voice_estimates(like: dict) -> dict:
    """The rates, differences (with `_ci`, `_items`) and times of the voice part and the update check,
    for the top of results.json."""
    return {k: v for part in ("voice", "update") for k, v in like.get(part, {}).items()
            if k.startswith(("attribution_acc_", "similarity_", "update_"))}  # fmt: skip


def voice_results(config: ExperimentConfig, answers: VoiceAnswers, composition: Composition,
                  training: dict[str, dict], prompts: list[Prompt], scores: dict[str, dict[str, np.ndarray]],
                  attributor, memory: AvatarMemory, ref_vectors: np.ndarray) -> dict:  # fmt: skip
    """The voice persons' prompts under the voice conditions (scored as the others; adapter +
    retrieval in the chosen `composition`), the attributor's ceiling there (`scores["real"]`: the
    real held-out passages attributed) and, paired over the same prompts, each comparison of
    VOICE_DIFFERENCES: `attribution_acc_voice_rag_minus_rag`...; `by_candidates` and `by_fusion`
    give adapter + retrieval in every composition chosen among (the chosen one is the headline)."""
    truth = np.array([p.person for p in prompts])
    outputs = answers.outputs | {"voice_rag": answers.of(composition)}
    found: dict = {"persons": sorted(training), "prompts": len(prompts), "training": training, "by_candidates": {},
                   "by_fusion": {}}  # fmt: skip
    scored = {c: score_texts(answers.of(c), list(truth), attributor, memory, ref_vectors) for c in compositions(config)}
    for c, each in scored.items():
        part, name = ("by_candidates", str(c.candidates)) if c.weight is None else ("by_fusion", f"{c.weight:g}")
        row = found[part].setdefault(name, {})
        for metric in ("attribution_acc", "similarity"):
            row |= estimate(metric, each[metric], config.seed)
            row |= paired_estimate(f"{metric}_minus_rag", each[metric], scores["rag"][metric], config.seed)
    found |= estimate("attribution_acc_real_voice_persons", scores["real"]["attribution_acc"], config.seed)
    scores = scores | {"voice": score_texts(outputs["voice"], list(truth), attributor, memory, ref_vectors),
                       "voice_rag": scored[composition]}  # fmt: skip
    for condition in VOICE_CONDITIONS + ("rag", "norag"):
        for metric in ("attribution_acc", "similarity"):
            key = f"{metric}_{condition}" + ("" if condition in VOICE_CONDITIONS else "_voice_persons")
            found |= estimate(key, scores[condition][metric], config.seed)
    for a, b in VOICE_DIFFERENCES:
        for metric in ("attribution_acc", "similarity"):
            found |= paired_estimate(f"{metric}_{a}_minus_{b}", scores[a][metric], scores[b][metric], config.seed)
    found["per_person"] = {
        person: {f"acc_{c}": float(scores[c]["attribution_acc"][truth == person].mean())
                 for c in VOICE_CONDITIONS + ("rag", "norag")}
        for person in training
    }  # fmt: skip
    found["examples"] = [
        {"person": p.person, "cue": p.cue, "reference": p.reference[:300], **{c: outputs[c][i] for c in VOICE_CONDITIONS}}
        for i, p in enumerate(prompts[:: max(1, len(prompts) // 4)][:4])
    ]  # fmt: skip
    return found
