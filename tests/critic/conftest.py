"""The critic's fixtures: a tiny PrefEval folder (the real layout, made-up items)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

TOPICS = {
    "pets": [
        ("I dislike reptiles as pets.", "Which pet should I get for my flat?",
         ["A rescue cat from the shelter.", "A bearded dragon.", "A corn snake.", "A leopard gecko."]),
        ("I have a phobia of birds.", "What pet is good for a child?",
         ["A guinea pig.", "A budgie.", "A parrot.", "A canary."]),
    ],
    "food": [
        ("I follow a strict vegan diet.", "What should I cook tonight?",
         ["A chickpea curry.", "A beef stew.", "Grilled salmon.", "Chicken wings."]),
        ("I can't stand spicy food.", "Which dish should I order?",
         ["A mild risotto.", "A vindaloo.", "Szechuan hot pot.", "Buffalo wings with ghost pepper."]),
    ],
    "travel": [
        ("I have a fear of heights.", "What should I do in Paris?",
         ["A boat tour on the Seine.", "Climb the Eiffel Tower.", "A hot-air balloon ride.", "Skydiving nearby."]),
        ("I avoid crowded places.", "Where should I go on holiday?",
         ["A quiet cabin in the woods.", "Times Square at New Year.", "A music festival.", "Disneyland in August."]),
    ],
    "games": [
        ("I don't enjoy games with pixel art.", "Which indie game should I play?",
         ["Journey.", "Celeste, a pixel art platformer.", "Stardew Valley (pixel art).", "Terraria (pixel art)."]),
        ("I dislike card games.", "What game should we play tonight?",
         ["Charades.", "Poker.", "Bridge.", "Uno."]),
    ],
}  # fmt: skip


def write_prefeval(root: Path, topics: dict = TOPICS) -> Path:
    """`root`/prefeval/mcq_options/<topic>.json in PrefEval's layout; returns `root`."""
    folder = root / "prefeval" / "mcq_options"
    folder.mkdir(parents=True, exist_ok=True)
    for topic, rows in topics.items():
        items = [
            {"preference": p, "question": q, "explanation": "", "classification_task_options": options}
            for p, q, options in rows
        ]
        (folder / f"{topic}.json").write_text(json.dumps(items))
    return root


@pytest.fixture
def prefeval_folder() -> Callable[..., Path]:
    """`write_prefeval`: makes the folder under the root a test gives it."""
    return write_prefeval
