"""`personalm embed` says which texts the model cut to its window instead of truncating silently (issue 17)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def test_overlong_texts_are_named_on_stderr(tmp_path: Path, cli) -> None:
    (tmp_path / "t.txt").write_text("short text\n" + "long " * 400 + "\nfine\n" + "longer " * 600 + "\n")
    ran = cli.invoke("embed", str(tmp_path / "t.txt"), "-o", str(tmp_path / "e.npy"))
    assert ran.returncode == 0, str(ran)
    warnings = [line for line in ran.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, str(ran)
    assert "2 of 4 texts are longer than the model's 256 tokens" in warnings[0] and "(lines 2, 4)" in warnings[0]
    assert np.load(tmp_path / "e.npy").shape == (4, 384)


def test_no_warning_when_every_text_fits(tmp_path: Path, cli) -> None:
    (tmp_path / "t.txt").write_text("short text\nanother one\n")
    ran = cli.invoke("embed", str(tmp_path / "t.txt"), "-o", str(tmp_path / "e.npy"))
    assert ran.returncode == 0 and "warning:" not in ran.stderr, str(ran)
