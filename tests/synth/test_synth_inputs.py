"""`personalm synth` reads its template and world files as UTF-8 or says which byte is wrong (issue 17)."""

from __future__ import annotations

from pathlib import Path

import pytest

LATIN1 = "Le café de {{ persona }}\nà côté\n".encode("latin-1")


@pytest.mark.parametrize(
    ("task", "option", "name"),
    [("custom", "--template", "t.j2"), ("npc", "--world", "world.txt")],
)
def test_a_non_utf8_task_file_is_one_line_exit_2(tmp_path: Path, task: str, option: str, name: str, cli) -> None:
    (tmp_path / "p.jsonl").write_text('{"persona": "a chef"}\n')
    (tmp_path / name).write_bytes(LATIN1)
    ran = cli.invoke("synth", "-p", str(tmp_path / "p.jsonl"), "-t", task, option, str(tmp_path / name),
                   "-o", str(tmp_path / "out.jsonl"), "--no-cache")  # fmt: skip
    assert f"{name}:1: not UTF-8 text" in cli.one_error_line(ran)
    assert not (tmp_path / "out.jsonl").exists()


def test_a_missing_template_is_one_line(tmp_path: Path, cli) -> None:
    (tmp_path / "p.jsonl").write_text('{"persona": "a chef"}\n')
    ran = cli.invoke("synth", "-p", str(tmp_path / "p.jsonl"), "-t", "custom", "--template", str(tmp_path / "no.j2"),
                   "-o", str(tmp_path / "out.jsonl"))  # fmt: skip
    assert "no.j2: no such file" in cli.one_error_line(ran)
