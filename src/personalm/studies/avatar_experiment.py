"""`personalm avatar experiment`: does retrieval make an avatar sound like *this* person
(studies.avatar_likeness), and does memory make it respect what the person said they prefer
(studies.avatar_prefeval, with the preference critic)? This module holds the settings, runs both
parts on the study harness and writes results.json, avatar.png and report.html.
"""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from personalm import report
from personalm.avatars.api import AvatarMemory
from personalm.avatars.ingest import memory_key
from personalm.avatars.preferences import Critic, load_critic
from personalm.avatars.profile import display_name
from personalm.avatars.sqlite_store import SQLiteStore
from personalm.errors import PersonalmError
from personalm.models.base import TextModel
from personalm.models.registry import DEFAULT_MODEL
from personalm.studies.avatar_likeness import (
    CONDITIONS,
    LABELS,
    VOICE_CONDITIONS,
    VOICE_DIFFERENCES,
    AdapterVoices,
    Composition,
    Voices,
    VoiceSetting,
    likeness,
    voice_estimates,
)
from personalm.studies.avatar_prefeval import prefeval
from personalm.studies.harness import Study

VOICE_GRID = (VoiceSetting(1, 2e-4), VoiceSetting(3, 2e-4), VoiceSetting(3, 1e-3))
"""The voice settings chosen among: `avatar create`'s default (one epoch at 2e-4), three epochs, and
three epochs at a five times higher rate (a stronger imprint of the voice on a few hundred rows)."""


@dataclass
class ExperimentConfig:
    data: Path
    out: Path
    model: str | None = None
    persons: int = 0  # 0: every person with at least 3 speeches
    memory_fraction: float = 0.75
    memory_chunks: int = 300
    classifier_chunks: int = 400
    prompts_per_person: int = 10
    exemplars: int = 3
    max_tokens: int = 64
    temperature: float = 0.5
    prefeval_items: int = 0  # 0: every question of the critic's test topics
    prefeval_validation_items: int = 100
    distractors: int = 50
    seed: int = 0
    prefeval_only: bool = False  # reuse the likeness part of OUT/results.json, rerun PrefEval only
    critic: Path | None = None  # the trained preference critic (default PERSONALM_HOME/critic)
    free_items: int = 0  # free-answer questions (0: every test question)
    candidates: int = 4  # answers sampled per free-answer question for preference-aware answering
    candidate_temperature: float = 0.7
    judge: str | None = None  # a larger model judging the free answers (default: the embedding rule)
    voice_persons: int = 8  # persons given a voice adapter (spread over the list; 0: no voice conditions)
    voice_steps: int = 0  # at most this many steps per voice adapter (0: the setting's epochs)
    voice_grid: tuple[VoiceSetting, ...] = VOICE_GRID  # epochs and learning rates chosen among on validation
    voice_candidates: tuple[int, ...] = (1, 4, 8)  # adapter + retrieval's best of n by voice likelihood, n chosen among
    voice_fusion: tuple[float, ...] = (0.5, 1.0)  # proxy-tuning weights chosen among with those counts (models.fusion)
    voice_validation_persons: int = 3  # persons (not voice or update persons) the voice setting is chosen on
    voice_rows: int = 600  # training passages per voice, spread over the memory-period speeches (0: the memory's)
    update_persons: int = 0  # persons in the update check (create, then update with a later period; 0: none)
    update_speeches: int = 3  # speeches in each of the update check's two windows


