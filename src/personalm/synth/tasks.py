"""Synthesis tasks: a Jinja2 instruction per task, and how to parse and check what comes back.

Templates see `persona`, `constraints` (a list), `world` (npc), `kind` (reasoning) and for
dialogue `partner`. A user template (task `custom`) sees the same variables; undefined names are
errors, not silent blanks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jinja2

from personalm.errors import PersonalmError
from personalm.synth import parsers

REASONING_KINDS = ("logical", "spatial")
NPC_KEYS = ("name", "role", "appearance", "backstory", "goal")
PREFERENCE_KEYS = ("preference", "question", "good answer", "bad answer 1", "bad answer 2", "bad answer 3")

_CONSTRAINTS = "{% if constraints %}\nRequirements: {{ constraints | join('; ') }}.{% endif %}"
_PERSONA_LINE = "{% if persona %}\n\nPersona: {{ persona }}{% endif %}"

TEMPLATES = {
    "math": (
        "Create a math problem{% if persona %} related to the following persona{% endif %}."
        + _PERSONA_LINE
        + _CONSTRAINTS
        + "\n\nWrite only the problem, with all the numbers needed to solve it. Do not solve it."
    ),
    "reasoning": (
        "Create a {{ kind }} reasoning problem{% if persona %} related to the following persona{% endif %}."
        + _PERSONA_LINE
        + _CONSTRAINTS
        + "{% if kind == 'spatial' %}\nIt should be about positions, directions, shapes or arrangements.{% else %}"
        "\nIt should need careful deduction from the facts given.{% endif %}"
        "\n\nWrite only the problem, then a line 'Answer:' with its answer."
    ),
    "instruction": (
        "{% if persona %}Guess a prompt (an instruction or question) that the following persona may ask an AI "
        "assistant.{% else %}Guess a prompt (an instruction or question) that a user may ask an AI assistant.{% endif %}"
        + _PERSONA_LINE
        + _CONSTRAINTS
        + "\n\nWrite only the prompt itself."
    ),
    "knowledge": (
        "{% if persona %}You are the following persona: {{ persona }}\n\n{% endif %}"
        "Write a Quora-style, knowledge-rich article{% if persona %} as this persona, about something you know well"
        "{% endif %}." + _CONSTRAINTS + "\n\nStart with a title line, then the article."
    ),
    "npc": (
        "Game world: {{ world }}\n\n"
        "{% if persona %}Imagine the following persona becomes a non-player character (NPC) in this world.\n"
        "Persona: {{ persona }}{% else %}Invent a non-player character (NPC) for this world.{% endif %}"
        + _CONSTRAINTS
        + "\n\nDescribe the NPC with these lines:\nName: ...\nRole: ...\nAppearance: ...\nBackstory: ...\nGoal: ..."
    ),
    "tool": (
        "Develop a tool (a high-level interface, no code){% if persona %} that the following persona may need"
        "{% endif %}." + _PERSONA_LINE + _CONSTRAINTS + "\n\nAnswer with one JSON object with exactly these keys: "
        '"name", "description", "function_name", "input_args", "return", "depend". Fill in your own values:\n'
        '{"name": "...", "description": "...", "function_name": "snake_case_name", "input_args": "...", '
        '"return": "...", "depend": "..."}'
    ),
    "preference": (
        "Write a test of whether an AI assistant respects a user's stated preference"
        "{% if persona %}, for a user who is the following persona{% endif %}."
        + _PERSONA_LINE
        + _CONSTRAINTS
        + "\n\nWrite exactly these six lines:\n"
        "Preference: something the user dislikes, avoids or cannot have, said in the first person\n"
        "Question: a later request where the usual answer would go against that preference\n"
        "Good answer: a short suggestion that respects the preference\n"
        "Bad answer 1: a short usual suggestion that goes against it\n"
        "Bad answer 2: another suggestion that goes against it\n"
        "Bad answer 3: a third suggestion that goes against it"
    ),
    "dialogue": (
        "You are {{ persona }}. You are talking with {{ partner }}."
        + _CONSTRAINTS
        + "\nReply with one short message in your own voice; do not write the other person's lines."
    ),
}
DIALOGUE_OPENER = "Start the conversation: greet them and bring up something you would want to talk about with them."


@dataclass(frozen=True)
class Task:
    """One synthesis task: its instruction template and how to parse and check an output."""

    name: str
    template: jinja2.Template
    parse: Callable[[str], tuple[dict[str, Any], list[str]]]
    min_words: int = parsers.MIN_WORDS
    variables: dict[str, Any] = field(default_factory=dict)

    def instruction(self, persona: str | None, constraints: tuple[str, ...] = (), **extra: Any) -> str:
        values = self.variables | {"persona": persona or "", "constraints": list(constraints)} | extra
        try:
            return self.template.render(**values).strip()
        except jinja2.UndefinedError as err:
            raise PersonalmError(f"template of task '{self.name}': {err.message}") from None

    def check(self, text: str, finish_reason: str) -> tuple[dict[str, Any], list[str]]:
        """(parsed fields, flags); no flags means the row is valid."""
        flags = parsers.generic_flags(text, finish_reason, self.min_words)
        if "empty" in flags:
            return {}, flags
        parsed, task_flags = self.parse(text)
        return parsed, flags + task_flags


def _no_structure(text: str) -> tuple[dict[str, Any], list[str]]:
    return {}, []


def _single(field_name: str) -> Callable[[str], tuple[dict[str, Any], list[str]]]:
    def parse(text: str) -> tuple[dict[str, Any], list[str]]:
        return {field_name: parsers.strip_label(text)}, []

    return parse


def _reasoning(text: str) -> tuple[dict[str, Any], list[str]]:
    problem, _, answer = text.partition("Answer:")
    parsed = {"problem": parsers.strip_label(problem), "answer": answer.strip()}
    return parsed, [] if parsed["answer"] else ["no_answer"]


def _knowledge(text: str) -> tuple[dict[str, Any], list[str]]:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    title = lines[0].strip().strip("#*").strip() if lines else ""
    title = title.removeprefix("Title:").strip().strip("\"'")
    return {"title": title, "body": "\n".join(lines[1:]).strip()}, [] if len(lines) > 1 else ["no_body"]


def _npc(text: str) -> tuple[dict[str, Any], list[str]]:
    found = parsers.key_values(text, NPC_KEYS)
    parsed = {key: found.get(key, "") for key in NPC_KEYS}
    return parsed, [f"missing_key:{k}" for k in ("name", "role") if not parsed[k]]


def _preference(text: str) -> tuple[dict[str, Any], list[str]]:
    """The six lines of a critic item; flagged when one is missing or an answer repeats another."""
    found = parsers.key_values(text, PREFERENCE_KEYS)
    parsed = {key: found.get(key, "").strip() for key in PREFERENCE_KEYS}
    flags = [f"missing_key:{key}" for key in PREFERENCE_KEYS if not parsed[key]]
    answers = [parsed[key].lower() for key in PREFERENCE_KEYS[2:] if parsed[key]]
    if len(set(answers)) < len(answers):
        flags.append("repeated_answer")
    if parsed["preference"] and parsed["preference"].lower() == parsed["question"].lower():
        flags.append("question_repeats_preference")
    return parsed, flags


def _tool(text: str) -> tuple[dict[str, Any], list[str]]:
    return parsers.parse_tool(text)


_PARSERS = {
    "math": (_single("problem"), 8),
    "reasoning": (_reasoning, 8),
    "instruction": (_single("prompt"), 3),
    "knowledge": (_knowledge, 30),
    "npc": (_npc, 8),
    "tool": (_tool, 5),
    "preference": (_preference, 20),
    "dialogue": (_no_structure, 5),
}
TASKS = (*_PARSERS, "custom")


def _environment() -> jinja2.Environment:
    return jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)


def compile_template(text: str, source: str) -> jinja2.Template:
    """A user template; a syntax error is one line naming the file and the line."""
    try:
        return _environment().from_string(text)
    except jinja2.TemplateSyntaxError as err:
        raise PersonalmError(f"template syntax error: {err.message}", source=source, line=err.lineno) from None


def get_task(
    name: str,
    *,
    world: str | None = None,
    kind: str = "logical",
    template: str | None = None,
    template_source: str = "<template>",
) -> Task:
    """A task by name; npc needs `world`, custom needs `template` (the Jinja2 text)."""
    if name not in TASKS:
        raise PersonalmError(f"unknown task '{name}'; expected one of {', '.join(TASKS)}")
    if name == "custom":
        if template is None:
            raise PersonalmError("task 'custom' needs --template FILE (a Jinja2 template)")
        return Task("custom", compile_template(template, template_source), _no_structure, 1, {"world": world or ""})
    if name == "npc" and not (world and world.strip()):
        raise PersonalmError("task 'npc' needs --world: a description of the game world")
    if name == "reasoning" and kind not in REASONING_KINDS:
        raise PersonalmError(f"--reasoning {kind}: expected one of {', '.join(REASONING_KINDS)}")
    parse, min_words = _PARSERS[name]
    variables = {"world": world or "", "kind": kind, "partner": ""}
    return Task(name, _environment().from_string(TEMPLATES[name]), parse, min_words, variables)
