"""Every command of the CLI, fed a missing, empty, non-UTF-8 or garbage file (or folder) in each of
its file and folder parameters: exit 2, one `error: ...` line on stderr, no traceback, no model load.

The commands come from the typer app itself, so a new command (or a new Path parameter) without a
row here fails `test_every_command_and_path_parameter_has_a_row`. Cases run in this process, with
every model loader replaced by one that fails the case: bad input must be found before a model loads.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import typer

from personalm.cli.app import app

if TYPE_CHECKING:
    from conftest import CliResult

FILE_KINDS = ("missing", "empty", "non-utf8", "garbage")
DIR_KINDS = ("missing", "empty", "non-utf8", "garbage")
NON_UTF8 = "caf\u00e9 au lait\n".encode("latin-1")
GARBAGE = {  # by suffix: content that is the right encoding but not a usable file of that type
    ".jsonl": b"this is { not json\n",
    ".parquet": b"PAR1 this is not parquet",
    ".txt": b"\x00\x01\x02\xff\xfe binary\n",
    ".csv": b"\x00\x01\x02\xff\xfe binary\n",
    ".yaml": b"dimensions: [unclosed\n",
    ".json": b"{ not json",
    ".j2": b"{{ persona ",
    ".db": b"this is not an SQLite database, only text long enough to hold a header\n" * 4,
}
GOOD_FILES = {  # every case folder holds these, for the parameters a case does not test
    "prompts.jsonl": '{"prompt": "Say hi."}\n',
    "personas.jsonl": '{"id": "1", "persona": "A chef who bakes bread at night."}\n',
    "chats.jsonl": '{"persona": "a chef", "messages": [{"role": "user", "content": "hi"}, '
    '{"role": "assistant", "content": "hello"}]}\n',
    "corpus/a.txt": "Bread rises because yeast makes gas. The gluten traps it.\n",
    "soups/.keep": "",
}
OUTPUT = "an output (written, not read)"
ADAPTER = "an adapter folder: checked by personalm.adapters (issue 17 item 6, the adapters work)"


@dataclass(frozen=True)
class Input:
    """How to feed one file/folder parameter: its command line with `{bad}` where the bad path goes."""

    args: tuple[str, ...]
    kind: str = "file"  # or "dir"
    suffix: str = ".jsonl"  # of a bad file
    inner: str = "bad.txt"  # of the non-UTF-8 file inside a bad folder
    valid: dict[str, str] = field(default_factory=dict)  # kind -> why that input is fine for this parameter


@dataclass(frozen=True)
class Row:
    inputs: dict[str, Input] = field(default_factory=dict)
    untested: dict[str, str] = field(default_factory=dict)  # Path parameter -> why it gets no bad-input cases


def cmd(*args: str, **kw) -> Input:
    return Input(tuple(args), **kw)


NEW_STORE = "a missing or empty SQLite file is a new store (the server creates it)"
DATA_FALLBACK = "an empty data folder falls back to the benchmark's built-in personas"
# fmt: off
ROWS: dict[str, Row] = {
    "generate": Row({"input": cmd("generate", "{bad}", "-o", "out.jsonl", "--no-cache")}, {"out": OUTPUT}),
    "embed": Row({"input": cmd("embed", "{bad}", "-o", "e.jsonl", suffix=".txt")}, {"out": OUTPUT}),
    "demo": Row(untested={"out": OUTPUT}),
    "serve": Row(
        {
            "keys_db": cmd("serve", "--port", "9", "--keys-db", "{bad}", suffix=".db",
                           valid={"missing": NEW_STORE, "empty": NEW_STORE, "non-utf8": "a database is binary"}),
            "soups": cmd("serve", "--port", "9", "--soups", "{bad}", "--keys-db", "k.db", kind="dir"),
            "preferences": cmd("serve", "--port", "9", "--soups", "soups", "--preferences", "{bad}",
                               "--keys-db", "k.db", suffix=".yaml"),
            "avatar_store": cmd("serve", "--port", "9", "--keys-db", "k.db", "--avatar-store", "{bad}", suffix=".db",
                                valid={"missing": NEW_STORE, "empty": NEW_STORE, "non-utf8": "a database is binary"}),
            "critic": cmd("serve", "--port", "9", "--keys-db", "k.db", "--critic", "{bad}", kind="dir",
                          inner="meta.json"),
        },
    ),
    "explain": Row({"data": cmd("explain", "{bad}")}, {"adapter": ADAPTER, "html": OUTPUT}),
    "models list": Row(),
    "models info": Row(),
    "bench generate": Row(
        {"data": cmd("bench", "generate", "--data", "{bad}", "--prompts", "1", "--no-llamacpp", kind="dir",
                     inner="personahub/tool_personas.jsonl", valid={"empty": DATA_FALLBACK})},
        {"out": OUTPUT},
    ),
    "bench serve": Row(
        {"data": cmd("bench", "serve", "--data", "{bad}", kind="dir", inner="personahub/tool_personas.jsonl",
                     valid={"empty": DATA_FALLBACK})},
        {"out": OUTPUT},
    ),
    "bench perce": Row(
        {"data": cmd("bench", "perce", "--data", "{bad}", kind="dir", inner="persona_chat/valid.csv")}, {"out": OUTPUT}
    ),
    "bench fusion": Row(untested={"adapter": ADAPTER, "out": OUTPUT}),
    "bench merge": Row({"adapters": cmd("bench", "merge", "--adapters", "{bad}", kind="dir")}, {"out": OUTPUT}),
    "bench train": Row(
        {"data": cmd("bench", "train", "--data", "{bad}", kind="dir", inner="personahub/tool_personas.jsonl",
                     valid={"empty": DATA_FALLBACK})},
        {"out": OUTPUT},
    ),
    "bench dpo": Row(untested={"out": OUTPUT}),
    "bench dedup": Row(
        {"data": cmd("bench", "dedup", "--data", "{bad}", kind="dir", inner="personahub/tool_personas.jsonl")},
        {"out": OUTPUT, "report": OUTPUT},
    ),
    "bench synth": Row(
        {"data": cmd("bench", "synth", "--data", "{bad}", kind="dir", inner="personahub/tool_personas.jsonl",
                     valid={"empty": DATA_FALLBACK})},
        {"out": OUTPUT},
    ),
    "bench retrieval": Row(
        {"data": cmd("bench", "retrieval", "--data", "{bad}", kind="dir", inner="personahub/tool_personas.jsonl")},
        {"out": OUTPUT},
    ),
    "bench critic": Row(
        {
            "data": cmd("bench", "critic", "--data", "{bad}", kind="dir", inner="prefeval/mcq_options/t.json"),
            "critic": cmd("bench", "critic", "--critic", "{bad}", kind="dir", inner="meta.json"),
        },
        {"out": OUTPUT},
    ),
    "critic train": Row(
        {"data": cmd("critic", "train", "--data", "{bad}", "--quick", "-o", "report", kind="dir",
                     inner="prefeval/mcq_options/t.json")},
        {"out": OUTPUT, "artifact": OUTPUT},
    ),
    "critic score": Row(
        {
            "input_file": cmd("critic", "score", "--input", "{bad}", "--critic", "critic"),
            "critic_dir": cmd("critic", "score", "-p", "I dislike tea.", "-q", "What to drink?", "Green tea.",
                              "--critic", "{bad}", kind="dir", inner="meta.json"),
        },
        {"out": OUTPUT},
    ),
    "train sft": Row({"data": cmd("train", "sft", "{bad}", "-o", "adapter")}, {"out": OUTPUT}),
    "tone build": Row(
        {
            "source": cmd("tone", "build", "{bad}", "-o", "tone", kind="dir"),
            "labelled": cmd("tone", "build", "corpus", "-o", "tone", "--scorer", "embedding", "--labelled", "{bad}"),
        },
        {"out": OUTPUT},
    ),
    "tone experiment": Row(
        {
            "source": cmd("tone", "experiment", "--source", "{bad}", kind="dir"),
            "labelled": cmd("tone", "experiment", "--source", "corpus", "--scorer", "embedding", "--labelled", "{bad}"),
        },
        {"out": OUTPUT},
    ),
    "personas dedup": Row({"input": cmd("personas", "dedup", "{bad}", "-o", "kept.jsonl")}, {"out": OUTPUT}),
    "personas hub": Row({"inputs": cmd("personas", "hub", "{bad}", "-o", "hub.parquet")}, {"out": OUTPUT}),
    "personas search": Row(
        {"hub_path": cmd("personas", "search", "a chef", "--hub", "{bad}", suffix=".parquet")}, {"out": OUTPUT}
    ),
    "personas sample": Row(
        {"hub_path": cmd("personas", "sample", "--hub", "{bad}", suffix=".parquet")}, {"out": OUTPUT}
    ),
    "personas extract": Row(
        {"corpus": cmd("personas", "extract", "{bad}", "-o", "p.jsonl", "--no-cache", kind="dir")}, {"out": OUTPUT}
    ),
    "personas expand": Row(
        {"input": cmd("personas", "expand", "{bad}", "-o", "p.jsonl", "--no-cache")}, {"out": OUTPUT}
    ),
    "personas diversity": Row({"inputs": cmd("personas", "diversity", "{bad}", "-o", "report")}, {"out": OUTPUT}),
    "avatar ingest": Row(
        {
            "sources": cmd("avatar", "ingest", "ada", "{bad}", "--store", "m.db", "--no-profile", suffix=".txt"),
            "store": cmd("avatar", "ingest", "ada", "corpus", "--store", "{bad}", "--no-profile", suffix=".db",
                         valid={"missing": "ingest creates the store", "empty": "an empty file is a new store",
                                "non-utf8": "a database is binary"}),
        }
    ),
    "avatar create": Row(
        {
            "sources": cmd("avatar", "create", "ada", "{bad}", "--store", "m.db", suffix=".txt"),
            "store": cmd("avatar", "create", "ada", "corpus", "--store", "{bad}", suffix=".db",
                         valid={"missing": "create makes the store", "empty": "an empty file is a new store",
                                "non-utf8": "a database is binary"}),
        }
    ),
    "avatar update": Row(
        {
            "sources": cmd("avatar", "update", "ada", "{bad}", "--store", "m.db", suffix=".txt"),
            "store": cmd("avatar", "update", "ada", "corpus", "--store", "{bad}", suffix=".db",
                         valid={"non-utf8": "a database is binary"}),
        }
    ),
    "avatar versions": Row({"store": cmd("avatar", "versions", "ada", "--store", "{bad}", suffix=".db",
                                         valid={"non-utf8": "a database is binary"})}),
    "avatar list": Row({"store": cmd("avatar", "list", "--store", "{bad}", suffix=".db",
                                     valid={"non-utf8": "a database is binary"})}),
    "avatar search": Row({"store": cmd("avatar", "search", "ada", "tea", "--store", "{bad}", suffix=".db",
                                       valid={"non-utf8": "a database is binary"})}),
    "avatar forget": Row({"store": cmd("avatar", "forget", "ada", "1", "--store", "{bad}", suffix=".db",
                                       valid={"non-utf8": "a database is binary"})}),
    "avatar profile": Row({"store": cmd("avatar", "profile", "ada", "--store", "{bad}", suffix=".db",
                                        valid={"non-utf8": "a database is binary"})}),
    "avatar chat": Row(
        {"store": cmd("avatar", "chat", "ada", "-M", "hi", "--store", "{bad}", suffix=".db",
                      valid={"non-utf8": "a database is binary"}),
         "critic": cmd("avatar", "chat", "ada", "-M", "hi", "--critic", "{bad}", kind="dir", inner="meta.json")},
        {"adapter": ADAPTER},
    ),
    "avatar preferences": Row(),
    "avatar experiment": Row(
        {"data": cmd("avatar", "experiment", "--data", "{bad}", "-o", "report", kind="dir", inner="speeches/x/a.txt"),
         "critic": cmd("avatar", "experiment", "--critic", "{bad}", "-o", "report", kind="dir", inner="meta.json")},
        {"out": OUTPUT},
    ),
    "avatar memories": Row({"store": cmd("avatar", "memories", "ada", "--store", "{bad}", suffix=".db",
                                         valid={"non-utf8": "a database is binary"})}),
    "avatar undo": Row({"store": cmd("avatar", "undo", "ada", "--store", "{bad}", suffix=".db",
                                     valid={"non-utf8": "a database is binary"})}),
    "avatar memory-test": Row(
        {"data": cmd("avatar", "memory-test", "--data", "{bad}", "--quick", kind="dir", inner="persona_chat/valid.csv")},
        {"out": OUTPUT},
    ),
    "avatar sft-data": Row({"store": cmd("avatar", "sft-data", "ada", "-o", "s.jsonl", "--store", "{bad}", suffix=".db",
                                         valid={"non-utf8": "a database is binary"})}, {"out": OUTPUT}),
    "synth": Row(
        {
            "personas": cmd("synth", "-p", "{bad}", "-t", "math", "-o", "s.jsonl", "--no-cache"),
            "demos": cmd("synth", "-p", "personas.jsonl", "-t", "math", "--mode", "few-shot", "--demos", "{bad}",
                         "-o", "s.jsonl", "--no-cache"),
            "template": cmd("synth", "-p", "personas.jsonl", "-t", "custom", "--template", "{bad}", "-o", "s.jsonl",
                            "--no-cache", suffix=".j2"),
            "world": cmd("synth", "-p", "personas.jsonl", "-t", "npc", "--world", "{bad}", "-o", "s.jsonl",
                         "--no-cache", suffix=".txt",
                         valid={"missing": "--world is the description itself unless it names a file"}),
        },
        {"out": OUTPUT},
    ),
    "synth diversity": Row(
        {
            "personas": cmd("synth", "diversity", "-p", "{bad}", "-n", "3", "--no-cache"),
            "world": cmd("synth", "diversity", "-p", "personas.jsonl", "-t", "npc", "--world", "{bad}", "-n", "3",
                         "--no-cache", suffix=".txt",
                         valid={"missing": "--world is the description itself unless it names a file"}),
            "data": cmd("synth", "diversity", "--data", "{bad}", "-n", "3", "--no-cache", kind="dir",
                        inner="personahub/tool_personas.jsonl"),
        },
        {"out": OUTPUT},
    ),
    "perce experiment": Row(
        {"data": cmd("perce", "experiment", "--data", "{bad}", "-o", "report", kind="dir",
                     inner="persona_chat/valid.csv")},
        {"out": OUTPUT},
    ),
    "soups collect": Row(
        {
            "prompts": cmd("soups", "collect", "-o", "c", "--prompts", "{bad}"),
            "preferences": cmd("soups", "collect", "-o", "c", "--preferences", "{bad}", suffix=".yaml"),
        },
        {"out": OUTPUT},
    ),
    "soups train": Row({"data": cmd("soups", "train", "{bad}", "-o", "adapters", kind="dir")}, {"out": OUTPUT}),
    "soups merge": Row(
        {"adapters_dir": cmd("soups", "merge", "--weights", "a=1", "-o", "m", "--adapters-dir", "{bad}", kind="dir")},
        {"out": OUTPUT},
    ),
    "soups experiment": Row(
        {
            "adapters": cmd("soups", "experiment", "--adapters", "{bad}", "-o", "report", kind="dir"),
            "prompts": cmd("soups", "experiment", "--adapters", "soups", "-o", "report", "--prompts", "{bad}"),
            "data": cmd("soups", "experiment", "--adapters", "soups", "-o", "report", "--data", "{bad}", kind="dir",
                        inner="prefeval/mcq_options/a.json"),
        },
        {"out": OUTPUT},
    ),
}
# fmt: on


def commands(group: typer.Typer = app, path: tuple[str, ...] = ()) -> Iterator[tuple[str, Callable]]:
    """(name, function) of every command of the app, sub-apps included, as typer registers them."""
    callback = group.registered_callback
    if callback is not None and callback.invoke_without_command:
        yield " ".join(path), callback.callback
    for command in group.registered_commands:
        yield " ".join((*path, command.name or command.callback.__name__.replace("_", "-"))), command.callback
    for sub in group.registered_groups:
        yield from commands(sub.typer_instance, (*path, sub.name))


def path_parameters(function: Callable) -> set[str]:
    hints = typing.get_type_hints(function)
    return {name for name in inspect.signature(function).parameters if hints.get(name) in (Path, list[Path])}


def test_every_command_and_path_parameter_has_a_row() -> None:
    found = dict(commands())
    assert sorted(set(found) - set(ROWS)) == [], "commands without a row in ROWS"
    assert sorted(set(ROWS) - set(found)) == [], "rows for commands that no longer exist"
    for name, function in found.items():
        row = ROWS[name]
        uncovered = path_parameters(function) - set(row.inputs) - set(row.untested)
        assert not uncovered, f"`{name}`: Path parameters {sorted(uncovered)} have no bad-input cases and no reason"


def cases() -> Iterator[tuple[str, str, str]]:
    for name, row in ROWS.items():
        for param, spec in row.inputs.items():
            for kind in DIR_KINDS if spec.kind == "dir" else FILE_KINDS:
                if kind not in spec.valid:
                    yield name, param, kind


def case_id(case: tuple[str, str, str]) -> str:
    return "-".join(case).replace(" ", "-")


class ModelLoaded(Exception):
    """A model or embedder started loading: the command did not check its inputs first."""


@pytest.fixture
def no_models(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Replace every model loader with one that fails the case, and undo it everywhere afterwards.

    A module first imported during a case (a command's lazy import) binds the replacement by
    name; monkeypatch does not know that binding, so teardown puts the original back there too.
    """
    import sys

    from personalm.models import registry
    from personalm.models.embedder import Embedder
    from personalm.models.local import LocalModel
    from personalm.train import loop

    def personalm_modules() -> list:
        return [m for name, m in list(sys.modules.items()) if name.startswith("personalm") and m is not None]

    refusals: dict[int, tuple[Callable, Callable]] = {}
    for original in (registry.load_model, loop.build_model):

        def refuse(*args, **kwargs):
            raise ModelLoaded

        refusals[id(refuse)] = (refuse, original)
        for module in personalm_modules():
            for attr, value in list(vars(module).items()):
                if value is original:
                    monkeypatch.setattr(module, attr, refuse)
    monkeypatch.setattr(LocalModel, "__init__", refuse)
    monkeypatch.setattr(Embedder, "__init__", refuse)
    yield
    for module in personalm_modules():
        for attr, value in list(vars(module).items()):
            if id(value) in refusals and refusals[id(value)][0] is value:
                setattr(module, attr, refusals[id(value)][1])