Log = Callable[[str], None]
LIKENESS_KEYS = tuple(
    f"{key}{suffix}"
    for key in ("attribution_acc_rag", "attribution_acc_norag", "attribution_acc_profile", "attribution_acc_real",
                "similarity_rag", "similarity_norag", "similarity_profile", "attribution_acc_difference",
                "similarity_difference")
    for suffix in ("", "_ci", "_items")
)  # fmt: skip
"""The likeness headline copied into results.json: each rate, its 95% interval and its prompt count."""


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
    if not all(k in like for k in LIKENESS_KEYS):
        raise PersonalmError(
            "the likeness part has no intervals (made by an older version); rerun without --prefeval-only",
            source=str(path),
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
    critic: Critic | None = None,
    voices: Voices | None = None,
) -> dict:
    """Both experiments (or PrefEval only, the likeness part taken from the results.json already
    there); writes results.json, avatar.png and report.html into config.out. Generations are cached
    there, so a killed run resumes (a given model/memory/critic is used as is)."""
    from personalm.models import load_model

    if config.distractors < 10:
        raise PersonalmError(f"--distractors {config.distractors}: use at least 10")
    if critic is None:
        critic = load_critic(config.critic)
    earlier = earlier_likeness(config) if config.prefeval_only else None
    study = Study(config.out, config, packages=("personalm", "torch", "transformers", "sentence-transformers",
                                                "scikit-learn", "numpy"))  # fmt: skip
    work = work_dir(config)
    if model is None:
        model = load_model(config.model or "smollm2-135m-instruct", cache=config.out / ".cache" / "generations.db")
    if memory is None:
        memory = AvatarMemory(SQLiteStore(work / "memory.db", 384))
    judge = load_model(config.judge, cache=config.out / ".cache" / "generations.db") if config.judge else None
    try:
        if voices is None and (config.voice_persons or config.update_persons) and not earlier:
            voices = AdapterVoices(config.model or DEFAULT_MODEL, config.seed, config.voice_steps,
                                   config.out / ".cache" / "generations.db", log)  # fmt: skip
        like = earlier[0] if earlier else likeness(config, model, memory, log, work, voices)
        pref = prefeval(config, model, memory, critic, log, judge)
    finally:
        memory.close()
        model.close()
        if judge is not None:
            judge.close()
    free = pref["free_answers"]
    results = (
        {k: like[k] for k in LIKENESS_KEYS}
        | voice_estimates(like)
        | {
            "rag_copy_rate": like["rag_copy_rate"],
            "prefeval_acc_memory": pref["prefeval_acc_memory"],
            "prefeval_acc_memory_ci": pref["prefeval_acc_memory_ci"],
            "prefeval_acc_nomemory": pref["prefeval_acc_nomemory"],
            "prefeval_acc_nomemory_ci": pref["prefeval_acc_nomemory_ci"],
            "prefeval_acc_difference": pref["prefeval_acc_difference"]["mean"],
            "prefeval_acc_difference_ci": pref["prefeval_acc_difference"]["ci"],
            "prefeval_items": pref["items"],
            "prefeval_validation_items": pref["validation_items"],
            "free_answer_items": free["items"],
            "free_answer_respect_plain": free["respect_plain"]["mean"],
            "free_answer_respect_plain_ci": free["respect_plain"]["ci"],
            "free_answer_respect_preferences": free["respect_preferences"]["mean"],
            "free_answer_respect_preferences_ci": free["respect_preferences"]["ci"],
            "free_answer_difference": free["difference"]["mean"],
            "free_answer_difference_ci": free["difference"]["ci"],
            "retrieval_recall_at_5": pref["retrieval_recall_at_5"],
            "chance_attribution": 1.0 / like["persons"],
            "chance_prefeval": 0.25,
            "likeness": like,
            "prefeval": pref,
            "model": model.model_id,
            "embedder": memory.embedder.name,
            "critic": {
                "path": str(config.critic) if config.critic else "default",
                "topics": pref["topics"],
                "base": (getattr(critic, "meta", None) or {}).get("base"),
            },  # fmt: skip
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
            "seed": config.seed,
            "seconds": round(time.time() - study.started, 1),
        }
    )
    if earlier:
        results["likeness_run"] = earlier[1]
    plot(results, config.out / "avatar.png")
    return study.finish(results, "Personal avatars: likeness and preference memory", report_parts(results),
                        shown=("config", "seed"))  # fmt: skip


def _spans(results: dict, keys: list[str]) -> np.ndarray:
    """matplotlib's (2, n) error spans from each key's `_ci`."""
    return np.array([[results[k] - results[f"{k}_ci"][0], results[f"{k}_ci"][1] - results[k]] for k in keys]).T


VOICE_BARS = (("none", "norag_voice_persons"), ("retrieval", "rag_voice_persons"), ("adapter", "voice"),
              ("adapter + retrieval", "voice_rag"))  # fmt: skip
"""The voice panel's bars: the chain on the voice persons' prompts."""


