"""tables.py: reading rows with precise errors, writing them atomically (no model needed)."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from personalm.errors import PersonalmError
from personalm.tables import input_format, output_format, read_rows, require, write_rows


def _error(path: str | Path, fmt: str | None = None) -> str:
    """The message of the PersonalmError that reading `path` raises (it must be one line)."""
    with pytest.raises(PersonalmError) as info:
        list(read_rows(path, fmt))
    message = str(info.value)
    assert "\n" not in message
    return message


def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# -- reading ----------------------------------------------------------------------------------


def test_read_jsonl_skips_blank_lines_and_numbers_rows_by_line(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n\n   \n{"a": "zwei", "b": [1, 2]}\n{"c": null}', encoding="utf-8")
    assert list(read_rows(path)) == [(1, {"a": 1}), (4, {"a": "zwei", "b": [1, 2]}), (5, {"c": None})]


def test_read_ndjson_and_crlf_lines(tmp_path: Path) -> None:
    path = _write_bytes(tmp_path / "rows.ndjson", b'{"a": 1}\r\n\r\n{"a": 2}\r\n')
    assert list(read_rows(path)) == [(1, {"a": 1}), (3, {"a": 2})]


def test_read_text_gives_one_row_per_non_blank_line(tmp_path: Path) -> None:
    path = tmp_path / "texts.txt"
    path.write_text("first line\n\n  second, with spaces  \n\u00e9t\u00e9 \u2603\n", encoding="utf-8")
    assert list(read_rows(path)) == [
        (1, {"text": "first line"}),
        (3, {"text": "  second, with spaces  "}),
        (4, {"text": "\u00e9t\u00e9 \u2603"}),
    ]
    crlf = _write_bytes(tmp_path / "crlf.md", b"one\r\ntwo\r\n")
    assert list(read_rows(crlf)) == [(1, {"text": "one"}), (2, {"text": "two"})]


def test_read_parquet_numbers_rows_from_one(tmp_path: Path) -> None:
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": "x", "n": 1}, {"prompt": "y", "n": 2}]), path)
    assert list(read_rows(path)) == [(1, {"prompt": "x", "n": 1}), (2, {"prompt": "y", "n": 2})]


def test_declared_format_overrides_the_extension(tmp_path: Path) -> None:
    path = tmp_path / "rows.data"
    path.write_text('{"a": 1}\n', encoding="utf-8")
    assert list(read_rows(path, "jsonl")) == [(1, {"a": 1})]
    assert list(read_rows(path, "text")) == [(1, {"text": '{"a": 1}'})]
    assert input_format(path, "parquet") == "parquet"
    assert input_format("-") == "text"


def test_read_stdin_decodes_utf8_strictly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("a\n\n\u00e9\n".encode()), encoding="utf-8"))
    assert list(read_rows("-")) == [(1, {"text": "a"}), (3, {"text": "\u00e9"})]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"ok\n\xff\xfe\n"), encoding="utf-8"))
    with pytest.raises(PersonalmError, match=r"^<stdin>:2: not UTF-8"):
        list(read_rows("-"))


# -- reading errors ---------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.jsonl"
    assert _error(path) == f"{path}: no such file"
    assert _error(tmp_path).startswith(f"{tmp_path}: ")  # a directory is not a file either


def test_invalid_json_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": oops}\n{"a": 4}\n', encoding="utf-8")
    message = _error(path)
    assert message.startswith(f"{path}:3: invalid JSON")
    assert "column" in message


def test_rows_before_an_error_are_still_yielded(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n{broken\n', encoding="utf-8")
    rows = read_rows(path)
    assert next(rows) == (1, {"a": 1})
    with pytest.raises(PersonalmError, match=r":2: invalid JSON"):
        next(rows)


@pytest.mark.parametrize("line", ["[1, 2]", '"a string"', "42", "null"])
def test_non_object_json_line(tmp_path: Path, line: str) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text(f'{{"a": 1}}\n{line}\n', encoding="utf-8")
    assert _error(path) == f"{path}:2: expected a JSON object per line"


@pytest.mark.parametrize("suffix", [".jsonl", ".txt"])
def test_non_utf8_file_names_file_and_line(tmp_path: Path, suffix: str) -> None:
    path = _write_bytes(tmp_path / f"latin1{suffix}", b'{"a": "ok"}\n{"a": "caf\xe9"}\n')
    message = _error(path)
    assert message.startswith(f"{path}:2: not UTF-8")


def test_non_utf8_far_into_a_large_file_reports_its_own_line(tmp_path: Path) -> None:
    body = b"".join(b'{"i": %d}\n' % i for i in range(5000)) + b'{"bad": "\xff"}\n'
    path = _write_bytes(tmp_path / "big.jsonl", body)
    assert _error(path).startswith(f"{path}:5001: not UTF-8")


@pytest.mark.parametrize("content", [b"", b"PAR1 this is not parquet", b"{}\n"])
def test_unreadable_parquet(tmp_path: Path, content: bytes) -> None:
    path = _write_bytes(tmp_path / "broken.parquet", content)
    assert _error(path).startswith(f"{path}: not a readable Parquet file")


@pytest.mark.parametrize("name", ["rows.csv", "rows", "rows.json"])
def test_unsupported_input_extension(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text('{"a": 1}\n', encoding="utf-8")
    message = _error(path)
    assert message.startswith(f"{path}: unsupported input type")
    assert ".jsonl" in message and ".parquet" in message and ".txt" in message


# -- require ----------------------------------------------------------------------------------


def test_require_returns_the_value() -> None:
    assert require({"prompt": "hi"}, "prompt", str, "in.jsonl", 1) == "hi"
    assert require({"n": 3}, "n", (int, float), "in.jsonl", 1) == 3


def test_require_missing_column() -> None:
    with pytest.raises(PersonalmError) as info:
        require({"text": "hi"}, "prompt", str, "data/in.jsonl", 7)
    message = str(info.value)
    assert message.startswith("data/in.jsonl:7: ")
    assert "'prompt'" in message and "str" in message and "missing" in message


@pytest.mark.parametrize(("value", "got"), [(12, "int"), (None, "NoneType"), (["a"], "list")])
def test_require_wrong_type(value: object, got: str) -> None:
    with pytest.raises(PersonalmError) as info:
        require({"prompt": value}, "prompt", str, "in.parquet", 3)
    message = str(info.value)
    assert message.startswith("in.parquet:3: ")
    assert "'prompt'" in message and f"got {got}" in message and "missing" not in message


def test_require_names_every_accepted_type() -> None:
    with pytest.raises(PersonalmError, match=r"<stdin>:2: .*'score'.*int or float.*got str"):
        require({"score": "high"}, "score", (int, float), "<stdin>", 2)


# -- writing ----------------------------------------------------------------------------------

ROWS = [
    {"id": 1, "text": "caf\u00e9 \u2603", "embedding": [0.25, -1.0], "meta": {"k": "v"}},
    {"id": 2, "text": "", "embedding": [0.0, 3.5], "meta": {"k": "w"}},
]


def test_write_jsonl_round_trips_as_utf8(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "dir" / "out.jsonl"
    assert write_rows(path, iter(ROWS)) == 2
    assert [row for _, row in read_rows(path)] == ROWS
    raw = path.read_bytes().decode("utf-8")
    assert "caf\u00e9" in raw  # not \u-escaped
    assert raw.count("\n") == 2 and raw.endswith("\n")


def test_write_parquet_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "out.parquet"
    assert write_rows(path, ROWS) == 2
    assert pq.read_table(path).to_pylist() == ROWS
    assert [row for _, row in read_rows(path)] == ROWS


def test_write_replaces_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text("old\n", encoding="utf-8")
    write_rows(path, [{"a": 1}])
    assert path.read_text(encoding="utf-8") == '{"a": 1}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


def test_written_file_gets_ordinary_permissions(tmp_path: Path) -> None:
    """The temporary file must not leak its private 0600 mode onto the dataset."""
    reference = tmp_path / "reference"
    reference.write_text("x")
    for name in ("out.jsonl", "out.parquet"):
        write_rows(tmp_path / name, [{"a": 1}])
        assert (tmp_path / name).stat().st_mode & 0o777 == reference.stat().st_mode & 0o777, name


@pytest.mark.parametrize("name", ["out.csv", "out.txt", "out"])
def test_write_refuses_unsupported_extension_before_touching_anything(tmp_path: Path, name: str) -> None:
    path = tmp_path / "new-folder" / name
    with pytest.raises(PersonalmError, match="unsupported output type") as info:
        write_rows(path, [{"a": 1}])
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    assert not (tmp_path / "new-folder").exists()
    with pytest.raises(PersonalmError):
        output_format(path)
    assert output_format(tmp_path / "x.PARQUET") == "parquet"


def _assert_untouched(folder: Path, path: Path, old: bytes) -> None:
    assert path.read_bytes() == old
    assert [p.name for p in folder.iterdir()] == [path.name], "a temporary file was left behind"


@pytest.mark.parametrize(
    "rows",
    [
        [{"id": 1, "v": 1}, {"id": 2, "v": "x"}],  # mixed types in one column
        [{"id": 1}, {"id": "b"}],  # str after int
        [{"v": [1, 2]}, {"v": {"k": 1}}],  # list and struct in one column
        [{"v": object()}],  # nothing pyarrow can convert
    ],
)
def test_failed_parquet_write_keeps_old_file_and_leaves_no_temp(tmp_path: Path, rows: list[dict]) -> None:
    path = tmp_path / "out.parquet"
    write_rows(path, [{"id": 0, "v": 0}])
    old = path.read_bytes()
    with pytest.raises(Exception):  # noqa: B017 - any error, as long as nothing is half-written
        write_rows(path, rows)
    _assert_untouched(tmp_path, path, old)


def test_failed_parquet_write_is_a_clear_user_error(tmp_path: Path) -> None:
    with pytest.raises(PersonalmError) as info:
        write_rows(tmp_path / "out.parquet", [{"id": 1}, {"id": "b"}])
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'out.parquet'}: ") and "\n" not in message
    assert list(tmp_path.iterdir()) == []


def test_failed_jsonl_write_midway_keeps_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text('{"old": true}\n', encoding="utf-8")
    old = path.read_bytes()
    rows = [{"a": 1}, {"a": 2}, {"a": object()}, {"a": 4}]  # the third row is not JSON-serializable
    with pytest.raises(TypeError):
        write_rows(path, rows)
    _assert_untouched(tmp_path, path, old)


def test_failed_write_of_a_new_file_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        write_rows(tmp_path / "new.jsonl", [{"a": {1, 2}}])
    assert list(tmp_path.iterdir()) == []


def test_a_generator_that_fails_leaves_old_file(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text("keep me\n", encoding="utf-8")

    def rows():
        yield {"a": 1}
        raise RuntimeError("upstream failed")

    with pytest.raises(RuntimeError):
        write_rows(path, rows())
    _assert_untouched(tmp_path, path, b"keep me\n")


def test_write_rows_accepts_string_paths(tmp_path: Path) -> None:
    path = os.path.join(tmp_path, "out.jsonl")
    write_rows(path, [{"x": "y"}])
    assert json.loads(Path(path).read_text(encoding="utf-8")) == {"x": "y"}
