"""Run a synthesis task over personas with one batched call per stage.

All prompts of a stage go to the model in one `generate` call; with the generation cache
(`load_model(..., cache=True)`) that call is committed chunk by chunk and keyed by each prompt's
occurrence in the call, so a killed run re-run regenerates only the unfinished chunk and the
output (written atomically at the end) has every row exactly once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from personalm.errors import PersonalmError
from personalm.models.base import Generation, Message, ProgressCallback, SamplingParams, TextModel
from personalm.synth.modes import Demo, chat, check_mode, dialogue_system
from personalm.synth.tasks import DIALOGUE_OPENER, Task

Row = dict[str, Any]


@dataclass(frozen=True)
class SynthOptions:
    mode: str = "zero-shot"
    constraints: tuple[str, ...] = ()
    max_tokens: int = 256
    temperature: float = 0.8
    top_p: float = 0.95
    seed: int = 0
    turns: int = 4  # dialogue: messages in all, speakers alternating
    turn_tokens: int = 64  # dialogue: token budget per message

    def __post_init__(self) -> None:
        check_mode(self.mode)
        if self.turns < 2:
            raise PersonalmError("--turns must be at least 2 (a dialogue has two speakers)")

    def params(self, max_tokens: int | None = None, stop: tuple[str, ...] = ()) -> SamplingParams:
        return SamplingParams(
            max_tokens=max_tokens or self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            seed=self.seed,
            stop=stop,
        )


def work(n_personas: int, task: Task, options: SynthOptions) -> int:
    """Generations a run makes (for a progress bar): one per persona, or one per dialogue message."""
    return n_personas * (options.turns if task.name == "dialogue" else 1)


def synthesize(
    personas: Sequence[Row],
    task: Task,
    model: TextModel,
    options: SynthOptions,
    demos: Sequence[Demo] = (),
    progress: ProgressCallback | None = None,
) -> list[Row]:
    """One output row per persona (rows with `id` and `persona`; persona None = no-persona baseline)."""
    if options.mode != "zero-shot" and not demos:
        raise PersonalmError(f"mode '{options.mode}' needs demonstrations (--demos FILE)")
    if task.name == "dialogue":
        return _dialogues(personas, task, model, options, demos, progress)
    prompts = [chat(task, options.mode, p.get("persona"), demos, options.constraints) for p in personas]
    params = options.params()
    generations = model.generate(prompts, params, progress)
    rows = []
    for persona, prompt, generation in zip(personas, prompts, generations, strict=True):
        parsed, flags = task.check(generation.text, generation.finish_reason)
        rows.append(_row(persona, task, options, prompt, generation.text, parsed, flags, generation, model, params))
    return rows


def _row(persona, task, options, prompt, text, parsed, flags, generation, model, params, **extra) -> Row:
    return {
        "id": f"{persona['id']}:{task.name}:{options.mode}",
        "persona_id": persona["id"],
        "persona": persona.get("persona"),
        **extra,
        "task": task.name,
        "mode": options.mode,
        "constraints": list(options.constraints),
        "prompt": prompt,
        "output": text,
        "parsed": parsed,
        "flags": flags,
        "valid": not flags,
        "finish_reason": generation.finish_reason,
        "completion_tokens": generation.completion_tokens,
        "model_id": model.model_id,
        "sampling": params.to_dict(),
        "seed": params.seed,
    }


def _clean_turn(text: str) -> str:
    """The first paragraph of a message, without a 'Name:' speaker label the model may add."""
    first = text.strip().split("\n\n")[0].strip()
    head, sep, rest = first.partition(":")
    return rest.strip() if sep and len(head.split()) <= 3 and rest.strip() else first


def _dialogues(personas, task, model, options, demos, progress) -> list[Row]:
    """Persona i talks with persona i+1 (wrapping), i speaking first; one batched call per turn."""
    if len(personas) < 2:
        raise PersonalmError("task 'dialogue' needs at least two personas")
    pairs = [(p, personas[(i + 1) % len(personas)]) for i, p in enumerate(personas)]
    systems = [
        [
            dialogue_system(task, options.mode, a["persona"], b["persona"], demos, options.constraints),
            dialogue_system(task, options.mode, b["persona"], a["persona"], demos, options.constraints),
        ]
        for a, b in pairs
    ]
    params = options.params(options.turn_tokens, stop=("\n\n",))
    turns: list[list[tuple[int, str]]] = [[] for _ in pairs]
    last: list[Generation] = []
    truncated = [False] * len(pairs)
    for turn in range(options.turns):
        speaker = turn % 2
        prompts = [_turn_prompt(systems[i][speaker], turns[i], speaker) for i in range(len(pairs))]
        last = model.generate(prompts, params, progress)
        for i, generation in enumerate(last):
            turns[i].append((speaker, _clean_turn(generation.text)))
            truncated[i] |= generation.finish_reason == "length"
    rows = []
    for i, (a, b) in enumerate(pairs):
        lines = [{"speaker": "AB"[s], "text": t} for s, t in turns[i]]
        output = "\n".join(f"{line['speaker']}: {line['text']}" for line in lines)
        finish = "length" if truncated[i] else last[i].finish_reason
        generation = Generation(output, finish, 0, sum(len(t.split()) for _, t in turns[i]))
        parsed = {"turns": lines}
        flags = [f for f in task.check(output, finish)[1] if f != "truncated"]
        flags += ["empty_turn"] if any(not line["text"] for line in lines) else []
        prompt = [{"role": "system", "content": s} for s in systems[i]]
        rows.append(
            _row(a, task, options, prompt, output, parsed, flags, generation, model, params,
                 partner_id=b["id"], partner=b["persona"])
        )  # fmt: skip
    return rows


def _turn_prompt(system: str, turns: list[tuple[int, str]], speaker: int) -> list[Message]:
    """The speaker's view: own messages as assistant turns, the partner's as user turns."""
    messages: list[Message] = [{"role": "system", "content": system}]
    if not turns or turns[0][0] == speaker:
        messages.append({"role": "user", "content": DIALOGUE_OPENER})
    messages.extend({"role": "assistant" if s == speaker else "user", "content": t or "..."} for s, t in turns)
    return messages


def summary(rows: Sequence[Row]) -> dict[str, Any]:
    """Counts a reader checks first: valid share, each flag, finish reasons, mean output words."""
    flags = Counter(flag.split(":")[0] if flag.startswith("missing_key") else flag for r in rows for flag in r["flags"])
    valid = sum(r["valid"] for r in rows)
    return {
        "rows": len(rows),
        "valid": valid,
        "valid_rate": round(valid / len(rows), 4) if rows else 0.0,
        "flags": dict(flags.most_common()),
        "finish_reasons": dict(Counter(r["finish_reason"] for r in rows)),
        "mean_words": round(sum(len(r["output"].split()) for r in rows) / max(len(rows), 1), 1),
    }