def bad_input(folder: Path, spec: Input, kind: str) -> Path:
    if spec.kind == "file":
        path = folder / f"bad{spec.suffix}"
        content = {"missing": None, "empty": b"", "non-utf8": NON_UTF8, "garbage": GARBAGE[spec.suffix]}[kind]
        if content is not None:
            path.write_bytes(content)
        return path
    path = folder / "bad_dir"
    if kind == "garbage":  # a file where a folder belongs
        path.write_bytes(b"a file, not a folder\n")
    elif kind != "missing":
        path.mkdir()
        if kind == "non-utf8":
            (path / spec.inner).parent.mkdir(parents=True, exist_ok=True)
            (path / spec.inner).write_bytes(NON_UTF8)
    return path


@pytest.mark.parametrize("case", list(cases()), ids=case_id)
def test_bad_input_is_one_line_exit_2(case, tmp_path: Path, monkeypatch, no_models, cli) -> None:
    name, param, kind = case
    spec = ROWS[name].inputs[param]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for relative, content in GOOD_FILES.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(content)
    bad = bad_input(tmp_path, spec, kind)
    try:
        ran = cli.invoke(*[str(bad) if a == "{bad}" else a for a in spec.args])
    except ModelLoaded:
        pytest.fail(f"`{name}` loaded a model before checking {param} ({kind})")
    assert_one_line_error(ran, bad)


def assert_one_line_error(ran: CliResult, bad: Path) -> None:
    assert "Traceback" not in ran.stdout + ran.stderr, str(ran)
    assert ran.returncode == 2, str(ran)
    lines = [line for line in ran.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), str(ran)
