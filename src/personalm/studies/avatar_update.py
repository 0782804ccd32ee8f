"""The update check of `personalm avatar experiment` (issue 24): does `avatar update` learn a new
period of a person's text without losing the old one, and is it cheaper than starting over?

Per person, the last 2k memory-period speeches by date (k = `update_speeches`), split into an earlier and a later window.
In a store of its own the product path runs as a user would run it: `avatar create` on the earlier
window (v1), then `avatar update` with the later one (v2: continues v1 on the new utterances plus a
replay share of the old ones); in a second store `avatar create` on both windows at once (what a
user without update would do). Each version keeps a held-out share of its window (voice.HELDOUT)
that it never trained on. v1 and v2 answer the held-out cues of both windows as they were trained
(the adapter alone, name only), scored like the likeness answers: MiniLM similarity to the real
continuation and attribution by the study's stylometric classifier. Reported, paired over the same
cues with 95% intervals: v2 − v1 on the later window (learned the new period?) and on the earlier
window (earlier likeness held?); and the wall time of the update against the create from scratch.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from personalm.avatars import voice
from personalm.avatars.adapter_data import cue_of
from personalm.avatars.api import AvatarMemory
from personalm.avatars.sqlite_store import SQLiteStore
from personalm.models.base import SamplingParams
from personalm.studies.avatar_likeness import (
    Voices,
    VoiceSetting,
    estimate,
    paired_estimate,
    score_texts,
    without_cue,
)
from personalm.tables import read_rows

if TYPE_CHECKING:
    from personalm.studies.avatar_experiment import ExperimentConfig, Log

WINDOWS = ("earlier", "later")
METRICS = ("similarity", "attribution_acc")


def timed_job(folder: Path, name: str, job: Callable[[], voice.Outcome]) -> float:
    """Wall seconds of `job` (a create or update), kept in folder/timing.json so a re-run of the
    study reuses a finished job and its time instead of running it again."""
    path = folder / "timing.json"
    timing = json.loads(path.read_text()) if path.is_file() else {}
    if name not in timing:
        start = time.perf_counter()
        job()
        timing[name] = round(time.perf_counter() - start, 2)
        path.write_text(json.dumps(timing, indent=2) + "\n")
    return timing[name]


def person_versions(config: ExperimentConfig, person: str, files: list[Path], memory: AvatarMemory, voices: Voices,
                    work: Path, log: Log, setting: VoiceSetting) -> dict | None:  # fmt: skip
    """v1 (create on the earlier window) and v2 (update with the later one) in one store, a create
    on both in another; their versions and wall times. None when the person has too few speeches."""
    files = files[-2 * config.update_speeches :]
    if len(files) < 2:
        return None
    earlier, later = files[: len(files) // 2], files[len(files) // 2 :]
    folder = (
        work
        / "update"
        / f"{person}-seed{config.seed}-speeches{config.update_speeches}-steps{config.voice_steps}-{setting.key}"
    )
    folder.mkdir(parents=True, exist_ok=True)
    options = setting.options(voices.model_name, config.seed, config.voice_steps)
    hooks = voice.Hooks(log=lambda m: log(f"update check, {person}: {m}"), train=voices.fit)
    stores = {name: AvatarMemory(SQLiteStore(folder / f"{name}.db", memory.embedder.dimension), memory.embedder)
              for name in ("stepwise", "scratch")}  # fmt: skip
    try:
        stepwise, scratch = stores["stepwise"], stores["scratch"]
        seconds = {
            "create_earlier": timed_job(folder, "create_earlier",
                                        lambda: voice.create(stepwise, person, earlier, options=options, hooks=hooks)),
            "update_later": timed_job(folder, "update_later",
                                      lambda: voice.update(stepwise, person, later, options=options, hooks=hooks)),
            "create_both": timed_job(folder, "create_both",
                                     lambda: voice.create(scratch, person, files, options=options, hooks=hooks)),
        }  # fmt: skip
        versions = voice.adapter_versions(stepwise.store, person)
        scratch_version = voice.latest(scratch.store, person)
    finally:
        for store in stores.values():
            store.close()
    return {"earlier": [p.name for p in earlier], "later": [p.name for p in later], "seconds": seconds,
            "v1": versions[0], "v2": versions[1], "scratch": scratch_version}  # fmt: skip


def answers(version: voice.AdapterVersion, rows: list[dict], voices: Voices, params: SamplingParams) -> list[str]:
    """The version's answers to held-out rows, prompted as it was trained (the cue repeated is cut)."""
    spoken = voices.model(Path(version.path))
    try:
        generated = spoken.generate([row["messages"][:-1] for row in rows], params)
    finally:
        spoken.close()
    return [without_cue(g.text, cue_of(row["messages"][-2]["content"])) for g, row in zip(generated, rows, strict=True)]


