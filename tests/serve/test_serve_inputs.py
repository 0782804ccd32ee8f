"""`personalm serve` refuses an unusable key store or preferences file in one line, before serving (issue 17)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.mark.parametrize("kind", ["garbage", "directory"])
def test_an_unusable_keys_db_is_one_line_exit_2(tmp_path: Path, kind: str, cli) -> None:
    keys = tmp_path / "keys.db"
    if kind == "directory":
        keys.mkdir()
    else:
        keys.write_bytes(b"this is not an SQLite database, only text long enough to hold a header\n" * 4)
    line = cli.one_error_line(cli.invoke("serve", "--keys-db", str(keys), "--port", "9", "--avatar-store",
                                   str(tmp_path / "m.db")))  # fmt: skip
    assert f"{keys}: not a usable API key store" in line


def test_non_utf8_preferences_are_one_line_exit_2(tmp_path: Path, cli) -> None:
    (tmp_path / "soups").mkdir()
    prefs = tmp_path / "prefs.yaml"
    prefs.write_bytes("dimensions:\n  - name: tone\n    poles: [caf\u00e9, b]\n".encode("latin-1"))
    line = cli.one_error_line(cli.invoke("serve", "--soups", str(tmp_path / "soups"), "--preferences", str(prefs),
                                   "--port", "9", "--keys-db", str(tmp_path / "k.db")))  # fmt: skip
    assert f"{prefs}:3: not UTF-8 text" in line
