"""Read structure out of model outputs and flag unusable ones, robustly enough for a small model.

Every function works on plain strings, so it can be tested on fixed answers without a model.
"""

from __future__ import annotations

import json
import re
from fractions import Fraction
from typing import Any

TOOL_KEYS = ("name", "description", "function_name", "input_args", "return", "depend")
MIN_WORDS = 5
MAX_WORDS = 1500

_REFUSAL = re.compile(
    r"\b(i'?m sorry|i am sorry|i apologi[sz]e|i cannot|i can'?t (?:help|assist|create|do|provide|write)|"
    r"i am unable|i'?m unable|i'?m not able|as an ai\b|as a language model|i do not have the ability|"
    r"i won'?t be able)",
    re.IGNORECASE,
)
_LABEL = re.compile(r"^\s*(?:\*\*)?(?:prompt|instruction|problem|question|request)\s*(?:\*\*)?\s*:\s*", re.I)
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def is_refusal(text: str) -> bool:
    """A refusal in the first 200 characters (later apologies are usually part of the content)."""
    return bool(_REFUSAL.search(text[:200]))


def generic_flags(text: str, finish_reason: str, min_words: int = MIN_WORDS, max_words: int = MAX_WORDS) -> list[str]:
    """Flags every task shares: empty, refusal, too_short, too_long, truncated (hit the token budget)."""
    words = text.split()
    if not words:
        return ["empty"]
    flags = []
    if is_refusal(text):
        flags.append("refusal")
    if len(words) < min_words:
        flags.append("too_short")
    if len(words) > max_words:
        flags.append("too_long")
    if finish_reason == "length":
        flags.append("truncated")
    return flags


def strip_label(text: str) -> str:
    """The text without a leading 'Prompt:'/'Problem:' label, surrounding quotes or markdown fences."""
    text = text.strip().strip("`").strip()
    text = _LABEL.sub("", text, count=1).strip()
    if len(text) > 1 and text[0] in "\"“'" and text[-1] in "\"”'":
        text = text[1:-1].strip()
    return text


def first_json_object(text: str) -> tuple[dict[str, Any] | None, str | None]:
    """The first balanced {...} that parses as a JSON object, else (None, reason).

    Also accepts an object serialized as a JSON string (as in the released Persona Hub tool file).
    """
    if text.strip().startswith('"'):
        try:
            inner = json.loads(text.strip())
        except json.JSONDecodeError:
            inner = None
        if isinstance(inner, str):
            return first_json_object(inner)
    start = text.find("{")
    if start < 0:
        return None, "no_json"
    depth, in_string, escape = 0, False, False
    for i in range(start, len(text)):
        ch = text[i]
        if in_string:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == '"':
                in_string = False
            continue
        if ch == '"':
            in_string = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                try:
                    value = json.loads(text[start : i + 1])
                except json.JSONDecodeError:
                    return None, "bad_json"
                return (value, None) if isinstance(value, dict) else (None, "bad_json")
    return None, "unclosed_json"


def parse_tool(text: str) -> tuple[dict[str, str], list[str]]:
    """(spec with every value as a string, flags). Flags: no_json/bad_json/unclosed_json,
    missing_key:K for each absent or empty key, bad_function_name."""
    value, problem = first_json_object(text)
    if value is None:
        return {}, [problem or "no_json"]
    spec = {key: _as_text(value[key]) for key in TOOL_KEYS if key in value}
    flags = [f"missing_key:{key}" for key in TOOL_KEYS if not spec.get(key, "").strip()]
    if spec.get("function_name") and not _IDENT.match(spec["function_name"].strip()):
        flags.append("bad_function_name")
    return spec, flags


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


_FINAL = [
    re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}"),
    re.compile(r"final answer\s*(?:is)?\s*[:=]?\s*(.+)", re.IGNORECASE),
    re.compile(r"(?:the )?answer\s*(?:is|:|=)\s*(.+)", re.IGNORECASE),
]
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?")


def final_answer(text: str) -> str | None:
    """The final answer of a solution: \\boxed{..}, 'Final answer: ..', 'the answer is ..',
    else the last number in the text; normalized with `normalize_answer`. None if nothing found."""
    for pattern in _FINAL:
        found = pattern.findall(text)
        if found:
            answer = normalize_answer(found[-1].split("\n")[0])
            if answer:
                return answer
    numbers = _NUMBER.findall(text)
    return normalize_answer(numbers[-1]) if numbers else None


def normalize_answer(answer: str) -> str:
    """A canonical form so equal answers compare equal: '$1,200.00.' -> '1200', '6/8' -> '3/4'."""
    text = answer.strip().strip("$ ").rstrip(".").replace("\\$", "").replace("$", "").strip()
    text = re.sub(r"^\\?\(|\\?\)$", "", text).strip()
    text = re.sub(r"\\(?:text|mathrm)\{([^}]*)\}", r"\1", text)
    number = _NUMBER.search(text)
    if number and (number.start() == 0 or text[: number.start()].strip() in {"x =", "x=", "=", "approximately"}):
        return _canonical_number(number.group())
    return re.sub(r"\s+", " ", text).lower()


def _canonical_number(raw: str) -> str:
    raw = raw.replace(",", "").replace(" ", "")
    try:
        value = Fraction(raw)
    except (ValueError, ZeroDivisionError):
        return raw
    if value.denominator == 1:
        return str(value.numerator)
    return str(value) if "/" in raw else f"{float(value):g}"


def key_values(text: str, keys: tuple[str, ...]) -> dict[str, str]:
    """'Key: value' lines (any case, optional markdown bold) for the given keys; a key's value runs
    until the next key line."""
    pattern = re.compile(r"^\s*[-*]*\s*\**\s*(" + "|".join(map(re.escape, keys)) + r")\s*\**\s*:\s*\**\s*(.*)$", re.I)
    found: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        match = pattern.match(line)
        if match:
            current = match.group(1).lower()
            found[current] = match.group(2).strip()
        elif current and line.strip():
            found[current] = (found[current] + " " + line.strip()).strip()
    return found
