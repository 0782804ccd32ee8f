"""The one reader of folders of text: which files, which ids, and 1-based positions in errors."""

from __future__ import annotations

import json

import pytest

from personalm import corpus
from personalm.errors import PersonalmError


def test_folder_of_text_files(tmp_path):
    (tmp_path / "a.txt").write_text("first text")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("# second")
    (tmp_path / "sub" / "c.markdown").write_text("third")
    (tmp_path / ".hidden.txt").write_text("not read")
    (tmp_path / "blank.txt").write_text("  \n")
    (tmp_path / "skip.bin").write_bytes(b"\xff")
    assert corpus.read_texts(tmp_path) == [
        ("a.txt", "first text"),
        ("sub/b.md", "# second"),
        ("sub/c.markdown", "third"),
    ]
    assert [p.name for p in corpus.files(tmp_path)] == ["a.txt", "blank.txt", "skip.bin", "b.md", "c.markdown"]
    (tmp_path / "c.txt").write_bytes(b"caf\xe9")
    with pytest.raises(PersonalmError, match=r"c.txt:1: not UTF-8 text \(unexpected end of data at byte 4\)"):
        corpus.read_texts(tmp_path)


def test_one_text_file_is_lines_or_one_document(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("line one\n\nline two\n")
    assert corpus.read_texts(path) == [("1", "line one"), ("3", "line two")]
    assert corpus.read_texts(path, whole_file=True) == [("notes.txt", "line one\n\nline two\n")]
    with pytest.raises(PersonalmError, match="missing.txt: no such file"):
        corpus.read_texts(tmp_path / "missing.txt", whole_file=True)


def test_tables_give_one_text_per_row(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in ({"id": "x", "body": "hello"}, {"body": "world"})))
    assert corpus.read_texts(rows, column="body") == [("x", "hello"), ("2", "world")]
    with pytest.raises(PersonalmError, match=r"rows.jsonl:1: expected column 'text'"):
        corpus.read_texts(rows)
    rows.write_text('{"id": 1, "text": "a"}\n{"id": 1, "text": "b"}\n')
    with pytest.raises(PersonalmError, match="ids must be unique"):
        corpus.read_texts(rows)


def test_empty_inputs_fail_clearly(tmp_path):
    with pytest.raises(PersonalmError, match=r"no \.txt or \.md or \.markdown files in this folder"):
        corpus.read_texts(tmp_path)
    (tmp_path / "blank.md").write_text("\n")
    with pytest.raises(PersonalmError, match="no texts found"):
        corpus.read_texts(tmp_path)


def test_decode_drops_a_byte_order_mark_and_counts_positions_from_one():
    assert corpus.decode(b"\xef\xbb\xbfhello", "f.txt") == "hello"
    with pytest.raises(PersonalmError, match=r"f.txt:2: not UTF-8 text \(.* at byte 9\)"):
        corpus.decode(b"\xef\xbb\xbfab\ncd\xff", "f.txt")