def update_check(config: ExperimentConfig, persons: dict[str, list[Path]], attributor, memory: AvatarMemory,
                 voices: Voices, work: Path, params: SamplingParams, log: Log,
                 setting: VoiceSetting) -> dict:  # fmt: skip
    """The check on `persons` (name → memory-period speeches by date), every version trained with
    `setting`: per window, v1 and v2 scored on its held-out cues and their paired difference, plus
    the times of update and create."""
    scores: dict[str, dict[str, dict[str, list[float]]]] = {
        w: {v: {m: [] for m in METRICS} for v in ("v1", "v2")} for w in WINDOWS
    }
    per_person: dict[str, dict] = {}
    for number, (person, files) in enumerate(persons.items(), start=1):
        log(f"update check {number}/{len(persons)}: {person}")
        made = person_versions(config, person, files, memory, voices, work, log, setting)
        if made is None:
            continue
        held = {w: [row for _, row in read_rows(Path(made[v].path) / voice.HELDOUT)]
                for w, v in (("earlier", "v1"), ("later", "v2"))}  # fmt: skip
        per_person[person] = {"earlier": made["earlier"], "later": made["later"], "seconds": made["seconds"],
                              "held_out": {w: len(r) for w, r in held.items()},
                              "v2_replayed": made["v2"].replayed, "v2_trained": made["v2"].trained}  # fmt: skip
        for window, rows in held.items():
            if not rows:
                continue
            references = memory.embed([row["messages"][-1]["content"] for row in rows])
            for label in ("v1", "v2"):
                texts = answers(made[label], rows, voices, params)
                for metric, values in score_texts(texts, [person] * len(texts), attributor, memory,
                                                  references).items():  # fmt: skip
                    scores[window][label][metric] += values.tolist()
    found: dict = {"persons": sorted(per_person), "per_person": per_person}
    for window in WINDOWS:
        for metric in METRICS:
            v1, v2 = (np.asarray(scores[window][v][metric]) for v in ("v1", "v2"))
            if not len(v1):
                continue
            found |= estimate(f"update_{metric}_{window}_v1", v1, config.seed)
            found |= estimate(f"update_{metric}_{window}_v2", v2, config.seed)
            found |= paired_estimate(f"update_{metric}_{window}_v2_minus_v1", v2, v1, config.seed)
    if per_person:
        update = sum(p["seconds"]["update_later"] for p in per_person.values())
        scratch = sum(p["seconds"]["create_both"] for p in per_person.values())
        found |= {"update_seconds": round(update, 1), "update_scratch_seconds": round(scratch, 1),
                  "update_time_ratio": round(update / scratch, 3) if scratch else None}  # fmt: skip
    return found


def update_rows(results: dict) -> list[dict[str, str]]:
    """The check's table: per window, v1, v2 and v2 − v1 (paired) for each metric."""
    from personalm import report

    return [
        {"held-out cues of": window, "metric": metric.replace("_acc", " accuracy"),
         "v1 (create, earlier window)": report.interval(results, f"update_{metric}_{window}_v1"),
         "v2 (update with the later window)": report.interval(results, f"update_{metric}_{window}_v2"),
         "v2 − v1 (paired)": report.interval(results, f"update_{metric}_{window}_v2_minus_v1"),
         "cues": str(results[f"update_{metric}_{window}_v2_minus_v1_items"])}
        for window in WINDOWS for metric in METRICS if f"update_{metric}_{window}_v1" in results
    ]  # fmt: skip
