"""Persona-chat adapter: turn parsing, CSV errors, split by conversation, training windows, test replies."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from personalm.errors import PersonalmError
from personalm.paths import data_dir
from personalm.perce.persona_chat import load_conversations, parse_turns, reply_rows, split, window_rows

HEADER = ["user 1 personas", "user 2 personas", "Best Generated Conversation"]


def _write_csv(path: Path, count: int) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        for i in range(count):
            talk = "\n".join(
                f"User {1 + t % 2}: conversation {i} turn {t} about {'cookies' if t % 2 == 0 else 'rockets'}"
                for t in range(9)
            )
            writer.writerow([f"I bake cookies.\nI have {i} dogs.", f"I build rockets.\nConversation {i}.", talk])
    return path


def test_turns_parse_with_stage_directions_and_continuation_lines():
    text = "User 1: Hi!\n*User 2:* Hello *\n[They sit down]\n* * *\nUser 1: Recipe:\n1 cup of flour\nuser 2: Nice."
    assert parse_turns(text) == [("1", "Hi!"), ("2", "Hello"), ("1", "Recipe:\n1 cup of flour"), ("2", "Nice.")]


def test_conversations_load_and_split_by_conversation_seeded(tmp_path):
    conversations = load_conversations(_write_csv(tmp_path / "c.csv", 10))
    assert len(conversations) == 10
    first = conversations[0]
    assert first.personas == {"1": ["I bake cookies.", "I have 0 dogs."], "2": ["I build rockets.", "Conversation 0."]}
    assert len(first.turns) == 9 and first.turns[0] == ("1", "conversation 0 turn 0 about cookies")
    train, test = split(conversations, 0.3, seed=4)
    assert len(test) == 3 and len(train) == 7
    assert {c.line for c in train}.isdisjoint(c.line for c in test)
    assert [c.line for c in split(conversations, 0.3, seed=4)[1]] == [c.line for c in test]
    assert [c.line for c in split(conversations, 0.3, seed=5)[1]] != [c.line for c in test]


def test_training_windows_take_each_speakers_side(tmp_path):
    conversation = load_conversations(_write_csv(tmp_path / "c.csv", 1))[0]
    rows = window_rows([conversation], window=4)
    speaker2 = [r for r in rows if r["persona"].startswith("I build rockets")]
    speaker1 = [r for r in rows if r["persona"].startswith("I bake cookies")]
    assert speaker1 and speaker2
    for row in speaker2:
        assert all(("rockets" in m["content"]) == (m["role"] == "assistant") for m in row["messages"])
        assert len(row["messages"]) <= 4 and row["messages"][0]["role"] == "user"
    for row in speaker1:
        assert all(("cookies" in m["content"]) == (m["role"] == "assistant") for m in row["messages"])
    covered = [m["content"] for r in speaker2 for m in r["messages"] if m["role"] == "assistant"]
    assert covered == [text for speaker, text in conversation.turns if speaker == "2"]


def test_test_rows_are_one_reply_after_the_turns_before_it(tmp_path):
    conversation = load_conversations(_write_csv(tmp_path / "c.csv", 1))[0]
    rows = reply_rows([conversation], window=3)
    assert len(rows) == 8
    row = rows[4]
    assert row["turn"] == 5 and row["reply"] == "conversation 0 turn 5 about rockets"
    assert row["persona"] == "I build rockets.\nConversation 0."
    assert [m["content"] for m in row["context"]] == [
        "conversation 0 turn 3 about rockets",
        "conversation 0 turn 4 about cookies",
    ]
    assert [m["role"] for m in row["context"]] == ["assistant", "user"]


def test_bad_csv_files_fail_with_one_line(tmp_path):
    with pytest.raises(PersonalmError, match="no such file"):
        load_conversations(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("user 1 personas,text\na,b\n")
    with pytest.raises(PersonalmError, match=r"bad\.csv:1: missing column\(s\) 'user 2 personas'"):
        load_conversations(bad)
    empty = tmp_path / "empty.csv"
    with open(empty, "w", newline="") as handle:
        csv.writer(handle).writerows([HEADER, ["", "x", "User 1: hi\nUser 2: ho"]])
    with pytest.raises(PersonalmError, match="no usable conversations"):
        load_conversations(empty)


def test_the_real_persona_chat_file():
    path = data_dir() / "persona_chat" / "valid.csv"
    if not path.is_file():
        pytest.skip(f"persona-chat data not found at {path} (set PERSONALM_DATA)")
    conversations = load_conversations(path)
    assert len(conversations) > 950
    train, test = split(conversations, 0.2, seed=0)
    replies = reply_rows(test, window=6)
    assert len(replies) > 20 * len(test)
    assert all(r["context"][-1]["role"] == "user" and r["reply"] for r in replies)
    assert all(len(r["context"]) <= 5 for r in replies)