def plot(results: dict, path: Path) -> None:
    voiced = "voice" in results["likeness"]
    fig, axes = report.figure(4 if voiced else 3, width=17 if voiced else 13)
    names = [textwrap.fill(LABELS[c], 16) for c in CONDITIONS]
    colors = ["#2b6cb0", "#a0aec0", "#68a063"]
    acc = [f"attribution_acc_{c}" for c in CONDITIONS]
    axes[0].bar(names, [results[k] for k in acc], yerr=_spans(results, acc), capsize=4, color=colors)
    axes[0].axhline(results["chance_attribution"], ls="--", c="k", lw=1, label="chance")
    low, high = results["attribution_acc_real_ci"]
    axes[0].axhline(results["attribution_acc_real"], ls=":", c="r", lw=1, label="real held-out text (ceiling)")
    axes[0].axhspan(low, high, color="r", alpha=0.1)
    axes[0].set_title("attributed to the right person (95% CI)")
    axes[0].legend(fontsize=8)
    sim = [f"similarity_{c}" for c in CONDITIONS]
    axes[1].bar(names, [results[k] for k in sim], yerr=_spans(results, sim), capsize=4, color=colors)
    axes[1].set_title("MiniLM similarity to the real passage (95% CI)")
    pref = [
        ("with memory", "prefeval_acc_memory"),
        ("without", "prefeval_acc_nomemory"),
        ("free: plain", "free_answer_respect_plain"),
        ("free: best of n", "free_answer_respect_preferences"),
    ]
    axes[2].bar([label for label, _ in pref], [results[k] for _, k in pref], yerr=_spans(results, [k for _, k in pref]),
                capsize=4, color=[colors[0], colors[1], colors[1], colors[0]])  # fmt: skip
    axes[2].axhline(0.25, ls="--", c="k", lw=1)
    axes[2].set_title(f"PrefEval, unseen topics (recall@5 {results['retrieval_recall_at_5']:.2f}; 95% CI)")
    if voiced:
        keys = [f"attribution_acc_{k}" for _, k in VOICE_BARS]
        axes[3].bar([label for label, _ in VOICE_BARS], [results[k] for k in keys], yerr=_spans(results, keys),
                    capsize=4, color=["#a0aec0", "#2b6cb0", "#d69e2e", "#68a063"])  # fmt: skip
        axes[3].axhline(results["chance_attribution"], ls="--", c="k", lw=1)
        if "attribution_acc_real_voice_persons" in results:
            low, high = results["attribution_acc_real_voice_persons_ci"]
            axes[3].axhline(results["attribution_acc_real_voice_persons"], ls=":", c="r", lw=1)
            axes[3].axhspan(low, high, color="r", alpha=0.1)
        axes[3].set_title(f"voice adapters: {results['likeness']['voice']['prompts']} prompts (95% CI)")
    for ax in axes:
        ax.tick_params(axis="x", labelsize=8)
        ax.set_ylim(0, max(1.0, ax.get_ylim()[1]))
    report.save_figure(fig, path)


def headline_rows(results: dict) -> list[tuple[str, str, str]]:
    """(answers by, attribution accuracy, similarity), each mean [95% CI]; the ceiling (real text) last."""
    rows = [
        (LABELS[c], report.interval(results, f"attribution_acc_{c}"), report.interval(results, f"similarity_{c}"))
        for c in CONDITIONS
    ]
    return rows + [
        ("retrieval − no retrieval (paired)", report.interval(results, "attribution_acc_difference"),
         report.interval(results, "similarity_difference")),
        ("real held-out passages (ceiling)", report.interval(results, "attribution_acc_real"), "1.000"),
    ]  # fmt: skip


