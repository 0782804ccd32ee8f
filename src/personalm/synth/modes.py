"""Prompting modes: zero-shot, few-shot (demonstrations from a file) and persona-enhanced few-shot
(each demonstration paired with the persona that text-to-persona infers from it)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from personalm.errors import PersonalmError
from personalm.models.base import Message, TextModel
from personalm.personas import mining
from personalm.synth.tasks import Task
from personalm.tables import read_rows, require

MODES = ("zero-shot", "few-shot", "persona-few-shot")


@dataclass(frozen=True)
class Demo:
    """A demonstration output; `persona` is who it is for (inferred when the file has none)."""

    text: str
    persona: str | None = None
    inferred: bool = False


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise PersonalmError(f"unknown mode '{mode}'; expected one of {', '.join(MODES)}")


def read_demos(path: str | Path, column: str = "text") -> list[Demo]:
    """Demonstrations from JSONL/Parquet: a `text` column, optionally `persona`."""
    demos = []
    for line, row in read_rows(path):
        text = require(row, column, str, str(path), line)
        persona = row.get("persona")
        if persona is not None and not isinstance(persona, str):
            raise PersonalmError("expected column 'persona' to hold a string", source=str(path), line=line)
        demos.append(Demo(text.strip(), persona.strip() if persona else None))
    if not demos:
        raise PersonalmError("no demonstrations found (empty file)", source=str(path))
    return demos


def with_personas(demos: Sequence[Demo], model: TextModel, options: mining.MiningOptions | None = None) -> list[Demo]:
    """Fill in each missing demo persona by text-to-persona ('who is likely to write this?')."""
    missing = [(str(i), d.text) for i, d in enumerate(demos) if not d.persona]
    if not missing:
        return list(demos)
    kept, rejected = mining.extract(
        missing, lambda batch, params: model.generate(batch, params), model.model_id, ("write",), options
    )
    inferred = {row["source_text_id"]: row["persona"] for row in kept + rejected}
    return [Demo(d.text, inferred.get(str(i)) or "A person", True) if not d.persona else d for i, d in enumerate(demos)]


def chat(
    task: Task, mode: str, persona: str | None, demos: Sequence[Demo], constraints: tuple[str, ...] = ()
) -> list[Message]:
    """The chat prompt of one single-turn task for one persona (None: the no-persona baseline)."""
    messages: list[Message] = []
    if mode != "zero-shot":
        for demo in demos:
            demo_persona = demo.persona if mode == "persona-few-shot" else None
            messages.append({"role": "user", "content": task.instruction(demo_persona, constraints)})
            messages.append({"role": "assistant", "content": demo.text})
    messages.append({"role": "user", "content": task.instruction(persona, constraints)})
    return messages


def dialogue_system(
    task: Task, mode: str, persona: str, partner: str, demos: Sequence[Demo], constraints: tuple[str, ...] = ()
) -> str:
    """The system message of one dialogue speaker; demonstrations are shown as example messages."""
    text = task.instruction(persona, constraints, partner=partner)
    if mode == "zero-shot" or not demos:
        return text
    lines = []
    for demo in demos:
        who = f" (from {demo.persona})" if mode == "persona-few-shot" and demo.persona else ""
        lines.append(f"- Example message{who}: {demo.text}")
    return text + "\n\n" + "\n".join(lines)
