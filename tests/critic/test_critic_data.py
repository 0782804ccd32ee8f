"""The critic's data: the topic split, the PrefEval reader, leakage checks, synthetic items."""

from __future__ import annotations

import random

import pytest

from personalm.critic.data import (
    CriticItem,
    check_no_leak,
    in_topics,
    prefeval_items,
    shuffled,
    split_topics,
    synthetic_items,
    with_distractors,
)
from personalm.errors import PersonalmError

PREFEVAL_TOPICS = [
    "education_learning_styles", "entertain_games", "entertain_shows", "lifestyle_beauty", "lifestyle_fit",
    "pet_ownership", "shop_fashion", "shop_motors", "travel_activities", "travel_restaurant",
]  # fmt: skip


def test_split_is_deterministic_disjoint_and_covers_every_topic():
    split = split_topics(PREFEVAL_TOPICS, seed=0)
    assert split == split_topics(list(reversed(PREFEVAL_TOPICS)), seed=0)
    assert [len(split[k]) for k in ("train", "validation", "test")] == [6, 2, 2]
    names = split["train"] + split["validation"] + split["test"]
    assert sorted(names) == sorted(PREFEVAL_TOPICS) and len(set(names)) == len(names)
    assert split_topics(PREFEVAL_TOPICS, seed=1) != split


def test_split_of_three_topics_holds_one_out_each_and_fewer_is_an_error():
    split = split_topics(["a", "b", "c"])
    assert [len(split[k]) for k in ("train", "validation", "test")] == [1, 1, 1]
    with pytest.raises(PersonalmError, match="at least 3"):
        split_topics(["a", "b"])


def test_prefeval_items_read_the_layout(tmp_path, prefeval_folder):
    items = prefeval_items(prefeval_folder(tmp_path))
    assert len(items) == 8 and {i.topic for i in items} == {f.stem for f in (tmp_path / "prefeval" / "mcq_options").iterdir()}
    assert items[0].answers[0] == "A chickpea curry." and len(items[0].answers) == 4


@pytest.mark.parametrize("layout", ["nothing", "no_json", "no_usable_rows"])
def test_unknown_layout_is_one_clear_error(tmp_path, layout):
    folder = tmp_path / "prefeval" / "mcq_options"
    if layout != "nothing":
        folder.mkdir(parents=True)
    if layout == "no_usable_rows":
        (folder / "t.json").write_text('[{"preference": "x", "question": "y", "options": ["a", "b"]}]')
    with pytest.raises(PersonalmError, match="preference-file layout|unknown PrefEval layout|no PrefEval topic files"):
        prefeval_items(tmp_path)


def test_training_items_never_come_from_held_out_topics(tmp_path, prefeval_folder):
    items = prefeval_items(prefeval_folder(tmp_path))
    split = split_topics(sorted({i.topic for i in items}))
    train = in_topics(items, split["train"])
    held = in_topics(items, split["validation"] + split["test"])
    check_no_leak(train, split, [i.preference for i in held])
    assert not {i.topic for i in train} & set(split["validation"] + split["test"])
    with pytest.raises(PersonalmError, match="held-out topics"):
        check_no_leak(train + held[:1], split)
    copy = CriticItem("synthetic", held[0].preference.upper(), "q", ("a", "b"), "synthetic")
    with pytest.raises(PersonalmError, match="repeats 1 held-out"):
        check_no_leak([copy], split, [i.preference for i in held])


def test_shuffled_tracks_the_respecting_answer():
    item = CriticItem("t", "p", "q", ("good", "bad1", "bad2", "bad3"))
    rng = random.Random(3)
    for _ in range(10):
        answers, right = shuffled(item, rng)
        assert answers[right] == "good" and sorted(answers) == sorted(item.answers)


def test_distractors_hold_the_items_own_preference_once():
    items = [CriticItem("t", f"p{k}", "q", ("a", "b")) for k in range(5)]
    stated = with_distractors(items, [i.preference for i in items], 3, seed=0)
    for item, prefs in zip(items, stated, strict=True):
        assert prefs.count(item.preference) == 1 and len(prefs) == 4 and len(set(prefs)) == 4


def test_synthetic_items_keep_valid_unique_rows():
    parsed = {
        "preference": "I avoid sugar.", "question": "What dessert?", "good answer": "Fruit salad.",
        "bad answer 1": "Cake.", "bad answer 2": "Ice cream.", "bad answer 3": "Candy.",
    }  # fmt: skip
    rows = [
        {"valid": True, "parsed": parsed},
        {"valid": True, "parsed": parsed | {"preference": "i avoid SUGAR."}},
        {"valid": False, "parsed": {}},
    ]
    items, dropped = synthetic_items(rows)
    assert dropped == {"invalid": 1, "duplicate": 1}
    assert items == [
        CriticItem(
            "synthetic",
            "I avoid sugar.",
            "What dessert?",
            ("Fruit salad.", "Cake.", "Ice cream.", "Candy."),
            "synthetic",
        )
    ]