def report_parts(results: dict) -> list[str]:
    """The page: likeness, then preference memory with every rate's 95% interval."""
    like, pref = results["likeness"], results["prefeval"]
    free = pref["free_answers"]
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
    topics = pref["topics"]
    return [
        report.paragraph(
            f"Model {results['model']}, embedder {results['embedder']}, seed {results['seed']}, "
            f"{like['persons']} persons, {like['prompts']} held-out prompts, {pref['items']} PrefEval "
            f"test questions, {results['seconds']} s"
            + (
                f" (PrefEval only; the likeness part is from an earlier run of {results['likeness_run']['seconds']} s)."
                if "likeness_run" in results
                else "."
            )
        ),
        report.image(Path("avatar.png"), "attribution accuracy, similarity and PrefEval accuracy"),
        report.section(
            f"Likeness (chance {results['chance_attribution']:.3f})",
            report.paragraph(
                f"{like['prompts']} held-out prompts ({results['attribution_acc_rag_items']} answers per condition). "
                "Mean [95% bootstrap interval over the prompts]; the difference is paired over the same prompts; "
                "the last row is the attributor's ceiling, its accuracy on the real held-out passages."
            ),
            report.table(headline),
            report.paragraph(
                "Share of the RAG answers' word 8-grams copied from the retrieved exemplars: "
                f"{results['rag_copy_rate']:.3f}."
            ),
        ),
        report.section(
            "Preference memory (PrefEval, chance 0.25)",
            report.paragraph(
                f"Test: {pref['items']} questions of the topics the preference critic never saw ({', '.join(topics['test'])}). "
                f"Every choice was made on {pref['validation_items']} questions of its validation topics "
                f"({', '.join(topics['validation'])}): retrieval {pref['fusion']['label']}; the critic reads the top "
                f"{pref['preferences_read']['chosen']} retrieved preferences. Each preference is stored among "
                f"{pref['distractors']} distractor facts; the avatar chat retrieves {pref['retrieved_facts']} facts and "
                "recognises the stated preferences among them; the critic picks an option (ties: the model's "
                "likelihood). Without memory nothing is stated and the model's likelihood picks. Mean [95% bootstrap "
                "interval]; the difference is paired over the same questions."
            ),
            report.table(
                [
                    {
                        "with memory": report.interval(results, "prefeval_acc_memory"),
                        "without memory": report.interval(results, "prefeval_acc_nomemory"),
                        "difference": report.interval(results, "prefeval_acc_difference"),
                        "retrieval recall@5": f"{results['retrieval_recall_at_5']:.3f}",
                        "questions": pref["items"],
                    }
                ]
            ),  # fmt: skip
            report.paragraph("Per topic:"),
            report.table([{"topic": t} | row for t, row in pref["by_topic"].items()]),
            report.paragraph(
                f"Free answers ({free['items']} test questions, {free['candidates']} candidates at temperature "
                f"{free['temperature']}, judged by the {free['judge']}, not by the critic): share of answers that "
                "respect the preference, plain (retrieved preferences in the prompt) vs preference-aware (the "
                "critic's best of the candidates)."
            ),
            report.table(
                [
                    {
                        "plain": report.interval(results, "free_answer_respect_plain"),
                        "preference-aware": report.interval(results, "free_answer_respect_preferences"),
                        "difference": report.interval(results, "free_answer_difference"),
                        "questions": free["items"],
                    }
                ]
            ),  # fmt: skip
            report.paragraph("The judge on the multiple-choice options themselves (each left out of its references):"),
            report.table([free["judge_validation"]]),
            report.table(free["examples"]),
            report.paragraph("Retrieved preferences the critic reads, on validation:"),
            report.table(pref["preferences_read"]["validation"]),
            report.paragraph("Reciprocal-rank fusion on validation (retrieval of the stated preference):"),
            report.table(pref["fusion"]["validation"]),
        ),
        *voice_section(results),
        report.section("Per person (attribution accuracy)", report.table(per_person)),
        report.section("Examples", report.table(examples)),
    ]


def voice_table_rows(results: dict) -> list[tuple[str, str, str]]:
    """(answers by, attribution accuracy, similarity) on the voice persons' prompts: each condition,
    then each paired difference of the chain."""
    rows = [(label, report.interval(results, f"attribution_acc_{k}"), report.interval(results, f"similarity_{k}"))
            for label, k in VOICE_BARS]  # fmt: skip
    if "attribution_acc_real_voice_persons" in results:
        rows.append(("the real held-out passages (the attributor's ceiling)",
                     report.interval(results, "attribution_acc_real_voice_persons"), "1.000"))  # fmt: skip
    return rows + [
        (f"{LABELS[a]} − {LABELS[b]} (paired)", report.interval(results, f"attribution_acc_{a}_minus_{b}"),
         report.interval(results, f"similarity_{a}_minus_{b}"))
        for a, b in VOICE_DIFFERENCES
    ]  # fmt: skip


def voice_section(results: dict) -> list[str]:
    """The voice conditions and the update check, when the run had them."""
    return _voice_part(results) + _update_part(results)


def _update_part(results: dict) -> list[str]:
    from personalm.studies.avatar_update import update_rows

    update = results["likeness"].get("update")
    if not update or not update["persons"]:
        return []
    timing = [{"person": display_name(p), "earlier window": ", ".join(r["earlier"]),
               "later window": ", ".join(r["later"]), "held out (earlier, later)": str(tuple(r["held_out"].values())),
               "create earlier (s)": r["seconds"]["create_earlier"], "update later (s)": r["seconds"]["update_later"],
               "create both from scratch (s)": r["seconds"]["create_both"]}
              for p, r in update["per_person"].items()]  # fmt: skip
    return [
        report.section(
            "Update check (avatar create, then avatar update with a later period)",
            report.paragraph(
                f"{len(update['persons'])} persons. v1 = `avatar create` on an earlier window of speeches, v2 = "
                "`avatar update` with the later window (continuing v1, with a replay share of old rows); each "
                "version's held-out share of its window was never trained on. Both versions answer both windows' "
                "held-out cues with the adapter alone. Mean [95% bootstrap interval]; v2 − v1 paired over the "
                f"same cues. Wall time: update {results['update_seconds']} s vs create from scratch on both "
                f"windows {results['update_scratch_seconds']} s (ratio {results['update_time_ratio']})."
            ),
            report.table(update_rows(results)),
            report.table(timing),
        )
    ]


