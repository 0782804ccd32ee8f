"""Questions for feedback collection and evaluation: a built-in set, or any file of prompts."""

from __future__ import annotations

from pathlib import Path

from personalm.errors import PersonalmError
from personalm.tables import read_rows

BUILTIN_PROMPTS = (
    "Why is the sky blue?",
    "How do vaccines work?",
    "What causes the seasons on Earth?",
    "How does a computer store information?",
    "Why do we need sleep?",
    "What is inflation in economics?",
    "How do plants make their food?",
    "What is a black hole?",
    "How does the internet send a message from one place to another?",
    "Why do leaves change colour in autumn?",
    "What is DNA?",
    "How do airplanes stay in the air?",
    "What is climate change?",
    "How does the heart pump blood?",
    "What is machine learning?",
    "Why does ice float on water?",
    "How do volcanoes form?",
    "What is the stock market?",
    "How does memory work in the brain?",
    "Why do we have tides?",
    "What is electricity?",
    "How do bees make honey?",
    "What is a prime number?",
    "Why is exercise good for you?",
    "How does a rainbow form?",
    "What is photosynthesis used for by animals?",
    "How do antibiotics fight infections?",
    "What is gravity?",
    "How does recycling help the environment?",
    "What is an atom made of?",
    "How do earthquakes happen?",
    "What is the difference between weather and climate?",
    "How does a battery work?",
    "Why do cats purr?",
    "What is a democracy?",
    "How do fish breathe underwater?",
    "What makes music sound pleasant?",
    "How does a refrigerator keep food cold?",
    "Why is the ocean salty?",
    "What is the speed of light?",
)


def load_prompts(path: str | Path | None = None, column: str = "prompt") -> list[str]:
    """The built-in questions, or those in a text file (one per line) / JSONL / Parquet `column`."""
    if path is None:
        return list(BUILTIN_PROMPTS)
    prompts = []
    for line, row in read_rows(path):
        value = row.get("text") if "text" in row and column not in row else row.get(column)
        if not isinstance(value, str) or not value.strip():
            raise PersonalmError(f"expected a non-empty '{column}' string", source=str(path), line=line)
        prompts.append(value.strip())
    if not prompts:
        raise PersonalmError("no prompts", source=str(path))
    return prompts


def split_prompts(prompts: list[str], held_out: int) -> tuple[list[str], list[str]]:
    """(train, held-out): the last `held_out` prompts are kept for evaluation only."""
    if held_out >= len(prompts):
        raise PersonalmError(f"{len(prompts)} prompts cannot leave {held_out} held out and some to train on")
    return prompts[: len(prompts) - held_out], prompts[len(prompts) - held_out :]
