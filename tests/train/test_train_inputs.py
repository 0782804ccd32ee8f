"""`personalm train sft` checks its data before it loads a model (issue 17)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading the base model here is a failure: bad data must be reported first."""

    def build_model(config):
        raise AssertionError("the model loaded before the training data was checked")

    monkeypatch.setattr("personalm.train.loop.build_model", build_model)


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_missing_file_is_reported_before_the_model_loads(tmp_path: Path, cli) -> None:
    line = cli.one_error_line(cli.invoke("train", "sft", str(tmp_path / "absent.jsonl"), "-o", str(tmp_path / "a")))
    assert "absent.jsonl: no such file" in line


def test_a_row_with_only_an_assistant_message_is_one_line(tmp_path: Path, cli) -> None:
    data = write(tmp_path / "d.jsonl", [{"messages": [{"role": "assistant", "content": "hello"}]}])
    line = cli.one_error_line(cli.invoke("train", "sft", str(data), "-o", str(tmp_path / "a")))
    assert "d.jsonl:1: messages[0] is an assistant turn with nothing before it" in line


def test_a_persona_gives_an_assistant_only_row_its_context(tmp_path: Path) -> None:
    from personalm.train.data import read_examples

    data = write(tmp_path / "d.jsonl", [{"persona": "a nurse", "messages": [{"role": "assistant", "content": "hi"}]}])
    assert read_examples(data) == [(1, [{"role": "assistant", "content": "hi"}], "a nurse")]


@pytest.mark.parametrize(
    ("rows", "loss", "message"),
    [
        ([], "ce", "d.jsonl: no training examples"),
        ([{"messages": [{"role": "user", "content": "hi"}]}], "ce", "d.jsonl:1: no assistant turn"),
        ([{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}], "perce",
         "d.jsonl:1: no 'persona' field"),
        ([{"prompt": [], "chosen": [{"role": "assistant", "content": "a"}],
           "rejected": [{"role": "assistant", "content": "b"}]}], "dpo", "d.jsonl:1: 'prompt' is empty"),
    ],
)  # fmt: skip
def test_every_row_is_checked_before_the_model_loads(tmp_path: Path, rows, loss, message, cli) -> None:
    data = write(tmp_path / "d.jsonl", rows)
    assert message in cli.one_error_line(cli.invoke("train", "sft", str(data), "-o", str(tmp_path / "a"), "--loss", loss))


def test_an_output_that_is_a_file_is_refused(tmp_path: Path, cli) -> None:
    chat = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    data = write(tmp_path / "d.jsonl", [{"messages": chat}])
    (tmp_path / "a").write_text("not a folder")
    assert "not a directory" in cli.one_error_line(cli.invoke("train", "sft", str(data), "-o", str(tmp_path / "a")))
