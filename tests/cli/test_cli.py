"""The `personalm` CLI run as a subprocess, as a user runs it: outputs, caching, and user errors.

Every user error must end as exit code 2 with exactly one `error: ...` line on stderr, no
traceback, and no half-written output. The commands that fail before any model loads run
concurrently in one module-scoped fixture (each in its own folder) to keep this module fast.
"""

from __future__ import annotations

import json
import socket
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow.parquet as pq
import pytest

if TYPE_CHECKING:
    from conftest import Cli
    from conftest import CliResult as Result

MODEL_NAME = "smollm2-135m-instruct"
OLD_CONTENT = b'{"old": "output, must survive a failed run"}\n'
ROW_KEYS = {"id", "prompt", "output", "finish_reason", "prompt_tokens", "completion_tokens", "model_id", "params"}


def ok(result: Result) -> Result:
    assert result.returncode == 0, str(result)
    assert "Traceback" not in result.stdout + result.stderr, str(result)
    return result


def jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def closed_port() -> int:
    """A loopback port that was bound a moment ago and is closed now: connecting is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- commands that fail (or finish) without loading a model, run concurrently ------------------------


@dataclass
class Case:
    args: list[str]
    files: dict[str, bytes | str] = field(default_factory=dict)
    stdin: bytes | str | None = None
    env: dict[str, str | None] = field(default_factory=dict)
    existing_output: str | None = None  # created with OLD_CONTENT beforehand; must survive
    expect: tuple[str, ...] = ()  # substrings of the error line


GOOD_PROMPTS = '{"prompt": "Say hi."}\n'
ERROR_CASES: dict[str, Case] = {
    # generate
    "generate-missing-file": Case(
        ["generate", "absent.jsonl", "-o", "out.jsonl", "--no-cache"],
        existing_output="out.jsonl",
        expect=("absent.jsonl", "no such file"),
    ),
    "generate-invalid-json": Case(
        ["generate", "prompts.jsonl", "-o", "out.jsonl", "--no-cache"],
        files={"prompts.jsonl": '{"prompt": "fine"}\n{"prompt": "unterminated}\n{"prompt": "fine"}\n'},
        existing_output="out.jsonl",
        expect=("prompts.jsonl:2", "invalid JSON"),
    ),
    "generate-non-object-line": Case(
        ["generate", "prompts.jsonl", "-o", "out.jsonl", "--no-cache"],
        files={"prompts.jsonl": GOOD_PROMPTS + '["a", "list"]\n'},
        existing_output="out.jsonl",
        expect=("prompts.jsonl:2", "JSON object"),
    ),
    "generate-missing-column": Case(
        ["generate", "prompts.jsonl", "-o", "out.jsonl", "--no-cache"],
        files={"prompts.jsonl": GOOD_PROMPTS + '\n{"question": "where is the prompt?"}\n'},
        existing_output="out.jsonl",
        expect=("prompts.jsonl:3", "'prompt'", "missing"),
    ),
    "generate-wrong-column-type": Case(
        ["generate", "prompts.jsonl", "-o", "out.jsonl", "--no-cache"],
        files={"prompts.jsonl": '{"prompt": 42}\n'},
        existing_output="out.jsonl",
        expect=("prompts.jsonl:1", "'prompt'", "got int"),
    ),
    "generate-custom-column-missing": Case(
        ["generate", "prompts.jsonl", "--column", "question", "-o", "out.jsonl", "--no-cache"],
        files={"prompts.jsonl": GOOD_PROMPTS},
        existing_output="out.jsonl",
        expect=("prompts.jsonl:1", "'question'", "missing"),
    ),
    "generate-messages-missing-content": Case(
        ["generate", "prompts.jsonl", "-o", "out.jsonl", "--no-cache"],
        files={"prompts.jsonl": GOOD_PROMPTS + '{"messages": [{"role": "user"}]}\n'},
        existing_output="out.jsonl",
        expect=("prompts.jsonl:2", "messages"),
    ),
    "generate-messages-not-a-list": Case(
        ["generate", "prompts.jsonl", "-o", "out.jsonl", "--no-cache"],
        files={"prompts.jsonl": '{"messages": "hello there"}\n'},
        existing_output="out.jsonl",
        expect=("prompts.jsonl:1", "messages"),
    ),
    "generate-messages-empty": Case(
        ["generate", "prompts.jsonl", "-o", "out.jsonl", "--no-cache"],
        files={"prompts.jsonl": '{"messages": []}\n'},
        existing_output="out.jsonl",
        expect=("prompts.jsonl:1", "messages"),
    ),
    "generate-non-utf8-file": Case(
        ["generate", "prompts.txt", "-o", "out.jsonl", "--no-cache"],
        files={"prompts.txt": b"hello\ncaf\xe9\n"},
        existing_output="out.jsonl",
        expect=("prompts.txt:2", "UTF-8"),
    ),
    "generate-non-utf8-stdin": Case(
        ["generate", "-", "-o", "out.jsonl", "--no-cache"],
        stdin=b"hello\n\xff\xfe bad bytes\n",
        existing_output="out.jsonl",
        expect=("<stdin>:2", "UTF-8"),
    ),
    "generate-empty-input": Case(
        ["generate", "prompts.txt", "-o", "out.jsonl", "--no-cache"],
        files={"prompts.txt": "\n   \n"},
        existing_output="out.jsonl",
        expect=("prompts.txt", "no prompts"),
    ),
    "generate-unsupported-input": Case(
        ["generate", "prompts.csv", "-o", "out.jsonl", "--no-cache"],
        files={"prompts.csv": "prompt\nhi\n"},
        existing_output="out.jsonl",
        expect=("prompts.csv", "unsupported input type"),
    ),
    "generate-unknown-format": Case(
        ["generate", "prompts.data", "--format", "csv", "-o", "out.jsonl", "--no-cache"],
        files={"prompts.data": "hi\n"},
        existing_output="out.jsonl",
        expect=("--format csv",),
    ),
    "generate-unknown-model": Case(
        ["generate", "prompts.jsonl", "-m", "no-such-model", "-o", "out.jsonl", "--no-cache"],
        files={"prompts.jsonl": GOOD_PROMPTS},
        existing_output="out.jsonl",
        expect=("unknown model 'no-such-model'",),
    ),
    "generate-unsupported-output": Case(
        ["generate", "prompts.jsonl", "-o", "out.csv", "--no-cache"],
        files={"prompts.jsonl": GOOD_PROMPTS},
        existing_output="out.csv",
        expect=("out.csv", "unsupported output type"),
    ),
    "generate-openai-without-url": Case(
        ["generate", "prompts.jsonl", "-m", "openai:some-model", "-o", "out.jsonl", "--no-cache"],
        files={"prompts.jsonl": GOOD_PROMPTS},
        env={"OPENAI_BASE_URL": None},
        existing_output="out.jsonl",
        expect=("openai:some-model", "openai:MODEL@BASE_URL"),
    ),
    "generate-openai-unreachable": Case(
        ["generate", "prompts.jsonl", "-m", "openai:m@http://127.0.0.1:{port}/v1", "-o", "out.jsonl", "--no-cache"],
        files={"prompts.jsonl": GOOD_PROMPTS},
        existing_output="out.jsonl",
        expect=("cannot reach", "127.0.0.1:{port}"),
    ),
    # embed
    "embed-missing-file": Case(
        ["embed", "absent.txt", "-o", "e.parquet"],
        existing_output="e.parquet",
        expect=("absent.txt", "no such file"),
    ),
    "embed-wrong-column": Case(
        ["embed", "texts.jsonl", "-o", "e.parquet"],
        files={"texts.jsonl": '{"text": "fine"}\n{"body": "no text column here"}\n'},
        existing_output="e.parquet",
        expect=("texts.jsonl:2", "'text'", "missing"),
    ),
    "embed-wrong-column-npy": Case(
        ["embed", "texts.jsonl", "--column", "body", "-o", "e.npy"],
        files={"texts.jsonl": '{"body": ["not", "a", "string"]}\n'},
        existing_output="e.npy",
        expect=("texts.jsonl:1", "'body'", "got list"),
    ),
    "embed-unsupported-output": Case(
        ["embed", "texts.txt", "-o", "e.csv"],
        files={"texts.txt": "hello\n"},
        existing_output="e.csv",
        expect=("e.csv", "unsupported output type"),
    ),
    # models
    "models-info-unknown": Case(["models", "info", "no-such-model"], expect=("unknown model 'no-such-model'",)),
}

# Commands that succeed (or fail in typer's own way) without a model: they share the same pool.
LIGHT_COMMANDS: dict[str, list[str]] = {
    "help": ["--help"],
    "models-list": ["models", "list"],
    "models-list-json": ["models", "list", "--json"],
    "bench-zero-prompts": ["bench", "generate", "--prompts", "0", "--no-llamacpp"],
}


@dataclass
class CaseRun:
    case: Case
    folder: Path
    before: dict[str, bytes]
    result: Result


def _run_case(cli: Cli, root: Path, name: str, case: Case) -> CaseRun:
    folder = root / name
    folder.mkdir()
    port = str(closed_port())
    case = Case(
        args=[a.replace("{port}", port) for a in case.args],
        files=case.files,
        stdin=case.stdin,
        env=case.env,
        existing_output=case.existing_output,
        expect=tuple(e.replace("{port}", port) for e in case.expect),
    )
    for filename, content in case.files.items():
        data = content.encode() if isinstance(content, str) else content
        (folder / filename).write_bytes(data)
    if case.existing_output:
        (folder / case.existing_output).write_bytes(OLD_CONTENT)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    result = cli.run(*case.args, cwd=folder, stdin=case.stdin, env=cli.env(**case.env))
    return CaseRun(case, folder, before, result)


@pytest.fixture(scope="module")
def light_runs(tmp_path_factory: pytest.TempPathFactory, cli: Cli) -> dict[str, CaseRun | Result]:
    root = tmp_path_factory.mktemp("cli-light")
    jobs: dict[str, Callable[[], CaseRun | Result]] = {
        name: (lambda name=name, case=case: _run_case(cli, root, name, case)) for name, case in ERROR_CASES.items()
    }
    jobs |= {name: (lambda args=args: cli.run(*args, cwd=root)) for name, args in LIGHT_COMMANDS.items()}
    # The unreachable endpoint spends most of its time in retry back-off: start it first.
    order = sorted(jobs, key=lambda name: name != "generate-openai-unreachable")
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {name: pool.submit(jobs[name]) for name in order}
        return {name: future.result() for name, future in futures.items()}


def assert_one_line_user_error(result: Result) -> str:
    assert result.returncode == 2, str(result)
    assert "Traceback" not in result.stdout + result.stderr, str(result)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, str(result)
    assert lines[0].startswith("error: "), str(result)
    return lines[0]


@pytest.mark.parametrize("name", list(ERROR_CASES))
def test_user_error_is_one_line_and_writes_nothing(light_runs: dict, name: str) -> None:
    run: CaseRun = light_runs[name]
    line = assert_one_line_user_error(run.result)
    for expected in run.case.expect:
        assert expected in line, f"{expected!r} not in {line!r}"
    assert run.result.stdout.strip() == "", str(run.result)
    after = {p.name: p.read_bytes() for p in run.folder.iterdir()}
    assert after == run.before, "a failed run changed, created or half-wrote a file"


def test_help(light_runs: dict) -> None:
    result = ok(light_runs["help"])
    for command in ("generate", "embed", "models", "bench"):
        assert command in result.stdout


def test_models_list(light_runs: dict) -> None:
    assert MODEL_NAME in ok(light_runs["models-list"]).stdout
    rows = jsonl(ok(light_runs["models-list-json"]).stdout)
    embedded = [row for row in rows if row["name"] == MODEL_NAME]
    assert len(embedded) == 1
    assert embedded[0]["kind"] == "embedded default"
    assert embedded[0]["converted"] is True
    assert {"name", "kind", "source", "converted"} <= set(embedded[0])


def test_bench_rejects_zero_prompts(light_runs: dict) -> None:
    result: Result = light_runs["bench-zero-prompts"]
    assert result.returncode == 2, str(result)
    assert "Traceback" not in result.stdout + result.stderr
    assert "--prompts" in result.stderr


# -- commands that load the model (each run costs a model load: marked slow) --------------------


@pytest.mark.slow
def test_models_info(tmp_path: Path, cli: Cli) -> None:
    info = json.loads(ok(cli.run("models", "info", cwd=tmp_path)).stdout)
    assert info["architecture"] == "llama"
    assert info["engine"] == "llama-kernel"
    assert info["model_id"].startswith(f"local:{MODEL_NAME}@")
    assert info["parameters"] > 100_000_000
    assert info["chat_template"] is True


THREE_PROMPTS = "Name a primary color.\n\nWhat is two plus two?\nSay hello to a friend.\n"


def _check_rows(rows: list[dict], max_tokens: int) -> None:
    for row in rows:
        assert set(row) == ROW_KEYS
        assert isinstance(row["output"], str)
        assert row["finish_reason"] in {"stop", "length"}
        assert 0 <= row["completion_tokens"] <= max_tokens
        assert row["prompt_tokens"] > 0
        assert row["model_id"].startswith(f"local:{MODEL_NAME}@")
        assert json.loads(row["params"])["max_tokens"] == max_tokens


@pytest.mark.slow
def test_generate_text_file_then_stdin_with_stop(tmp_path: Path, cli: Cli) -> None:
    (tmp_path / "prompts.txt").write_text(THREE_PROMPTS, encoding="utf-8")
    result = ok(cli.run("generate", "prompts.txt", "-o", "out.jsonl", "--max-tokens", "8", "--no-cache", cwd=tmp_path))
    assert result.stdout.strip() == ""  # the rows go to the file, not stdout
    rows = jsonl((tmp_path / "out.jsonl").read_text(encoding="utf-8"))
    assert len(rows) == 3
    _check_rows(rows, 8)
    assert [row["id"] for row in rows] == ["1", "3", "4"]  # line numbers as string ids; the blank line is skipped
    assert json.loads(rows[0]["prompt"]) == [{"role": "user", "content": "Name a primary color."}]
    assert any(row["completion_tokens"] > 0 for row in rows)

    # The same prompts from stdin, with a stop string taken from the first answer: JSONL on stdout.
    words = rows[0]["output"].split(" ")
    assert len(words) >= 3, rows[0]
    stop = " " + words[2]
    result = ok(
        cli.run("generate", "-", "--max-tokens", "8", "--no-cache", "--stop", stop, cwd=tmp_path, stdin=THREE_PROMPTS)
    )
    cut = jsonl(result.stdout)
    assert len(cut) == 3
    _check_rows(cut, 8)
    for before, after in zip(rows, cut, strict=True):
        assert after["id"] == before["id"] and after["prompt"] == before["prompt"]
        position = before["output"].find(stop)
        if position >= 0:
            assert after["output"] == before["output"][:position]
            assert after["finish_reason"] == "stop"
            assert after["completion_tokens"] <= before["completion_tokens"]
        else:
            assert stop not in after["output"]
    assert stop not in cut[0]["output"] and cut[0]["output"] == rows[0]["output"][: rows[0]["output"].find(stop)]
    assert json.loads(cut[0]["params"])["stop"] == [stop]


@pytest.mark.slow
def test_generate_jsonl_to_parquet_with_raw_and_system(tmp_path: Path, cli: Cli) -> None:
    """--raw makes a text row a plain prompt; --system goes before chat rows that lack one."""
    lines = [
        {"id": "plain", "prompt": "The capital of France is"},
        {"id": "chat", "messages": [{"role": "user", "content": "Say hi."}]},
        {
            "id": "own-system",
            "messages": [{"role": "system", "content": "Be formal."}, {"role": "user", "content": "Hi."}],
        },
    ]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    args = ["generate", "prompts.jsonl", "-o", "out/gen.parquet", "--max-tokens", "4", "--no-cache"]
    ok(cli.run(*args, "--raw", "--system", "You are terse.", cwd=tmp_path))
    table = pq.read_table(tmp_path / "out" / "gen.parquet")
    assert set(table.column_names) == ROW_KEYS
    rows = table.to_pylist()
    _check_rows(rows, 4)
    assert [row["id"] for row in rows] == ["plain", "chat", "own-system"]
    assert rows[0]["prompt"] == "The capital of France is"  # raw: no chat template, no system
    assert json.loads(rows[1]["prompt"]) == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say hi."},
    ]
    assert json.loads(rows[2]["prompt"]) == lines[2]["messages"]
    assert rows[0]["prompt_tokens"] < rows[1]["prompt_tokens"]


@pytest.mark.slow
def test_generation_cache_makes_reruns_identical(tmp_path: Path, cli: Cli) -> None:
    """Two runs on one PERSONALM_HOME: the second is served from the cache and matches the first.

    One cached record is altered in between, to prove the second run really reads the cache.
    """
    from personalm.models.embedded import CONVERTED_MARKER, converted_dir, ensure_converted

    real = converted_dir()
    if not (real / CONVERTED_MARKER).is_file():
        real = ensure_converted()
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    (home / "models" / MODEL_NAME).symlink_to(real.resolve(), target_is_directory=True)
    env = cli.env(PERSONALM_HOME=str(home))
    (tmp_path / "prompts.txt").write_text(THREE_PROMPTS, encoding="utf-8")
    args = ["generate", "prompts.txt", "--max-tokens", "6"]

    ok(cli.run(*args, "-o", "first.jsonl", cwd=tmp_path, env=env))
    first = jsonl((tmp_path / "first.jsonl").read_text(encoding="utf-8"))
    _check_rows(first, 6)
    database = home / "cache" / "generations.sqlite"
    assert database.is_file()
    with sqlite3.connect(database) as db:
        records = db.execute("SELECT key, record FROM generations").fetchall()
        assert len(records) == 3
        key, record = next((k, r) for k, r in records if json.loads(r)["text"] == first[0]["output"])
        altered = json.loads(record) | {"text": "served from the cache"}
        db.execute("UPDATE generations SET record = ? WHERE key = ?", (json.dumps(altered), key))
    db.close()

    ok(cli.run(*args, "-o", "second.jsonl", cwd=tmp_path, env=env))
    second = jsonl((tmp_path / "second.jsonl").read_text(encoding="utf-8"))
    assert second[0]["output"] == "served from the cache"
    assert second[1:] == first[1:]
    assert [{**row, "output": None} for row in second] == [{**row, "output": None} for row in first]
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT COUNT(*) FROM generations").fetchone()[0] == 3
    db.close()


@pytest.mark.slow
def test_embed_parquet_and_npy(tmp_path: Path, cli: Cli) -> None:
    texts = ["A cat sits on the mat.", "Stock markets fell today.", "A kitten rests on a rug."]
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")

    ok(cli.run("embed", "texts.txt", "-o", "e.parquet", cwd=tmp_path))
    rows = pq.read_table(tmp_path / "e.parquet").to_pylist()
    assert [row["text"] for row in rows] == texts
    assert [row["id"] for row in rows] == ["1", "2", "3"]
    table = np.array([row["embedding"] for row in rows], dtype=np.float32)
    assert table.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(table, axis=1), 1.0, atol=1e-4)
    similarity = table @ table.T
    assert similarity[0, 2] > similarity[0, 1]  # cat/kitten closer than cat/markets

    ok(cli.run("embed", "texts.txt", "-o", "e.npy", cwd=tmp_path))
    matrix = np.load(tmp_path / "e.npy")
    assert matrix.shape == (3, 384)
    assert matrix.dtype == np.float32
    np.testing.assert_allclose(matrix, table, atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.npy", "e.parquet", "texts.txt"]


BENCH_KEYS = {
    "ours_tok_s", "peer_tok_s", "speedup", "peak_fraction", "llamacpp_tok_s", "greedy_agreement", "versions", "seed",
}  # fmt: skip


@pytest.mark.slow
def test_bench_generate_json(tmp_path: Path, cli: Cli) -> None:
    args = ["bench", "generate", "--prompts", "2", "--max-tokens", "4", "--no-llamacpp", "--profile", "--json"]
    result = ok(cli.run(*args, cwd=tmp_path))
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert BENCH_KEYS <= set(summary)
    assert summary["profile"]["shares"]["matmul"] > 0.3 and summary["profile"]["matmul_gflops"] > 0
    assert summary["llamacpp_tok_s"] is None
    assert summary["ours_tok_s"] > 0 and summary["peer_tok_s"] > 0 and summary["speedup"] > 0
    assert 0 < summary["peak_fraction"]
    assert 0.0 <= summary["greedy_agreement"] <= 1.0
    assert summary["versions"]["personalm"] and summary["versions"]["torch"]
    assert isinstance(summary["seed"], int)
    assert summary["prompts"] == 2 and summary["max_tokens"] == 4


@pytest.mark.slow
def test_mixed_user_and_line_ids_write_parquet(tmp_path: Path, cli: Cli) -> None:
    (tmp_path / "p.jsonl").write_text('{"id": "a", "prompt": "Say hi."}\n{"prompt": "Say bye."}\n', encoding="utf-8")
    ok(cli.run("generate", "p.jsonl", "-o", "out.parquet", "--max-tokens", "4", "--no-cache", cwd=tmp_path))
    assert [row["id"] for row in pq.read_table(tmp_path / "out.parquet").to_pylist()] == ["a", "2"]