def _voice_part(results: dict) -> list[str]:
    voice = results["likeness"].get("voice")
    if not voice:
        return []
    training = [{"person": display_name(p)} | t for p, t in voice["training"].items()]
    examples = [{"person": display_name(e["person"]), "cue": e["cue"], "real": e["reference"]}
                | {LABELS[c]: e[c] for c in VOICE_CONDITIONS} for e in voice["examples"]]  # fmt: skip
    return [
        report.section(
            "Voice adapters (adapter only, retrieval only, both)",
            report.paragraph(
                f"{len(voice['persons'])} persons ({', '.join(display_name(p) for p in voice['persons'])}), "
                f"{voice['prompts']} held-out prompts. Each person's adapter is trained as `avatar create` trains "
                f"one ({VoiceSetting(**voice['setting']).label}: {_chosen_how(voice)}), on the person's "
                "memory-period text only; the held-out prompts come from later speeches. Adapter + retrieval: "
                f"{_composition(voice)}. Mean [95% bootstrap interval]; differences paired over the same prompts."
            ),
            report.table(
                [
                    {"answers by": a, "attribution accuracy": b, "similarity to real passage": c}
                    for a, b, c in voice_table_rows(results)
                ]
            ),  # fmt: skip
            *_validation_part(voice),
            *_candidates_part(voice),
            report.paragraph("Training of each adapter:"),
            report.table(training),
            report.table(examples),
        )
    ]


def _composition(voice: dict) -> str:
    """How adapter + retrieval answered, in words."""
    weight = (voice.get("composition") or {}).get("weight")
    if weight is not None:
        return (f"proxy-tuned decoding at weight {weight:g}: each token from the base model reading the retrieved "
                f"passages plus {weight:g} x (the adapter − the base), both reading the name-only chat the adapter was "
                "trained on (models.fusion)")  # fmt: skip
    return (f"the adapter reads the retrieved passages itself; the best of {voice.get('candidates', 1)} sampled "
            "answers by voice likelihood (the adapter's mean token log-probability over the base model's)")  # fmt: skip


def _chosen_how(voice: dict) -> str:
    validation = voice.get("validation")
    if not validation:
        return "the only setting given"
    persons = len(validation["persons"])
    return (f"chosen with the composition among {len(validation['settings'])} combinations on {persons} other "
            f"person{'s' * (persons != 1)}, nothing chosen on these")  # fmt: skip


def _candidates_part(voice: dict) -> list[str]:
    """Adapter + retrieval in every composition of the grid on the voice persons (the chosen one is
    the headline; the others are shown, not chosen on)."""
    found = [(Composition(int(n)).label, row) for n, row in voice.get("by_candidates", {}).items()]
    found += [(Composition(1, float(w)).label, row) for w, row in voice.get("by_fusion", {}).items()]
    if not found:
        return []
    rows = [{"composition": label, "attribution, adapter + retrieval": report.interval(row, "attribution_acc"),
             "minus retrieval only (paired)": report.interval(row, "attribution_acc_minus_rag"),
             "similarity": report.interval(row, "similarity")}
            for label, row in found]  # fmt: skip
    return [report.paragraph("Adapter + retrieval in each composition on these persons (the headline's was "
                             "chosen on validation persons):"), report.table(rows)]  # fmt: skip


def _validation_part(voice: dict) -> list[str]:
    """The settings tried on the validation persons and how each scored there."""
    validation = voice.get("validation")
    if not validation:
        return []
    rows = [
        {"setting": VoiceSetting(row["epochs"], row["lr"]).label,
         "composition": Composition(row.get("candidates", 1), row.get("weight")).label,
         "steps (all persons)": str(row["steps"]),
         "attribution, adapter + retrieval": report.interval(row, "attribution_acc_voice_rag"),
         "minus retrieval only (paired)": report.interval(row, "attribution_acc_voice_rag_minus_rag"),
         "similarity, adapter + retrieval": report.interval(row, "similarity_voice_rag")}
        for row in validation["settings"]
    ]  # fmt: skip
    return [
        report.paragraph(
            f"The setting was chosen on {validation['prompts']} held-out prompts of "
            f"{', '.join(display_name(p) for p in validation['persons'])} (best attribution of adapter + retrieval "
            f"answers): {VoiceSetting(validation['chosen']['epochs'], validation['chosen']['lr']).label}, "
            f"{Composition(validation['chosen'].get('candidates', 1), validation['chosen'].get('weight')).label}."
        ),
        report.table(rows),
    ]
