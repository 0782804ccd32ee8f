"""Deterministic benchmark inputs: persona-driven synthesis prompts, the batch workload of this
project. Personas come from the Persona Hub sample in the data folder when present."""

from __future__ import annotations

import json
import random
from pathlib import Path

FALLBACK_PERSONAS = [
    "a retired nurse who volunteers at a community garden",
    "a high-school physics teacher who coaches the robotics club",
    "a freelance translator specialising in Japanese manga",
    "a long-haul truck driver who listens to history podcasts",
    "a pastry chef opening her first bakery",
    "a graduate student studying coral reef ecology",
    "a city bus mechanic and amateur jazz drummer",
    "a tax accountant who restores vintage bicycles",
]
TASKS = [
    "Create a short math word problem related to this persona.",
    "Guess a question this persona might ask an AI assistant. Write only the question.",
    "Write two sentences this persona might post online about their day.",
    "Describe a tool this persona would need, in one sentence.",
]


def synthesis_prompts(count: int, data_dir: Path | None, seed: int = 0) -> list[list[dict[str, str]]]:
    pool = personas(data_dir)
    rng = random.Random(seed)
    chosen = rng.sample(pool, count) if len(pool) >= count else [rng.choice(pool) for _ in range(count)]
    return [
        [{"role": "user", "content": f"Persona: {persona}\n{TASKS[i % len(TASKS)]}"}]
        for i, persona in enumerate(chosen)
    ]


def personas(data_dir: Path | None) -> list[str]:
    path = data_dir / "personahub" / "tool_personas.jsonl" if data_dir else None
    if path is None or not path.is_file():
        return FALLBACK_PERSONAS
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line)["persona"].strip() for line in handle if line.strip()]
