"""Broken adapters given to the CLI (generate, soups merge, serve) fail at once: one line on stderr
naming the file, exit 2, no traceback, and a server never starts with them (issue 17, items 6 and 10)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

BROKEN = {
    "garbage config": ("adapter_config.json", b"\x00garbage{", "adapter_config.json: not JSON"),
    "empty config": ("adapter_config.json", b"", "adapter_config.json: empty file"),
    "garbage weights": ("adapter_model.safetensors", b"garbage", "adapter_model.safetensors: not a readable"),
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_base, peft_adapter):
    """A tiny base model directory and a good adapter on it."""
    root = tmp_path_factory.mktemp("tiny")
    base = tiny_base()
    base.save_pretrained(root / "base")
    return root / "base", peft_adapter(base, root / "good", 1, rank=2, alpha=4)


def broken(good: Path, root: Path, kind: str) -> Path:
    name, content, _ = BROKEN[kind]
    out = root / kind.replace(" ", "-")
    out.mkdir(parents=True)
    for f in good.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    (out / name).write_bytes(content)
    return out


def assert_one_line(done, message: str) -> None:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert message in done.stderr, done.stderr


@pytest.mark.parametrize("kind", BROKEN)
def test_generate_with_a_broken_adapter(tiny, tmp_path, kind, cli):
    base, good = tiny
    adapter = broken(good, tmp_path, kind)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("hello\n")
    done = cli.run("generate", str(prompts), "-m", str(base), "--adapter", str(adapter), "--no-cache")
    assert_one_line(done, f"{adapter}/{BROKEN[kind][2]}")


@pytest.mark.parametrize("kind", BROKEN)
def test_soups_merge_with_a_broken_adapter(tiny, tmp_path, kind, cli):
    _, good = tiny
    adapter = broken(good, tmp_path, kind)
    done = cli.run(
        "soups", "merge", "--weights", "x=0.5,y=0.5", "--adapter", f"x={good}", "--adapter", f"y={adapter}",
        "-o", str(tmp_path / "soup"),
    )  # fmt: skip
    assert_one_line(done, BROKEN[kind][2])
    assert not (tmp_path / "soup").exists()


def test_soups_merge_never_replaces_a_file_or_a_folder_that_is_not_an_adapter(tiny, tmp_path, cli):
    _, good = tiny
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    done = cli.run("soups", "merge", "--weights", "x=1", "--adapter", f"x={good}", "-o", str(target))
    assert_one_line(done, "exists and is not a folder")
    assert target.read_text() == "keep me"
    folder = tmp_path / "reports"
    folder.mkdir()
    (folder / "results.json").write_text("{}")
    done = cli.run("soups", "merge", "--weights", "x=1", "--adapter", f"x={good}", "-o", str(folder))
    assert_one_line(done, "holds no adapter")
    assert (folder / "results.json").read_text() == "{}"
    done = cli.run("soups", "merge", "--weights", "x=1", "--adapter", f"x={good}", "-o", str(tmp_path / "soup"))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["out"] == str(tmp_path / "soup")
    again = cli.run("soups", "merge", "--weights", "x=0.5", "--adapter", f"x={good}", "-o", str(tmp_path / "soup"))
    assert again.returncode == 0, again.stderr  # an earlier merge is replaced


@pytest.mark.parametrize("kind", ["garbage config", "garbage weights"])
def test_serve_refuses_a_broken_adapter_at_start(tiny, tmp_path, kind, cli):
    base, good = tiny
    adapter = broken(good, tmp_path, kind)
    done = cli.run("serve", "-m", str(base), "--adapter", f"bad={adapter}", "--port", "9", timeout=300)
    assert_one_line(done, f"{adapter}/{BROKEN[kind][2]}")


@pytest.mark.parametrize(("name", "kind"), [("style.friendly", "garbage config"), ("pmorl", "garbage weights")])
def test_serve_refuses_a_broken_soups_adapter_at_start(tiny, tmp_path, name, kind, cli):
    base, good = tiny
    soups = tmp_path / "soups"
    broken(good, soups, kind).rename(soups / name)
    done = cli.run("serve", "-m", str(base), "--soups", str(soups), "--port", "9", timeout=300)
    assert_one_line(done, f"{soups / name}/{BROKEN[kind][2]}")
